"""The run scaffold's console (dd.distill.runloop): what a resume says and what the progress bar shows, on a toy
method whose losses are known."""

from __future__ import annotations

from dataclasses import dataclass

import torch

import dd.distill.runloop as runloop


@dataclass
class ToyConfig:
    iterations: int = 4
    log_every: int = 100
    checkpoint_every: int = 2
    eval_every: int = 0
    resume: bool = False
    wandb: str = "off"


class Toy(runloop.RunLoop):
    """Step k (1-based) returns the loss 2k - 1; nothing is learned."""

    name = "toy"

    def __init__(self, config: ToyConfig, run_dir) -> None:
        super().__init__(config, run_dir, [])
        self.device = torch.device("cpu")
        self.x = torch.zeros(1)

    def step(self) -> torch.Tensor:
        return torch.tensor(2.0 * self.iteration + 1)

    def learned(self) -> dict[str, torch.Tensor]:
        return {"x": self.x}

    def save_set(self, suffix: str = "") -> None:
        pass

    def state(self):
        return {"x": self.x}, {}

    def load(self, tensors, state) -> None:
        self.x = tensors["x"]

    def evaluate(self, progress=None) -> dict[str, list[float]]:
        return {"ConvNet": [0.5]}


def test_the_bar_shows_the_running_mean_of_the_log_window_not_the_last_log_line(tmp_path, monkeypatch):
    shown: list[str] = []
    real = runloop.tqdm.set_postfix
    monkeypatch.setattr(runloop.tqdm, "set_postfix", lambda bar, **kw: shown.append(kw.get("loss")) or real(bar, **kw))
    monkeypatch.setattr(runloop, "BAR_LOSS_EVERY_S", 0.0)  # every iteration, here
    Toy(ToyConfig(), tmp_path / "run").run()  # losses 1, 3, 5, 7; one log line, at the end
    assert [s for s in shown if s is not None] == ["1.0000", "2.0000", "3.0000", "4.0000"]


def test_a_resume_shows_the_changed_settings_on_the_console(tmp_path, capsys):
    Toy(ToyConfig(iterations=2), tmp_path / "run").run()
    capsys.readouterr()
    Toy(ToyConfig(iterations=4, log_every=1, resume=True), tmp_path / "run").run()
    out = capsys.readouterr().out
    assert f"resumed {tmp_path / 'run'} at iteration 2 with --iterations 2 -> 4; --log-every 100 -> 1" in out
    Toy(ToyConfig(iterations=4, log_every=1, resume=True), tmp_path / "run").run()
    assert f"resumed {tmp_path / 'run'} at iteration 4\n" in capsys.readouterr().out  # nothing changed: nothing said
