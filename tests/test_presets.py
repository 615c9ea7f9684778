"""docs/presets.md is the audit of experiments/: one table row per preset file, with the paper setting it
reproduces and its source. Every preset, loaded through dd's own config machinery, must equal its row
(including the ZCA and expert recipe of the buffer preset it matches, and its method's evaluation protocol)
and pass the stage's own validation;
every file must have a row and every row a file; a row's ``other`` cell lists every preset key that has no
column of its own, so a preset cannot carry a setting the table does not show."""

import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from dd.buffer.config import BufferConfig
from dd.config import load_yaml, make_config
from dd.config import validate as validate_buffer
from dd.distill.condense import validate as validate_condense
from dd.distill.config import DistillConfig
from dd.distill.dm import DMConfig
from dd.distill.engine import validate as validate_distill
from dd.distill.gradmatch import GradMatchConfig, loops
from dd.distill.gradmatch import validate as validate_gradmatch
from dd.distill.krr_st import KRRConfig
from dd.distill.krr_st import validate as validate_krr
from dd.distill.methods import get_method
from dd.eval.config import EvalConfig
from dd.protocols import get_protocol, list_protocols

ROOT = Path(__file__).parents[1]
DOC = ROOT / "docs" / "presets.md"
NO_PAPER = "tuned here, no paper setting"

DISTILL = "Distillation presets"
BUFFER = "Buffer presets"
KRR = "KRR-ST presets"
CONDENSE = "DC, DSA and DM presets"
EVAL = "Evaluation presets"
FOLDERS = {DISTILL: ("mtt", "ftd", "datm", "ast", "tesla"), BUFFER: ("buffer",), KRR: ("krr_st",),
           CONDENSE: ("dc", "dsa", "dm"), EVAL: ("eval",)}

DISTILL_COLUMNS = ("method", "dataset", "model", "ipc", "syn_steps", "expert_epochs", "max_start_epoch", "lr_img",
                   "lr_lr", "lr_teacher", "batch_syn", "iterations")
BUFFER_COLUMNS = ("dataset", "model", "zca", "optimizer", "lr", "momentum", "weight_decay", "batch_size", "epochs",
                  "num_experts")
KRR_COLUMNS = ("method", "dataset", "model", "num_images", "iterations", "batch_real", "lr")
CONDENSE_COLUMNS = ("method", "dataset", "model", "ipc", "iterations", "lr_img", "batch_real", "pix_init")
EVAL_COLUMNS = ("protocol", "models", "runs")
# Keys that set how a run is logged or evaluated along the way, not the paper setting.
RUN_KEYS = {DISTILL: {"buffer_config", "eval_every", "eval_runs", "eval_epochs", "eval_batch_size"},
            BUFFER: {"test_every"}, KRR: {"buffer_dir", "checkpoint_every", "log_every"},
            CONDENSE: {"eval_every", "eval_runs", "eval_epochs", "eval_batch_size", "checkpoint_every", "log_every"},
            EVAL: set()}


