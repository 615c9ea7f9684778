"""``dd.buffer.train_store``: train the experts a trajectory store is missing (or, for KRR-ST, a self-supervised
teacher), resuming a store that an earlier or a parallel run began; the library call behind ``python -m
dd.buffer``."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from dd import distributed
from dd.buffer.config import BufferConfig, check_reopened, check_trajectory_size, store_header, store_root
from dd.buffer.experts import expert_seed, train_expert
from dd.buffer.ssl import train_teacher
from dd.buffer.store import MANIFEST, TrajectoryStore
from dd.cli import Interrupted
from dd.config import validate
from dd.lock import Lock
from dd.realdata import prepare_data, random_subset


def train_store(config: BufferConfig) -> Path:
    """Train what the store of ``config`` is missing and return its folder: the experts of
    ``<buffer_dir>/<dataset>/<model>/<recipe-tag>/``, or with ``teacher`` a teacher's folder beside them. Under
    torchrun the ranks share the experts. Raises ``DDError`` on bad input before any work, and an interrupt as
    ``Interrupted`` saying how many experts are stored."""
    validate(config)
    if config.teacher != "none":
        return train_teacher(config)
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
        raise Interrupted.of(e, f"{kept}/{config.num_experts} experts are stored in {store.root}") from None
    finally:
        bar.close()  # before any line that follows, an interrupt's included: a line of its own, not the bar's end
    if trained:
        who = f"rank {distributed.rank()}" if distributed.world_size() > 1 else "this process"
        print(f"{who} trained experts {', '.join(map(str, trained))}")
    distributed.barrier()
    return store.root
