"""DM (dd.distill.dm): one iteration against a hand-written reference (per-class mean embeddings under one
siamese DSA draw per class, the loss and the updated images), BatchNorm networks embedding all classes in one
batch, and a run without any buffer whose set dd.eval reads under protocol dm."""

import json

import pytest
import torch

from dd.augment import DSA, DSAParams
from dd.distill.dm import DM, DMConfig, class_mean_embeddings
from dd.eval import EvalConfig, evaluate
from dd.models import create_model
from tests.helpers import run_distill


def test_one_dm_iteration_equals_a_hand_written_reference(tmp_path):
    config = DMConfig(model="ConvNetW32", ipc=2, batch_real=8, lr_img=0.5, device="cpu", run_dir=str(tmp_path))
    run = DM(config)
    g = torch.Generator()
    g.set_state(run.generator.get_state())
    x = run.images.detach().clone().requires_grad_(True)
    seed = int(torch.randint(2**31 - 1, (1,), generator=g))
    model = create_model("ConvNetW32", 1, 10, (8, 8), seed=seed).train()
    dsa = DSA(config.dsa_strategy, DSAParams(align_corners=False))  # the DC code's DiffAugment
    loss = 0.0
    for c in range(10):
        pool = run.pools[c]
        real = run.data.train_images[pool[torch.randperm(len(pool), generator=g)[:8]]]
        state = g.get_state()

        def augment(image, state=state):  # the class's one draw, applied to each image alone
            alone = torch.Generator()
            alone.set_state(state)
            return dsa(image[None], alone)[0]

        dsa(real[:1], g)  # the run's generator moves on by that one draw
        with torch.no_grad():
            target = model.embed(torch.stack([augment(i) for i in real])).mean(0)
        mean = model.embed(torch.stack([augment(i) for i in x[2 * c:2 * c + 2]])).mean(0)
        loss = loss + ((target - mean) ** 2).sum()
    (grad,) = torch.autograd.grad(loss, [x])

    got = run.step()
    assert got.item() == pytest.approx(loss.item() / 10, rel=1e-5)
    torch.testing.assert_close(run.images.detach(), x.detach() - 0.5 * grad, rtol=1e-5, atol=1e-6)
    assert grad.abs().sum() > 0


def test_batchnorm_networks_embed_all_classes_in_one_batch():
    batches = [torch.randn(4, 1, 8, 8), torch.randn(3, 1, 8, 8)]
    bn = create_model("ConvNetBN", 1, 2, (8, 8), seed=0).train()
    together = class_mean_embeddings(bn, batches, together=True)
    features = bn.embed(torch.cat(batches))  # train-mode statistics over both classes
    torch.testing.assert_close(together, torch.stack([features[:4].mean(0), features[4:].mean(0)]))
    apart = class_mean_embeddings(bn, batches, together=False)
    assert not torch.allclose(together, apart)  # per-class statistics would give another value
    instance = create_model("ConvNetW32", 1, 2, (8, 8), seed=0)
    torch.testing.assert_close(class_mean_embeddings(instance, batches, True),
                               class_mean_embeddings(instance, batches, False))


@pytest.mark.e2e
def test_dm_runs_without_a_buffer_and_dd_eval_reads_its_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no buffers/ folder anywhere near
    run = tmp_path / "dm"
    run_distill(method="dm", model="ConvNetW32", eval_models="ConvNetW32", iterations=2, batch_real=8, eval_epochs=2,
                device="cpu", run_dir=str(run))
    assert not (tmp_path / "buffers").exists()
    out = tmp_path / "eval"
    runs = evaluate(EvalConfig(synset=str(run / "synset"), models="ConvNetW32", runs=1, epochs=2, out=str(out),
                               device="cpu")).runs
    assert runs == json.loads((out / "results.json").read_text())["runs"]
    mine = [r for r in runs if r["source"] == "distilled"]
    assert mine and all(r["method"] == "dm" and r["protocol"]["name"] == "dm" for r in mine)
    assert all(r["protocol"]["lr"] == pytest.approx(0.01) and 0 <= r["accuracy"] <= 1 for r in mine)
