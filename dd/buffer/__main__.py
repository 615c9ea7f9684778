"""``python -m dd.buffer``: train expert networks on real data and store their trajectories.

    python -m dd.buffer --config experiments/buffer/digits.yaml      # train (resumes if interrupted)
    python -m dd.buffer --config experiments/buffer/digits-0to4_barlow_twins.yaml   # an SSL teacher (KRR-ST)
    python -m dd.buffer import replay_buffer_0.pt ... --dataset cifar10 --model ConvNet --epochs 50
    torchrun --nproc-per-node 4 -m dd.buffer --config ...          # 4 processes share the experts
"""

from __future__ import annotations

import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from dd import distributed
from dd.buffer.config import BufferConfig, check_reopened, check_trajectory_size, store_header, store_root, validate
from dd.buffer.experts import ExpertRecipe, expert_seed, train_expert
from dd.buffer.legacy import import_legacy
from dd.buffer.ssl import train_teacher
from dd.buffer.store import MANIFEST, TrajectoryStore
from dd.cli import Interrupted, resume_command, run_cli
from dd.config import build_parser, load_yaml, make_config, opt, parse_config
from dd.data import get_spec
from dd.device import check_fits, check_seed
from dd.errors import DDError
from dd.lock import Lock
from dd.realdata import prepare_data, random_subset


def train_main(argv: Sequence[str] | None) -> int:
    config, _ = parse_config(BufferConfig, argv, build_parser(BufferConfig, "python -m dd.buffer", __doc__,
                                                                "experiments/buffer/digits.yaml"))
    check_seed("--seed", config.seed, 1_000_003, config.num_experts)
    check_fits("--num-experts", config.num_experts, 256, "the list of experts")
    if config.teacher != "none":
        if config.train_per_class is not None:
            raise DDError("--train-per-class applies to experts, not to a --teacher; drop one of them")
        return train_teacher(config)
    try:
        return train_store(config, argv)
    except KeyboardInterrupt as e:
        if getattr(e, "kept", ""):
            raise
        raise Interrupted.of(e, "no expert was trained before the interrupt; rerun the same command to train them: "
                                f"{resume_command('dd.buffer', argv, flag=None)}") from None


def train_store(config: BufferConfig, argv: Sequence[str] | None) -> int:
    """Train the experts that the store of ``config`` is missing; an interrupt names what is kept."""
    validate(config)
    device = distributed.setup(config.device, config.tf32)
    data = prepare_data(config.dataset, device, config.data_path, config.download,
                        "zca" if config.zca else "standard", config.image_size, channels=config.channels)
    spec = data.spec
    recipe = config.recipe()
    train = data.train if recipe.train_per_class is None else random_subset(
        data, recipe.train_per_class, recipe.train_subset_seed, flag="--train-per-class")
    header = store_header(spec, config.model, recipe.to_dict(), data.preprocessor.describe(),
                          data=data.fingerprint(), seed=config.seed)
    check_trajectory_size(recipe.epochs, header)
    root = store_root(config.buffer_dir, spec.name, config.model, recipe.to_dict())
    if (root / MANIFEST).is_file():
        check_reopened(TrajectoryStore.open(root), data.fingerprint(), config.seed)
    store = TrajectoryStore.create(root, header)
    if distributed.is_main() and store.load_preprocess() is None:
        store.save_preprocess(*data.preprocessor.state())
    if distributed.is_main():
        for problem in store.discard_damaged():
            print(f"buffer: {problem}; training it again")
    todo = store.missing(config.num_experts)
    done = config.num_experts - len(todo)
    # Every rank lists the missing experts before any rank adds one and starts with every world-th of them,
    # then helps with the rest; the lock of each expert slot makes sure that no two processes (ranks, or
    # separate dd.buffer runs on one store) train the same expert.
    distributed.barrier()
    mine = distributed.shard(todo)
    if distributed.is_main():
        ranks = f", {distributed.world_size()} ranks share the rest" if distributed.world_size() > 1 else ""
        print(f"buffer: {store.root} ({done}/{config.num_experts} experts already stored{ranks})")
    order = mine + [i for i in todo if i not in mine]
    bar = tqdm(total=len(order) * recipe.epochs, desc="experts", unit="epoch", disable=not distributed.is_main())
    shown = {"last": "", "index": 0}

    def on_epoch(epoch: int, test_acc: float | None) -> None:
        bar.update(1)
        if test_acc is not None:
            shown["last"] = f", last test acc {test_acc:.3f}"
        bar.set_postfix_str(f"expert {shown['index']} epoch {epoch}/{recipe.epochs}{shown['last']}")

    trained = []
    try:
        for index in order:
            shown["index"] = index
            slot = Lock(store.root / f".expert_{index:05d}.lock")
            if not slot.acquire():
                bar.update(recipe.epochs)
                continue  # another process is training it
            try:
                if index in store.completed():
                    bar.update(recipe.epochs)
                    continue  # finished by another process since the list was made
                seed = expert_seed(config.seed, index)
                trajectory, record = train_expert(config.model, spec.channels, spec.num_classes, spec.size,
                                                  train, data.test, recipe, seed, config.test_every, on_epoch)
                store.write_expert(index, trajectory, {**record, "device": str(device), "tf32": config.tf32})
                trained.append(index)
            finally:
                slot.release()
    except KeyboardInterrupt as e:
        kept = config.num_experts - len(store.missing(config.num_experts))
        raise Interrupted.of(e, f"{kept}/{config.num_experts} experts are stored in {store.root}; rerun the same "
                                f"command to train the rest: {resume_command('dd.buffer', argv, flag=None)}") from None
    finally:
        bar.close()  # before any line that follows, an interrupt's included: a line of its own, not the bar's end
    if trained:
        who = f"rank {distributed.rank()}" if distributed.world_size() > 1 else "this process"
        print(f"{who} trained experts {', '.join(map(str, trained))}")
    distributed.barrier()
    accs = [r["final_test_acc"] for r in store.records() if r.get("final_test_acc") is not None]
    if accs and distributed.is_main():
        print(f"experts: {len(accs)}, final test accuracy {sum(accs) / len(accs):.4f} (mean)")
    if distributed.is_main():
        print(next_steps(config, store.root))
    return 0


