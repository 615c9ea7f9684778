"""The model registry and zoo: names, output shapes at every supported size, the reference parameter
counts, seeded construction that leaves the global RNG alone, and one-line errors."""

import pytest
import torch
from torch import nn

from dd.errors import DDError
from dd.functional import flatten_params
from dd.models import create_model, list_models, register_model

REFERENCE_NAMES = (
    ["ConvNet"] + [f"ConvNetD{d}" for d in range(1, 9)] + [f"ConvNetW{w}" for w in (32, 64, 128, 256, 512, 1024)]
    + ["ConvNetAS", "ConvNetAR", "ConvNetAL", "ConvNetNN", "ConvNetBN", "ConvNetLN", "ConvNetIN", "ConvNetGN",
       "ConvNetNP", "ConvNetMP", "ConvNetAP", "ConvNetD4BN", "ConvNetKIP", "ResNet18", "ResNet18BN", "ResNet18_AP",
       "ResNet18BN_AP", "VGG11", "VGG11BN", "AlexNet", "LeNet", "MLP"]
)
KRR_ST_NAMES = ["ConvNetBNWide", "ConvNetD4BNWide", "ConvNetD5BNWide"]


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_holds_the_reference_zoo():
    assert sorted(list_models()) == sorted(REFERENCE_NAMES + KRR_ST_NAMES)


# Instance-norm networks that reach a 1x1 feature map before a norm at this input size (refused).
ONE_BY_ONE = {(1, (8, 8)): {"ConvNetD4", "ConvNetD5", "ConvNetD6", "ConvNetD7", "ConvNetD8", "ResNet18",
                            "ResNet18_AP", "VGG11"},
              (3, (32, 32)): {"ConvNetD6", "ConvNetD7", "ConvNetD8"}}


