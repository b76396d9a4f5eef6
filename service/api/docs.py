"""``/docs``: the OpenAPI document rendered as one self-contained HTML page.

No scripts and nothing fetched from elsewhere: it reads the same on an air-gapped machine, and
there is no third-party code to trust. For an interactive console, load ``/openapi.json`` into
any OpenAPI viewer.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

_CSS = """
body{font:15px/1.5 system-ui,sans-serif;max-width:62rem;margin:2rem auto;padding:0 1rem;color:#222}
code,pre{font:13px ui-monospace,monospace;background:#f4f4f6;border-radius:3px;padding:0 .2em}
pre{padding:.6em;overflow:auto}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2.5em}
h3{margin:1.8em 0 .3em}
.m{display:inline-block;min-width:4.2em;text-align:center;border-radius:3px;color:#fff;
   font:bold 12px ui-monospace,monospace;padding:.2em .4em;margin-right:.5em}
.get{background:#2f7d32}.post{background:#1565c0}.patch{background:#8d6e00}
.delete{background:#b71c1c}.put{background:#6a1b9a}
table{border-collapse:collapse;width:100%;margin:.4em 0}
td,th{border:1px solid #e2e2e2;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#fafafa}ul.s{margin:.2em 0;padding-left:1.2em}.req{color:#b71c1c}
nav ul{columns:2}.muted{color:#666}
"""

_MAX_DEPTH = 4


def render(document: dict[str, Any]) -> str:
    """The whole page for ``document`` (an OpenAPI 3.1 dict)."""
    info = document["info"]
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name=viewport content="width=device-width,initial-scale=1">',
        f"<title>{_e(info['title'])} API</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(info['title'])} API <small class=muted>{_e(info['version'])}</small></h1>",
        _markdown(info.get("description", "")),
        '<p class=muted>Machine-readable: <a href="/openapi.json">/openapi.json</a> '
        "(OpenAPI 3.1). Server: "
        + ", ".join(f"<code>{_e(s['url'])}</code>" for s in document.get("servers", []))
        + "</p>",
    ]
    by_tag = _operations_by_tag(document)
    parts.append("<nav><h2>Contents</h2><ul>")
    for ops in by_tag.values():
        for method, path, op in ops:
            parts.append(
                f'<li><a href="#{_anchor(method, path)}">{_e(method.upper())} {_e(path)}</a> '
                f"<span class=muted>{_e(op.get('summary', ''))}</span></li>"
            )
    parts.append('<li><a href="#webhooks">Webhooks</a></li>')
    parts.append('<li><a href="#schemas">Schemas</a></li></ul></nav>')
    descriptions = {t["name"]: t.get("description", "") for t in document.get("tags", [])}
    for tag, ops in by_tag.items():
        parts.append(f"<h2>{_e(tag)}</h2><p>{_e(descriptions.get(tag, ''))}</p>")
        for method, path, op in ops:
            parts.append(_operation(method, path, op))
    parts.append("<h2 id=webhooks>Webhooks</h2><p>What reelhook POSTs to your URLs.</p>")
    for event_type, item in document.get("webhooks", {}).items():
        post = item["post"]
        body = post["requestBody"]["content"]["application/json"]["schema"]
        parts.append(f"<h3>{_e(event_type)}</h3>{_markdown(post.get('description', ''))}")
        parts.append(_params(post.get("parameters", [])) + _schema_block(body))
    parts.append("<h2 id=schemas>Schemas</h2>")
    for name, schema in document.get("components", {}).get("schemas", {}).items():
        parts.append(f'<h3 id="schema-{_e(name)}">{_e(name)}</h3>{_schema_block(schema)}')
    parts.append("</body></html>")
    return "".join(parts)


def _operations_by_tag(document: dict[str, Any]) -> dict[str, list[tuple[str, str, Any]]]:
    grouped: dict[str, list[tuple[str, str, Any]]] = {t["name"]: [] for t in document["tags"]}
    for path, item in document["paths"].items():
        for method, op in item.items():
            tag = (op.get("tags") or ["other"])[0]
            grouped.setdefault(tag, []).append((method, path, op))
    return {tag: ops for tag, ops in grouped.items() if ops}


def _operation(method: str, path: str, op: dict[str, Any]) -> str:
    parts = [
        f'<h3 id="{_anchor(method, path)}"><span class="m {_e(method)}">{_e(method.upper())}'
        f"</span><code>{_e(path)}</code></h3>",
        f"<p><strong>{_e(op.get('summary', ''))}</strong>"
        + (" <span class=muted>(no API key)</span>" if op.get("security") == [] else "")
        + "</p>",
        _markdown(op.get("description", "")),
    ]
    if op.get("parameters"):
        parts.append(_params(op["parameters"]))
    if "requestBody" in op:
        for media, content in op["requestBody"]["content"].items():
            parts.append(f"<p>Request body (<code>{_e(media)}</code>):</p>")
            parts.append(_schema_block(content.get("schema", {})))
    parts.append("<table><tr><th>status</th><th>answer</th></tr>")
    for status, answer in op["responses"].items():
        cell = [_e(answer.get("description", ""))]
        for media, content in answer.get("content", {}).items():
            cell.append(f"<br><code>{_e(media)}</code> " + _schema(content.get("schema", {}), 1))
        for header, spec in answer.get("headers", {}).items():
            cell.append(
                f"<br>header <code>{_e(header)}</code>: {_inline(spec.get('description', ''))}"
            )
        parts.append(f"<tr><td>{_e(status)}</td><td>{''.join(cell)}</td></tr>")
    parts.append("</table>")
    return "".join(parts)


def _params(params: list[dict[str, Any]]) -> str:
    rows = ["<table><tr><th>parameter</th><th>in</th><th>type</th><th>meaning</th></tr>"]
    for param in params:
        required = " <span class=req>required</span>" if param.get("required") else ""
        rows.append(
            f"<tr><td><code>{_e(param['name'])}</code>{required}</td><td>{_e(param['in'])}</td>"
            f"<td>{_schema(param.get('schema', {}), 1)}</td>"
            f"<td>{_inline(param.get('description', ''))}</td></tr>"
        )
    rows.append("</table>")
    return "".join(rows)


def _schema_block(schema: dict[str, Any]) -> str:
    return f"<div>{_schema(schema, 0)}</div>"


def _schema(schema: dict[str, Any], depth: int) -> str:
    """A readable rendering: links for references, nested lists for object properties."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f'<a href="#schema-{_e(name)}">{_e(name)}</a>'
    text = ""
    for key, word in (("oneOf", "one of"), ("anyOf", "any of"), ("allOf", "all of")):
        if key in schema:
            text += f"{word}: " + " | ".join(_schema(s, depth + 1) for s in schema[key]) + " "
    if "const" in schema:
        text += f"<code>{_e(json.dumps(schema['const']))}</code>"
    elif "enum" in schema:
        text += "one of " + ", ".join(f"<code>{_e(json.dumps(v))}</code>" for v in schema["enum"])
    elif "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if "array" in types and "items" in schema:
            types = [t for t in types if t != "array"]
            text += "array of " + _schema(schema["items"], depth + 1)
            text += (" or " if types else "") + " or ".join(_e(t) for t in types)
        else:
            text += " or ".join(_e(t) for t in types)
    limits = [
        f"{word} {_e(json.dumps(schema[key]))}"
        for key, word in (
            ("minimum", "≥"),
            ("maximum", "≤"),
            ("minLength", "min length"),
            ("maxLength", "max length"),
            ("default", "default"),
            ("pattern", "matching"),
            ("format", "format"),
        )
        if key in schema
    ]
    if limits:
        text += f" <span class=muted>({', '.join(limits)})</span>"
    if schema.get("description") and depth > 0:
        text += f" — {_inline(schema['description'])}"
    properties = schema.get("properties")
    if properties and depth < _MAX_DEPTH:
        required = set(schema.get("required", []))
        items = []
        for name, sub in properties.items():
            mark = " <span class=req>required</span>" if name in required else ""
            items.append(f"<li><code>{_e(name)}</code>{mark}: {_schema(sub, depth + 1)}</li>")
        extra = ""
        if schema.get("additionalProperties") is False:
            extra = "<li class=muted>no other properties</li>"
        text += f"<ul class=s>{''.join(items)}{extra}</ul>"
    if depth == 0 and schema.get("description"):
        text = _markdown(schema["description"]) + text
    return text or "any"


def _anchor(method: str, path: str) -> str:
    return f"op-{method}-" + re.sub(r"[^a-zA-Z0-9]+", "-", path).strip("-")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _inline(text: str) -> str:
    """Escape, then the two bits of Markdown the descriptions use: `code` and **bold**."""
    escaped = _e(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)


def _markdown(text: str) -> str:
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    return "".join(f"<p>{_inline(' '.join(p.split()))}</p>" for p in paragraphs)