def next_steps(config: BufferConfig, root: Path) -> str:
    """The stage's last lines: where the experts are and the commands that distil from them and report on them."""
    data = [*(["--data-path", config.data_path] if config.dataset != "digits" else []),
            *(["--image-size", str(config.image_size)] if config.image_size else []),
            *(["--channels", str(config.channels)] if config.channels else [])]
    distill = shlex.join(["python", "-m", "dd.distill", "--dataset", config.dataset, "--model", config.model,
                          "--buffer", str(root), *data])
    return (f"experts: {root}\nnext: distil a set from them: {distill}\n"
            f"      report on them: {shlex.join(['python', '-m', 'dd.report', str(root)])}")


@dataclass
class ImportConfig:
    dataset: str = opt("cifar10", "dataset the original buffer was trained on")
    model: str = opt("ConvNet", "architecture of the original experts")
    zca: bool = opt(False, "the original buffer was trained on ZCA-whitened images (--zca)")
    epochs: int = opt(50, "train_epochs of the original run")
    lr: float = opt(0.01, "lr_teacher of the original run")
    momentum: float = opt(0.0, "mom of the original run")
    weight_decay: float = opt(0.0, "l2 of the original run")
    batch_size: int = opt(256, "batch_train of the original run")
    dsa_strategy: str = opt("color_crop_cutout_flip_scale_rotate", "dsa_strategy of the original run")
    buffer_dir: str = opt("buffers", "root of the trajectory stores")
    recipe_config: str | None = opt(None, "dd.buffer preset of the original run's recipe (e.g. experiments/buffer/"
                                    "cifar10_gsam.yaml for FTD/DATM flat experts, cifar10_ast.yaml for AST's): "
                                    "its recipe replaces --epochs ... --dsa-strategy and --zca")


def import_recipe(config: ImportConfig) -> dict:
    """The recorded recipe of imported experts: from ``--recipe-config`` (any optimiser, schedule and
    regulariser a preset can name) or from the plain-SGD flags."""
    if config.recipe_config is None:
        recipe = ExpertRecipe(lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                              batch_size=config.batch_size, epochs=config.epochs, dsa_strategy=config.dsa_strategy,
                              preprocess="zca" if config.zca else "standard")
        return recipe.to_dict()
    preset = make_config(BufferConfig, load_yaml(config.recipe_config), config.recipe_config)
    if preset.dataset != config.dataset or preset.model != config.model:
        raise DDError(f"--recipe-config {config.recipe_config} is for {preset.model} on {preset.dataset}, not "
                      f"{config.model} on {config.dataset}; pass the matching --dataset/--model or preset")
    validate(preset)
    return preset.recipe().to_dict()


def import_main(argv: Sequence[str]) -> int:
    parser = build_parser(ImportConfig, "python -m dd.buffer import",
                          "Convert original MTT/FTD/DATM/AST replay_buffer_N.pt files into a dd trajectory store.")
    parser.add_argument("paths", nargs="+", help="replay_buffer_N.pt files of the original code")
    config, extras = parse_config(ImportConfig, argv, parser)
    spec = get_spec(config.dataset)
    recipe = import_recipe(config)
    # Imported experts get their own folder: their data pipeline was not ours, so they never mix
    # with experts trained here under the same hyper-parameters.
    recipe["origin"] = "imported replay_buffer"
    header = store_header(spec, config.model, recipe, {"kind": recipe["preprocess"]},
                          imported_from=[str(p) for p in extras["paths"]])
    root = store_root(config.buffer_dir, spec.name, config.model, recipe)
    created = not root.exists()
    store = TrajectoryStore.create(root, header)
    try:
        indices = import_legacy(extras["paths"], store)
    except BaseException:
        if created and not store.completed():  # a store this call made and filled with nothing goes again
            shutil.rmtree(root, ignore_errors=True)
        raise
    print(f"imported {len(indices)} experts into {store.root}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "import":
        return import_main(argv[1:])
    return train_main(argv)


if __name__ == "__main__":
    run_cli(main)
