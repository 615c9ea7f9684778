"""MTT distillation end to end on digits: outputs, resume equality, and the error paths."""

import json

import pytest
import torch

import dd
from dd.config import build_parser, parse_config
from dd.distill.__main__ import main as distill_main
from dd.distill.config import MTTConfig
from dd.distill.engine import Distiller
from dd.errors import DDError
from tests.helpers import TINY_BUFFER, flags, run_distill, tiny_mtt

pytestmark = pytest.mark.e2e  # every test here runs a stage end to end


def test_mtt_run_writes_its_artefacts(tmp_path, digits_buffer):
    run = tmp_path / "run"
    run_distill(**tiny_mtt(digits_buffer, run))
    synset = dd.load_synset(run / "synset")
    assert synset.images.shape == (10, 1, 8, 8)
    assert synset.labels.tolist() == list(range(10))
    assert synset.meta["method"] == "mtt" and synset.meta["iteration"] == 4
    assert synset.lr != 0.01, "the learnable lr must move"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics if "loss" in m] == [1, 2, 3, 4]
    assert all(m["loss"] > 0 for m in metrics if "loss" in m)
    assert any("val/ConvNet" in m for m in metrics)
    assert (run / "grid.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(DDError, match="already holds a run"):
        distill_main(flags(digits_buffer, run))


def test_resumed_distillation_equals_uninterrupted(tmp_path, digits_buffer):
    full, split = tmp_path / "full", tmp_path / "split"
    run_distill(**tiny_mtt(digits_buffer, full))
    run_distill(**tiny_mtt(digits_buffer, split, iterations=2))
    run_distill(**tiny_mtt(digits_buffer, split, resume=True))
    a, b = dd.load_synset(full / "synset"), dd.load_synset(split / "synset")
    assert torch.equal(a.images, b.images) and a.lr == b.lr


@pytest.mark.parametrize("extra, message", [
    (["--max-start-epoch", "4"], "needs 6"),
    (["--method", "nope"], "unknown method 'nope'"),
    (["--model", "ConvNetD2"], "no expert buffer"),
    (["--ipc", "1000"], "larger than class"),
    (["--syn-steps", "0"], "--syn-steps must be positive"),
])
def test_bad_distill_inputs(tmp_path, digits_buffer, extra, message):
    with pytest.raises(DDError, match=message):
        distill_main([*flags(digits_buffer, tmp_path / "r"), *extra])


def test_buffer_of_another_model_is_refused(tmp_path, digits_buffer):
    (store,) = digits_buffer.glob("digits/ConvNet/*")
    with pytest.raises(DDError, match="holds ConvNet experts on digits"):
        distill_main([*flags(digits_buffer, tmp_path / "r"), "--buffer", str(store), "--model", "ConvNetD2"])


def test_buffer_preset_picks_its_store(tmp_path, digits_buffer):
    import shutil

    from dd.buffer import BufferConfig, train_store

    root = tmp_path / "buffers"
    shutil.copytree(digits_buffer, root)
    train_store(BufferConfig(**{**TINY_BUFFER, "num_experts": 1, "lr": 0.02}, buffer_dir=str(root)))
    with pytest.raises(DDError, match="several expert buffers"):
        distill_main(flags(root, tmp_path / "r"))
    preset = tmp_path / "b.yaml"
    preset.write_text("num_experts: 1\nepochs: 4\nlr: 0.02\nbatch_size: 64\n")
    run_distill(**tiny_mtt(root, tmp_path / "r", buffer_config=str(preset), iterations=1))
    assert "lr0.02" in dd.load_synset(tmp_path / "r" / "synset").meta["buffer"]


def test_a_set_names_the_expert_bits_it_matched(tmp_path, digits_buffer):
    """Experts retrained from the same recipe and seeds may differ in their bits, and so do the sets distilled
    from them: the set records a checksum over its experts' file checksums, which changes with any of them."""
    import json
    import shutil

    from dd.buffer.store import TrajectoryStore

    root = tmp_path / "buffers"
    shutil.copytree(digits_buffer, root)
    (store_dir,) = root.glob("digits/ConvNet/*")
    store = TrajectoryStore.open(store_dir)
    run_distill(**tiny_mtt(root, tmp_path / "a", iterations=1))
    recorded = dd.load_synset(tmp_path / "a" / "synset").meta["experts_sha256"]
    assert recorded == store.fingerprint(store.completed())
    record = store.record_path(store.completed()[0])
    record.write_text(json.dumps({**json.loads(record.read_text()), "sha256": "0" * 64}))
    assert store.fingerprint(store.completed()) != recorded


@pytest.mark.parametrize("limit", [0.1, 0.0])
def test_lr_step_limit_keeps_the_learned_lr_positive(tmp_path, digits_buffer, limit):
    """A loss that rewards a smaller lr drives the learned lr from 0.01 below zero in one step: the default guard
    moves it by 10 % at most (to 0.009), and --lr-step-limit 0 (the reference behaviour) lets it go negative."""
    argv = [*flags(digits_buffer, tmp_path / "r"), "--lr-lr", "1", "--lr-teacher", "0.01",
            "--lr-step-limit", str(limit)]
    config, _ = parse_config(MTTConfig, argv, build_parser(MTTConfig, "test", ""))
    distiller = Distiller(config, argv)
    match_loss = distiller.method.match_loss
    distiller.method.match_loss = lambda *a: match_loss(*a) + 10.0 * distiller.syn_lr
    distiller.step()
    lr = distiller.syn_lr.item()
    if limit:
        assert lr == pytest.approx(0.009)
    else:
        assert lr < 0


def test_lr_step_limit_must_be_a_fraction(tmp_path, digits_buffer):
    with pytest.raises(DDError, match="--lr-step-limit must be below 1"):
        distill_main([*flags(digits_buffer, tmp_path / "r"), "--lr-step-limit", "1"])
