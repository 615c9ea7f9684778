"""The run scaffold of every distillation (the trajectory engine, KRR-ST, DC/DSA, DM): one writer per run
folder, resume from the last checkpoint, metrics, periodic saves, in-run evaluation with a best-so-far set,
divergence checks and interrupts that keep the last finished iteration.

A method subclasses ``RunLoop`` and supplies one outer ``step``, what is learned (``learned``), how its set is
written (``save_set``), its outer ``optimizers`` by name and the rest of its resumable state (``state``, read back
by ``load``); the loop writes and restores the checkpoint (``dd.distill.checkpoint``), the optimisers' state
included, on the run's ``device``. ``evaluate`` is optional (a config without ``eval_every`` never evaluates). The
config composes ``dd.settings.RunControl``. Under torchrun every rank runs the loop; only rank 0 prints and holds
the folder and writes the sets and checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from dd import distributed
from dd.cli import Interrupted, flag, resume_command, uninterruptible
from dd.config import to_dict, validate
from dd.device import retain_freed_memory
from dd.distill.checkpoint import (
    EVAL_KEYS,
    config_changes,
    load_checkpoint,
    load_optimizers,
    open_run,
    save_checkpoint,
    save_optimizers,
)
from dd.errors import DDError
from dd.lock import hold
from dd.metrics import MetricsLog

Progress = Callable[[int, int, str], None]  # (networks done, networks in all, what is being trained)
BAR_LOSS_EVERY_S = 1.0  # the bar's loss is the running mean of the log window, fetched at most this often


class _NoLog:
    """The metrics log of ranks other than 0, which write nothing."""

    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


class RunLoop:
    """The loop of one run; ``name`` names the run in errors (and labels the progress bar unless ``label``
    does), ``divergence_fix`` says which flag to lower when the learned tensors stop being finite."""

    name = "distillation"
    label = ""
    divergence_fix = "lower the learning rate"

    def __init__(self, config: Any, run_dir: Path, argv: Sequence[str] | None) -> None:
        """``argv``: the command-line arguments of the run, for the resume command that an interrupt prints."""
        self.config, self.run_dir, self.argv = config, Path(run_dir), argv
        self.optimizers: dict[str, torch.optim.Optimizer] = {}  # the outer optimisers, set by the method
        self.iteration = 0
        self.checkpointed = 0  # iteration of the last checkpoint written or resumed from
        self.evaluated = 0  # iteration of the last finished evaluation
        self.best: dict[str, float] = {}
        self._bar: tqdm | None = None
        self._shown_eval: dict[str, str] = {}  # the last evaluation, in the bar's postfix

    @staticmethod
    def setup(config: Any) -> tuple[Any, torch.device]:
        """Validate ``config`` (``dd.config.validate``, before any data is read) and set up its device (joining the
        process group under torchrun); returns the config recording the device used, and the device."""
        validate(config)
        device = distributed.setup(config.device, config.tf32)
        return dataclasses.replace(config, device=str(device)), device

    # -- what a method supplies -------------------------------------------------------------------
    def step(self) -> torch.Tensor:
        """One outer iteration; returns its loss (0-d, not synced to the host)."""
        raise NotImplementedError

    def learned(self) -> dict[str, torch.Tensor]:
        """The learned tensors by name, checked for finiteness before every save."""
        raise NotImplementedError

    def save_set(self, suffix: str = "") -> None:
        """Write the current set into ``run_dir/synset<suffix>`` (and, for suffix "", its grid)."""
        raise NotImplementedError

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The method's resumable state beside its optimisers: (tensors, JSON-able state)."""
        raise NotImplementedError

    def load(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Restore what ``state`` returned (the loop restores the optimisers and its counters)."""
        raise NotImplementedError

    def start(self) -> None:
        """Called once before the first iteration of a fresh (not resumed) run."""

    def evaluate(self, progress: Progress | None = None) -> dict[str, list[float]]:
        """Validation accuracies of the current set by model name (only called when ``eval_every`` exists);
        ``progress(done, total, key)`` may be called before each network and at the end (key "")."""
        raise NotImplementedError

    def after_evaluate(self, log: MetricsLog) -> None:
        """Called after an evaluation and its checkpoint (e.g. to keep pictures of the set)."""

    def log_fields(self) -> dict[str, float]:
        """Extra values of every metrics line."""
        return {}

    def bar_fields(self) -> dict[str, str]:
        """Extra values of the progress bar's postfix beside the loss."""
        return {}

    def finished(self) -> str:
        """The stage's last lines: what the run wrote and how to evaluate it."""
        synset = self.run_dir / "synset"
        return f"synthetic set: {synset}; evaluate with: python -m dd.eval --synset {synset}"

    def divergence_cause(self, bad: list[str]) -> str:
        """What to change when the tensors named in ``bad`` (or, when empty, the loss) stopped being finite."""
        return self.divergence_fix

    def recorded_config(self) -> dict[str, Any]:
        """What the run folder's config.json holds: the resolved config."""
        return to_dict(self.config)

    def open_run_dir(self) -> MetricsLog:
        """Rank 0 checks the run folder (held by this process) against the config and writes ``recorded_config``;
        every rank then restores the checkpoint rank 0 checked when resuming (else ``start``s). Returns the metrics
        log (rank 0's; the other ranks log nothing)."""
        if distributed.is_main():
            found, changes, log = open_run(self.run_dir, self.config.resume, to_dict(self.config),
                                           to_dict(type(self.config)()), self.final_iteration - self.config.iterations,
                                           self.recorded_config())
        distributed.barrier()
        if not distributed.is_main():
            found, log = load_checkpoint(self.run_dir) if self.config.resume else None, _NoLog()
            changes = {} if found is None else config_changes(found[1]["config"], to_dict(self.config))
        if found is not None:
            self.restore(*found, changes)
        else:
            self.start()
        return log

    def checkpoint(self) -> None:
        """Write the resumable checkpoint (rank 0): the method's ``state``, its optimisers and ``run_state``."""
        if not distributed.is_main():
            return
        tensors, state = self.state()
        opt_tensors, opt_state = save_optimizers(self.optimizers)
        save_checkpoint(self.run_dir, {**tensors, **opt_tensors}, {**self.run_state(), **state, **opt_state})

    def restore(self, tensors: dict[str, torch.Tensor], state: dict[str, Any], changes: dict[str, Any]) -> None:
        """Load a checkpoint and the loop's counters; best accuracies under changed evaluation settings drop."""
        self.load(tensors, state)
        load_optimizers(self.optimizers, tensors, state, self.device)
        self.iteration = self.checkpointed = int(state["iteration"])
        self.evaluated = int(state.get("evaluated", self.iteration))
        self.best = {} if EVAL_KEYS & changes.keys() else dict(state.get("best", {}))
        if distributed.is_main():
            changed = "; ".join(f"{flag(k)} {old} -> {new}" for k, (old, new) in changes.items())
            print(f"resumed {self.run_dir} at iteration {self.iteration}" + (f" with {changed}" if changed else ""))

    @property
    def final_iteration(self) -> int:
        """The iteration the run ends at: ``iterations`` (DC/DSA/DM: one more, as their reference's loop). The
        end-of-run evaluation stays at ``iterations``."""
        return self.config.iterations

    # -- the loop ---------------------------------------------------------------------------------
    def run_state(self) -> dict[str, Any]:
        """The loop's part of a checkpoint's state: counters, best accuracies and the config."""
        return {"iteration": self.iteration, "evaluated": self.evaluated, "best": self.best,
                "config": to_dict(self.config)}

    def save(self) -> None:
        """The set, then the checkpoint (a checkpoint never runs ahead of the set); rank 0 writes."""
        if distributed.is_main():
            self.save_set()
        self.checkpoint()
        self.checkpointed = self.iteration

    def run(self) -> None:
        """Run (or resume) to ``final_iteration`` as the only writer of the run folder. An interrupt (SIGINT, SIGTERM
        under ``dd.cli.run_cli``) first saves the last finished iteration."""
        retain_freed_memory()  # a library caller has no run_cli: each iteration's large blocks are reused
        main = distributed.is_main()
        with hold(self.run_dir, f"run folder {self.run_dir}") if main else contextlib.nullcontext():
            log = self.open_run_dir()
            try:
                self._loop(log)
            except KeyboardInterrupt as e:
                with uninterruptible():  # only run_cli's handler guarantees a whole iteration (not a bare Ctrl-C)
                    if isinstance(e, Interrupted) and self.iteration > self.checkpointed and not self._nonfinite():
                        self.save()
                raise Interrupted.of(e, self._kept()) from None
            finally:
                log.close()

    def _kept(self) -> str:
        """What an interrupted or failed run leaves, and the command that resumes it."""
        saved = (f"the set and checkpoint of iteration {self.checkpointed} are in {self.run_dir}"
                 if self.checkpointed else f"no iteration had finished, nothing to keep in {self.run_dir}")
        return f"{saved}; resume with: {resume_command('dd.distill', self.argv)}"

    def _nonfinite(self) -> list[str]:
        return [name for name, value in self.learned().items() if not bool(torch.isfinite(value).all())]

    def _check_finite(self, loss: float) -> None:
        """Stop before a diverged state is saved: the last checkpoint and set stay the last good ones."""
        bad = self._nonfinite()
        if math.isfinite(loss) and not bad:
            return
        kept = (f"the last good set and checkpoint (iteration {self.checkpointed}) are in {self.run_dir}"
                if self.checkpointed else "no checkpoint yet")
        what = " and ".join(bad) if bad else f"loss ({loss})"
        raise DDError(f"{self.name} diverged at iteration {self.iteration} (non-finite {what}): "
                      f"{self.divergence_cause(bad)}; {kept}; rerun with a lower value and a new --run-dir")

    def _is_eval_point(self, iteration: int) -> bool:
        every = getattr(self.config, "eval_every", None)
        if every is None or iteration > self.config.iterations:  # DC/DSA/DM's extra update is not evaluated
            return False
        return iteration == self.config.iterations or (every > 0 and iteration % every == 0)

    def _label(self) -> str:
        return self.label or self.name

    def _evaluate(self, log: MetricsLog) -> None:
        """Evaluate the saved iteration, log it, save ``synset_best`` when the first model improved, and
        checkpoint the new best. An evaluation that fails leaves the saved set and checkpoint as they are."""
        def progress(done: int, total: int, key: str) -> None:
            if self._bar is not None:
                self._bar.set_description_str(f"{self._label()} evaluating")
                self._bar.set_postfix_str(f"{key} network {done + 1}/{total}" if key else f"{total}/{total} done")

        try:
            results = self.evaluate(progress)
        except Exception as e:  # an evaluation error must not lose the run: name it and how to resume
            first = (str(e).strip().splitlines() or [""])[0]
            raise DDError(f"evaluation at iteration {self.iteration} failed ({type(e).__name__}: {first}); "
                          f"{self._kept()}") from None
        record: dict[str, float] = {}
        improved = False
        for rank, (name, accs) in enumerate(results.items()):
            mean = sum(accs) / len(accs)
            record[f"val/{name}"] = mean
            if mean > self.best.get(name, -1.0):
                self.best[name] = mean
                improved = improved or rank == 0
        log.write({"iteration": self.iteration, **record})
        if distributed.is_main():
            tqdm.write(" ".join(f"{k}={v:.4f}" for k, v in record.items()) + f" (iteration {self.iteration})")
        if improved:
            if distributed.is_main():
                self.save_set("_best")
        first = next(iter(record))
        self._shown_eval = {first: f"{record[first]:.4f}"}
        if self._bar is not None:
            self._bar.set_description_str(self._label())
            self._bar.set_postfix(**self._shown_eval)
        self.evaluated = self.iteration
        self.checkpoint()
        self.after_evaluate(log)  # after the state: a failure here never repeats the evaluation

    def _loop(self, log: MetricsLog) -> None:
        cfg = self.config
        final = self.final_iteration
        bar = self._bar = tqdm(total=final, initial=self.iteration, desc=self._label(), unit="it",
                               disable=not distributed.is_main())
        try:  # a divergence error prints below a closed bar, not inside it
            if self.evaluated < self.iteration and self._is_eval_point(self.iteration):
                self._evaluate(log)  # resumed from a checkpoint whose evaluation had not finished
            loss_sum: torch.Tensor | None = None  # on the loss's device: no host sync per iteration
            count, tic = 0, time.perf_counter()
            shown = tic  # when the bar's loss was last brought up to date
            while self.iteration < final:
                with uninterruptible():  # an interrupt waits for the iteration and its log line: no half state
                    loss = self.step()
                    loss_sum = loss if loss_sum is None else loss_sum + loss
                    self.iteration += 1
                    count += 1
                    bar.update(1)
                    if self.iteration % cfg.log_every == 0 or self.iteration == final:
                        mean = (loss_sum / count).item()  # a host sync every log_every iterations
                        self._check_finite(mean)
                        log.write({"iteration": self.iteration, "loss": mean, **self.log_fields(),
                                   "seconds_per_iteration": (time.perf_counter() - tic) / count})
                        bar.set_postfix(loss=f"{mean:.4f}", **self.bar_fields(), **self._shown_eval)
                        loss_sum = None
                        count, tic = 0, time.perf_counter()
                        shown = tic
                    elif not bar.disable and time.perf_counter() - shown >= BAR_LOSS_EVERY_S:  # at most 1/s between
                        bar.set_postfix(loss=f"{(loss_sum / count).item():.4f}", **self.bar_fields(),
                                        **self._shown_eval)
                        shown = time.perf_counter()
                evaluate_now = self._is_eval_point(self.iteration)
                if evaluate_now or self.iteration % cfg.checkpoint_every == 0 or self.iteration == final:
                    paused = time.perf_counter()
                    self._check_finite(0.0)
                    self.save()  # before the evaluation: a failing or interrupted one loses nothing
                    if evaluate_now:
                        self._evaluate(log)
                    tic += time.perf_counter() - paused  # seconds_per_iteration excludes evaluation and saving
        finally:
            bar.close()
            self._bar = None
