"""Config resolution: defaults < YAML preset < command-line flags, with one-line errors."""

from dataclasses import dataclass

import pytest

from dd.config import build_parser, opt, parse_config
from dd.errors import DDError


@dataclass
class Toy:
    lr: float = opt(0.01, "learning rate")
    steps: int = opt(10, "steps")
    flag: bool = opt(False, "a switch")
    name: str | None = opt(None, "optional")
    mode: str = opt("a", "mode", choices=("a", "b"))


def parse(argv):
    return parse_config(Toy, argv, build_parser(Toy, "toy", "toy"))[0]


def test_defaults_then_yaml_then_flags(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("lr: 1e-5\nsteps: 3\nflag: true\n")  # PyYAML reads 1e-5 as a string
    assert parse([]) == Toy()
    assert parse(["--config", str(preset)]) == Toy(lr=1e-5, steps=3, flag=True)
    assert parse(["--config", str(preset), "--steps", "7", "--no-flag"]) == Toy(lr=1e-5, steps=7, flag=False)


def test_booleans_parse_false_as_false(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("flag: 'False'\n")
    assert parse(["--config", str(preset)]).flag is False
    assert parse(["--flag"]).flag is True


def test_optional_values_accept_null(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("name: null\n")
    assert parse(["--config", str(preset)]).name is None
    assert parse(["--name", "x"]).name == "x"


@pytest.mark.parametrize("text, message", [
    ("lr: [1, 2]\n", "must be a float"),
    ("steps: 1.5\n", "must be an int"),
    ("stepz: 3\n", "unknown key 'stepz'"),
    ("mode: c\n", "must be one of a, b"),
    ("lr: [1,\n", "not valid YAML"),
    ("- 1\n- 2\n", "must be a mapping"),
])
def test_bad_presets_name_the_problem(tmp_path, text, message):
    preset = tmp_path / "p.yaml"
    preset.write_text(text)
    with pytest.raises(DDError, match=message):
        parse(["--config", str(preset)])


def test_missing_preset_and_bad_flag_value(tmp_path):
    with pytest.raises(DDError, match="does not exist"):
        parse(["--config", str(tmp_path / "nope.yaml")])
    with pytest.raises(DDError, match="must be an int"):
        parse(["--steps", "many"])


STAGES = {"buffer": ("dd.buffer.__main__", "dd.buffer.config", "BufferConfig"),
          "distill": ("dd.distill.__main__", "dd.distill.config", "MTTConfig"),
          "eval": ("dd.eval.__main__", "dd.eval.config", "EvalConfig")}


@pytest.mark.parametrize("stage", STAGES)
def test_help_states_each_default_once_and_names_a_preset_the_stage_accepts(stage, capsys):
    import importlib
    import re

    from dd.config import load_yaml, make_config

    main_module, config_module, config_name = STAGES[stage]
    with pytest.raises(SystemExit):
        importlib.import_module(main_module).main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert not re.search(r"default[^()]*\) \(default", text), "a default is stated twice"
    example = re.search(r"YAML preset \(e\.g\. (\S+)\)", text).group(1)
    cls = getattr(importlib.import_module(config_module), config_name)
    make_config(cls, load_yaml(example), example)  # the example in --help is one this stage takes
