"""``dd.eval.evaluate``: retrain fresh networks on synthetic sets and baselines and record their test (or
validation) accuracy; the library call behind ``python -m dd.eval`` (whose docstring describes the runs, records
and tables)."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

from dd import distributed
from dd.config import to_dict, validate
from dd.errors import DDError
from dd.eval.config import EvalConfig
from dd.eval.inputs import check_random_ipc, check_set, load_inputs
from dd.eval.jobs import batched_seeds, plan_jobs, run_jobs
from dd.eval.report import results_markdown, run_key
from dd.eval.results import Evaluation, Results
from dd.io import atomic_write_bytes
from dd.lock import hold


def default_out(config: EvalConfig, dataset: str) -> Path:
    """``--out``, else ``eval/`` beside the sets when they share a folder, else ``runs/eval-<dataset>``."""
    if config.out:
        return Path(config.out)
    parents = {Path(p).resolve().parent for p in config.synset_paths()}
    return parents.pop() / "eval" if len(parents) == 1 else Path(f"runs/eval-{dataset}")


def make_out(out: Path) -> None:
    """Create the output folder, or say in one line why it cannot be."""
    if out.exists() and not out.is_dir():
        raise DDError(f"--out {out} is a file, not a folder; pass a folder (it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DDError(f"cannot create the output folder {out} ({e.strerror}); pass another --out") from None
    if not os.access(out, os.W_OK):
        raise DDError(f"the output folder {out} is not writable; pass another --out")


def evaluate(config: EvalConfig) -> Evaluation:
    """Evaluate the sets and baselines of ``config``: check it and the inputs, train every run not yet recorded
    in the output folder (recording each at once in results.json) and write results.md. Raises ``DDError`` on bad
    input before anything trains."""
    validate(config)
    baselines = config.baselines()
    device = distributed.setup(config.device, config.tf32, config.deterministic)
    config = dataclasses.replace(config, device=str(device))  # recorded: the device used
    sets, data, dataset, checks = load_inputs(config, device)
    ipcs = {path: check_set(path, synset, data.spec, config.image_size is not None) for path, synset in sets.items()}
    for path, synset in sets.items():
        if config.lr is None and not (math.isfinite(synset.lr) and synset.lr > 0):
            raise DDError(f"the set at {path} has learned lr {synset.lr:g}, which cannot train a network; "
                          "regenerate it, or evaluate it with an explicit --lr")
    baseline_ipcs = [config.ipc] if config.ipc is not None else list(dict.fromkeys(ipcs.values()))
    if "random" in baselines and not baseline_ipcs:
        raise DDError("the random baseline needs --ipc (or a --synset to take it from)")
    if "random" in baselines:
        check_random_ipc(data, baseline_ipcs)
    data.split(config.split)  # a --split val without a validation split fails here, before any training
    jobs = plan_jobs(config, sets, ipcs, data, dataset, baselines, baseline_ipcs, checks)
    out = default_out(config, dataset)
    make_out(out)
    lock = ".lock" if distributed.rank() == 0 else f".lock.rank{distributed.rank()}"
    with hold(out, f"the eval output folder {out}", lock):
        results = Results(out, to_dict(config))
        runs = run_jobs(jobs, results, data, config.split, batched_seeds(config.batch_seeds, device),
                        config.max_over_epochs)
        if not distributed.is_main():
            return Evaluation([], results.path, out / "results.md")
        atomic_write_bytes(out / "results.md", results_markdown(runs).encode())
    asked = {run_key(job[0]) for job in jobs}
    return Evaluation([r for r in runs if run_key(r) in asked], results.path, out / "results.md")
