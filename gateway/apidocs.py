"""`/docs`: the OpenAPI document rendered as one HTML page, on the server.

No script and nothing from a CDN: the page works offline and under a strict
Content-Security-Policy (its only other resource is `/docs/docs.css`). Texts of the
document use backticks for code, blank lines between paragraphs and `- ` for list items;
nothing else is interpreted (and everything is escaped).
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

_CODE = re.compile(r"`([^`]+)`")
_REF = "#/components/schemas/"


def page(doc: dict[str, Any]) -> str:
    info = doc["info"]
    title = html.escape(info["title"])
    parts = [
        "<!doctype html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{title} API</title>", '<link rel="stylesheet" href="/docs/docs.css">',
        "</head>", "<body>", "<header>",
        f"<h1>{title} <span class=\"version\">{html.escape(info['version'])}</span></h1>",
        '<p>OpenAPI 3.1: <a href="/openapi.json">/openapi.json</a></p>', "</header>",
        "<main>", _text(info.get("description", "")),
        _contents(doc), _operations(doc), _security(doc), _schemas(doc),
        "</main>", "</body>", "</html>", "",
    ]
    return "\n".join(parts)


def _text(text: str) -> str:
    """Paragraphs and `- ` lists of `text`, escaped, with `code` spans."""
    out: list[str] = []
    for block in text.split("\n\n"):
        lines = block.strip().splitlines()
        if not lines:
            continue
        if all(line.startswith("- ") for line in lines):
            items = "".join(f"<li>{_inline(line[2:])}</li>" for line in lines)
            out.append(f"<ul>{items}</ul>")
        else:
            out.append(f"<p>{_inline(' '.join(lines))}</p>")
    return "\n".join(out)


def _inline(text: str) -> str:
    return _CODE.sub(r"<code>\1</code>", html.escape(text, quote=False))


def _anchor(method: str, path: str) -> str:
    return "op-" + method + re.sub(r"[^A-Za-z0-9]+", "-", path).rstrip("-")


def _by_tag(doc: dict[str, Any]) -> dict[str, list[tuple[str, str, dict[str, Any]]]]:
    groups: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
        tag["name"]: [] for tag in doc.get("tags", [])}
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            groups.setdefault(op["tags"][0], []).append((method, path, op))
    return groups


def _contents(doc: dict[str, Any]) -> str:
    rows = []
    for tag, ops in _by_tag(doc).items():
        links = "".join(
            f'<li><a href="#{_anchor(m, p)}"><span class="method {m}">{m.upper()}</span> '
            f"<code>{html.escape(p)}</code></a> {html.escape(op['summary'])}</li>"
            for m, p, op in ops)
        rows.append(f'<li><a href="#tag-{tag}">{html.escape(tag)}</a><ul>{links}</ul></li>')
    return ('<nav><h2>Contents</h2><ul class="contents">' + "".join(rows)
            + '<li><a href="#security">Authentication</a></li>'
            + '<li><a href="#schemas">Schemas</a></li></ul></nav>')


def _operations(doc: dict[str, Any]) -> str:
    tags = {tag["name"]: tag.get("description", "") for tag in doc.get("tags", [])}
    out = []
    for tag, ops in _by_tag(doc).items():
        out.append(f'<section id="tag-{tag}"><h2>{html.escape(tag)}</h2>{_text(tags[tag])}')
        out += [_operation(m, p, op) for m, p, op in ops]
        out.append("</section>")
    return "\n".join(out)


def _operation(method: str, path: str, op: dict[str, Any]) -> str:
    out = [f'<article class="operation" id="{_anchor(method, path)}">',
           f'<h3><span class="method {method}">{method.upper()}</span> '
           f"<code>{html.escape(path)}</code></h3>",
           f"<p class=\"summary\">{_inline(op['summary'])}</p>", _text(op.get("description", ""))]
    if "security" in op:
        needs = " or ".join(" + ".join(f'<a href="#sec-{n}">{n}</a>' for n in alternative)
                            for alternative in op["security"])
        out.append(f"<p><strong>Authentication:</strong> {needs}</p>")
    if op.get("parameters"):
        rows = "".join(
            f"<tr><td><code>{html.escape(p['name'])}</code></td><td>{p['in']}</td>"
            f"<td>{_type(p['schema'])}</td><td>{'yes' if p.get('required') else ''}</td>"
            f"<td>{_inline(p.get('description', ''))}</td></tr>" for p in op["parameters"])
        out.append("<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>type</th>"
                   f"<th>required</th><th>meaning</th></tr>{rows}</table>")
    if "requestBody" in op:
        content = op["requestBody"]["content"]
        out.append("<h4>Request body</h4><p>" + "; ".join(
            f"<code>{html.escape(media)}</code>: {_type(c['schema'])}"
            for media, c in content.items()) + "</p>")
    rows = ""
    for status, answer in op["responses"].items():
        bodies = "; ".join(f"<code>{html.escape(media)}</code> {_type(c['schema'])}"
                           for media, c in answer.get("content", {}).items())
        headers = "".join(f"<br>header <code>{html.escape(name)}</code>: "
                          f"{_inline(h['description'])}"
                          for name, h in answer.get("headers", {}).items())
        rows += (f"<tr><td>{status}</td><td>{_inline(answer['description'])}{headers}</td>"
                 f"<td>{bodies}</td></tr>")
    out.append("<h4>Responses</h4><table><tr><th>status</th><th>meaning</th><th>body</th>"
               f"</tr>{rows}</table>")
    out.append("</article>")
    return "\n".join(out)


def _security(doc: dict[str, Any]) -> str:
    out = ['<section id="security"><h2>Authentication</h2>']
    for name, scheme in doc["components"].get("securitySchemes", {}).items():
        if scheme["type"] == "http":
            how = f"HTTP {scheme['scheme']} ({scheme.get('bearerFormat', '')})"
        else:
            how = f"{scheme['in']} <code>{html.escape(scheme['name'])}</code>"
        out.append(f'<h3 id="sec-{name}">{html.escape(name)}</h3><p>{how}</p>'
                   + _text(scheme.get("description", "")))
    out.append("</section>")
    return "\n".join(out)


def _schemas(doc: dict[str, Any]) -> str:
    out = ['<section id="schemas"><h2>Schemas</h2>']
    for name, schema in doc["components"]["schemas"].items():
        out.append(f'<article class="schema" id="schema-{name}"><h3>{html.escape(name)}</h3>')
        out.append(_text(schema.get("description", "")))
        props = schema.get("properties")
        if props is not None:
            required = set(schema.get("required", []))
            meanings = any("description" in prop for prop in props.values())
            rows = "".join(f"<tr><td><code>{html.escape(field)}</code></td>"
                           f"<td>{_type(prop)}</td><td>{'yes' if field in required else ''}</td>"
                           + (f"<td>{_inline(prop.get('description', ''))}</td>" if meanings
                              else "") + "</tr>"
                           for field, prop in props.items())
            extra = ("" if schema.get("additionalProperties", True) is not False
                     else "<p>No other fields are accepted.</p>")
            out.append("<table><tr><th>field</th><th>type</th><th>required</th>"
                       + ("<th>meaning</th>" if meanings else "")
                       + f"</tr>{rows}</table>{extra}")
        else:
            out.append(f"<p>{_type(schema)}</p>")
        out.append("</article>")
    out.append("</section>")
    return "\n".join(out)


def _type(schema: dict[str, Any]) -> str:
    """A JSON schema in a few words: `HistoryItem[]`, `string (uuid) | null`, ..."""
    if "$ref" in schema:
        name = html.escape(schema["$ref"].removeprefix(_REF))
        return f'<a href="#schema-{name}">{name}</a>'
    if "anyOf" in schema or "oneOf" in schema:
        return " | ".join(_type(s) for s in schema.get("anyOf", schema.get("oneOf", [])))
    if "enum" in schema or "const" in schema:
        values = schema.get("enum", [schema.get("const")])
        return " | ".join(f"<code>{html.escape(_json(v))}</code>" for v in values)
    kind = schema.get("type", "any")
    if kind == "array":
        return _type(schema.get("items", {})) + "[]"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_type(schema['additionalProperties'])}"
    facts = [html.escape(schema["format"])] if "format" in schema else []
    for key, label in (("minimum", "≥ "), ("maximum", "≤ "), ("minLength", "length ≥ "),
                       ("maxLength", "length ≤ ")):
        if key in schema:
            facts.append(f"{label}{schema[key]}")
    if "pattern" in schema:
        facts.append(f"<code>{html.escape(schema['pattern'])}</code>")
    text = html.escape(str(kind)) + (f" ({', '.join(facts)})" if facts else "")
    if schema.get("default") is not None:
        text += f" default <code>{html.escape(_json(schema['default']))}</code>"
    return text


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
