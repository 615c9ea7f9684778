"""The settings blocks and the one validation path: declared bounds, block checks run most general first, and
composition keeps one flat field per setting."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import pytest

from dd.config import build_parser, make_config, opt, validate
from dd.errors import DDError
from dd.settings import DataSettings, InRunEvaluation, RunControl, ValidationSplit


@dataclass
class Composed(DataSettings, ValidationSplit, RunControl, InRunEvaluation):
    ratio: float = opt(0.5, "a method knob", bounds="unit")
    calls: list = dataclasses.field(default_factory=list, metadata={"help": "order of the checks"})

    def check(self) -> None:
        self.calls.append("method")


def test_composition_keeps_one_flat_field_per_setting():
    composed = {f.name: f for f in dataclasses.fields(Composed)}
    for block in (DataSettings, ValidationSplit, RunControl, InRunEvaluation):
        for f in dataclasses.fields(block):  # the block's own declaration: its default, help and bounds
            assert (composed[f.name].default, composed[f.name].metadata) == (f.default, f.metadata)
    flags = build_parser(Composed, "prog", "").format_help()
    assert "--val-fraction" in flags and "--eval-runs" in flags and "--ratio" in flags


@pytest.mark.parametrize("field,value,need", [
    ("iterations", 0, "positive"), ("eval_every", -1, ">= 0"), ("val_fraction", 1.0, "in (0, 1)"),
    ("ratio", 1.5, "in [0, 1]"), ("image_size", -3, "positive"),
])
def test_declared_bounds_refuse_out_of_range_values(field, value, need):
    config = make_config(Composed, {field: value})
    with pytest.raises(DDError, match=re.escape(f"--{field.replace('_', '-')} must be {need}, got {value}")):
        validate(config)


def test_bounds_refuse_non_finite_and_pass_unset_optionals():
    with pytest.raises(DDError, match="--ratio must be a finite number, got nan"):
        validate(make_config(Composed, {"ratio": float("nan")}))
    validate(make_config(Composed, {"image_size": None, "eval_batch_size": None}))


def test_block_checks_run_before_the_method_check():
    config = make_config(Composed, {"dataset": "nosuch"})
    with pytest.raises(DDError, match="unknown dataset 'nosuch'"):
        validate(config)
    assert config.calls == []  # the data block refused before the method's own check ran
    config = make_config(Composed, {})
    validate(config)
    assert config.calls == ["method"]


def test_seed_checks_see_the_composed_fields():
    with pytest.raises(DDError, match="--val-seed must be in"):
        validate(make_config(Composed, {"val_seed": -1}))
    with pytest.raises(DDError, match="--seed must be in"):
        validate(make_config(Composed, {"seed": 2**63}))


def test_unknown_bounds_name_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown bounds"):
        opt(1, "x", bounds="odd")
