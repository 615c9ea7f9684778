"""The one method registry (dd.distill.registry): every method registers there with its config and run class, every
list of methods is the registry's, a method's knob is refused by another method, and a method defined in a user's
own file runs through dd.distill (``--plugin``) and its set through dd.eval without the plugin."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dd.__main__ import overview
from dd.cli import run_cli
from dd.config import validate
from dd.distill import distill, registry
from dd.distill.__main__ import main as distill_main
from dd.distill.checkpoint import load_optimizers, save_optimizers
from dd.distill.condense import Condenser
from dd.distill.engine import Distiller
from dd.distill.krr_st import KRRDistiller
from dd.distill.methods import METHODS, Method
from dd.distill.registry import PLUGINS_ENV, get_method, load_plugins, method_names
from dd.distill.runloop import RunLoop
from dd.distill.synset import load_synset
from dd.errors import DDError

ROOT = Path(__file__).parents[1]
BUILT_IN = {"mtt", "ftd", "datm", "ast", "tesla", "dc", "dsa", "dm", "krr_st"}


def error_line(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        run_cli(distill_main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_every_method_registers_once_with_its_config_and_a_run_class_over_the_run_loop():
    assert BUILT_IN <= set(METHODS)
    for name in BUILT_IN:
        spec = get_method(name)
        assert issubclass(spec.run, RunLoop) and spec.config().method == name, name
        validate(spec.config())  # each config's defaults pass the one validation path
    trajectory = {name for name in BUILT_IN if get_method(name).hooks is not None}
    assert trajectory == {"mtt", "ftd", "datm", "ast", "tesla"}
    assert all(get_method(n).run is Distiller and issubclass(get_method(n).hooks, Method) for n in trajectory)
    assert {get_method(n).run for n in ("dc", "dsa", "dm")} <= {c for c in _subclasses(Condenser)}
    assert get_method("krr_st").run is KRRDistiller


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_knobs_live_on_their_methods_config_only():
    """A knob read by one method is a field of its config and of no other built-in's."""
    owners = {"ema_decay": {"ftd"}, "soft_labels": {"datm"}, "lr_y": {"datm"}, "threshold": {"datm"},
              "current_max_start_epoch": {"datm"}, "expansion_end": {"datm"}, "label_temperature": {"tesla"},
              "inner_momentum": {"ast"}, "balance_loss": {"ast"}, "middle_loss": {"ast"}, "weight_perturb": {"ast"},
              "outer_loop": {"dc", "dsa"}, "ridge": {"krr_st"}}
    for knob, methods in owners.items():
        having = {n for n in BUILT_IN if knob in get_method(n).config.__dataclass_fields__}
        assert having == methods, knob


def test_another_methods_flag_and_an_unknown_method_are_one_error_line(capsys):
    assert "unrecognized arguments: --ema-decay 0.9" in error_line(capsys, ["--method", "mtt", "--ema-decay", "0.9"])
    line = error_line(capsys, ["--method", "nosuch"])
    assert f"choose from {', '.join(method_names())}" in line and "--plugin" in line


def test_a_config_of_another_method_is_refused():
    from dd.distill.config import MTTConfig

    with pytest.raises(DDError, match="--method ftd takes a FTDConfig, not a MTTConfig"):
        validate(MTTConfig(method="ftd"))


def test_every_list_of_methods_is_the_registrys():
    names = method_names()
    assert f"--method {', '.join(names)};" in overview()
    readme = (ROOT / "README.md").read_text()
    listed = re.search(r"^Methods: (.*?) \(the registry", readme, re.M | re.S).group(1)
    assert re.findall(r"`(\w+)`", listed) == names


def test_one_optimiser_checkpoint_reads_the_old_layouts():
    """The new layout round-trips; a checkpoint of the engine's momentum tensors (``opt.<name>.<group>.<param>``)
    and one of a single packed state dict (``"optimizer"``, DC/DSA/DM, KRR-ST) still load."""
    def stepped():
        x = torch.ones(3, requires_grad=True)
        opt = torch.optim.SGD([x], lr=0.1, momentum=0.5)
        x.grad = torch.tensor([1.0, 2.0, 3.0])
        opt.step()
        return x, opt

    x, opt = stepped()
    tensors, state = save_optimizers({"img": opt})
    y = torch.ones(3, requires_grad=True)
    fresh = torch.optim.SGD([y], lr=0.1, momentum=0.5)
    load_optimizers({"img": fresh}, tensors, json.loads(json.dumps(state)), torch.device("cpu"))
    assert torch.equal(fresh.state[y]["momentum_buffer"], torch.tensor([1.0, 2.0, 3.0]))

    legacy = torch.optim.SGD([y := torch.ones(3, requires_grad=True)], lr=0.1, momentum=0.5)
    load_optimizers({"img": legacy}, {"opt.img.0.0": torch.tensor([4.0, 5.0, 6.0])}, {}, torch.device("cpu"))
    assert torch.equal(legacy.state[y]["momentum_buffer"], torch.tensor([4.0, 5.0, 6.0]))

    from dd.io import pack_state
    packed, skeleton = pack_state(opt.state_dict(), "optimizer")
    single = torch.optim.SGD([y := torch.ones(3, requires_grad=True)], lr=0.1, momentum=0.5)
    load_optimizers({"img": single}, packed, {"optimizer": json.loads(json.dumps(skeleton))}, torch.device("cpu"))
    assert torch.equal(single.state[y]["momentum_buffer"], torch.tensor([1.0, 2.0, 3.0]))


