"""The search: Optuna trials of one preset's keys, scored on the validation split, in a study stored in the
tuning folder (``study.db``, SQLite), so that a killed search resumes and several processes share it.

Each trial is a run folder ``trials/<number>``. Intermediate values are the in-run validation accuracies (one per
evaluation, at its iteration), which the pruner compares with the other trials' at the same iteration. A trial
that stops with a dd error (a diverged run) is a failed trial and the search goes on; an interrupted or killed
one is not counted, and the next call runs a new trial in its place. ``--trials N`` asks for N finished trials
(complete, pruned or failed) in the study; processes sharing it may finish up to one more each.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dd.cli import Interrupted
from dd.config import load_yaml, make_config, opt
from dd.errors import DDError
from dd.io import atomic_write_bytes, atomic_write_json, read_json
from dd.lock import Lock
from dd.tune import trial as trials
from dd.tune.space import EVAL_LR, Param, parse_space

INSTALL = "pip install 'dd[tune]' (or pip install optuna)"
STUDY = "dd.tune"
TABLE = "trials.json"


@dataclass
class TuneConfig:
    trials: int = opt(20, "finished trials wanted in the study (a resumed or shared search counts every process's)")
    iterations: int | None = opt(None, "distillation iterations of every trial: the budget (default: the preset's)")
    eval_every: int | None = opt(None, "in-run validation every k iterations: where a trial reports to the pruner "
                                       "(default: the preset's)")
    val_runs: int = opt(3, "seeds of the final validation evaluation of each trial's synset_best (dd.eval --split "
                           "val), whose mean is the trial's score (0: the best in-run validation accuracy instead)")
    val_epochs: int | None = opt(None, "epochs of each network of the final validation evaluation (default: the "
                                       "set's protocol's, as dd.eval; mtt runs epochs + 1)")
    sampler: str = opt("tpe", "Optuna sampler: TPE (random for the first --startup-trials) or random",
                       choices=("tpe", "random"))
    pruner: str = opt("median", "stop a trial whose in-run validation accuracy is below the median of the earlier "
                                "trials' at the same iteration, or never stop one", choices=("median", "none"))
    startup_trials: int = opt(4, "finished trials before the pruner stops any and before TPE models the space")
    seed: int | None = opt(None, "sampler seed; the k-th trial of the study draws with seed + k (default: fresh); "
                                 "give processes sharing a study different seeds")
    test_runs: int = opt(0, "after the search, evaluate the chosen trial's synset_best on the test split with this "
                            "many seeds (and --val-epochs), once (0: the test split is never read)")
    out: str | None = opt(None, "tuning folder: study.db, trials/, trials.json/.md, best.yaml (default: "
                                "runs/tune-<preset name>)")


@dataclass
class Score:
    """A trial's validation score: mean and std over the evaluation seeds (std None: one in-run value)."""

    mean: float
    std: float | None
    iterations: int


Scorer = Callable[[dict[str, Any], Path, trials.Report], Score]


def require_optuna() -> Any:
    """The optuna module; DDError naming the install command when it is missing."""
    try:
        import optuna
    except ImportError:
        raise DDError(f"dd.tune searches with Optuna, which is not installed; {INSTALL}") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # dd prints its own line per trial
    return optuna


def default_out(preset: str | Path) -> Path:
    return Path("runs") / f"tune-{Path(preset).stem}"


def distill_and_validate(preset: str | Path, config: TuneConfig) -> Scorer:
    """The real scorer: distil (``trial.run_distillation``), then score the run on the validation split."""
    budget = {k: v for k, v in (("iterations", config.iterations), ("eval_every", config.eval_every)) if v is not None}

    def score(values: dict[str, Any], run_dir: Path, report: trials.Report) -> Score:
        eval_lr = values.get(EVAL_LR)
        keys = {k: v for k, v in values.items() if k != EVAL_LR}
        iterations = trials.run_distillation(preset, {**keys, **budget}, run_dir, report)
        if config.val_runs == 0:
            best = trials.best_in_run(run_dir)
            if best is None:
                raise DDError(f"{run_dir} has no in-run validation accuracy; give --val-runs > 0 or an eval_every")
            return Score(best, None, iterations)
        best_set = run_dir / "synset_best" if (run_dir / "synset_best").is_dir() else run_dir / "synset"
        mean, std = trials.evaluate_set(best_set, run_dir / "val", config.val_runs, "val", eval_lr,
                                        config.val_epochs)
        return Score(mean, std, iterations)

    return score


