"""``python -m dd.distill``: learn a small synthetic set with one of the registered methods.

    python -m dd.distill --method mtt --config experiments/mtt/digits_ipc1.yaml
    python -m dd.distill --config experiments/mtt/cifar10_ipc10.yaml --data-path data --resume
    python -m dd.distill --config experiments/dsa/digits_ipc10.yaml      # DC/DSA, DM: no buffer needed
    python -m dd.distill --plugin my_method.py --method mine             # a method of your own

Each method takes the flags of its own config: python -m dd.distill --method NAME --help. A method defined in
your own file registers with dd.distill.registry.register_method; --plugin FILE.py (or a module name; repeatable,
also DD_PLUGINS) imports it first (docs/adding-a-method.md).

Writes into --run-dir: synset/ (safetensors + JSON: images, labels, learned lr; load it with
dd.load_synset), synset_best/, grid.png, metrics.jsonl, config.json and a resumable checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dd import distributed
from dd.cli import run_cli
from dd.config import build_parser, parse_config, peek_option
from dd.distill import build_run
from dd.distill.registry import PLUGINS_ENV, MethodSpec, get_method, load_plugins, method_names


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    load_plugins(plugins_of(args))
    spec = get_method(peek_option(args, "method", "mtt"))
    config, _ = parse_config(spec.config, args, parser(spec))
    run = build_run(config, args)
    if distributed.is_main():
        print(f"config: {preset_of(args) or 'the defaults'} and the flags given; resolved in "
              f"{run.run_dir / 'config.json'}")
    run.run()
    if distributed.is_main():
        print(run.finished())
    return 0


def parser(spec: MethodSpec) -> argparse.ArgumentParser:
    """The parser of ``spec``'s config, with ``--plugin``; its help names every registered method."""
    others = ", ".join(method_names())
    description = (f"{__doc__}\nmethods: {others}. These are the flags of --method {spec.name} "
                   f"({spec.config.__name__}).")
    presets = sorted(Path("experiments", spec.name).glob("digits*.yaml"))
    result = build_parser(spec.config, f"python -m dd.distill --method {spec.name}", description,
                          str(presets[0]) if presets else f"experiments/{spec.name}/*.yaml")
    result.add_argument("--plugin", action="append", default=argparse.SUPPRESS, metavar="FILE.py|MODULE",
                        help=f"import this file or module first, so that the methods it registers can be named by "
                             f"--method (repeatable; also {PLUGINS_ENV}, separated by ':')")
    return result


def plugins_of(argv: Sequence[str]) -> list[str]:
    """The ``--plugin`` values of ``argv``, in order."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--plugin", action="append", default=[])
    return peek.parse_known_args(list(argv))[0].plugin


def preset_of(argv: Sequence[str] | None) -> str | None:
    """The ``--config`` file named in ``argv`` (default: this process's arguments), if any."""
    args = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


if __name__ == "__main__":
    run_cli(main)
