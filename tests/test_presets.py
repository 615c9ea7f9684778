"""The presets of experiments/: each loads through its config class and passes its stage's validation, states
only what differs from its class's defaults or its base (``base:``), names its source in one ``# Source:`` line
and cites nothing outside the repository; a distillation preset's buffer preset trains its model on its dataset
for long enough; docs/presets.md is what ``dd.report.presets`` writes from them."""

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from dd.config import load_yaml, validate
from dd.distill.config import MTTConfig
from dd.distill.registry import get_method
from dd.errors import DDError
from dd.protocols import get_protocol, list_protocols
from dd.report.presets import buffer_of, preset_names, presets_markdown, read_preset, restated, source_of

ROOT = Path(__file__).parents[1]
DOC = ROOT / "docs" / "presets.md"
NAMES = preset_names(ROOT)
# Notes kept outside the repository, which no preset or the presets page may cite.
OUTSIDE = ("mtt_datm", "ftd_ast_krr", "reference folder", "reference notes", "/work/shared")


def problems(root: Path, name: str) -> list[str]:
    """What is wrong with a preset beyond its stage's own validation (which raises DDError)."""
    preset = read_preset(root, name)
    config, folder = preset.config, Path(name).parent.name
    if folder == "buffer":
        validate(config)
        return []
    if folder == "eval":
        if config.protocol not in list_protocols():
            return [f"names no registered protocol (protocol: {config.protocol})"]
        protocol = get_protocol(config.protocol)
        return [f"{k}: restates the {config.protocol} protocol's value {preset.values[k]!r}; leave it out"
                for k in ("epochs", "batch_size", "momentum", "weight_decay", "dsa_strategy")
                if k in preset.values and getattr(config, k) == getattr(protocol, k)]
    validate(config)
    if not isinstance(config, MTTConfig):  # dc, dsa, dm, krr_st: no experts to check
        return []
    buffer = buffer_of(root, config)
    validate(buffer)
    errors = []
    if (buffer.dataset, buffer.model) != (config.dataset, config.model):
        errors.append(f"{config.buffer_config} trains {buffer.model} on {buffer.dataset}, not {config.model} on "
                      f"{config.dataset}")
    if config.max_start_epoch - 1 + config.expert_epochs > buffer.epochs:
        errors.append(f"start epochs up to {config.max_start_epoch - 1} + {config.expert_epochs} exceed the "
                      f"{buffer.epochs} expert epochs of {config.buffer_config}")
    return errors


def copy_presets(tmp_path: Path, *names: str) -> Path:
    for name in names:
        target = tmp_path / "experiments" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "experiments" / name, target)
    return tmp_path


def edit(root: Path, name: str, old: str, new: str) -> None:
    path = root / "experiments" / name
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def write(root: Path, name: str, text: str) -> Path:
    path = root / "experiments" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- every preset ----------------------------------------------------------------------------------------------
def test_there_are_presets_of_every_stage():
    assert len(NAMES) >= 130
    assert {Path(n).parent.name for n in NAMES} >= {"mtt", "ftd", "datm", "ast", "tesla", "buffer", "krr_st", "dc",
                                                    "dsa", "dm", "eval"}


@pytest.mark.parametrize("name", NAMES)
def test_preset_loads_validates_and_states_only_what_differs(name):
    assert problems(ROOT, name) == []
    assert restated(ROOT, name) == [], "keys equal to the default (or the base's value): remove them"
    assert source_of(ROOT / "experiments" / name)


def test_no_preset_or_the_presets_page_cites_notes_outside_the_repository():
    texts = {p: p.read_text(encoding="utf-8") for p in [DOC, *(ROOT / "experiments").rglob("*")] if p.is_file()}
    cited = sorted(f"{p.relative_to(ROOT)}: {s}" for p, t in texts.items() for s in OUTSIDE if s in t)
    assert cited == []


def test_the_methods_name_their_protocols():
    methods = {read_preset(ROOT, n).config.method for n in NAMES if Path(n).parent.name in ("mtt", "ftd", "datm",
                                                                                            "ast", "tesla")}
    assert {m: get_method(m).protocol for m in methods} == {"mtt": "mtt", "ftd": "mtt", "datm": "datm", "ast": "ast",
                                                          "tesla": "mtt"}