def search_identity(preset: Path, params: list[Param], config: TuneConfig) -> dict[str, Any]:
    """What makes two searches the same one (a study may be resumed or shared only by its own search): the preset's
    values with its bases followed (a changed base is another search), the space and the budget. ``preset``, the
    path, is for the reader: another process may reach the same preset by another path (another machine's)."""
    return {"preset": str(preset), "preset_values": load_yaml(preset), "space": [p.text() for p in params],
            "iterations": config.iterations, "eval_every": config.eval_every, "val_runs": config.val_runs,
            "val_epochs": config.val_epochs}


def open_study(optuna: Any, out: Path, identity: dict[str, Any], config: TuneConfig,
               first: dict[str, Any] | None = None) -> Any:
    """The study in ``out/study.db`` (created or resumed); DDError when it holds another search. A new study
    starts with the trial ``first`` (the preset's values), so the table compares the tuned config with the preset
    at the same budget."""
    out.mkdir(parents=True, exist_ok=True)
    db = out / "study.db"
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=config.startup_trials) if config.pruner == "median"
              else optuna.pruners.NopPruner())
    lock = Lock(out / ".study.lock")  # processes starting together would each create the tables
    while not lock.acquire():
        time.sleep(0.1)
    try:
        with warnings.catch_warnings():  # the heartbeat (which fails the trials of a killed process) is "experimental"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(f"sqlite:///{db}", heartbeat_interval=60, grace_period=180,
                                                 engine_kwargs={"connect_args": {"timeout": 120}})
        study = optuna.create_study(study_name=STUDY, storage=storage, direction="maximize", load_if_exists=True,
                                    pruner=pruner)
        found = study.user_attrs.get("search")
        if found is None:
            study.set_user_attr("search", identity)
            if first is not None:
                study.enqueue_trial(first, user_attrs={"preset": True})
    except Exception as e:  # sqlalchemy's and optuna's errors for a file that is no study of dd.tune
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DDError(f"{db} is not a dd.tune study ({first}); choose another --out") from None
    finally:
        lock.release()
    differ = [k for k in identity if k != "preset" and found is not None and found.get(k) != identity[k]]
    if differ:
        raise DDError(f"{db} holds another search (its {', '.join(differ)} differ); rerun with that search's flags "
                      "to resume it, or choose another --out for this one")
    return study


def preset_point(preset: Path, params: list[Param]) -> dict[str, Any] | None:
    """The preset's own values of the searched keys when they lie in the space (None otherwise, or when
    ``eval_lr`` is searched: a preset holds no evaluation lr)."""
    method = trials.preset_method(preset)
    values = make_config(trials.config_class(method), load_yaml(preset), source=f"preset {preset}")
    point = {p.name: getattr(values, p.name) for p in params if p.name != EVAL_LR}
    if len(point) < len(params) or not all(p.holds(point[p.name]) for p in params):
        return None
    return point


def sampler_for(optuna: Any, config: TuneConfig, k: int) -> Any:
    seed = None if config.seed is None else config.seed + k
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=config.startup_trials)


def counted(trial: Any) -> bool:
    """A finished trial: complete, pruned, or failed with a dd error (not interrupted nor killed)."""
    state = trial.state.name
    return state in ("COMPLETE", "PRUNED") or (state == "FAIL" and "error" in trial.user_attrs)


def search(preset: str | Path, space: list[str], config: TuneConfig, scorer: Scorer | None = None) -> list[dict]:
    """Run (or resume, or join) the search of ``preset``'s keys over ``space`` until the study holds
    ``config.trials`` finished trials; write the table, ``best.yaml`` and, with ``test_runs``, the chosen set's test
    accuracy. ``scorer`` replaces distillation and validation (tests plant an optimum with it). Returns the table."""
    preset = Path(preset)
    if not preset.is_file():
        raise DDError(f"--config {preset} does not exist; pass a preset of experiments/ (e.g. "
                      "experiments/mtt/digits_ipc1.yaml)")
    method = trials.preset_method(preset)
    if method == "krr_st":
        raise DDError("krr_st makes a transfer set, which dd.eval scores on the test split only; it has no "
                      "validation score to tune on")
    params = parse_space(space, trials.config_class(method), method)
    check(config, params)
    out = Path(config.out) if config.out else default_out(preset)
    optuna = require_optuna()
    study = open_study(optuna, out, search_identity(preset, params, config), config, preset_point(preset, params))
    score = scorer or distill_and_validate(preset, config)

    def objective(trial: Any) -> float:
        values = {p.name: p.suggest(trial) for p in params}
        run_dir = out / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        tic = time.perf_counter()

        def report(iteration: int, accuracy: float) -> None:
            trial.report(accuracy, iteration)
            trial.set_user_attr("iterations", iteration)
            if trial.should_prune():
                trial.set_user_attr("seconds", time.perf_counter() - tic)
                raise optuna.TrialPruned(f"validation {100 * accuracy:.2f}% at iteration {iteration}")

        try:
            result = score(values, run_dir, report)
        except DDError as e:
            trial.set_user_attr("error", str(e))
            trial.set_user_attr("seconds", time.perf_counter() - tic)
            raise
        for key, value in {"val_mean": result.mean, "val_std": result.std, "iterations": result.iterations,
                           "seconds": time.perf_counter() - tic}.items():
            trial.set_user_attr(key, value)
        return result.mean

    ran: list[Any] = []  # this process's trials: the study's newest may be another process's
    try:
        while sum(counted(t) for t in study.get_trials(deepcopy=False)) < config.trials:
            study.sampler = sampler_for(optuna, config, len(study.get_trials(deepcopy=False)))
            study.optimize(objective, n_trials=1, catch=(DDError,), callbacks=[lambda _, trial: ran.append(trial)])
            last = ran[-1]
            print(trial_line(row_of(last)), flush=True)
            if last.state.name == "FAIL" and not any(t.state.name == "COMPLETE" for t in study.trials):
                raise DDError(f"trial {last.number} failed and no trial has finished: {last.user_attrs['error']}")
            write_table(out, study)
    except KeyboardInterrupt as e:
        raise Interrupted.of(e, f"the finished trials are in {out / 'study.db'}; rerun the same command to "
                                "continue the search") from None
    rows = write_table(out, study)
    tested = test_once(out, rows, config) if config.test_runs else None
    write_best(out, preset, params, config, rows, tested)
    return rows


