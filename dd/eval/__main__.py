"""``python -m dd.eval``: retrain fresh networks on a synthetic set and report test accuracy beside
the baselines, under a named evaluation protocol (``dd.protocols``): ``--protocol mtt`` (the reference
``evaluate_synset``), ``datm``, ``ast``, ``dc`` (300 epochs, no augmentation), ``dsa`` or ``dm`` (1000 epochs
with DSA); by default the one the set's method names (its metadata), and ``--epochs`` etc. override single
values. The baselines run under every protocol used: random real images beside a DC set train as the set does.

    python -m dd.eval --synset runs/mtt-digits-ipc1/synset --models ConvNet,ResNet18 --runs 5 --baseline random,full

``--models`` takes names and named pools (``pool:M`` for the DC code's MLP, ConvNet, LeNet, AlexNet, VGG11,
ResNet18; ``pool:BN``; the ConvNet ablations ``pool:W``, ``pool:D``, ``pool:A``, ``pool:P``, ``pool:N``),
adapted to the image size (dd/eval/pools.py); what was swapped or left out is printed.

Soft labels [N,K] train with soft cross-entropy and test by argmax accuracy. Since soft labels and
training-time augmentation can inflate results (the point of DD-Ranking, Li et al. 2025),
``--labels hard,auto --augment dsa,none`` evaluates every (labels, augment) combination: ``hard``
trains on the argmax of soft labels, ``auto`` on the set's own labels, ``soft`` insists on soft ones;
``none`` turns DSA off. Random real images (always hard labels) run under each ``--augment`` setting.

Several sets evaluate side by side in one call (``--synset A --synset B`` or a comma list), with the
baselines once per ipc. Each set is verified against its checksum and its metadata against its tensors,
then checked against the dataset (image shape, classes, ipc) before anything trains.

Writes results.json (a list ``runs`` of records: the set's identity (SHA-256 of its tensor file, path,
method, iteration, verified), source, ipc, labels, augment, dataset and a fingerprint of its data, the
split, the complete protocol, model, seed, accuracy) and results.md: one section per dataset, split and
protocol, a row per set or baseline and a column per architecture, so a cell only ever holds the seeds
of one run setting (see dd/eval/report.py). Rerunning skips exactly the runs already recorded: a
changed set, other data or another protocol is trained anew.

``--protocol transfer`` evaluates a KRR-ST transfer set instead (pre-train, then linear probe and
fine-tuning on target datasets): see python -m dd.eval --protocol transfer --help.

Under ``torchrun --nproc-per-node K -m dd.eval ...`` the K processes share the runs (see dd/eval/results.py).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from dd import distributed
from dd.cli import run_cli
from dd.config import build_parser, parse_config, peek_option
from dd.eval import transfer
from dd.eval.config import EvalConfig
from dd.eval.report import results_markdown
from dd.eval.run import evaluate
from dd.eval.transfer import TransferConfig, evaluate_transfer


def main(argv: Sequence[str] | None = None) -> int:
    if peek_option(argv, "protocol", "classification") == "transfer":
        return transfer_main(argv)
    config, _ = parse_config(EvalConfig, argv, build_parser(EvalConfig, "python -m dd.eval", __doc__,
                                                            "experiments/eval/digits.yaml"))
    done = evaluate(config)
    if not distributed.is_main():  # under torchrun rank 0 reports
        return 0
    print(results_markdown(done.runs))
    print(finished(done.results, done.markdown, config.synset_paths()))
    return 0


def transfer_main(argv: Sequence[str] | None) -> int:
    """``python -m dd.eval --protocol transfer``: a KRR-ST transfer set (dd/eval/transfer.py)."""
    parser = build_parser(TransferConfig, "python -m dd.eval --protocol transfer", transfer.__doc__,
                          "a file holding 'target: digits-5to9'")
    config, _ = parse_config(TransferConfig, argv, parser)
    done = evaluate_transfer(config)
    print(transfer.markdown(done.runs))
    print(f"results: {done.results}")
    return 0


def finished(results_path: Path, markdown: Path, synsets: list[str]) -> str:
    """The stage's last lines: where the records and tables are, and the report command for the sets' runs."""
    runs = list(dict.fromkeys(str(Path(p).parent) for p in synsets if (Path(p).parent / "config.json").is_file()))
    lines = [f"results: {results_path} (every record); tables: {markdown}"]
    if runs:
        lines.append(f"next: report on the run: {shlex.join(['python', '-m', 'dd.report', *runs])}")
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(main)
