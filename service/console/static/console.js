// reelhook console: the little JavaScript the pages use. Every page works without it; with it,
// destructive buttons ask first and pages that show jobs follow the live event stream.
(function () {
  "use strict";

  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm"))) event.preventDefault();
    });
  });

  // Copy buttons: data-copy names the element whose text goes to the clipboard.
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var source = document.querySelector(button.getAttribute("data-copy"));
      if (!source || !navigator.clipboard) return;
      navigator.clipboard.writeText(source.textContent.trim()).then(function () {
        button.textContent = "Copied";
      });
    });
  });

  var body = document.body;
  var streamUrl = body.getAttribute("data-stream");
  if (!streamUrl || !window.EventSource) return;
  var types = JSON.parse(body.getAttribute("data-event-types") || "[]");
  var terminal = ["succeeded", "failed", "canceled", "expired"];
  var source = new EventSource(streamUrl);
  var state = document.getElementById("stream-state");

  function say(text) {
    if (state) state.textContent = text;
  }
  source.addEventListener("open", function () { say("Following live events."); });
  source.addEventListener("error", function () {
    say(source.readyState === EventSource.CLOSED ? "The live stream stopped; reload the page." : "Reconnecting…");
  });

  function onEvent(message) {
    var event;
    try { event = JSON.parse(message.data); } catch (e) { return; }
    var job = event.data || {};
    // A job page reloads when its job reaches a final state, to show outputs and the timeline.
    var followed = document.querySelector("[data-follow-job]");
    if (followed && job.id === followed.getAttribute("data-follow-job")) {
      followed.textContent = job.status;
      followed.className = "status status-" + job.status;
      if (terminal.indexOf(job.status) >= 0) window.location.reload();
    }
    document.querySelectorAll("[data-job-status]").forEach(function (badge) {
      if (badge.getAttribute("data-job-status") === job.id && job.status) {
        badge.textContent = job.status;
        badge.className = "status status-" + job.status;
      }
    });
    var log = document.getElementById("live-log");
    if (log) {
      var empty = document.getElementById("live-empty");
      if (empty) empty.remove();
      log.insertBefore(row(event), log.firstChild);
    }
  }

  function row(event) {
    var item = document.createElement("li");
    var time = document.createElement("time");
    time.textContent = (event.timestamp || "").replace("T", " ").replace("Z", " UTC");
    var type = document.createElement("strong");
    type.textContent = " " + event.type + " ";
    item.appendChild(time);
    item.appendChild(type);
    var job = event.data || {};
    if (event.type.indexOf("job.") === 0 && job.id) {
      var link = document.createElement("a");
      link.href = "/console/jobs/" + encodeURIComponent(job.id);
      link.className = "mono";
      link.textContent = job.id;
      item.appendChild(link);
      var model = document.createElement("span");
      model.className = "muted";
      model.textContent = " " + (job.model || "");
      item.appendChild(model);
    } else if (job.subscription_id) {
      var sub = document.createElement("a");
      sub.href = "/console/subscriptions/" + encodeURIComponent(job.subscription_id);
      sub.className = "mono";
      sub.textContent = job.subscription_id;
      item.appendChild(sub);
    }
    item.setAttribute("data-event-type", event.type);
    return item;
  }

  types.forEach(function (type) { source.addEventListener(type, onEvent); });
  window.addEventListener("pagehide", function () { source.close(); });
})();