def check(config: TuneConfig, params: list[Param]) -> None:
    for name in ("trials", "iterations", "eval_every", "val_epochs"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise DDError(f"--{name.replace('_', '-')} must be positive, got {value}")
    for name in ("val_runs", "test_runs", "startup_trials"):
        if getattr(config, name) < 0:
            raise DDError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(config, name)}")
    if config.val_runs == 0 and any(p.name == EVAL_LR for p in params):
        raise DDError(f"--space {EVAL_LR} needs the final validation evaluation; give --val-runs > 0")


def row_of(trial: Any) -> dict[str, Any]:
    """A trial as a row of the table (plain values: the table is read without Optuna)."""
    attrs = trial.user_attrs
    reported = trial.intermediate_values
    return {"number": trial.number, "state": trial.state.name.lower(), "params": dict(trial.params),
            "val_mean": attrs.get("val_mean"), "val_std": attrs.get("val_std"),
            "last_reported": reported[max(reported)] if reported else None, "iterations": attrs.get("iterations"),
            "pruned": trial.state.name == "PRUNED", "seconds": attrs.get("seconds"), "run_dir": attrs.get("run_dir"),
            "error": attrs.get("error"), "preset": bool(attrs.get("preset"))}


def trial_line(row: dict[str, Any]) -> str:
    values = " ".join(f"{k}={_short(v)}" for k, v in row["params"].items())
    return f"trial {row['number']}{' (preset)' if row['preset'] else ''}: {row['state']} {_val(row)} {values}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _val(row: dict[str, Any]) -> str:
    if row["val_mean"] is None:
        last = row["last_reported"]
        return "–" if last is None else f"(last in-run {100 * last:.2f})"
    std = "" if row["val_std"] is None else f" ± {100 * row['val_std']:.2f}"
    return f"{100 * row['val_mean']:.2f}{std}"


def write_table(out: Path, study: Any) -> list[dict[str, Any]]:
    """``trials.json`` (read by ``dd.report.plots.plot_tuning``) and ``trials.md`` of every trial; the rows."""
    rows = [row_of(t) for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)]
    complete = [r for r in rows if r["state"] == "complete"]
    best = max(complete, key=lambda r: r["val_mean"])["number"] if complete else None
    atomic_write_json(out / TABLE, {"format": 1, "search": study.user_attrs.get("search"), "best": best,
                                    "trials": rows})
    atomic_write_bytes(out / "trials.md", markdown(rows, best).encode())
    return rows


def markdown(rows: list[dict[str, Any]], best: int | None) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r["params"]))
    lines = ["| trial | " + " | ".join(keys) + " | validation (%) | iterations | pruned | seconds |",
             "|---|" + "---|" * len(keys) + "---|---|---|---|"]
    for r in rows:
        name = f"**{r['number']}**" if r["number"] == best else str(r["number"])
        name += " (preset)" if r["preset"] else ""
        state = r["state"] if r["state"] not in ("complete", "pruned") else ""
        cells = [_short(r["params"].get(k, "–")) for k in keys]
        seconds = "–" if r["seconds"] is None else f"{r['seconds']:.0f}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_val(r)} {state}".rstrip() +
                     f" | {r['iterations'] or '–'} | {'yes' if r['pruned'] else 'no'} | {seconds} |")
    return "\n".join(lines) + "\n"


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    complete = [r for r in rows if r["state"] == "complete"]
    return max(complete, key=lambda r: r["val_mean"]) if complete else None


