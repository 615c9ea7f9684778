"""The model registry and zoo: names, output shapes at every supported size, the reference parameter
counts, seeded construction that leaves the global RNG alone, and one-line errors."""

import pytest
import torch
from torch import nn

from dd.errors import DDError
from dd.functional import flatten_params
from dd.models import create_model, list_models, register_model
from tests.helpers import INDIVISIBLE, ONE_BY_ONE, assert_matches_finite_differences

REFERENCE_NAMES = (
    ["ConvNet"] + [f"ConvNetD{d}" for d in range(1, 9)] + [f"ConvNetW{w}" for w in (32, 64, 128, 256, 512, 1024)]
    + ["ConvNetAS", "ConvNetAR", "ConvNetAL", "ConvNetASwish", "ConvNetASwishBN",
       "ConvNetNN", "ConvNetBN", "ConvNetLN", "ConvNetIN", "ConvNetGN",
       "ConvNetNP", "ConvNetMP", "ConvNetAP", "ConvNetD4BN", "ConvNetKIP", "ResNet18", "ResNet18BN", "ResNet18_AP",
       "ResNet18BN_AP", "VGG11", "VGG11BN", "AlexNet", "AlexNetBN", "LeNet", "MLP"]
)
KRR_ST_NAMES = ["ConvNetBNWide", "ConvNetD4BNWide", "ConvNetD5BNWide"]
VIT_NAMES = ["ViT", "ViTP2", "ViTP8", "ViTP16"]


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_holds_the_reference_zoo():
    assert sorted(list_models()) == sorted(REFERENCE_NAMES + KRR_ST_NAMES + VIT_NAMES)


@pytest.mark.parametrize("name", REFERENCE_NAMES + KRR_ST_NAMES + VIT_NAMES)
@pytest.mark.parametrize("channels, size", [(1, (8, 8)), (3, (32, 32))])
def test_every_model_maps_images_to_logits(name, channels, size):
    if name in ONE_BY_ONE[(channels, size)]:
        with pytest.raises(DDError, match="instance norm over a 1x1 feature map"):
            create_model(name, channels, 7, size, seed=0)
        return
    if name in INDIVISIBLE[(channels, size)]:
        with pytest.raises(DDError, match="needs an image size divisible by 16"):
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


# KRR-ST's pool models (db-Lee/selfsup_dd at 4beb4b1, models/convnet.py), counted by hand: widening conv+BN
# blocks, embed 4*4*512 at 32 and 64 px and 7*7*512 at 224 px, and a Linear(embed, 512) head for the 512-d teacher
# targets.
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
    ("AlexNetBN", nn.BatchNorm2d, lambda m: m.num_features == 128),
    ("ConvNetASwishBN", nn.BatchNorm2d, lambda m: True),
])
def test_norm_layers(name, norm_type, check):
    norms = [m for m in create_model(name, 3, 10, (32, 32)).modules() if isinstance(m, norm_type)]
    assert norms and check(norms[0])


def test_convnet_without_norm_has_none():
    model = create_model("ConvNetKIP", 3, 10, (8, 8))
    assert not any(isinstance(m, (nn.GroupNorm, nn.BatchNorm2d, nn.LayerNorm)) for m in model.modules())
    assert model.classifier.in_features == 1024


@pytest.mark.parametrize("name, act", [("ConvNetAS", nn.Sigmoid), ("ConvNetAL", nn.LeakyReLU), ("ConvNet", nn.ReLU),
                                       ("ConvNetASwish", nn.SiLU), ("ConvNetASwishBN", nn.SiLU)])
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


# -- the ViT ----------------------------------------------------------------------------------------------
def test_alexnet_bn_is_alexnet_with_a_batchnorm_after_each_conv():
    plain, bn = create_model("AlexNet", 3, 10, (32, 32)), create_model("AlexNetBN", 3, 10, (32, 32))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 5
    assert num_params(bn) - num_params(plain) == 2 * (128 + 192 + 256 + 192 + 192)


@pytest.mark.parametrize("name, size, tokens", [("ViTP2", 8, 16), ("ViT", 8, 4), ("ViT", 32, 64), ("ViTP8", 64, 64),
                                                ("ViTP16", 128, 64)])
def test_vit_cuts_the_image_into_patches(name, size, tokens):
    model = create_model(name, 3, 10, (size, size), seed=0, depth=1, width=16, heads=2)
    assert model.pos_embed.shape == (1, 1 + tokens, 16)
    assert model(torch.randn(2, 3, size, size)).shape == (2, 10)