# -- reading the table ---------------------------------------------------------------------------------
def parse_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """The first Markdown table under each ``## heading``, as a list of {column: cell} rows."""
    tables: dict[str, list[dict[str, str]]] = {}
    heading, header = None, None
    for line in text.splitlines():
        if line.startswith("## "):
            heading, header = line[3:].strip(), None
            continue
        if heading is None or not line.startswith("|"):
            if header is not None:
                heading = None  # the table ended: later tables of this section are not the audit
            continue
        cells = [c.strip().strip("`").strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            tables[heading] = []
        elif not all(set(c) <= set("-: ") for c in cells):
            assert len(cells) == len(header), f"{heading}: row {cells[0]} has {len(cells)} cells, not {len(header)}"
            tables[heading].append(dict(zip(header, cells, strict=True)))
    return tables


def tokens(cell: str) -> dict[str, str]:
    """``key=value key=value`` (or – for none) as a dict."""
    if cell in ("", "–", "-"):
        return {}
    pairs = [t.split("=", 1) for t in cell.split()]
    assert all(len(p) == 2 for p in pairs), f"malformed key=value list {cell!r}"
    return dict(pairs)


def same(cell: str, value) -> bool:
    """Whether a table cell states ``value``: – for None, yes/no (or true/false) for a bool, numbers by value."""
    if value is None:
        return cell in ("–", "-", "null")
    if isinstance(value, bool):
        return cell in (("yes", "true") if value else ("no", "false"))
    if isinstance(value, (int, float)):
        try:
            return math.isclose(float(cell), value, rel_tol=1e-12)
        except ValueError:
            return False
    return cell == str(value)


def recipe_label(buffer: BufferConfig) -> str:
    """The expert recipe in a word: sgd (MTT's plain SGD), gsam α=<alpha> (FTD/DATM), smooth (AST's SGD with
    momentum, wd, decay, warm-up, penalty), or the self-supervised teacher's name."""
    if buffer.teacher != "none":
        return buffer.teacher
    if buffer.optimizer == "gsam":
        return f"gsam α={buffer.alpha:g}"
    plain = (buffer.momentum, buffer.weight_decay, buffer.lr_decay_epoch, buffer.loss_warmup, buffer.gp_lambda)
    return "sgd" if plain == (0, 0, None, False, 0) else "smooth"


def compare(row: dict[str, str], config, values: dict, columns: tuple[str, ...], section: str) -> list[str]:
    """Mismatches between a row's columns and ``other`` cell and a loaded config; keys the row leaves out."""
    errors = [f"{c}: row says {row[c]}, preset has {getattr(config, c)!r}"
              for c in columns if not same(row[c], getattr(config, c))]
    other = tokens(row["other"])
    errors += [f"{k}: row says {v}, preset has {getattr(config, k, '<no such key>')!r}"
               for k, v in other.items() if not hasattr(config, k) or not same(v, getattr(config, k))]
    left_out = set(values) - set(columns) - set(other) - RUN_KEYS[section]
    errors += [f"{k}: in the preset ({values[k]!r}) but not in the row" for k in sorted(left_out)]
    source = row["source"]
    if Path(row["preset"]).stem.startswith(("digits", "folder")):
        errors += [] if source == NO_PAPER else [f"source of a digits or folder row must read '{NO_PAPER}'"]
    elif "§" not in source:
        errors.append(f"source {source!r} names no reference-note section")
    return errors


# -- the checks per table --------------------------------------------------------------------------------
def distill_mismatches(row: dict[str, str], root: Path) -> list[str]:
    path = root / "experiments" / row["preset"]
    values = load_yaml(path)
    config = make_config(DistillConfig, values, str(path))
    validate_distill(config)
    errors = compare(row, config, values, DISTILL_COLUMNS, DISTILL)
    protocol = get_method(config.method).protocol
    if row["protocol"] != protocol:
        errors.append(f"protocol: row says {row['protocol']}, method {config.method} names {protocol}")
    if config.buffer_config != f"experiments/{row['buffer']}":
        return errors + [f"buffer: row says {row['buffer']}, preset has buffer_config {config.buffer_config!r}"]
    buffer = make_config(BufferConfig, load_yaml(root / config.buffer_config), config.buffer_config)
    validate_buffer(buffer)
    for column, value in (("zca", buffer.zca), ("expert recipe", recipe_label(buffer)),
                          ("buffer epochs", buffer.epochs)):
        if not same(row[column], value):
            errors.append(f"{column}: row says {row[column]}, {config.buffer_config} has {value!r}")
    if (buffer.dataset, buffer.model) != (config.dataset, config.model):
        errors.append(f"{config.buffer_config} trains {buffer.model} on {buffer.dataset}, not {config.model} on "
                      f"{config.dataset}")
    if config.max_start_epoch - 1 + config.expert_epochs > buffer.epochs:
        errors.append(f"start epochs up to {config.max_start_epoch - 1} + {config.expert_epochs} exceed the "
                      f"{buffer.epochs} expert epochs")
    return errors


def buffer_mismatches(row: dict[str, str], root: Path) -> list[str]:
    path = root / "experiments" / row["preset"]
    values = load_yaml(path)
    config = make_config(BufferConfig, values, str(path))
    validate_buffer(config)
    return compare(row, config, values, BUFFER_COLUMNS, BUFFER)


def krr_mismatches(row: dict[str, str], root: Path) -> list[str]:
    path = root / "experiments" / row["preset"]
    values = load_yaml(path)
    config = make_config(KRRConfig, values, str(path))
    validate_krr(config)
    return compare(row, config, values, KRR_COLUMNS, KRR)


def condense_mismatches(row: dict[str, str], root: Path) -> list[str]:
    """As the others, and the loop counts (outer/inner) that a dc or dsa preset runs with (– for dm)."""
    path = root / "experiments" / row["preset"]
    values = load_yaml(path)
    if values.get("method") == "dm":
        config, counts = make_config(DMConfig, values, str(path)), "–"
        validate_condense(config)
    else:
        config = make_config(GradMatchConfig, values, str(path))
        validate_gradmatch(config)
        counts = "/".join(map(str, loops(config)))
    errors = compare(row, config, values, CONDENSE_COLUMNS, CONDENSE)
    if row["loops"] != counts:
        errors.append(f"loops: row says {row['loops']}, the preset runs {counts}")
    return errors


def eval_mismatches(row: dict[str, str], root: Path) -> list[str]:
    """As the others, and the preset names a protocol and restates none of its values."""
    path = root / "experiments" / row["preset"]
    values = load_yaml(path)
    config = make_config(EvalConfig, values, str(path))
    errors = compare(row, config, values, EVAL_COLUMNS, EVAL)
    if config.protocol not in list_protocols():
        return errors + [f"names no registered protocol (protocol: {config.protocol})"]
    protocol = get_protocol(config.protocol)
    errors += [f"{k}: restates the {config.protocol} protocol's value {values[k]!r}; leave it out"
               for k in ("epochs", "batch_size", "momentum", "weight_decay", "dsa_strategy")
               if k in values and getattr(config, k) == getattr(protocol, k)]
    return errors


CHECKS = {DISTILL: distill_mismatches, BUFFER: buffer_mismatches, KRR: krr_mismatches,
          CONDENSE: condense_mismatches, EVAL: eval_mismatches}


def coverage(rows: list[dict[str, str]], root: Path, folders: tuple[str, ...]) -> tuple[set[str], set[str]]:
    """(preset files without a row, rows without a file)."""
    files = {f"{folder}/{p.name}" for folder in folders for p in (root / "experiments" / folder).glob("*.yaml")}
    listed = [row["preset"] for row in rows]
    assert len(listed) == len(set(listed)), "a preset has two rows"
    return files - set(listed), set(listed) - files


TABLES = parse_tables(DOC.read_text(encoding="utf-8"))
ROWS = [(section, row) for section in FOLDERS for row in TABLES.get(section, [])]


# -- tests -----------------------------------------------------------------------------------------------
def test_the_document_has_every_table():
    assert set(TABLES) >= set(FOLDERS)
    assert len(TABLES[DISTILL]) >= 40


@pytest.mark.parametrize("section", list(FOLDERS))
def test_every_preset_has_a_row_and_every_row_a_preset(section):
    missing, extra = coverage(TABLES[section], ROOT, FOLDERS[section])
    assert not missing, f"preset files without a row in docs/presets.md ({section}): {sorted(missing)}"
    assert not extra, f"rows in docs/presets.md ({section}) without a preset file: {sorted(extra)}"


@pytest.mark.parametrize("section, row", ROWS, ids=[row["preset"] for _, row in ROWS])
def test_preset_equals_its_row(section, row):
    assert CHECKS[section](row, ROOT) == []


def test_distill_rows_name_the_methods_protocols():
    protocols = {row["method"]: row["protocol"] for row in TABLES[DISTILL]}
    assert protocols == {"mtt": "mtt", "ftd": "mtt", "datm": "datm", "ast": "ast", "tesla": "mtt"}


# The comparison can fail: copies of presets with one value changed are caught.
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


def row_of(section: str, preset: str) -> dict[str, str]:
    return next(row for row in TABLES[section] if row["preset"] == preset)


def test_a_changed_distill_value_or_expert_recipe_is_caught(tmp_path):
    row = row_of(DISTILL, "datm/tiny_ipc1.yaml")
    root = copy_presets(tmp_path, "datm/tiny_ipc1.yaml", "buffer/tiny_gsam.yaml")
    assert distill_mismatches(row, root) == []
    edit(root, "datm/tiny_ipc1.yaml", "lr_img: 10000", "lr_img: 1000")
    edit(root, "datm/tiny_ipc1.yaml", "threshold: 1.0", "threshold: 1.1")
    edit(root, "datm/tiny_ipc1.yaml", "model: ConvNetD4", "model: ConvNetD4\nweight_perturb: true")
    edit(root, "buffer/tiny_gsam.yaml", "zca: true", "zca: false")
    edit(root, "buffer/tiny_gsam.yaml", "alpha: 0.3", "alpha: 1.0")
    errors = distill_mismatches(row, root)
    assert [e.split(":")[0] for e in errors] == ["lr_img", "threshold", "weight_perturb", "zca", "expert recipe"]


def test_a_wrong_buffer_or_a_short_buffer_is_caught(tmp_path):
    row = row_of(DISTILL, "ftd/cifar10_ipc50.yaml")
    root = copy_presets(tmp_path, "ftd/cifar10_ipc50.yaml", "buffer/cifar10_gsam_alpha1.yaml", "buffer/cifar10.yaml")
    edit(root, "buffer/cifar10_gsam_alpha1.yaml", "epochs: 50", "epochs: 40")
    assert [e.split(":")[0] for e in distill_mismatches(row, root)] == ["buffer epochs", "start epochs up to 39 + 2 "
                                                                        "exceed the 40 expert epochs"]
    edit(root, "ftd/cifar10_ipc50.yaml", "buffer/cifar10_gsam_alpha1.yaml", "buffer/cifar10.yaml")
    assert distill_mismatches(row, root)[0].startswith("buffer: row says buffer/cifar10_gsam_alpha1.yaml")


def test_a_changed_dc_dsa_dm_value_or_loop_count_is_caught(tmp_path):
    row = row_of(CONDENSE, "dsa/cifar10_ipc10.yaml")
    root = copy_presets(tmp_path, "dsa/cifar10_ipc10.yaml")
    assert condense_mismatches(row, root) == []
    edit(root, "dsa/cifar10_ipc10.yaml", "lr_img: 0.1", "lr_img: 0.1\nouter_loop: 5")
    assert [e.split(":")[0] for e in condense_mismatches(row, root)] == ["outer_loop", "loops"]


def test_an_eval_preset_restating_its_protocol_is_caught(tmp_path):
    row = row_of(EVAL, "eval/mtt.yaml")
    root = copy_presets(tmp_path, "eval/mtt.yaml")
    edit(root, "eval/mtt.yaml", "runs: 5", "runs: 5\nbatch_size: 256")
    errors = eval_mismatches(row, root)
    assert any(e.startswith("batch_size: in the preset") for e in errors)
    assert any("restates the mtt protocol's value 256" in e for e in errors)


def test_a_preset_without_a_row_and_a_row_without_a_preset_are_caught(tmp_path):
    root = copy_presets(tmp_path, "mtt/cifar10_ipc1.yaml", "mtt/digits_ipc1.yaml")
    rows = [row_of(DISTILL, "mtt/cifar10_ipc1.yaml"), row_of(DISTILL, "mtt/cifar10_ipc10.yaml")]
    assert coverage(rows, root, ("mtt",)) == ({"mtt/digits_ipc1.yaml"}, {"mtt/cifar10_ipc10.yaml"})


def test_the_parser_reads_cells_and_tokens():
    text = "## A\n\n| preset | x |\n|---|---|\n| `a.yaml` | 1e-5 |\n\n| preset | y |\n|---|---|\n| b | 2 |\n"
    assert parse_tables(text) == {"A": [{"preset": "a.yaml", "x": "1e-5"}]}
    assert same("1e-5", 1e-5) and same("–", None) and same("yes", True) and not same("no", True)
    assert not same("1000", 100.0) and tokens("lr_y=10 unroll=checkpointed") == {"lr_y": "10", "unroll": "checkpointed"}


IMAGENET_SUBSETS = ("imagenette", "imagewoof", "imagemeow", "imagesquawk", "imagefruit", "imageyellow")


@pytest.mark.parametrize("ipc", [1, 10])
def test_imagenet_subset_presets_share_mtts_one_setting(ipc):
    """MTT ran every ImageNet subset with one setting (issue #1): the presets differ only in the subset."""
    def load(subset):
        path = ROOT / "experiments" / "mtt" / f"{subset}_ipc{ipc}.yaml"
        config = make_config(DistillConfig, load_yaml(path), str(path))
        assert (config.dataset, config.buffer_config) == (subset, f"experiments/buffer/{subset}.yaml")
        return replace(config, dataset="", buffer_config="")

    first = load(IMAGENET_SUBSETS[0])
    assert all(load(subset) == first for subset in IMAGENET_SUBSETS[1:])
    assert (first.model, first.syn_steps, first.expert_epochs, first.max_start_epoch, first.lr_img, first.lr_lr,
            first.lr_teacher, first.batch_syn) == ("ConvNetD5", 20, 2, 10, 1e5, 1e-6, 0.01, 20 if ipc == 10 else None)
