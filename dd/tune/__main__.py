"""``python -m dd.tune``: search a preset's keys on the validation split (Optuna; pip install 'dd[tune]').

    python -m dd.tune --config experiments/mtt/digits_ipc1.yaml --space lr_img=log:10..1000 \\
        --space syn_steps=10,20,40 --trials 20 --iterations 100 --eval-every 25
    python -m dd.tune --config experiments/dm/digits_ipc1.yaml --space lr_img=log:0.1..10 --space eval_lr=log:0.003..0.1

--space key=spec: key is a key of the preset's method (python -m dd.distill --method <m> --help) or eval_lr (the lr
of the final validation evaluation); spec is log:lo..hi, lo..hi or a list a,b,c. Every trial is a run folder
<out>/trials/<n>, scored on the validation split only; the study is <out>/study.db: rerun the same command to resume
a killed search, or start it in several processes (on several machines sharing the folder) to run trials in
parallel. Writes <out>/trials.md and trials.json (every trial), best.yaml (the best trial's values as a preset
that says how it was chosen) and tuning.png. --test-runs K evaluates the chosen set on the test split, once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dd.cli import run_cli
from dd.config import build_parser, make_config
from dd.errors import DDError
from dd.io import read_json
from dd.tune.search import TuneConfig, best_row, default_out, markdown, search, summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(TuneConfig, "python -m dd.tune", __doc__)
    parser.add_argument("--space", action="append", default=[], metavar="KEY=SPEC",
                        help="a searched key: log:lo..hi, lo..hi or a,b,c (repeat for each key)")
    values = vars(parser.parse_args(argv))
    preset, space = values.pop("config"), values.pop("space")
    if not preset:
        raise DDError("give the preset to tune: --config experiments/<method>/<preset>.yaml")
    config = make_config(TuneConfig, values, source="command line")
    rows = search(preset, space, config)
    out = Path(config.out) if config.out else default_out(preset)
    best = best_row(rows)
    print(markdown(rows, None if best is None else best["number"]))
    counts = summary(rows)
    print(f"{counts['trials']} trials ({counts['complete']} complete, {counts['pruned']} pruned), "
          f"{counts['seconds']:.0f} s of trials in all (pruning saved about {counts['saved_seconds']:.0f} s); "
          f"table: {out / 'trials.md'}")
    if best is None:
        print("no trial completed, so no best.yaml")
        return 0
    print(f"best: trial {best['number']} ({best['run_dir']}); preset: {out / 'best.yaml'} (chosen on the validation "
          "split)")
    if config.test_runs:
        test = read_json(out / "test" / "chosen.json", "test record")
        print(f"test split, read once, for the chosen trial {test['trial']} only: {100 * test['test_mean']:.2f} ± "
              f"{100 * test['test_std']:.2f} % ({test['runs']} seeds; {out / 'test' / 'results.md'})")
    print(plot_line(out))
    return 0


def plot_line(out: Path) -> str:
    """Draw tuning.png through dd.report, or say how to (matplotlib is an optional extra)."""
    from dd.report.plots import plot_tuning, require_matplotlib

    try:
        require_matplotlib()
    except DDError as e:
        return f"no plot: {e}"
    plot_tuning(out, out / "tuning.png")
    return f"plot: {out / 'tuning.png'}"


if __name__ == "__main__":
    run_cli(main)
