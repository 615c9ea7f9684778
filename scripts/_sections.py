"""What the benchmark scripts share: replacing one marked section of a Markdown file, leaving the rest as it is."""

from __future__ import annotations

import re
from pathlib import Path


def write_section(path: Path, name: str, markdown: str) -> None:
    """Put ``markdown`` between ``<!-- name -->`` and ``<!-- /name -->`` in ``path`` (replacing what was there, or
    appended at the end when the markers are absent), so several scripts can write one page."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    path.write_text(text.lstrip() + "\n")