IMAGENET_SUBSETS = ("imagenette", "imagewoof", "imagemeow", "imagesquawk", "imagefruit", "imageyellow")


@pytest.mark.parametrize("ipc", [1, 10])
def test_imagenet_subset_presets_share_mtts_one_setting(ipc):
    """MTT ran every ImageNet subset with one setting: the presets differ only in the subset."""
    def load(subset):
        config = read_preset(ROOT, f"mtt/{subset}_ipc{ipc}.yaml").config
        assert (config.dataset, config.buffer_config) == (subset, f"experiments/buffer/{subset}.yaml")
        return replace(config, dataset="", buffer_config="")

    first = load(IMAGENET_SUBSETS[0])
    assert all(load(subset) == first for subset in IMAGENET_SUBSETS[1:])
    assert (first.model, first.syn_steps, first.expert_epochs, first.max_start_epoch, first.lr_img, first.lr_lr,
            first.lr_teacher, first.batch_syn) == ("ConvNetD5", 20, 2, 10, 1e5, 1e-6, 0.01, 20 if ipc == 10 else None)


# -- the checks can fail ---------------------------------------------------------------------------------------
def test_a_preset_setting_another_methods_knob_is_refused(tmp_path):
    """A knob lives on its method's config only: AST's weight_perturb in a DATM preset is an unknown key."""
    root = copy_presets(tmp_path, "datm/tiny_ipc1.yaml", "buffer/tiny_gsam.yaml")
    assert problems(root, "datm/tiny_ipc1.yaml") == []
    edit(root, "datm/tiny_ipc1.yaml", "ipc: 1", "ipc: 1\nweight_perturb: false")
    with pytest.raises(DDError, match="unknown key 'weight_perturb'"):
        problems(root, "datm/tiny_ipc1.yaml")


def test_a_wrong_or_short_buffer_is_caught(tmp_path):
    root = copy_presets(tmp_path, "ftd/cifar10_ipc50.yaml", "buffer/cifar10_gsam_alpha1.yaml",
                        "buffer/cifar10_gsam.yaml", "buffer/tiny.yaml")
    (root / "experiments/buffer/cifar10_gsam_alpha1.yaml").write_text(
        (root / "experiments/buffer/cifar10_gsam_alpha1.yaml").read_text().replace("epochs: 50", "epochs: 40"))
    assert problems(root, "ftd/cifar10_ipc50.yaml") == [
        "start epochs up to 39 + 2 exceed the 40 expert epochs of experiments/buffer/cifar10_gsam_alpha1.yaml"]
    edit(root, "ftd/cifar10_ipc50.yaml", "buffer/cifar10_gsam_alpha1.yaml", "buffer/tiny.yaml")
    assert problems(root, "ftd/cifar10_ipc50.yaml")[0] == ("experiments/buffer/tiny.yaml trains ConvNetD4 on tiny, "
                                                           "not ConvNet on cifar10")


def test_an_eval_preset_restating_its_protocol_is_caught(tmp_path):
    root = copy_presets(tmp_path, "eval/mtt.yaml")
    edit(root, "eval/mtt.yaml", "protocol: mtt", "protocol: mtt\nbatch_size: 256")
    assert problems(root, "eval/mtt.yaml") == ["batch_size: restates the mtt protocol's value 256; leave it out"]


def test_a_key_equal_to_its_default_or_its_base_value_is_restated(tmp_path):
    """lr_img 1000 is MTTConfig's default; syn_steps 50 is the base's; method and ipc say what a preset is;
    lr_lr 1e-5 equals the default but undoes the base's 1e-7, so it differs from what the preset would be."""
    root = copy_presets(tmp_path, "mtt/cifar10_ipc1.yaml")
    edit(root, "mtt/cifar10_ipc1.yaml", "method: mtt", "method: mtt\nlr_img: 1000.0")
    assert restated(root, "mtt/cifar10_ipc1.yaml") == ["lr_img"]
    write(root, "mtt/variant.yaml", "# Source: a test\nbase: cifar10_ipc1.yaml\nmethod: mtt\nipc: 1\nsyn_steps: 50\n"
                                    "lr_lr: 1e-5\nlr_teacher: 0.02\n")
    assert restated(root, "mtt/variant.yaml") == ["syn_steps"]


