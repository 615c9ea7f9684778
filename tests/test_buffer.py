"""Expert training into the trajectory store: contents, resume equality, error paths."""

import dataclasses
import json

import pytest
import torch

from dd.buffer import BufferConfig, ImportConfig, import_buffers, train_store
from dd.buffer.__main__ import main as buffer_main
from dd.buffer.store import TrajectoryStore
from dd.errors import DDError
from tests.helpers import TINY_BUFFER


def only_store(root):
    (manifest,) = root.glob("digits/ConvNet/*/manifest.json")
    return TrajectoryStore.open(manifest.parent)


@pytest.mark.e2e
def test_buffer_contents(digits_buffer):
    store = only_store(digits_buffer)
    assert store.completed() == [0, 1]
    trajectory = store.read_expert(0)
    assert trajectory.shape == (5, store.param_spec.numel)
    steps = (trajectory[1:] - trajectory[:-1]).norm(dim=1)
    assert (steps > 0).all(), "every epoch must be a distinct snapshot (copies, not aliases)"
    assert not torch.equal(store.read_expert(0)[0], store.read_expert(1)[0]), "experts start from different inits"
    record = store.records()[0]
    assert record["test_acc"][0] is None and record["test_acc"][2] is not None
    assert 0.2 < record["final_test_acc"] <= 1.0
    assert json.loads((store.root / "manifest.json").read_text())["recipe"]["batch_size"] == 64


@pytest.mark.e2e
def test_resumed_run_equals_uninterrupted(tmp_path, digits_buffer):
    root = tmp_path / "b"
    config = BufferConfig(**TINY_BUFFER, buffer_dir=str(root))
    train_store(BufferConfig(**{**TINY_BUFFER, "num_experts": 1}, buffer_dir=str(root)))  # "interrupted" after one
    assert only_store(root).completed() == [0]
    assert train_store(config) == only_store(root).root
    resumed, reference = only_store(root), only_store(digits_buffer)
    for i in (0, 1):
        assert torch.equal(resumed.read_expert(i), reference.read_expert(i))


@pytest.mark.e2e
def test_bad_buffer_flags(tmp_path):
    with pytest.raises(DDError, match="unknown dataset 'nope'"):
        train_store(BufferConfig(dataset="nope", buffer_dir=str(tmp_path)))
    with pytest.raises(DDError, match="unknown model 'Nope'"):
        train_store(BufferConfig(model="Nope", buffer_dir=str(tmp_path)))
    with pytest.raises(DDError, match="--epochs must be positive"):
        train_store(BufferConfig(epochs=0, buffer_dir=str(tmp_path)))


@pytest.mark.e2e
def test_import_command_converts_an_original_buffer(tmp_path):
    from dd.models import create_model

    experts = []
    for seed in range(3):
        model = create_model("ConvNetD1", 1, 10, (8, 8), seed=seed)
        experts.append([[p.detach().clone() + epoch for p in model.parameters()] for epoch in range(3)])
    torch.save(experts, tmp_path / "replay_buffer_0.pt")
    paths = [tmp_path / "replay_buffer_0.pt"]
    config = ImportConfig(dataset="digits", model="ConvNetD1", epochs=2, buffer_dir=str(tmp_path / "b"))
    root, indices = import_buffers(config, paths)
    (manifest,) = (tmp_path / "b").glob("digits/ConvNetD1/*/manifest.json")
    assert root == manifest.parent and indices == [0, 1, 2]
    store = TrajectoryStore.open(root)
    assert store.completed() == [0, 1, 2]
    for i, expert in enumerate(experts):
        expected = torch.stack([torch.cat([p.reshape(-1) for p in snapshot]) for snapshot in expert])
        assert torch.equal(store.read_expert(i), expected)
    assert store.header["recipe"]["origin"] == "imported replay_buffer"
    with pytest.raises(DDError, match="made for a different model"):
        import_buffers(dataclasses.replace(config, model="ConvNet"), paths)