def write_best(out: Path, preset: Path, params: list[Param], config: TuneConfig, rows: list[dict],
               tested: dict[str, Any] | None = None) -> Path | None:
    """``best.yaml``: the preset with the best trial's values, headed by how they were chosen (and the one test
    evaluation of the chosen set, ``tested``, when there was one)."""
    best = best_row(rows)
    if best is None:
        return None
    values = load_yaml(preset)
    method = trials.preset_method(preset)
    split = make_config(trials.config_class(method), values, source=f"preset {preset}")
    keys = {k: v for k, v in best["params"].items() if k != EVAL_LR}
    budget = {k: getattr(config, k) for k in ("iterations", "eval_every") if getattr(config, k) is not None}
    finished = [r for r in rows if r["state"] in ("complete", "pruned", "fail")]
    scored = (f"its synset_best evaluated with {config.val_runs} seeds (dd.eval --split val)" if config.val_runs
              else "its best in-run validation accuracy")
    std = "" if best["val_std"] is None else f" ± {100 * best['val_std']:.2f}"
    header = [f"Source: chosen by python -m dd.tune from {preset} over {' '.join(p.text() for p in params)}:",
              f"{len(finished)} trials ({config.sampler} sampler, {config.pruner} pruner, seed {config.seed}), each "
              f"{split.iterations if config.iterations is None else config.iterations} iterations;",
              f"each trial scored on the validation split only ({split.val_fraction:g} of every class, seed "
              f"{split.val_seed}) by {scored};",
              f"best: trial {best['number']}, validation {100 * best['val_mean']:.2f}{std} %. The search did not read "
              f"the test split. Table: {out / 'trials.md'}."]
    if tested is not None:
        header.append(f"After the choice, its set was evaluated on the test split once: "
                      f"{100 * tested['test_mean']:.2f} ± {100 * tested['test_std']:.2f} % ({tested['runs']} seeds).")
    if EVAL_LR in best["params"]:
        header.append(f"Evaluate its sets with dd.eval --lr {best['params'][EVAL_LR]:.6g} (the searched "
                      "evaluation lr).")
    text = "".join(f"# {line}\n" for line in header)
    text += yaml.safe_dump({**values, **keys, **budget}, sort_keys=False)
    path = out / "best.yaml"
    atomic_write_bytes(path, text.encode())
    return path


def test_once(out: Path, rows: list[dict[str, Any]], config: TuneConfig) -> dict[str, Any]:
    """Evaluate the chosen trial's set on the test split into ``out/test`` (the only read of the test split);
    DDError when an earlier call tested another trial (a second look would choose on test)."""
    best = best_row(rows)
    if best is None:
        raise DDError("no trial finished, so there is no chosen config to test")
    marker = out / "test" / "chosen.json"
    if marker.is_file():
        earlier = read_json(marker, "test record")
        if "test_mean" in earlier and earlier["trial"] == best["number"]:
            return earlier
        if earlier["trial"] != best["number"]:
            raise DDError(f"the test split was read for trial {earlier['trial']} already ({marker}); testing trial "
                          f"{best['number']} too would choose on test. Report that figure, or start a new --out")
    run_dir = Path(best["run_dir"])
    best_set = run_dir / "synset_best" if (run_dir / "synset_best").is_dir() else run_dir / "synset"
    (out / "test").mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, {"trial": best["number"], "set": str(best_set), "runs": config.test_runs})
    mean, std = trials.evaluate_set(best_set, out / "test", config.test_runs, "test", best["params"].get(EVAL_LR),
                                    config.val_epochs)
    result = {"trial": best["number"], "set": str(best_set), "runs": config.test_runs, "test_mean": mean,
              "test_std": std}
    atomic_write_json(marker, result)
    return result


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and seconds of the table. ``saved_seconds`` estimates what pruning saved: for each pruned trial, the
    median seconds of a complete trial less its own."""
    seconds = [r["seconds"] for r in rows if r["seconds"] is not None]
    full = [r["seconds"] for r in rows if r["state"] == "complete" and r["seconds"] is not None]
    median = statistics.median(full) if full else None
    saved = sum(max(median - r["seconds"], 0.0) for r in rows if r["pruned"] and r["seconds"] is not None) \
        if median is not None else 0.0
    return {"trials": len(rows), "pruned": sum(r["pruned"] for r in rows),
            "complete": sum(r["state"] == "complete" for r in rows), "seconds": sum(seconds),
            "median_complete_seconds": median, "saved_seconds": saved}
