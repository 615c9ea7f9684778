"""Reproduce docs/results-fashion-mnist.md and docs/results-fashion-mnist.json: dd's methods on Fashion-MNIST
(ConvNet, test split), each set scored under its own paper's protocol, beside random real images under the same
protocol and the published numbers of DC's Table 1.

    python scripts/results_fashion_mnist.py                         # every CPU row (hours on a 2-core CPU; resumable)
    python scripts/results_fashion_mnist.py --rows dm@1,mtt@1 --random-ipcs 1      # some rows
    python scripts/results_fashion_mnist.py --paper --print         # the paper-setting commands (for a GPU)

A row is a method at an IPC. Its preset, experiments/<method>/fashionmnist_ipc<k>.yaml, holds the paper settings and
runs unchanged on a GPU (--paper). A CPU row runs the same preset with the budget flags of ROWS below (fewer
iterations; the trajectory methods over EXPERTS: 2 experts of 4 epochs on 600 training images per class), about
20 minutes of one core each for the distillation (DSA and DATM at IPC 10, whose iterations take 9 and 4 minutes,
about half an hour); the report names every row's budget and its seconds per iteration.

Choices read the validation split only: the in-run evaluations (validation split, --eval-runs networks) pick
synset_best, and the test split is read once, for that set, for the final accuracy only (--no-max-over-epochs: AST's
periodic tests, whose maximum is a test-split selection, cost 5x the training). Random real images train under every
protocol a row uses (10 seeds at IPC 1). Data: the Fashion-MNIST idx files where dd finds them (Debian's
dataset-fashion-mnist, or --data-path). Every stage resumes: rerunning after an interruption skips finished experts,
iterations and evaluations, and --carry docs/results-fashion-mnist.json keeps rows this call does not rerun.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _results import cell, fail, int_list, read_runs, seconds_per_iteration, select, sh

from dd.buffer.config import BufferConfig, store_root
from dd.cli import flag
from dd.config import load_yaml, make_config
from dd.device import describe_machine
from dd.report.presets import preset_config

DATASET = "fashionmnist"
CLASSES = 10
EXPERTS = {"num_experts": 2, "epochs": 4, "train_per_class": 600}  # a CPU row's experts, on its buffer preset
# "method@ipc" -> the dd.distill flags of its CPU row on top of the preset. Start epochs are cut to fit EXPERTS'
# 4 epochs (start + expert_epochs <= 4); syn_steps, learning rates and the rest stay the paper's.
# An IPC-10 evaluation network takes 12-14 minutes of one core (1000 epochs), so an IPC-10 row validates in-run
# with one network of 300 epochs (its selection's proxy) and tests 3 seeds (test_seeds).
IPC10_EVAL = ["--eval-runs", "1", "--eval-epochs", "300"]
ROWS: dict[str, list[str]] = {
    "mtt@1": ["--iterations", "35"],
    "ftd@1": ["--iterations", "35"],
    "datm@1": ["--iterations", "25", "--max-start-epoch", "2"],
    "ast@1": ["--iterations", "30", "--max-start-epoch", "1"],
    "tesla@1": ["--iterations", "35", "--max-start-epoch", "2"],
    "dc@1": ["--iterations", "40"],
    "dsa@1": ["--iterations", "40"],
    "dm@1": ["--iterations", "45"],
    "dm@10": ["--iterations", "40", *IPC10_EVAL],
    "dsa@10": ["--iterations", "3", "--eval-every", "3", *IPC10_EVAL],  # ~9 min an iteration: validated at the end
    "mtt@10": ["--iterations", "16", "--max-start-epoch", "2", *IPC10_EVAL],
    "datm@10": ["--iterations", "6", "--max-start-epoch", "2", "--current-max-start-epoch", "2", *IPC10_EVAL],
}
# DC's Table 1 (Zhao, Mopuri, Bilen, ICLR 2021), Fashion-MNIST, ConvNet: row -> {ipc: "mean ± std"}
PUBLISHED = {
    "random real": {1: "51.4 ± 3.8", 10: "73.8 ± 0.7", 50: "82.5 ± 0.7"},
    "dc": {1: "70.5 ± 0.6", 10: "82.3 ± 0.4", 50: "83.6 ± 0.4"},
    "dsa": {1: "70.6 ± 0.6", 10: "84.6 ± 0.3", 50: "88.7 ± 0.2"},
    "full data": {None: "93.5 ± 0.1"},
}


def parse_row(row: str) -> tuple[str, int]:
    method, _, ipc = row.partition("@")
    if row not in ROWS:
        fail(f"unknown row {row!r}; choose from {', '.join(ROWS)}")
    return method, int(ipc)


def test_seeds(ipc: int) -> int:
    """A row's default test seeds: 5, or 3 where one network takes the 12-14 minutes of IPC 10 (IPC10_EVAL)."""
    return 5 if ipc == 1 else 3


