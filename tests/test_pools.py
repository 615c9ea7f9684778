"""dd.eval's named model pools: the DC code's lists, their adaptation to the image size, every pool model
training a step at 8 and 32 px, and ``--models pool:...`` through dd.eval."""


import pytest
import torch

from dd.cli import run_cli
from dd.errors import DDError
from dd.eval import EvalConfig, evaluate
from dd.eval.__main__ import main as eval_main
from dd.eval.pools import POOLS, check_models, expand_models, pool_models
from dd.models import create_model
from tests.helpers import make_set

SIZES = [(1, (8, 8)), (3, (32, 32))]


def test_the_pools_are_the_dc_code_lists():
    assert POOLS["M"] == ("MLP", "ConvNet", "LeNet", "AlexNet", "VGG11", "ResNet18")
    assert POOLS["BN"] == ("ConvNetBN", "ConvNetASwishBN", "AlexNetBN", "VGG11BN", "ResNet18BN")
    assert POOLS["W"] == ("ConvNetW32", "ConvNetW64", "ConvNetW128", "ConvNetW256")
    assert POOLS["D"] == ("ConvNetD1", "ConvNetD2", "ConvNetD3", "ConvNetD4")
    assert POOLS["A"] == ("ConvNetAS", "ConvNetAR", "ConvNetAL")
    assert POOLS["P"] == ("ConvNetNP", "ConvNetMP", "ConvNetAP")
    assert POOLS["N"] == ("ConvNetNN", "ConvNetBN", "ConvNetLN", "ConvNetIN", "ConvNetGN")


@pytest.mark.parametrize("pool, channels, size, expected", [
    # 8 px: VGG11 and ResNet18 would instance-normalise a 1x1 map, so their BN variants run
    ("M", 1, (8, 8), ["MLP", "ConvNet", "LeNet", "AlexNet", "VGG11BN", "ResNet18BN"]),
    ("M", 3, (32, 32), list(POOLS["M"])),
    ("M", 3, (128, 128), list(POOLS["M"])),
    # depth is capped, not swapped: ConvNetD4's last block would see a 1x1 map at 8 px
    ("D", 1, (8, 8), ["ConvNetD1", "ConvNetD2", "ConvNetD3"]),
    ("D", 3, (8, 8), ["ConvNetD1", "ConvNetD2", "ConvNetD3"]),
    ("D", 3, (32, 32), list(POOLS["D"])),
    # at 4 px ConvNet-3 reaches 1x1: M swaps it, N drops its instance norm rather than run BN twice
    ("M", 3, (4, 4), ["MLP", "ConvNetBN", "LeNet", "AlexNet", "VGG11BN", "ResNet18BN"]),
    ("N", 3, (4, 4), ["ConvNetNN", "ConvNetBN", "ConvNetLN", "ConvNetGN"]),
    *[(p, c, s, list(POOLS[p])) for p in ("BN", "W", "A", "P", "N") for c, s in SIZES],
])
def test_pool_expansion_per_image_size(pool, channels, size, expected):
    assert pool_models(pool, channels, size)[0] == expected


def test_each_change_comes_with_a_note():
    models, notes = pool_models("M", 1, (8, 8))
    assert notes == ["pool:M: VGG11 -> VGG11BN at 8x8 (an instance norm would see a 1x1 map)",
                     "pool:M: ResNet18 -> ResNet18BN at 8x8 (an instance norm would see a 1x1 map)"]
    assert pool_models("D", 1, (8, 8))[1] == ["pool:D: ConvNetD4 left out at 8x8 (the image is too small for it)"]
    assert pool_models("W", 3, (32, 32))[1] == []


def test_names_and_pools_mix_each_model_once_in_order():
    models, notes = expand_models("ResNet18BN,pool:M,ConvNetD4BN,pool:D", 1, (8, 8))
    assert models == ["ResNet18BN", "MLP", "ConvNet", "LeNet", "AlexNet", "VGG11BN", "ConvNetD4BN", "ConvNetD1",
                      "ConvNetD2", "ConvNetD3"]
    assert len(notes) == 3
    assert expand_models("VGG11", 1, (8, 8)) == (["VGG11"], [])  # a name is taken as given


def test_unknown_pools_and_models_are_one_line_errors():
    with pytest.raises(DDError, match=r"unknown model pool 'pool:X'; choose from pool:M, pool:BN, pool:W"):
        check_models("ConvNet,pool:X")
    with pytest.raises(DDError, match="unknown model 'ConvNet9'.*or pass a pool"):
        check_models("ConvNet9")
    check_models("ConvNet,pool:BN")


@pytest.mark.parametrize("channels, size", SIZES)
def test_every_pool_model_trains_a_step(channels, size):
    names = list(dict.fromkeys(m for p in POOLS for m in pool_models(p, channels, size)[0]))
    x = torch.randn(4, channels, *size, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3])
    for name in names:
        model = create_model(name, channels, 4, size, seed=0)
        start = [p.detach().clone() for p in model.parameters()]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss), name
        assert any(not torch.equal(a, p) for a, p in zip(start, model.parameters(), strict=True)), name


@pytest.mark.e2e
def test_eval_runs_a_pool_and_says_what_it_capped(tmp_path, capsys):
    synset = make_set(tmp_path / "set", soft=False)
    runs = evaluate(EvalConfig(synset=str(synset), models="pool:D", runs=1, epochs=1, out=str(tmp_path / "ev"),
                               device="cpu")).runs
    assert "eval: pool:D: ConvNetD4 left out at 8x8" in capsys.readouterr().out
    assert [r["model"] for r in runs] == ["ConvNetD1", "ConvNetD2", "ConvNetD3"]


@pytest.mark.e2e
def test_eval_refuses_an_unknown_pool_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(eval_main, ["--models", "pool:Q", "--baseline", "random", "--ipc", "1", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: unknown model pool 'pool:Q'")