@pytest.mark.parametrize("name", REFERENCE_NAMES + KRR_ST_NAMES)
@pytest.mark.parametrize("channels, size", [(1, (8, 8)), (3, (32, 32))])
def test_every_model_maps_images_to_logits(name, channels, size):
    if name in ONE_BY_ONE[(channels, size)]:
        with pytest.raises(DDError, match="instance norm over a 1x1 feature map"):
            create_model(name, channels, 7, size, seed=0)
        return
    model = create_model(name, channels, 7, size, seed=0)
    out = model(torch.randn(2, channels, *size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("num_classes, expected", [(10, 320_010), (100, 504_420)])
def test_convnet_parameter_count_matches_reference(num_classes, expected):
    assert num_params(create_model("ConvNet", 3, num_classes, (32, 32))) == expected


@pytest.mark.parametrize("name, channels, size, features", [
    ("ConvNet", 3, (32, 32), 128 * 4 * 4),
    ("ConvNet", 1, (28, 28), 128 * 4 * 4),   # pad 3 on the first conv: 28 px is treated as 32 px
    ("ConvNet", 1, (8, 8), 128 * 1 * 1),     # 8 -> 12 -> 6 -> 3 -> 1
    ("ConvNetD4", 3, (64, 64), 128 * 4 * 4),
    ("ConvNetD5", 3, (128, 128), 128 * 4 * 4),
    ("ConvNetD5", 3, (32, 32), 128 * 1 * 1),  # 32 -> 16 -> 8 -> 4 -> 2 -> 1
    ("ConvNetNP", 3, (32, 32), 128 * 32 * 32),
    ("ConvNetW32", 3, (64, 48), 32 * 8 * 6),
    ("ResNet18", 3, (32, 32), 512),
    ("ResNet18_AP", 3, (32, 32), 512 * 4 * 4),
    ("VGG11", 3, (32, 32), 512),
    ("VGG11BN", 1, (8, 8), 512),
    ("AlexNet", 3, (32, 32), 192 * 4 * 4),
    ("AlexNet", 1, (28, 28), 192 * 4 * 4),
    ("LeNet", 3, (32, 32), 16 * 5 * 5),
    ("LeNet", 1, (28, 28), 16 * 5 * 5),
    ("MLP", 3, (32, 32), 3 * 32 * 32),
])
def test_classifier_input_follows_the_spatial_arithmetic(name, channels, size, features):
    model = create_model(name, channels, 10, size)
    first_linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
    assert first_linear.in_features == features


def conv_bn(c_in: int, c_out: int) -> int:
    """Parameters of Conv3x3(c_in, c_out) with bias plus BatchNorm(c_out)."""
    return c_in * c_out * 9 + c_out + 2 * c_out


# KRR-ST's pool models (ftd_ast_krr.md §3.3), counted by hand: widening conv+BN blocks, embed 4*4*512 at 32 and
# 64 px and 7*7*512 at 224 px, and a Linear(embed, 512) head for the 512-d teacher targets.
@pytest.mark.parametrize("name, size, widths, embed", [
    ("ConvNetBNWide", (32, 32), (128, 256, 512), 4 * 4 * 512),
    ("ConvNetD4BNWide", (64, 64), (64, 128, 256, 512), 4 * 4 * 512),
    ("ConvNetD5BNWide", (224, 224), (32, 64, 128, 256, 512), 7 * 7 * 512),
])
def test_krr_st_widening_convnets(name, size, widths, embed):
    model = create_model(name, 3, 512, size, seed=0)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in convs] == list(widths)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == len(widths)
    assert model.embed(torch.randn(2, 3, *size)).shape == (2, embed)
    blocks = sum(conv_bn(c_in, c_out) for c_in, c_out in zip((3, *widths[:-1]), widths, strict=True))
    assert num_params(model) == blocks + embed * 512 + 512


def test_widening_convnet_counts_written_out():
    # 3-128-256-512 at 32 px for CIFAR-100: 3584 + 256 + 295168 + 512 + 1180160 + 1024 conv/BN, 8192 * 100 + 100 head.
    assert num_params(create_model("ConvNetBNWide", 3, 100, (32, 32))) == 1_480_704 + 819_300
    assert num_params(create_model("ConvNetD4BNWide", 3, 200, (64, 64))) == 1_552_896 + 8192 * 200 + 200


def test_widths_replace_width_and_depth_and_leave_convnet_unchanged():
    plain, same = create_model("ConvNet", 3, 10, (32, 32), seed=0), create_model(
        "ConvNet", 3, 10, (32, 32), seed=0, widths=(128, 128, 128))
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), same.state_dict().values(), strict=True))
    with pytest.raises(DDError, match="at least one block"):
        create_model("ConvNet", 3, 10, (32, 32), widths=())


def test_pools_that_would_shrink_a_map_below_1px_are_skipped():
    model = create_model("ConvNetD8", 3, 10, (32, 32), norm="batchnorm")  # five pools, then three skipped
    assert model.classifier.in_features == 128


def test_instance_norm_of_a_1x1_map_is_constant_hence_refused():
    """Why ONE_BY_ONE is refused: GroupNorm(C, C) of a 1x1 map outputs its bias whatever the input."""
    norm = nn.GroupNorm(4, 4, affine=True)
    nn.init.normal_(norm.bias)
    a, b = norm(torch.randn(3, 4, 1, 1)), norm(torch.randn(3, 4, 1, 1))
    assert torch.allclose(a, b, atol=1e-4) and torch.allclose(a[0, :, 0, 0], norm.bias, atol=1e-4)


@pytest.mark.parametrize("name, size", [("ConvNetD4", (64, 64)), ("ConvNetD5", (128, 128))])
def test_deep_convnets_at_their_dataset_sizes(name, size):
    out = create_model(name, 3, 5, size, width=8)(torch.randn(2, 3, *size))
    assert out.shape == (2, 5)


def test_variants_are_keyword_settings_that_overrides_replace():
    d4 = create_model("ConvNetD4", 3, 10, (32, 32), width=16)
    assert sum(isinstance(m, nn.Conv2d) for m in d4.modules()) == 4
    assert all(m.out_channels == 16 for m in d4.modules() if isinstance(m, nn.Conv2d))
    d2 = create_model("ConvNetD4", 3, 10, (32, 32), depth=2, width=16)
    assert sum(isinstance(m, nn.Conv2d) for m in d2.modules()) == 2


