"""Write docs/presets.md from the presets in experiments/: each file's resolved values, the keys it sets that have
no column, and its '# Source:' line (dd.report.presets).

    python scripts/presets_doc.py            # rewrite docs/presets.md
    python scripts/presets_doc.py --check    # error (exit 2) when docs/presets.md is not what the presets give
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from dd.cli import run_cli
from dd.errors import DDError
from dd.report.presets import presets_markdown

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "presets.md"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/presets_doc.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare only; write nothing")
    args = parser.parse_args(argv)
    text = presets_markdown(ROOT)
    if args.check:
        if not DOC.is_file() or DOC.read_text(encoding="utf-8") != text:
            raise DDError(f"{DOC.relative_to(ROOT)} is not what the presets give; run python scripts/presets_doc.py")
        print(f"{DOC.relative_to(ROOT)} matches the presets")
        return 0
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    return 0


if __name__ == "__main__":
    run_cli(main)
