"""Body templates: what they render, and every way a hostile or broken template is refused in
bounded time and memory."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from service.delivery.transform import Limits, Renderer, TemplateError

BODY: dict[str, Any] = {
    "type": "job.succeeded",
    "timestamp": "2026-12-05T06:00:00Z",
    "data": {
        "id": "job_1",
        "outputs": [{"url": "https://cdn.example/v.mp4", "type": "video"}],
        "metadata": {"chat_id": 42},
        "input": {"prompt": 'a "drone" shot <over> hills & sea'},
    },
}


def render(
    source: str, content_type: str = "text/plain", renderer: Renderer | None = None
) -> bytes:
    return (renderer or Renderer()).render(source, content_type, "evt_1", BODY)


def test_renders_the_event_into_json() -> None:
    source = (
        '{"text": {{ ("Ready: " ~ data.outputs[0].url)|tojson }}, "prompt": '
        '{{ data.input.prompt|tojson }}, "id": {{ event_id|tojson }}, "type": {{ type|tojson }}'
        '{% for o in data.outputs %}, "url{{ loop.index }}": {{ o.url|tojson }}{% endfor %}}'
    )
    sent = json.loads(render(source, "application/json"))
    assert sent == {
        "text": "Ready: https://cdn.example/v.mp4",
        "prompt": 'a "drone" shot <over> hills & sea',
        "id": "evt_1",
        "type": "job.succeeded",
        "url1": "https://cdn.example/v.mp4",
    }


def test_plain_text_and_form_bodies_are_sent_as_rendered() -> None:
    assert render("job {{ data.id }} is {{ type }}") == b"job job_1 is job.succeeded"
    form = "chat_id={{ data.metadata.chat_id }}&video={{ data.outputs[0].url|urlencode }}"
    assert render(form, "application/x-www-form-urlencoded") == (
        b"chat_id=42&video=https%3A//cdn.example/v.mp4"
    )


def test_a_json_template_must_render_json() -> None:
    with pytest.raises(TemplateError, match="not valid JSON"):
        render("Ready: {{ data.id }}", "application/json")


def test_syntax_errors_name_the_line() -> None:
    with pytest.raises(TemplateError, match="line 2"):
        Renderer().compile("ok\n{% for %}")


def test_a_template_longer_than_the_limit_is_refused() -> None:
    with pytest.raises(TemplateError, match="longer than"):
        Renderer(Limits(max_source=100)).compile("x" * 101)


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ self._TemplateReference__context }}",
        "{{ data.__class__ }}",
        "{{ data.outputs.append(1) }}",
        "{{ data.metadata.update({'x': 1}) }}",
        "{{ '{0.__class__}'.format(data) }}",
    ],
)
def test_python_internals_are_out_of_reach(source: str) -> None:
    with pytest.raises(TemplateError, match="not allowed in a template"):
        render(source)
    assert BODY["data"]["outputs"] == [{"url": "https://cdn.example/v.mp4", "type": "video"}]


def test_includes_are_not_possible() -> None:
    with pytest.raises(TemplateError):
        render("{% include '/etc/passwd' %}")


@pytest.mark.parametrize(
    ("source", "words"),
    [
        # Loops and recursion that would run for ever (or for 10^10 iterations).
        (
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
            "longer than",
        ),
        ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recursed"),
        (
            "{% macro f(n) %}{{ f(n-1) }}{{ f(n-1) }}{% endmacro %}{{ f(60) }}",
            "recursed|longer than",
        ),
    ],
)
def test_templates_that_never_finish_are_stopped(source: str, words: str) -> None:
    with pytest.raises(TemplateError, match=words):
        render(source)


class _Waits:
    """Stands for a busy machine: each call takes wall time without using the thread's CPU."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls = 0

    def wait(self) -> str:
        self.calls += 1
        time.sleep(self.seconds)
        return "."


def _render_waiting(waits: _Waits, times: int, limits: Limits) -> bytes:
    body = {**BODY, "data": waits}
    source = "{% for i in range(" + str(times) + ") %}{{ data.wait() }}{% endfor %}"
    return Renderer(limits).render(source, "text/plain", "evt_1", body)


def test_the_time_limit_counts_cpu_so_a_busy_machine_does_not_fail_a_valid_template() -> None:
    # Two waits of 150 ms: 0.3 s of wall time against the 0.1 s limit, almost no CPU. The old
    # wall-clock limit refused this on the second iteration (a validation 422 under load); the
    # wall-time cut-off (1 s) leaves a loaded machine 0.7 s of slack.
    waits = _Waits(0.15)
    assert _render_waiting(waits, 2, Limits(seconds=0.1)) == b".."
    assert waits.calls == 2


def test_a_render_still_stops_at_ten_times_the_limit_of_wall_time() -> None:
    waits = _Waits(0.03)
    with pytest.raises(TemplateError, match=r"longer than 0\.02 s") as refused:
        _render_waiting(waits, 50, Limits(seconds=0.02))
    assert refused.value.transient
    # 200 ms of wall time is the cut-off: it stops after about seven waits, far before fifty.
    assert waits.calls < 50


@pytest.mark.parametrize(
    "source",
    [
        # Megabytes of output, straight or captured in a block, a macro or a filter block.
        "{% for i in range(100000) %}" + "x" * 64 + "{% endfor %}",
        "{% set x %}{% for i in range(100000) %}{{ 'x'|center(60000) }}{% endfor %}{% endset %}",
        "{% filter upper %}{% for i in range(100000) %}{{ 'x'|center(60000) }}{% endfor %}"
        "{% endfilter %}",
        # One operation that would allocate gigabytes before any check after it could run.
        "{{ 'x' * 10000000000 }}",
        "{% set l = range(100000)|list %}{{ ([[l] * 100] * 100)|join }}",
        "{% set s = 'abcdefghij' %}{{ s|replace('', s)|replace('', s)|replace('', s)"
        "|replace('', s) }}",
        "{% set s = 'abcdefghij' %}{{ s.replace('', s).replace('', s).replace('', s)"
        ".replace('', s).replace('', s) }}",
        "{{ '%999999999d'|format(1) }}",
        "{{ '%999999999d' % 1 }}",
        "{{ 'x'.ljust(999999999) }}",
        "{{ 'x'|center(999999999) }}",
        "{{ 9 ** 999999 }}",
        # Growth by repetition: each step doubles.
        "{% set ns = namespace(x='ab') %}{% for i in range(100) %}{% set ns.x = ns.x ~ ns.x %}"
        "{% endfor %}{{ ns.x|length }}",
        "{% set ns = namespace(x=[1]) %}{% for i in range(100) %}{% set ns.x = ns.x + ns.x %}"
        "{% endfor %}{{ ns.x|length }}",
        "{% set ns = namespace(x=3) %}{% for i in range(100) %}{% set ns.x = ns.x * ns.x %}"
        "{% endfor %}{{ ns.x }}",
    ],
)
def test_templates_that_would_render_megabytes_are_refused(source: str) -> None:
    with pytest.raises(TemplateError, match=r"larger than|more than|above|longer than"):
        render(source)


def test_the_output_limit_is_the_configured_one() -> None:
    small = Renderer(Limits(max_bytes=10))
    assert render("0123456789", renderer=small) == b"0123456789"
    with pytest.raises(TemplateError, match="larger than 10 bytes"):
        render("0123456789a", renderer=small)


def test_compiled_templates_are_reused() -> None:
    renderer = Renderer()
    assert renderer.compile("{{ type }}") is renderer.compile("{{ type }}")