@pytest.mark.parametrize("name, norm_type, check", [
    ("ConvNet", nn.GroupNorm, lambda m: m.num_groups == m.num_channels and m.affine),
    ("ConvNetGN", nn.GroupNorm, lambda m: m.num_groups == 4),
    ("ConvNetBN", nn.BatchNorm2d, lambda m: True),
    ("ConvNetLN", nn.LayerNorm, lambda m: m.normalized_shape == (128, 32, 32)),
    ("ResNet18", nn.GroupNorm, lambda m: m.num_groups == m.num_channels),
    ("ResNet18BN_AP", nn.BatchNorm2d, lambda m: True),
    ("VGG11", nn.GroupNorm, lambda m: m.num_groups == m.num_channels),
    ("VGG11BN", nn.BatchNorm2d, lambda m: True),
])
def test_norm_layers(name, norm_type, check):
    norms = [m for m in create_model(name, 3, 10, (32, 32)).modules() if isinstance(m, norm_type)]
    assert norms and check(norms[0])


def test_convnet_without_norm_has_none():
    model = create_model("ConvNetKIP", 3, 10, (8, 8))
    assert not any(isinstance(m, (nn.GroupNorm, nn.BatchNorm2d, nn.LayerNorm)) for m in model.modules())
    assert model.classifier.in_features == 1024


@pytest.mark.parametrize("name, act", [("ConvNetAS", nn.Sigmoid), ("ConvNetAL", nn.LeakyReLU), ("ConvNet", nn.ReLU)])
def test_activation_variants(name, act):
    assert any(isinstance(m, act) for m in create_model(name, 3, 10, (8, 8), width=4).modules())


@pytest.mark.parametrize("name, pool", [("ConvNetMP", nn.MaxPool2d), ("ConvNetAP", nn.AvgPool2d)])
def test_pooling_variants(name, pool):
    assert sum(isinstance(m, pool) for m in create_model(name, 3, 10, (32, 32), width=4).modules()) == 3


def test_same_seed_same_weights_and_global_rng_untouched():
    state = torch.random.get_rng_state()
    a = flatten_params(create_model("ConvNet", 3, 10, (32, 32), seed=5, width=8))
    b = flatten_params(create_model("ConvNet", 3, 10, (32, 32), seed=5, width=8))
    c = flatten_params(create_model("ConvNet", 3, 10, (32, 32), seed=6, width=8))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_without_seed_the_global_rng_is_used_not_reseeded():
    torch.manual_seed(0)
    a = flatten_params(create_model("ConvNet", 3, 10, (8, 8), width=4))
    b = flatten_params(create_model("ConvNet", 3, 10, (8, 8), width=4))
    torch.manual_seed(0)
    assert not torch.equal(a, b)
    assert torch.equal(a, flatten_params(create_model("ConvNet", 3, 10, (8, 8), width=4)))


def test_unknown_model_is_a_one_line_dderror():
    with pytest.raises(DDError, match="unknown model 'ConvNetX'; choose from ConvNet, ") as info:
        create_model("ConvNetX", 3, 10, (32, 32))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("override", [{"norm": "weird"}, {"act": "tanh"}, {"pooling": "median"}])
def test_unknown_layer_choice_is_a_dderror(override):
    with pytest.raises(DDError, match="unknown"):
        create_model("ConvNet", 3, 10, (32, 32), **override)


def test_register_model_adds_a_name_once():
    @register_model("_TestTiny")
    def tiny(channels, num_classes, im_size):
        return nn.Sequential(nn.Flatten(), nn.Linear(channels * im_size[0] * im_size[1], num_classes))

    try:
        assert "_TestTiny" in list_models()
        assert create_model("_TestTiny", 1, 3, (2, 2))(torch.zeros(4, 1, 2, 2)).shape == (4, 3)
        with pytest.raises(ValueError):
            register_model("_TestTiny")(tiny)
    finally:
        from dd.models import registry
        del registry._MODELS["_TestTiny"]


def test_avgpool_resnet_rejects_inputs_it_cannot_downsample():
    with pytest.raises(DDError, match="at least 8 px"):
        create_model("ResNet18_AP", 3, 10, (4, 4))