def preset(method: str, ipc: int) -> str:
    return f"experiments/{method}/{DATASET}_ipc{ipc}.yaml"


def budget_flags(method: str, ipc: int, paper: bool) -> list[str]:
    """The row's dd.distill flags beyond its preset: none for --paper; else ROWS', with two in-run evaluations of
    two networks where ROWS does not say."""
    if paper:
        return []
    flags = ROWS[f"{method}@{ipc}"]
    iterations = int(flags[flags.index("--iterations") + 1])
    every = [] if "--eval-every" in flags else ["--eval-every", str(max(1, iterations // 2))]
    runs = [] if "--eval-runs" in flags else ["--eval-runs", "2"]
    return [*flags, *every, *runs]


def budget_text(method: str, ipc: int, paper: bool) -> str:
    """The row's budget as the report shows it: its flags, and its experts' for a trajectory method."""
    if paper:
        return "paper"
    buffer_preset = load_yaml(preset(method, ipc)).get("buffer_config")
    experts = " over experts " + " ".join(expert_flags(buffer_preset)) if buffer_preset else ""
    return " ".join(ROWS[f"{method}@{ipc}"]) + experts


def budget_experts(buffer_preset: str) -> dict:
    """EXPERTS' settings for ``buffer_preset``: where the preset decays its lr once (AST's experts, after epoch 26
    of 50), the decay moves to the same fraction of EXPERTS' epochs, so that the short experts keep its shape."""
    config = make_config(BufferConfig, load_yaml(buffer_preset), f"buffer preset {buffer_preset}")
    settings: dict = dict(EXPERTS)
    if config.lr_decay_epoch is not None:
        full_lr = (config.lr_decay_epoch + 1) / config.epochs  # the fraction of epochs run at the starting lr
        settings["lr_decay_epoch"] = min(max(round(full_lr * EXPERTS["epochs"]) - 1, 0), EXPERTS["epochs"] - 2)
    return settings


def expert_flags(buffer_preset: str) -> list[str]:
    return [f for key, value in budget_experts(buffer_preset).items() for f in (flag(key), str(value))]


def budget_config(buffer_preset: str) -> BufferConfig:
    """``buffer_preset`` with the budget experts' settings: what a CPU row's dd.buffer trains."""
    return make_config(BufferConfig, {**load_yaml(buffer_preset), **budget_experts(buffer_preset)},
                       f"buffer preset {buffer_preset}")


def budget_store(buffer_preset: str, buffer_dir: Path) -> Path:
    """The store that dd.buffer writes for ``buffer_preset`` with the budget experts' settings."""
    config = budget_config(buffer_preset)
    return store_root(str(buffer_dir), config.dataset, config.model, config.recipe().to_dict())


def commands(method: str, ipc: int, work: Path, paper: bool, data: list[str], seeds: int) -> list[list[str]]:
    """The dd stages of one row: its experts (trajectory methods), the distillation, the test evaluation."""
    config = load_yaml(preset(method, ipc))
    run_dir = work / f"{method}-ipc{ipc}"
    stages, store = [], []
    if "buffer_config" in config:
        store = ["--buffer-dir", str(work / "buffers")]
        stages.append(["dd.buffer", "--config", config["buffer_config"], *store, *data,
                       *([] if paper else expert_flags(config["buffer_config"]))])
        if not paper:  # the budget experts are not the buffer preset's recipe: name their store
            budget = budget_store(config["buffer_config"], work / "buffers")
            store += ["--buffer", str(budget), "--buffer-config", "none"]
    stages.append(["dd.distill", "--config", preset(method, ipc), "--run-dir", str(run_dir), "--resume", *store,
                   *data, *budget_flags(method, ipc, paper)])
    stages.append(["dd.eval", "--synset", str(run_dir / "synset_best"), "--runs", str(seeds), "--no-max-over-epochs",
                   "--out", str(run_dir / "test"), *data])
    return stages


def set_protocol(run_dir: Path) -> str:
    return json.loads((run_dir / "synset_best" / "synset.json").read_text())["protocol"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows method@ipc")
    parser.add_argument("--seeds", type=int, default=None,
                        help="test evaluation seeds per distilled set (default: 5 at IPC 1, 3 at IPC 10)")
    parser.add_argument("--random-ipcs", default="1,10,50", help="IPCs of the random real rows (empty: none)")
    parser.add_argument("--random-seeds", default="10,5,3",
                        help="seeds of the random real rows, one per --random-ipcs entry")
    parser.add_argument("--paper", action="store_true", help="the presets' paper settings, no CPU budget")
    parser.add_argument("--print", action="store_true", help="print the commands and stop")
    parser.add_argument("--random-protocols", default="",
                        help="protocols of the random real rows (default: every protocol of the rows run)")
    parser.add_argument("--data-path", default=None, help="folder of the Fashion-MNIST files (default: dd's search)")
    parser.add_argument("--work", default="runs/results-fashion-mnist", help="folder for the runs and evaluations")
    parser.add_argument("--out", default="docs", help="where results-fashion-mnist.md/.json are written")
    parser.add_argument("--carry", default="", help="an earlier results-fashion-mnist.json whose rows are kept")
    parser.add_argument("--full-epoch", action="store_true",
                        help="time the whole training split under protocol dc for --epochs 1 (2 epochs run)")
    args = parser.parse_args()
    work = Path(args.work) / ("paper" if args.paper else "cpu")
    data = ["--data-path", args.data_path] if args.data_path else []
    rows = [parse_row(r) for r in args.rows.split(",") if r]
    random_ipcs = int_list(args.random_ipcs, "--random-ipcs")
    random_seeds = int_list(args.random_seeds, "--random-seeds")
    if len(random_seeds) < len(random_ipcs):
        fail(f"--random-seeds names {len(random_seeds)} seed counts for {len(random_ipcs)} --random-ipcs")

    if args.print:
        for method, ipc in rows:
            for stage in commands(method, ipc, work, args.paper, data, args.seeds or test_seeds(ipc)):
                print("python -m " + " ".join(stage))
        return
    runs: list[dict] = []
    speed: dict[str, float | None] = {}
    protocols: set[str] = set()
    for method, ipc in rows:
        for stage in commands(method, ipc, work, args.paper, data, args.seeds or test_seeds(ipc)):
            sh(*stage)
        run_dir = work / f"{method}-ipc{ipc}"
        speed[f"{method}@{ipc}"] = seconds_per_iteration(run_dir)
        protocols.add(set_protocol(run_dir))
        runs += read_runs(run_dir / "test", row=method, ipc_row=ipc, budget=budget_text(method, ipc, args.paper))
    protocols = set(filter(None, args.random_protocols.split(","))) or protocols
    for ipc, seeds in zip(random_ipcs, random_seeds, strict=False):
        for protocol in sorted(protocols):
            folder = work / f"random-ipc{ipc}-{protocol}"
            sh("dd.eval", "--dataset", DATASET, "--ipc", str(ipc), "--baseline", "random", "--protocol", protocol,
               "--no-max-over-epochs", "--runs", str(seeds), "--out", str(folder), *data)
            runs += read_runs(folder, row="random real", ipc_row=ipc)
    full = None
    if args.full_epoch:
        tic = time.perf_counter()
        sh("dd.eval", "--dataset", DATASET, "--baseline", "full", "--protocol", "dc", "--epochs", "1", "--runs", "1",
           "--out", str(work / "full-epoch"), *data)
        full = {"seconds": time.perf_counter() - tic, "epochs_run": 2}
    command = report_command(args)
    runs = [{**r, "command": r.get("command", command)} for r in runs]
    if args.carry:
        earlier = json.loads(Path(args.carry).read_text())
        done = {(r["row"], r["ipc_row"], r["protocol"]["name"]) for r in runs}
        runs += [r for r in earlier["runs"] if (r["row"], r["ipc_row"], r["protocol"]["name"]) not in done]
        speed = {**earlier.get("speed", {}), **{k: v for k, v in speed.items() if v}}
        full = full or earlier.get("full_epoch")
    write_report(runs, speed, full, Path(args.out), command)


def same_training(a: dict, b: dict, images: int) -> bool:
    """Whether the recorded protocols ``a`` and ``b`` train the same network on ``images`` images from the same
    seed: equal in every value but the name and the lr (a set's own, random's 0.01), and in the batch size unless
    both batches hold every image (one batch an epoch: datm's 128 and mtt's 256 on 100 images)."""
    ignored = {"name", "lr"} | ({"batch_size"} if min(a["batch_size"], b["batch_size"]) >= images else set())
    return {k: v for k, v in a.items() if k not in ignored} == {k: v for k, v in b.items() if k not in ignored}


def random_beside(row: dict, randoms: list[dict], images: int) -> tuple[list[dict], str]:
    """The random real records beside a row's record ``row``, and their protocol's name: those under the row's own
    protocol, else those of the first protocol (by name) that trains the same network (``same_training``)."""
    randoms = [r for r in randoms if r["dataset"] == row["dataset"]]
    for name in sorted({r["protocol"]["name"] for r in randoms}, key=lambda n: (n != row["protocol"]["name"], n)):
        found = [r for r in randoms
                 if r["protocol"]["name"] == name and same_training(r["protocol"], row["protocol"], images)]
        if found:
            return found, name
    return [], ""


def write_report(runs: list[dict], speed: dict[str, float | None], full: dict | None, out: Path,
                 command: str) -> None:
    """results-fashion-mnist.md (a table per IPC: each row's protocol, test accuracy, random real under the same
    protocol, the published number, budget and s/iteration; the whole dataset's time; the paper-setting commands
    with their projected time on this CPU) and the .json of every record."""
    machine = describe_machine()
    lines = ["# dd on Fashion-MNIST beside DC's Table 1", "",
             f"Produced by `{command}` on {machine} (rows marked ‡ by the command their records name). Test "
             "accuracy in % (mean ± population std over seeds), ConvNet distilled and evaluated, each set under "
             "its method's protocol (dd/protocols.py) and random real images under the same protocol (or, named in the "
             "cell, one that trains the same network: dm's values are dsa's; datm is mtt with a batch of 128, "
             "which 100 images never fill). Published: "
             "DC's Table 1 (Zhao, Mopuri, Bilen, ICLR 2021; at paper budgets). dd's rows ran CPU budgets (each "
             "row's budget column): not the papers' settings, whose commands `--paper --print` lists.", ""]
    for ipc in sorted({r["ipc_row"] for r in runs if r["ipc_row"] is not None}):
        lines += [f"## IPC {ipc}", "", "| method | protocol | dd (test) | random real, same protocol | published | "
                  "budget | s/iteration |", "|---|---|---|---|---|---|---|"]
        for method in [m for m in dict.fromkeys(r["row"] for r in runs if r["ipc_row"] == ipc) if m != "random real"]:
            test = select(runs, row=method, ipc_row=ipc, model="ConvNet")
            protocol = test[0]["protocol"]["name"]
            rand, under = random_beside(test[0], select(runs, row="random real", ipc_row=ipc, model="ConvNet"),
                                        ipc * CLASSES)
            beside = "–" if not rand else cell(rand) + ("" if under == protocol else f" ({under}'s draws)")
            s = speed.get(f"{method}@{ipc}")
            lines.append(f"| {method}{mark(test, command)} | {protocol} | {cell(test)} | "
                         f"{beside} | {PUBLISHED.get(method, {}).get(ipc, '–')} | "
                         f"{test[0]['budget']} | {f'{s:.1f}' if s else '–'} |")
        for protocol in sorted({r["protocol"]["name"] for r in select(runs, row="random real", ipc_row=ipc)}):
            rand = [r for r in select(runs, row="random real", ipc_row=ipc, model="ConvNet")
                    if r["protocol"]["name"] == protocol]
            lines.append(f"| random real{mark(rand, command)} | {protocol} | {cell(rand)} | – | "
                         f"{PUBLISHED['random real'].get(ipc, '–')} | {len(rand)} draws | – |")
        lines.append("")
    lines += ["## The whole dataset", "", f"Published (DC's Table 1): {PUBLISHED['full data'][None]}."]
    if full:
        per_epoch = full["seconds"] / full["epochs_run"]
        lines.append(f"On this machine one epoch over the training split (54,000 images after the validation split, "
                     f"protocol dc: no augmentation, batch 256, ConvNet) takes {per_epoch:.0f} s (the "
                     f"`--full-epoch` run: {full['epochs_run']} epochs, data loading and one test included, "
                     f"{full['seconds']:.0f} s), so the 301 epochs of protocol dc project to "
                     f"{301 * per_epoch / 3600:.1f} hours of one core.")
    lines += ["", "## Paper settings", "",
              "Each row's preset runs unchanged on a GPU (`python scripts/results_fashion_mnist.py --paper --print` "
              "lists the buffer, distill and eval commands). Projected time of the distillation alone on one core "
              "of this CPU: the preset's iterations times the row's measured s/iteration (the paper-size experts "
              "and the evaluations come on top).", "", "| row | preset | iterations | projected (one CPU core) |",
              "|---|---|---|---|"]
    for row in ROWS:
        method, ipc = parse_row(row)
        iterations = preset_config(preset(method, ipc)).iterations
        s = speed.get(row)
        lines.append(f"| {row} | {preset(method, ipc)} | {iterations} | "
                     f"{f'{iterations * s / 3600:.0f} h' if s else '–'} |")
    lines.append("")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results-fashion-mnist.md").write_text("\n".join(lines))
    (out / "results-fashion-mnist.json").write_text(
        json.dumps({"machine": machine, "command": command, "speed": speed, "full_epoch": full, "runs": runs},
                   indent=1) + "\n")
    print("\n".join(lines))


def report_command(args: argparse.Namespace) -> str:
    """The command line that reproduces this call's records."""
    flags = [] if args.rows else ["--rows ''"]  # no rows: say so, the default is every row
    for key in ("rows", "seeds", "random_ipcs", "random_seeds", "random_protocols", "data_path", "carry", "full_epoch"):
        value = getattr(args, key)
        if value is True:
            flags.append(f"--{key.replace('_', '-')}")
        elif value not in (None, False, ""):
            flags.append(f"--{key.replace('_', '-')} {value}")
    return " ".join(["python scripts/results_fashion_mnist.py", *flags])


def mark(records: list[dict], command: str) -> str:
    return " ‡" if any(r["command"] != command for r in records) else ""


if __name__ == "__main__":
    main()
