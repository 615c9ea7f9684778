"""The run scaffold of a distillation method with its own loop (KRR-ST, DC/DSA, DM): one writer per run
folder, resume from the last checkpoint, metrics, periodic saves, in-run evaluation with a best-so-far set,
divergence checks and interrupts that keep the last finished iteration.

A method subclasses ``RunLoop`` and supplies one outer ``step``, what is learned (``learned``), how its set
and checkpoint are written (``save_set``, ``checkpoint``) and read back (``load``); ``evaluate`` is optional
(a config without ``eval_every`` never evaluates). The config must have ``iterations``, ``log_every``,
``checkpoint_every``, ``resume`` and ``wandb``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from dd.cli import Interrupted, resume_command, uninterruptible
from dd.config import to_dict
from dd.distill.checkpoint import EVAL_KEYS, open_run
from dd.errors import DDError
from dd.lock import hold
from dd.metrics import MetricsLog


class RunLoop:
    """The loop of one run; ``name`` labels the progress bar and the errors, ``divergence_fix`` says which
    flag to lower when the learned tensors stop being finite."""

    name = "distillation"
    divergence_fix = "lower the learning rate"

    def __init__(self, config: Any, run_dir: Path, argv: Sequence[str] | None) -> None:
        """``argv``: the command-line arguments of the run, for the resume command that an interrupt prints."""
        self.config, self.run_dir, self.argv = config, Path(run_dir), argv
        self.iteration = 0
        self.checkpointed = 0  # iteration of the last checkpoint written or resumed from
        self.evaluated = 0  # iteration of the last finished evaluation
        self.best: dict[str, float] = {}

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

    def checkpoint(self) -> None:
        """Write the resumable checkpoint; its state must include ``run_state()``."""
        raise NotImplementedError

    def load(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Restore the method's tensors from a checkpoint (the loop's counters are restored by the caller)."""
        raise NotImplementedError

    def start(self) -> None:
        """Called once before the first iteration of a fresh (not resumed) run."""

    def evaluate(self) -> dict[str, list[float]]:
        """Validation accuracies of the current set by model name (only called when ``eval_every`` exists)."""
        raise NotImplementedError

    def log_fields(self) -> dict[str, float]:
        """Extra values of every metrics line."""
        return {}

    # -- the loop ---------------------------------------------------------------------------------
    def run_state(self) -> dict[str, Any]:
        """The loop's part of a checkpoint's state: counters, best accuracies and the config."""
        return {"iteration": self.iteration, "evaluated": self.evaluated, "best": self.best,
                "config": to_dict(self.config)}

    def save(self) -> None:
        """The set, then the checkpoint (a checkpoint never runs ahead of the set)."""
        self.save_set()
        self.checkpoint()
        self.checkpointed = self.iteration

    def run(self) -> None:
        """Run (or resume) to ``iterations`` as the only writer of the run folder. An interrupt (SIGINT, SIGTERM
        under ``dd.cli.run_cli``) first saves the last finished iteration."""
        with hold(self.run_dir, f"run folder {self.run_dir}"):
            found, changes, log = open_run(self.run_dir, self.config.resume, to_dict(self.config),
                                           to_dict(type(self.config)()))
            if found is not None:
                tensors, state = found
                self.load(tensors, state)
                self.iteration = self.checkpointed = int(state["iteration"])
                self.evaluated = int(state.get("evaluated", self.iteration))
                self.best = {} if EVAL_KEYS & changes.keys() else dict(state.get("best", {}))
                print(f"resumed {self.run_dir} at iteration {self.iteration}")
            else:
                self.start()
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
                      f"{self.divergence_fix}; {kept}; rerun with a lower value and a new --run-dir")

    def _is_eval_point(self, iteration: int) -> bool:
        every = getattr(self.config, "eval_every", None)
        if every is None:
            return False
        return iteration == self.config.iterations or (every > 0 and iteration % every == 0)

    def _evaluate(self, log: MetricsLog) -> None:
        """Evaluate the saved iteration, log it, save ``synset_best`` when the first model improved, and
        checkpoint the new best. An evaluation that fails leaves the saved set and checkpoint as they are."""
        try:
            results = self.evaluate()
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
        tqdm.write(" ".join(f"{k}={v:.4f}" for k, v in record.items()) + f" (iteration {self.iteration})")
        if improved:
            self.save_set("_best")
        self.evaluated = self.iteration
        self.checkpoint()

    def _loop(self, log: MetricsLog) -> None:
        cfg = self.config
        if self.evaluated < self.iteration and self._is_eval_point(self.iteration):
            self._evaluate(log)  # resumed from a checkpoint whose evaluation had not finished
        bar = tqdm(total=cfg.iterations, initial=self.iteration, desc=self.name, unit="it")
        try:  # a divergence error prints below a closed bar, not inside it
            loss_sum: torch.Tensor | None = None  # on the loss's device: no host sync per iteration
            count, tic = 0, time.perf_counter()
            while self.iteration < cfg.iterations:
                with uninterruptible():  # an interrupt waits for the iteration and its log line: no half state
                    loss = self.step()
                    loss_sum = loss if loss_sum is None else loss_sum + loss
                    self.iteration += 1
                    count += 1
                    bar.update(1)
                    if self.iteration % cfg.log_every == 0 or self.iteration == cfg.iterations:
                        mean = (loss_sum / count).item()  # the only host sync of the loop, every log_every iterations
                        self._check_finite(mean)
                        log.write({"iteration": self.iteration, "loss": mean, **self.log_fields(),
                                   "seconds_per_iteration": (time.perf_counter() - tic) / count})
                        bar.set_postfix(loss=f"{mean:.4f}")
                        loss_sum = None
                        count, tic = 0, time.perf_counter()
                evaluate_now = self._is_eval_point(self.iteration)
                if evaluate_now or self.iteration % cfg.checkpoint_every == 0 or self.iteration == cfg.iterations:
                    paused = time.perf_counter()
                    self._check_finite(0.0)
                    self.save()  # before the evaluation: a failing or interrupted one loses nothing
                    if evaluate_now:
                        self._evaluate(log)
                    tic += time.perf_counter() - paused  # seconds_per_iteration excludes evaluation and saving
        finally:
            bar.close()