def test_a_preset_without_one_source_line_is_an_error(tmp_path):
    path = write(tmp_path, "mtt/a.yaml", "# no source\nmethod: mtt\n")
    with pytest.raises(DDError, match="has 0 '# Source:' lines"):
        source_of(path)
    path.write_text("# Source: one\n# Source: two\nmethod: mtt\n")
    with pytest.raises(DDError, match="has 2 '# Source:' lines"):
        source_of(path)


# -- base: ----------------------------------------------------------------------------------------------------
def test_base_keys_lie_under_the_presets_own_through_a_chain(tmp_path):
    write(tmp_path, "a/first.yaml", "syn_steps: 10\nlr_img: 100\nbase: ../b/second.yaml\n")
    write(tmp_path, "b/second.yaml", "lr_img: 200\nipc: 5\nbase: third.yaml\n")
    write(tmp_path, "b/third.yaml", "ipc: 7\nlr_lr: 1e-6\n")
    assert load_yaml(tmp_path / "experiments/a/first.yaml") == {"ipc": 5, "lr_lr": "1e-6", "lr_img": 100,
                                                                "syn_steps": 10}


@pytest.mark.parametrize("files, message", [
    ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"}, "its base chain is a cycle"),
    ({"a.yaml": "base: a.yaml\n"}, "its base chain is a cycle"),
    ({"a.yaml": "base: nowhere.yaml\n"}, "names base nowhere.yaml, which does not exist"),
    ({"a.yaml": "base: [b.yaml]\n"}, "'base' must name another preset"),
])
def test_a_cycle_a_missing_or_a_malformed_base_is_one_line(tmp_path, files, message):
    for name, text in files.items():
        write(tmp_path, f"m/{name}", text)
    with pytest.raises(DDError, match=message) as error:
        load_yaml(tmp_path / "experiments/m/a.yaml")
    assert "\n" not in str(error.value)


# -- docs/presets.md -------------------------------------------------------------------------------------------
def test_the_presets_page_is_what_the_presets_give():
    assert DOC.read_text(encoding="utf-8") == presets_markdown(ROOT), "run python scripts/presets_doc.py"


def test_the_page_follows_a_changed_value_a_base_and_a_source(tmp_path):
    names = ("datm/tiny_ipc1.yaml", "buffer/tiny_gsam.yaml", "buffer/digits.yaml", "eval/mtt.yaml")
    root = copy_presets(tmp_path, *names)
    before = presets_markdown(root)
    row = next(line for line in before.splitlines() if line.startswith("| datm/tiny_ipc1.yaml"))
    assert "| 10000 |" in row and " threshold=1 " in row
    assert row.endswith(" at 97ae510 (docs/reference-trajectory-methods.md §3) |")
    edit(root, "datm/tiny_ipc1.yaml", "lr_img: 10000", "lr_img: 1000")
    edit(root, "datm/tiny_ipc1.yaml", "threshold: 1.0", "threshold: 1.1")
    edit(root, "datm/tiny_ipc1.yaml", "# Source: DATM", "# Source: changed DATM")
    row = next(line for line in presets_markdown(root).splitlines() if line.startswith("| datm/tiny_ipc1.yaml"))
    assert "| 1000 |" in row and " threshold=1.1 " in row and "| changed DATM" in row
    write(root, "eval/variant.yaml", "# Source: a test\nbase: mtt.yaml\nepochs: 300\n")
    assert "| eval/variant.yaml | mtt | ConvNet | 5 | base=mtt.yaml epochs=300 | a test |" in presets_markdown(root)


def test_a_preset_in_no_table_is_an_error(tmp_path):
    root = copy_presets(tmp_path, "eval/mtt.yaml")
    write(root, "other/x.yaml", "# Source: a test\nprotocol: mtt\n")
    with pytest.raises(DDError, match="presets in no table of docs/presets.md: other/x.yaml"):
        presets_markdown(root)
