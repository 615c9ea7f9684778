"""What the results scripts share: running a dd stage as a subprocess and formatting a table cell."""

from __future__ import annotations

import statistics
import subprocess
import sys


def sh(*args: str) -> None:
    """Run one dd stage (``python -m <args>``) as a subprocess, failing loudly."""
    print("+", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", *args], check=True)


def cell(runs: list[dict]) -> str:
    """Mean ± population std of the runs' accuracies, in %."""
    accs = [100 * r["accuracy"] for r in runs]
    std = statistics.pstdev(accs) if len(accs) > 1 else 0.0
    return f"{statistics.fmean(accs):.2f} ± {std:.2f}"