@pytest.mark.e2e
def test_import_records_a_gsam_or_ast_recipe_from_a_preset(tmp_path):
    """--recipe-config takes the original run's recipe from a dd.buffer preset, so imported FTD/DATM (GSAM)
    and AST experts get their recipe in the manifest and their own store folder."""
    from dd.models import create_model

    model = create_model("ConvNet", 1, 10, (8, 8), seed=0)
    torch.save([[[p.detach().clone() for p in model.parameters()] for _ in range(16)]], tmp_path / "replay_buffer_0.pt")
    roots = {}
    paths = [tmp_path / "replay_buffer_0.pt"]
    for preset in ("digits_gsam", "digits_ast"):
        config = ImportConfig(dataset="digits", model="ConvNet", recipe_config=f"experiments/buffer/{preset}.yaml",
                              buffer_dir=str(tmp_path / "b"))
        roots[preset], _ = import_buffers(config, paths)
    gsam = TrajectoryStore.open(roots["digits_gsam"]).header["recipe"]
    ast = TrajectoryStore.open(roots["digits_ast"]).header["recipe"]
    assert (gsam["optimizer"], gsam["rho"], gsam["alpha"], gsam["adaptive"]) == ("gsam", 0.01, 0.3, True)
    assert (ast["optimizer"], ast["gp_lambda"], ast["loss_warmup"], ast["lr_decay_factor"]) == ("sgd", 2.0, True, 0.6)
    assert gsam["origin"] == ast["origin"] == "imported replay_buffer" and "gsam" in roots["digits_gsam"].name
    with pytest.raises(DDError, match="is for ConvNet on digits, not ConvNetD1"):
        import_buffers(dataclasses.replace(config, model="ConvNetD1"), paths)


TINY_MLP = ["--model", "MLP", "--num-experts", "3", "--epochs", "1", "--device", "cpu"]


@pytest.mark.e2e
def test_an_interrupt_names_the_stored_experts_and_the_command_on_a_line_of_its_own(tmp_path, monkeypatch, capsys):
    import dd.buffer.train as stage
    from dd.cli import Interrupted, run_cli

    real, calls = stage.train_expert, []

    def interrupted_at_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Interrupted()
        return real(*args, **kwargs)

    monkeypatch.setattr(stage, "train_expert", interrupted_at_the_second)
    argv = [*TINY_MLP, "--buffer-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(buffer_main, argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 130
    last = err.rstrip("\n").split("\n")[-1]  # the bar was closed first: the line is not glued to its end
    assert last.startswith("interrupted (SIGINT): 1/3 experts are stored in ") and (
        last.endswith("rerun the same command to train the rest: python -m dd.buffer " + " ".join(argv)))


@pytest.mark.e2e
def test_an_interrupt_while_loading_says_nothing_was_trained_and_the_command(tmp_path, monkeypatch, capsys):
    import dd.buffer.train as stage
    from dd.cli import Interrupted, run_cli

    def loading(*args, **kwargs):
        raise Interrupted()

    monkeypatch.setattr(stage, "prepare_data", loading)
    with pytest.raises(SystemExit):
        run_cli(buffer_main, [*TINY_MLP, "--buffer-dir", str(tmp_path)])
    assert capsys.readouterr().err.strip().endswith(
        "no expert was trained before the interrupt; rerun the same command to train them: python -m dd.buffer "
        + " ".join([*TINY_MLP, "--buffer-dir", str(tmp_path)]))


def test_by_default_an_expert_is_tested_every_10_epochs_and_after_the_last_and_says_which(monkeypatch):
    from dd.buffer import experts
    from dd.data import load_dataset

    tested = []
    monkeypatch.setattr(experts, "accuracy", lambda model, images, labels: tested.append(1) or 0.5)
    raw = load_dataset("digits")
    recipe = experts.ExpertRecipe(epochs=12, batch_size=64, dsa_strategy="none")
    _, record = experts.train_expert("MLP", 1, 10, (8, 8), (raw.train_images[:64], raw.train_labels[:64]),
                                     (raw.test_images, raw.test_labels), recipe, 0, BufferConfig().test_every)
    assert len(tested) == 2 and record["tested_epochs"] == [10, 12]
    assert [epoch for epoch, acc in enumerate(record["test_acc"]) if acc is not None] == [10, 12]
