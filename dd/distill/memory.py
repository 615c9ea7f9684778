"""``unroll: auto``: estimate the full unroll's peak memory from the shapes and fall back to the checkpointed unroll
when it would not fit the device.

The full unroll keeps every inner step's graph: per step, the forward activations of the step's minibatch and the
tensors of its double-backward graph, plus a few parameter-sized vectors. So its peak is about

    syn_steps * (FULL_ACTIVATION_FACTOR * batch * A + FULL_PARAM_FACTOR * P) * 4 bytes  +  the fixed part,

with A the float32 activations of one image through the model (every leaf module's output, counted on one image)
and P the parameters. The factors are calibrated against ``scripts/bench_memory.py`` (CPU resident set of one
iteration per preset, docs/benchmarks.md): A, not the FLOPs, is what the graph holds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import nn

from dd.data import DatasetSpec
from dd.distill.config import DistillConfig

# Calibrated on the CPU resident set (scripts/bench_memory.py worker, ConvNet at 3x32x32 with minibatches 10 and 40:
# 29.1 and 113.5 MiB per inner step, i.e. 2.81 MiB per image = 1.32 x its 2.13 MiB of activations, plus about one
# parameter vector; digits' ConvNet at minibatch 50: 1.38 x).
FULL_ACTIVATION_FACTOR = 1.4  # floats kept per activation float and inner step
FULL_PARAM_FACTOR = 1.0  # parameter-sized vectors kept per inner step
HEADROOM = 0.8  # the estimate must fit in this fraction of the free memory (the fixed part, fragmentation)


def activation_floats(model: nn.Module, image_shape: Sequence[int]) -> int:
    """Floats output by all leaf modules of ``model`` in one forward pass of one image [C, H, W] (on the CPU, in
    eval mode, without gradients; the model is left as it was)."""
    total = 0

    def count(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel()

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    device = next(model.parameters()).device
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *image_shape, device=device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return total


def full_unroll_bytes(activations: int, params: int, batch: int, syn_steps: int, num_images: int,
                      image_floats: int) -> int:
    """Estimated peak bytes of one iteration with the full unroll: ``syn_steps`` graphs of ``batch`` images of
    ``activations`` floats each and ``params`` parameters, plus the synthetic set (images, their gradient and
    momentum) of ``num_images`` images of ``image_floats`` floats."""
    per_step = FULL_ACTIVATION_FACTOR * batch * activations + FULL_PARAM_FACTOR * params
    return int(4 * (syn_steps * per_step + 3 * num_images * image_floats))


def free_bytes(device: torch.device) -> int:
    """Memory the run may still take: free CUDA memory (``torch.cuda.mem_get_info``) or the CPU's available RAM
    (MemAvailable of /proc/meminfo; total RAM where that file is absent)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def pick_unroll(estimate: int, free: int) -> tuple[str, str]:
    """(the unroll ``auto`` picks, why): checkpointed when the full unroll's ``estimate`` (bytes) exceeds ``HEADROOM``
    of the ``free`` bytes, else full (the faster one)."""
    fits = estimate <= HEADROOM * free
    why = (f"the full unroll needs about {_gib(estimate)} GiB, which {'fits' if fits else 'does not fit'} in "
           f"{HEADROOM:.0%} of the {_gib(free)} GiB free")
    return ("full" if fits else "checkpointed"), why


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g}"


def resolve_unroll(config: DistillConfig, model: nn.Module, spec: DatasetSpec, device: torch.device,
                   preferred: str | None = None) -> DistillConfig:
    """``config`` with ``unroll: auto`` replaced by the method's ``preferred`` unroll when it has one, else by
    ``pick_unroll``'s choice for its synthetic set (ipc images per class of ``spec``, minibatch ``batch_syn``,
    ``syn_steps`` steps of ``model``) on ``device``, printed with the reason; the snapshot stride becomes 1 when the
    full unroll is picked. Other values pass unchanged."""
    if config.unroll != "auto":
        return config
    if preferred is not None:
        print(f"unroll auto: {preferred} (the {config.method} method's own)", flush=True)
        return dataclasses.replace(config, unroll=preferred)
    shape = (spec.channels, *spec.size)
    num_images = config.ipc * spec.num_classes
    estimate = full_unroll_bytes(activation_floats(model, shape), sum(p.numel() for p in model.parameters()),
                                 min(config.batch_syn or num_images, num_images), config.syn_steps, num_images,
                                 math.prod(shape))
    name, why = pick_unroll(estimate, free_bytes(device))
    print(f"unroll auto: {name} ({why})", flush=True)
    return dataclasses.replace(config, unroll=name,
                               unroll_snapshot_every=config.unroll_snapshot_every if name != "full" else 1)
