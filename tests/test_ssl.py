"""The Barlow Twins teacher: the loss on hand-computed cases, the views, and the resumable teacher folder."""

import json

import pytest
import torch

import dd.buffer.ssl as ssl
from dd.buffer import BufferConfig, train_store
from dd.buffer.ssl import barlow_twins_loss, find_teacher, load_teacher, make_views, two_views
from dd.device import make_generator
from dd.errors import DDError
from tests.helpers import TINY_TEACHER


def test_identical_decorrelated_views_have_zero_loss():
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])  # C = I
    assert barlow_twins_loss(z, z, lam=0.5).item() == pytest.approx(0.0, abs=1e-8)


def test_two_dimensional_case_computed_by_hand():
    # Standardised columns: z1 = [1, -1], [1, -1]; z2 = [1, -1], [-1, 1]; C = [[1, -1], [1, -1]].
    # L = (1 - 1)^2 + (1 - (-1))^2 + lam * ((-1)^2 + 1^2) = 4 + 2 lam.
    z1 = torch.tensor([[3.0, 2.0], [1.0, 0.0]])
    z2 = torch.tensor([[5.0, -1.0], [-1.0, 1.0]])
    for lam in (0.0, 0.005, 1.0):
        assert barlow_twins_loss(z1, z2, lam).item() == pytest.approx(4 + 2 * lam, rel=1e-4)


@pytest.mark.parametrize("channels", [1, 3])
def test_views_keep_shape_and_are_reproducible_without_touching_the_global_rng(channels):
    views = make_views(channels, (8, 8))
    x = torch.rand(6, channels, 8, 8)
    state = torch.random.get_rng_state()
    a1, b1 = two_views(views, x, make_generator(3))
    a2, b2 = two_views(views, x, make_generator(3))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a1.shape == x.shape and torch.equal(a1, a2) and torch.equal(b1, b2)
    assert not torch.equal(a1, b1)


@pytest.mark.e2e
def test_teacher_folder_loads_and_represents(digits_teacher):
    teacher = find_teacher(None, str(digits_teacher), "digits-0to4")
    manifest = json.loads((teacher.root / "manifest.json").read_text())
    assert teacher.root.name.startswith("barlow_twins-") and manifest["output_dim"] == 32 == teacher.output_dim
    assert manifest["dataset"]["name"] == "digits-0to4" and len(manifest["loss"]) == 2
    assert not (teacher.root / "checkpoint.safetensors").exists()
    assert teacher.represent(torch.randn(5, 1, 8, 8)).shape == (5, 32)
    with pytest.raises(DDError, match="no teacher"):
        find_teacher(None, str(digits_teacher), "digits")


@pytest.mark.e2e
def test_representations_are_standardised_on_the_source_train_set(digits_teacher):
    """Teacher.represent = (embed(x) - mean) / std with the source training set's statistics: there each
    dimension has mean 0 and std 1 (less if its std is under the floor), while the raw embedding has an
    offset far from 0 in some dimension."""
    from dd.realdata import prepare_data
    teacher = find_teacher(None, str(digits_teacher), "digits-0to4")
    data = prepare_data("digits-0to4", "cpu", "data", False, "standard", None)
    reps = teacher.represent(data.train_images)
    raw_std = teacher.encoder.embed(data.train_images).std(0)
    alive = raw_std >= 0.01 * raw_std.max()  # the others keep the floor: 1% of the largest std
    assert reps.mean(0).abs().max() < 1e-4 and (reps.std(0)[alive] - 1).abs().max() < 1e-3
    assert (reps.std(0)[~alive] < 1).all() and torch.allclose(teacher.std[~alive], 0.01 * raw_std.max())
    raw = teacher.encoder.embed(data.train_images[:64])
    assert torch.allclose(teacher.represent(data.train_images[:64]), (raw - teacher.mean) / teacher.std)
    assert raw.mean(0).abs().max() > 0.1
    assert torch.equal(teacher.represent(data.train_images[:64], targets="raw"), raw)  # the KRR-ST code's targets
    with pytest.raises(DDError, match="^--targets must be one of standardized, raw, got 'z'$"):
        teacher.represent(data.train_images[:2], targets="z")


@pytest.mark.e2e
def test_killed_teacher_resumes_to_the_same_encoder(tmp_path, monkeypatch, digits_teacher):
    save = ssl.save_tensors

    def save_then_die(path, *args, **kwargs):
        save(path, *args, **kwargs)
        if path.name == "checkpoint.safetensors":
            raise KeyboardInterrupt

    monkeypatch.setattr(ssl, "save_tensors", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_store(BufferConfig(**TINY_TEACHER, buffer_dir=str(tmp_path)))
    monkeypatch.setattr(ssl, "save_tensors", save)
    root = train_store(BufferConfig(**TINY_TEACHER, buffer_dir=str(tmp_path)))
    resumed = find_teacher(None, str(tmp_path), "digits-0to4")
    assert resumed.root == root
    straight = find_teacher(None, str(digits_teacher), "digits-0to4")
    for (k, a), (_, b) in zip(resumed.encoder.state_dict().items(), straight.encoder.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=k)
    (resumed.root / "encoder.safetensors").write_bytes(b"broken")
    with pytest.raises(DDError, match="checksum mismatch"):
        load_teacher(resumed.root)
