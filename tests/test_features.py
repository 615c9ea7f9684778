"""Models as feature extractors (embed + linear head), the digit-range datasets, and nested-state packing."""

import pytest
import torch

from dd.data import get_spec, load_dataset
from dd.io import pack_state, unpack_state
from dd.models import backbone_state, create_model, embed_dim, head_name, list_models, load_backbone


@pytest.mark.parametrize("name", [n for n in list_models() if n not in ("ConvNetD6", "ConvNetD7", "ConvNetD8")])
def test_every_model_is_embed_then_its_linear_head(name):
    model = create_model(name, 3, 7, (32, 32), seed=0).eval()  # 32 px: every model is valid there but D6-D8
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        features = model.embed(x)
        assert features.shape == (3, embed_dim(model))
        torch.testing.assert_close(model.get_submodule(head_name(model))(features), model(x))


def test_backbone_moves_between_heads_of_different_sizes():
    source = create_model("ConvNetBN", 1, 16, (8, 8), seed=1)
    target = create_model("ConvNetBN", 1, 5, (8, 8), seed=2)
    head_before = target.classifier.weight.clone()
    load_backbone(target, backbone_state(source))
    assert not any(k.startswith("classifier.") for k in backbone_state(source))
    for k, v in backbone_state(source).items():
        assert torch.equal(target.state_dict()[k], v)
    assert torch.equal(target.classifier.weight, head_before)


def test_pack_state_round_trips_an_optimiser_state_with_int_keys():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, skeleton = pack_state(opt.state_dict(), "opt")
    restored = unpack_state(skeleton, tensors)
    assert set(restored["state"]) == {0, 1}
    torch.testing.assert_close(restored["state"][1]["exp_avg"], opt.state_dict()["state"][1]["exp_avg"])
    assert restored["param_groups"] == opt.state_dict()["param_groups"]


@pytest.mark.parametrize("name, first", [("digits-0to4", 0), ("digits-5to9", 5)])
def test_digit_range_datasets_hold_only_their_classes_relabelled(name, first):
    full, part = load_dataset("digits"), load_dataset(name)
    assert part.spec.num_classes == 5 and part.spec == get_spec(name)
    for split in ("train", "test"):
        x, y = getattr(full, f"{split}_images"), getattr(full, f"{split}_labels")
        keep = (y >= first) & (y < first + 5)
        assert torch.equal(getattr(part, f"{split}_images"), x[keep])
        assert torch.equal(getattr(part, f"{split}_labels"), y[keep] - first)
    x = part.train_images.double()
    assert part.spec.mean[0] == pytest.approx(x.mean().item(), abs=1e-8)
    assert part.spec.std[0] == pytest.approx(x.std(unbiased=False).item(), abs=1e-8)
