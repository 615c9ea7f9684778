"""The presets of ``experiments/`` as data, and ``docs/presets.md`` written from them.

A preset is read by one config class: its stage's (``BufferConfig``, ``EvalConfig``) or, for ``dd.distill``, its
method's. It states only what differs from that class's defaults, or from the preset it names as ``base``
(``dd.config.load_yaml``), plus the keys that say what it is (``IDENTITY``), and one ``# Source: ...`` comment line
says where its values come from. ``presets_markdown`` renders the tables of docs/presets.md from the files
themselves (resolved values, the keys without a column, the source); ``python scripts/presets_doc.py`` writes it.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dd.buffer.config import BufferConfig
from dd.config import BASE_KEY, load_yaml, make_config, read_yaml
from dd.distill.config import MTTConfig
from dd.distill.gradmatch import loops
from dd.distill.registry import get_method
from dd.errors import DDError
from dd.eval.config import EvalConfig
from dd.tune.trial import config_class as method_config_class

SOURCE = "# Source:"
# Keys a preset keeps even where they equal the default (or its base's value): they say what the preset is.
IDENTITY = frozenset({"method", "dataset", "ipc", "model", "buffer_config", "protocol", "num_images"})


@dataclass(frozen=True)
class Preset:
    """One preset file: ``name`` relative to ``experiments/``, its keys as written (``own``, ``base`` included),
    the keys it resolves to (``values``, its base's under its own), the config they build, and its source."""

    name: str
    own: dict[str, Any]
    values: dict[str, Any]
    config: Any
    source: str


def config_class(folder: str, values: dict[str, Any]) -> type:
    """The class that reads a preset of ``experiments/<folder>/``: the stage's, or for dd.distill its method's."""
    if folder == "buffer":
        return BufferConfig
    if folder == "eval":
        return EvalConfig
    return method_config_class(str(values.get("method", "mtt")))


def source_of(path: Path) -> str:
    """The text of the file's one ``# Source:`` comment line (DDError when it has none or several)."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith(SOURCE)]
    if len(lines) != 1:
        raise DDError(f"preset {path} has {len(lines)} '{SOURCE}' lines; give it exactly one, saying where its "
                      "values come from")
    return lines[0][len(SOURCE):].strip()


def preset_config(path: str | Path) -> Any:
    """The config a preset file resolves to (its base followed), built by the class of its folder and method."""
    path = Path(path)
    values = load_yaml(path)
    return make_config(config_class(path.parent.name, values), values, str(path))


def read_preset(root: Path, name: str) -> Preset:
    """The preset ``experiments/<name>`` under ``root``."""
    path = root / "experiments" / name
    return Preset(name, read_yaml(path), load_yaml(path), preset_config(path), source_of(path))


def preset_names(root: Path) -> list[str]:
    """Every preset under ``root/experiments``, as ``<folder>/<file>.yaml``, sorted."""
    return sorted(p.relative_to(root / "experiments").as_posix() for p in (root / "experiments").glob("*/*.yaml"))


def restated(root: Path, name: str) -> list[str]:
    """The keys of a preset (outside ``IDENTITY``) whose value is what the preset resolves to without them: the
    class default, or its base's value. A preset should hold none."""
    preset = read_preset(root, name)
    cls = type(preset.config)
    base = load_yaml((root / "experiments" / name).parent / preset.own[BASE_KEY]) if BASE_KEY in preset.own else {}
    redundant = []
    for key in preset.own:
        field = key.replace("-", "_")
        if key == BASE_KEY or field in IDENTITY:
            continue
        without = {k: v for k, v in preset.values.items() if k != key}
        if key in base:
            without[key] = base[key]
        if getattr(make_config(cls, without, name), field) == getattr(preset.config, field):
            redundant.append(key)
    return redundant


# -- docs/presets.md ------------------------------------------------------------------------------------------
def cell(value: Any) -> str:
    """A value as the tables show it: – for None, yes/no for a bool, numbers short (1e-4, 0.01, 1000, 1e5)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value and not 1e-3 <= abs(value) < 1e5:
            mantissa, exponent = f"{value:e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return f"{value:g}"
    return str(value)


def recipe_label(buffer: BufferConfig) -> str:
    """The expert recipe in a word: sgd (MTT's plain SGD), gsam α=<alpha> (FTD/DATM), smooth (AST's SGD with
    momentum, wd, decay, warm-up, penalty), or the self-supervised teacher's name."""
    if buffer.teacher != "none":
        return buffer.teacher
    if buffer.optimizer == "gsam":
        return f"gsam α={buffer.alpha:g}"
    plain = (buffer.momentum, buffer.weight_decay, buffer.lr_decay_epoch, buffer.loss_warmup, buffer.gp_lambda)
    return "sgd" if plain == (0, 0, None, False, 0) else "smooth"


def buffer_of(root: Path, config: MTTConfig) -> BufferConfig:
    """The buffer preset a distillation preset names (``buffer_config``, relative to the repository root)."""
    return make_config(BufferConfig, load_yaml(root / config.buffer_config), config.buffer_config)


def distill_derived(root: Path, preset: Preset) -> dict[str, str]:
    """The distillation columns read from elsewhere: its buffer preset's ZCA, recipe and epochs, its protocol."""
    buffer = buffer_of(root, preset.config)
    return {"zca": cell(buffer.zca), "buffer": preset.config.buffer_config.removeprefix("experiments/"),
            "expert recipe": recipe_label(buffer), "buffer epochs": cell(buffer.epochs),
            "protocol": get_method(preset.config.method).protocol}


def condense_derived(root: Path, preset: Preset) -> dict[str, str]:
    """outer/inner loop counts of a dc or dsa preset (– for dm, one image update per network)."""
    return {"loops": "–" if preset.config.method == "dm" else "/".join(map(str, loops(preset.config)))}


@dataclass(frozen=True)
class Section:
    """One table of docs/presets.md: its folders, the config values it shows as columns, the columns read from
    elsewhere (``derived``) and the text below it."""

    title: str
    folders: tuple[str, ...]
    columns: tuple[str, ...]
    derived: tuple[str, ...] = ()
    derive: Callable[[Path, Preset], dict[str, str]] | None = None
    notes: str = ""


SECTIONS = (
    Section("Distillation presets", ("mtt", "ftd", "datm", "ast", "tesla"),
            ("method", "dataset", "model", "ipc", "syn_steps", "expert_epochs", "max_start_epoch", "lr_img", "lr_lr",
             "lr_teacher", "batch_syn", "iterations"),
            ("zca", "buffer", "expert recipe", "buffer epochs", "protocol"), distill_derived,
            "`zca`, `expert recipe` and `buffer epochs` are the buffer preset's (`buffer_config`): `sgd` = MTT's plain "
            "SGD (constant lr, no momentum, no weight decay), `gsam α=a` = FTD/DATM flat experts, `smooth` = AST's "
            "experts (the buffer table has their values). `batch_syn` – is the whole set; `max_start_epoch` is "
            "exclusive (starts are drawn from [min_start_epoch, max_start_epoch)). `protocol` is the evaluation "
            "protocol the method names (`dd/protocols.py`), which `python -m dd.eval` uses for its sets. Why the "
            "presets take these values: docs/reference-trajectory-methods.md, docs/reference-tesla.md, "
            "docs/reference-imagenet-subsets.md."),
    Section("Buffer presets", ("buffer",),
            ("dataset", "model", "zca", "optimizer", "lr", "momentum", "weight_decay", "batch_size", "epochs",
             "num_experts"),
            notes="`python -m dd.buffer --config <preset>`; a distillation preset names its buffer preset "
                  "(`buffer_config`) and finds the store that preset writes."),
    Section("KRR-ST presets", ("krr_st",),
            ("method", "dataset", "model", "num_images", "iterations", "batch_real", "lr"),
            notes="The teacher (a Barlow Twins ResNet18 in the reference, downloaded there, its training recipe not "
                  "in its repository) is not a preset: pass `--teacher`. docs/reference-trajectory-methods.md has "
                  "the pool models."),
    Section("DC, DSA and DM presets", ("dc", "dsa", "dm"),
            ("method", "dataset", "model", "ipc", "iterations", "lr_img", "batch_real", "pix_init"),
            ("loops",), condense_derived,
            "`python -m dd.distill --method dc|dsa|dm` (no buffer). `loops` is outer/inner: image updates per fresh "
            "network and the network's epochs on the synthetic set between them (the DC code's `get_loops` by IPC; – "
            "for DM). A run makes `iterations + 1` image updates, as the reference's `range(Iteration + 1)`. Every "
            "preset keeps the reference's lr_net 0.01 and batch_train 256, the defaults. DC and DSA report no "
            "CIFAR-100 IPC 50, so there is no preset for it. Each set names its method's evaluation protocol "
            "(`dd/protocols.py`): `dc` 300 epochs without augmentation, `dsa` and `dm` 1000 epochs with DSA; the in-"
            "run evaluations use it too, `eval_epochs` overriding the epochs. Sources: docs/reference-dc-dsa-dm.md; "
            "the digits rows' tuning: docs/tuning-condense-digits.md."),
    Section("Evaluation presets", ("eval",), ("protocol", "models", "runs"),
            notes="An evaluation preset names a protocol and sets only what differs from it; `python -m dd.eval "
                  "--protocol NAME` with `--epochs`, `--batch-size`, ... does the same from the command line."),
)

HEADER = """# Presets and the settings they reproduce

<!-- Generated by `python scripts/presets_doc.py` from experiments/*/*.yaml; edit the presets, then rerun it. -->

One row per YAML file in `experiments/`: its values as dd resolves them (the config class's defaults, under the
preset it names as `base`, under its own keys), `other` = every key it sets (itself or through its base) that has
no column, and `source` = its `# Source:` line. A preset states only what differs from its config class's
defaults or its base, plus the keys that say what it is (method, dataset, ipc, model, buffer_config; protocol and
num_images). `base` is a path relative to the preset's own folder. Rows for the embedded `digits` set and the
`folder` presets (a small folder of one's own images, see the README's "Your own data") have no paper setting.
– is none.
"""


def row(root: Path, section: Section, preset: Preset) -> list[str]:
    """The table cells of one preset."""
    shown = set(section.columns) | {"buffer_config"}
    other = [f"{BASE_KEY}={preset.own[BASE_KEY]}"] if BASE_KEY in preset.own else []
    other += [f"{k}={cell(getattr(preset.config, k.replace('-', '_')))}" for k in preset.values
              if k.replace("-", "_") not in shown]
    derived = section.derive(root, preset) if section.derive else {}
    return [preset.name, *(cell(getattr(preset.config, c)) for c in section.columns),
            *(derived[c] for c in section.derived), " ".join(other) or "–", preset.source]


def presets_markdown(root: Path) -> str:
    """docs/presets.md for the presets under ``root/experiments``: one table per section, one row per file."""
    names = preset_names(root)
    placed = {n for s in SECTIONS for n in names if Path(n).parent.name in s.folders}
    if placed != set(names):
        raise DDError(f"presets in no table of docs/presets.md: {', '.join(sorted(set(names) - placed))}; add "
                      "their folder to dd.report.presets.SECTIONS")
    parts = [HEADER]
    for section in SECTIONS:
        header = ["preset", *section.columns, *section.derived, "other", "source"]
        lines = [f"## {section.title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for folder in section.folders:
            for name in (n for n in names if Path(n).parent.name == folder):
                lines.append("| " + " | ".join(row(root, section, read_preset(root, name))) + " |")
        parts.append("\n".join(lines) + "\n\n" + textwrap.fill(section.notes, 115) + "\n")
    return "\n".join(parts)
