"""``python -m dd.report``: curves, image history and tables of distillation runs and expert buffers.

    python -m dd.report runs/mtt-digits-ipc1
    python -m dd.report runs/mtt-digits-ipc1 runs/datm-digits-ipc1 --out reports/digits
    python -m dd.report buffers/digits/ConvNet/sgd-lr0.01-m0-wd0-e15-b64-dsa-standard_c2cafe3f

Writes report.md, a self-contained report.html (images inlined), curves.png (matching loss, learned lr and
accuracy against the iteration, one line per run) and, per buffer, the experts' test accuracy per epoch.
Needs matplotlib: pip install 'dd[report]'.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence

from dd.cli import run_cli
from dd.config import _Parser
from dd.report.build import make_report


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="python -m dd.report", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", metavar="FOLDER",
                        help="run folders (dd.distill --run-dir) and buffer folders (dd.buffer stores)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: FOLDER/report for one folder, else their common parent's "
                             "report/)")
    args = parser.parse_args(argv)
    out = make_report(args.folders, args.out)
    print(f"report: {out / 'report.md'} and {out / 'report.html'} (open it in a browser: "
          f"{shlex.quote(str((out / 'report.html').resolve()))})")
    return 0


if __name__ == "__main__":
    run_cli(main)
