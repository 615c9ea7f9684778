"""What the results scripts share: running a dd stage as a subprocess, stopping with one error line,
parsing a list flag, formatting a table cell and reading an evaluation's records."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import NoReturn


def sh(*args: str) -> None:
    """Run one dd stage (``python -m <args>``) as a subprocess; when it fails (its own ``error:`` line above),
    stop with one line naming the stage and exit status 2. Finished stages are kept: rerunning resumes."""
    print("+", " ".join(args), flush=True)
    code = subprocess.run([sys.executable, "-m", *args]).returncode
    if code:
        fail(f"{args[0]} exited with status {code} (its message is above); fix it and rerun: finished stages are kept")


def fail(message: str) -> NoReturn:
    """Stop with one ``error:`` line and exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def cell(runs: list[dict]) -> str:
    """Mean ± population std of the runs' accuracies, in %."""
    accs = [100 * r["accuracy"] for r in runs]
    std = statistics.pstdev(accs) if len(accs) > 1 else 0.0
    return f"{statistics.fmean(accs):.2f} ± {std:.2f}"


def int_list(text: str, flag: str) -> list[int]:
    """The comma-separated integers of ``text`` (empty items skipped); one error line naming ``flag`` otherwise."""
    try:
        return [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        fail(f"{flag} takes comma-separated integers, got {text!r}")


def read_runs(folder: Path, **tags: object) -> list[dict]:
    """The records of ``folder``'s results.json, each tagged with ``tags`` (row, variant, ...)."""
    return [{**r, **tags} for r in json.loads((folder / "results.json").read_text())["runs"]]


def check_epochs(path: Path, records: list[dict], epochs: int) -> None:
    """Stop with one line when a carried record of ``path`` is not an ``epochs``-epoch evaluation."""
    for rec in records:
        if rec["protocol"]["epochs"] != epochs:
            fail(f"{path} holds records of {rec['protocol']['epochs']}-epoch evaluations, this call runs {epochs}; "
                 f"pass --epochs {rec['protocol']['epochs']} or drop --carry")


def seconds_per_iteration(run_dir: Path) -> float | None:
    """Median of the logged seconds per iteration (evaluation and saving excluded)."""
    values = [json.loads(line)["seconds_per_iteration"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if "seconds_per_iteration" in line]
    return statistics.median(values) if values else None


def select(runs: list[dict], **want: object) -> list[dict]:
    """The records whose fields equal ``want`` (missing fields count as None); cross-arch rows only when asked."""
    want.setdefault("cross_arch", None)
    return [r for r in runs if all(r.get(k) == v for k, v in want.items())]