def test_a_checkpoint_holding_other_methods_knobs_resumes():
    """Checkpoints written when one config held every trajectory method's knobs resume under the method's own
    config: a knob the method does not read is left out, a changed knob it reads is still refused."""
    from dd.config import to_dict
    from dd.distill.checkpoint import check_resume
    from dd.distill.config import FTDConfig, MTTConfig

    old = {**to_dict(MTTConfig()), "ema_decay": 0.999, "soft_labels": False, "label_temperature": 1.0}
    assert check_resume(Path("run"), old, {**to_dict(MTTConfig()), "iterations": 10}) == {"iterations": (5000, 10)}
    with pytest.raises(DDError, match="--ema-decay 0.999 \\(checkpoint\\) vs 0.9 \\(now\\)"):
        check_resume(Path("run"), {**old, "method": "ftd"}, to_dict(FTDConfig(ema_decay=0.9)))


PLUGIN = '''
"""Mean matching: per class, the synthetic images' mean pixel values match a real batch's (a toy method)."""
from dataclasses import dataclass

from dd.config import opt
from dd.distill.condense import CondenseConfig, Condenser
from dd.distill.registry import register_method


@dataclass
class MeanConfig(CondenseConfig):
    power: float = opt(2.0, "exponent of the per-pixel distance", bounds="positive")


@register_method("mean_match", config=MeanConfig)
class MeanMatch(Condenser):
    """Match class means of raw pixels; scored under DM's protocol."""

    protocol_name = "dm"

    def step(self):
        loss = self.images.new_zeros(())
        for c in range(len(self.pools)):
            real = self.real_batch(c, self.config.batch_real).mean(0)
            loss = loss + (real - self.synthetic(c).mean(0)).abs().pow(self.config.power).sum()
        self.outer_step(loss)
        return loss.detach()
'''


@pytest.fixture
def own_registry(monkeypatch):
    """The plugins a test registers leave the process's registry as it was."""
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))


@pytest.mark.e2e
def test_a_method_in_a_users_file_distils_and_its_set_evaluates_without_the_plugin(tmp_path, own_registry):
    plugin = tmp_path / "my_method.py"
    plugin.write_text(PLUGIN)
    run = tmp_path / "run"
    argv = ["--plugin", str(plugin), "--method", "mean_match", "--iterations", "2", "--eval-every", "0",
            "--eval-epochs", "1", "--batch-real", "8", "--power", "1.5", "--device", "cpu", "--run-dir", str(run)]
    assert distill_main(argv) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == "mean_match" and config["power"] == 1.5
    meta = load_synset(run / "synset").meta
    assert meta["protocol"] == "dm" and meta["iteration"] == 3  # iterations + 1 updates
    assert "mean_match" in method_names()
    env = {**os.environ, "PYTHONPATH": str(ROOT), PLUGINS_ENV: ""}
    result = subprocess.run([sys.executable, "-m", "dd.eval", "--synset", str(run / "synset"), "--runs", "1",
                             "--epochs", "1", "--out", str(tmp_path / "eval")], capture_output=True, text=True,
                            env=env, cwd=tmp_path)  # a fresh process that never imported the plugin
    assert result.returncode == 0, result.stderr
    records = json.loads((tmp_path / "eval" / "results.json").read_text())["runs"]
    assert [(r["method"], r["protocol"]["name"]) for r in records] == [("mean_match", "dm")]


@pytest.mark.e2e
def test_the_library_distils_a_config_and_its_method_comes_from_the_registry(tmp_path):
    config = get_method("dm").config(iterations=1, eval_every=0, eval_epochs=1, batch_real=8, device="cpu",
                                     run_dir=str(tmp_path / "run"))
    assert config.method == "dm"  # DMConfig's method, from the registration
    run = distill(config)
    assert run.run_dir == tmp_path / "run" and load_synset(run.run_dir / "synset").meta["protocol"] == "dm"
    assert json.loads((run.run_dir / "config.json").read_text())["method"] == "dm"


def test_plugins_from_the_environment_register_before_a_lookup(tmp_path, monkeypatch, own_registry):
    plugin = tmp_path / "env_method.py"
    plugin.write_text(PLUGIN.replace('"mean_match"', '"env_mean"'))
    monkeypatch.setenv(PLUGINS_ENV, str(plugin))
    load_plugins()
    assert get_method("env_mean").config().power == 2.0
    monkeypatch.setenv(PLUGINS_ENV, str(tmp_path / "missing.py"))
    with pytest.raises(DDError, match="no such file"):
        load_plugins()
