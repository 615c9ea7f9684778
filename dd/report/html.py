"""``report.html``: the report's Markdown as one self-contained HTML page, the images inlined as base64.

Covers the Markdown the report writes (and ``dd.eval``'s results tables): headings, pipe tables,
images, bullet lists, paragraphs, inline code and bold.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from urllib.parse import unquote

_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")
_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")
_MIME = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
_STYLE = """body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}
th{background:#f4f4f4}code{background:#f4f4f4;padding:0 .2rem}img{max-width:100%;image-rendering:pixelated}
figure{display:inline-block;margin:.3rem}figcaption{font-size:.8rem;color:#555}"""


def _inline(text: str, base: Path) -> str:
    """Escape ``text`` and turn its images, code spans and bold into HTML (images inlined from ``base``)."""
    out, last = [], 0
    for m in _IMAGE.finditer(text):
        out.append(_spans(text[last:m.start()]))
        out.append(_image(m.group(1), base / unquote(m.group(2))))
        last = m.end()
    out.append(_spans(text[last:]))
    return "".join(out)


def _spans(text: str) -> str:
    text = html.escape(text, quote=False)
    text = _CODE.sub(lambda m: f"<code>{m.group(1)}</code>", text)
    return _BOLD.sub(lambda m: f"<strong>{m.group(1)}</strong>", text)


def _image(alt: str, path: Path) -> str:
    if not path.is_file():
        return f"<em>[missing image {html.escape(str(path))}]</em>"
    data = base64.b64encode(path.read_bytes()).decode()
    mime = _MIME.get(path.suffix.lower(), "application/octet-stream")
    alt = html.escape(alt)
    return f'<figure><img alt="{alt}" src="data:{mime};base64,{data}"><figcaption>{alt}</figcaption></figure>'


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_to_html(markdown: str, base: Path, title: str) -> str:
    """A whole HTML page of ``markdown``; image paths are relative to ``base``."""
    body: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif m := re.match(r"(#{1,6}) (.*)", line):
            level = len(m.group(1))
            body.append(f"<h{level}>{_inline(m.group(2), base)}</h{level}>")
            i += 1
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            head, rest = rows[0], [r for r in rows[1:] if not all(set(c) <= set("-: ") for c in r)]
            body.append("<table><tr>" + "".join(f"<th>{_inline(c, base)}</th>" for c in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{_inline(c, base)}</td>" for c in r) + "</tr>"
                                  for r in rest) + "</table>")
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:], base)}</li>")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
        else:
            paragraph = []
            while i < len(lines) and lines[i].strip() and not re.match(r"(#{1,6} |\||- )", lines[i]):
                paragraph.append(lines[i])
                i += 1
            body.append(f"<p>{_inline(' '.join(paragraph), base)}</p>")
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
