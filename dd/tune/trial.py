"""One trial of a search: a normal distillation run folder, then its validation score.

The run is the method's own loop (``RunLoop``) built from the preset plus the trial's values; each in-run
evaluation (validation split) is handed to ``report(iteration, accuracy)``, which may stop the run by raising
(a pruned trial keeps its set and checkpoint of that iteration). The score is ``dd.eval --split val`` on the
run's ``synset_best`` (``runs`` seeds: mean and std), or, with ``runs`` 0, the best in-run accuracy.
"""

from __future__ import annotations

import contextlib
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dd.config import load_yaml, make_config
from dd.distill.registry import get_method, load_plugins
from dd.errors import DDError
from dd.eval import EvalConfig, evaluate

Report = Callable[[int, float], None]  # (iteration, validation accuracy of the first eval model)


def preset_method(preset: str | Path) -> str:
    """The method a preset names (dd.distill's default, mtt, when it names none)."""
    return str(load_yaml(preset).get("method", "mtt"))


def config_class(method: str) -> type:
    """The config class whose keys a search over ``method`` may set (the registry's; plugins from ``DD_PLUGINS``)."""
    load_plugins()
    return get_method(method).config


def run_distillation(preset: str | Path, values: dict[str, Any], run_dir: Path, report: Report) -> int:
    """Distil with the preset's config and ``values`` on top into ``run_dir`` (resuming it when it holds a
    checkpoint of the same config); returns the iterations run. Exceptions raised by ``report`` stop the run."""
    spec = get_method(preset_method(preset))
    config_cls, loop_cls = spec.config, spec.run
    resume = (run_dir / "config.json").is_file()
    config = make_config(config_cls, {**load_yaml(preset), **values, "run_dir": str(run_dir), "resume": resume},
                         source=f"trial config (preset {preset})")
    argv = ["--config", str(preset), *(f"--{k.replace('_', '-')}={v}" for k, v in values.items())]
    loop = loop_cls(config, argv)
    evaluate, after_evaluate = loop.evaluate, loop.after_evaluate
    last: dict[str, float] = {}

    def evaluate_and_keep(progress: Any = None) -> dict[str, list[float]]:
        results = evaluate(progress)
        first = next(iter(results.values()))
        last["accuracy"] = sum(first) / len(first)
        return results

    def after_evaluate_and_report(log: Any) -> None:
        after_evaluate(log)  # the set, checkpoint and pictures of this evaluation are written before a prune
        report(loop.iteration, last["accuracy"])

    loop.evaluate, loop.after_evaluate = evaluate_and_keep, after_evaluate_and_report
    loop.run()
    return loop.iteration


def best_in_run(run_dir: Path) -> float | None:
    """The best in-run validation accuracy of the first eval model in ``run_dir/metrics.jsonl`` (None: none)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    best = None
    for line in path.read_text().splitlines():
        record = _json_line(line)
        keys = [k for k in record if k.startswith("val/")]
        if keys:
            best = record[keys[0]] if best is None else max(best, record[keys[0]])
    return best


def _json_line(line: str) -> dict[str, Any]:
    try:
        found = json.loads(line)
    except ValueError:
        return {}  # a line cut by a kill
    return found if isinstance(found, dict) else {}


def evaluate_set(synset: Path, out: Path, runs: int, split: str, lr: float | None = None,
                 epochs: int | None = None) -> tuple[float, float]:
    """``dd.eval`` of ``synset`` on ``split`` with ``runs`` seeds into ``out`` (resumable: finished seeds are kept),
    with the set's protocol, lr and epochs unless ``lr`` or ``epochs`` is given; (mean, std) of the accuracies."""
    config = EvalConfig(synset=str(synset), split=split, runs=runs, out=str(out), lr=lr, epochs=epochs)
    with open(out.parent / f"{out.name}.log", "a") as log, contextlib.redirect_stdout(log):  # its tables and hints
        records = evaluate(config).runs
    accuracies = [r["accuracy"] for r in records if r["source"] == "distilled" and r["split"] == split]
    if not accuracies:
        raise DDError(f"dd.eval wrote no accuracy of {synset} into {out}; delete {out} and rerun")
    return statistics.fmean(accuracies), statistics.pstdev(accuracies) if len(accuracies) > 1 else 0.0
