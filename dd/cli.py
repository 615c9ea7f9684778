"""Shared command-line plumbing: one-line errors instead of tracebacks for bad input."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from dd.errors import DDError


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a stage's ``main``; a ``DDError`` becomes ``error: <message>`` on stderr and exit status 2."""
    try:
        code = main(argv)
    except DDError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