def test_vit_refuses_an_image_its_patch_does_not_divide():
    with pytest.raises(DDError, match="needs an image size divisible by 4, got 30x30.*ViTP2 at 8 px"):
        create_model("ViT", 3, 10, (30, 30))
    with pytest.raises(DDError, match="width divisible by the heads"):
        create_model("ViT", 3, 10, (32, 32), width=30, heads=4)


def test_vit_attention_equals_torch_multihead_attention():
    """The written-out attention is nn.MultiheadAttention's (same q, k, v and output projections)."""
    from dd.models.vit import Attention

    torch.manual_seed(0)
    ours, ref = Attention(16, 4), nn.MultiheadAttention(16, 4, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.proj.weight)
        ref.out_proj.bias.copy_(ours.proj.bias)
    x = torch.randn(3, 5, 16)
    assert torch.allclose(ours(x), ref(x, x, x, need_weights=False)[0], atol=1e-6)


def test_vit_head_is_the_classifier_and_seeded_weights_repeat():
    from dd.models import embed_dim, head_name

    model = create_model("ViTP2", 1, 10, (8, 8), seed=3)
    assert head_name(model) == "classifier" and embed_dim(model) == 128
    assert torch.equal(flatten_params(model), flatten_params(create_model("ViTP2", 1, 10, (8, 8), seed=3)))


def tiny_vit(seed: int = 0, dtype=torch.float32) -> nn.Module:
    return create_model("ViTP2", 1, 3, (8, 8), seed=seed, depth=2, width=8, heads=2).to(dtype)


def test_vit_functional_forward_equals_the_module():
    from dd.functional import functional_forward, stack_functional_forward

    model, x = tiny_vit(), torch.randn(4, 1, 8, 8)
    flat = flatten_params(model)
    assert torch.allclose(functional_forward(model, flat, x), model(x), atol=1e-6)
    flats = torch.stack([flat, flatten_params(tiny_vit(seed=1))])
    stacked = stack_functional_forward(model, flats, torch.stack([x, x.flip(0)]))
    assert torch.allclose(stacked[1], functional_forward(model, flats[1], x.flip(0)), atol=1e-6)
    assert not torch.allclose(stacked[0], stacked[1])


def test_vit_unrolled_step_gradient_matches_finite_differences():
    """One inner SGD step on a flat ViT, as the distillation loop takes it (create_graph through attention and
    LayerNorm): d(loss after the step)/d(images, lr) equals central differences."""
    from dd.functional import functional_forward

    model = tiny_vit(dtype=torch.float64)
    start = flatten_params(model)
    gen = torch.Generator().manual_seed(0)
    target_x, labels = torch.randn(6, 1, 8, 8, generator=gen, dtype=torch.float64), torch.tensor([0, 1, 2] * 2)

    def loss_of(images, lr):
        w = start.clone().requires_grad_(True)
        inner = nn.functional.cross_entropy(functional_forward(model, w, images), labels)
        (g,) = torch.autograd.grad(inner, w, create_graph=True)
        return nn.functional.cross_entropy(functional_forward(model, w - lr * g, target_x), labels)

    images = torch.randn(6, 1, 8, 8, generator=gen, dtype=torch.float64)
    assert_matches_finite_differences(loss_of, images, torch.tensor(0.5, dtype=torch.float64))


def test_vit_batched_seeds_equal_their_sequential_runs(monkeypatch):
    import dd.multiseed as multiseed
    from dd.data import load_dataset
    from dd.multiseed import can_batch, train_seeds
    from dd.training import Protocol

    raw = load_dataset("digits")
    train = (raw.train_images[:30], raw.train_labels[:30])
    protocol, args = Protocol(epochs=2, batch_size=16), ("ViTP2", 1, 10, (8, 8))
    assert can_batch(create_model(*args))
    sequential = multiseed.train_model
    monkeypatch.setattr(multiseed, "train_model", lambda *a, **k: pytest.fail("fell back to sequential training"))
    models = train_seeds(*args, train, 0.01, protocol, [0, 5])
    for model, seed in zip(models, [0, 5], strict=True):
        alone = sequential(*args, train, 0.01, protocol, seed)
        assert not torch.equal(flatten_params(alone), flatten_params(create_model(*args, seed=seed)))  # it trained
        assert torch.allclose(flatten_params(model), flatten_params(alone), rtol=0, atol=1e-6)
