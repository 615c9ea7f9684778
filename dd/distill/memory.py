"""``unroll: auto``: estimate the full unroll's peak memory from the shapes and fall back to the checkpointed unroll
when it would not fit the device.

The full unroll keeps every inner step's graph: per step, the forward activations of the step's minibatch and the
tensors of its double-backward graph, plus a few parameter-sized vectors. So its peak is about

    syn_steps * (FULL_ACTIVATION_FACTOR * batch * A + FULL_PARAM_FACTOR * P) * 4 bytes  +  the fixed part,

with A the float32 activations of one image through the model (every leaf module's output, counted on one image)
and P the parameters. The factors are calibrated against ``scripts/bench_memory.py`` (CPU resident set of one
iteration per preset, docs/benchmarks.md): A, not the FLOPs, is what the graph holds.

The checkpointed unroll keeps one step's graph at a time plus about syn_steps/k + k parameter vectors (k the
snapshot stride); when even one step's graph would not fit, ``auto`` also splits each minibatch into chunks
(``--unroll-chunk``, exact) of the most images whose graph does.

Free memory on CUDA is what the driver reports free plus what PyTorch's caching allocator holds reserved but not
allocated (blocks freed during data preparation are reusable by the run; ``mem_get_info`` alone counts them as
taken). The factors were measured on the CPU; on CUDA the allocator rounds blocks up, cuDNN takes workspaces and
the CUDA context is outside torch's count, so ``activation_factors`` scales them by ``CUDA_MARGIN`` (a
conservative guess, not a measurement: ``scripts/gpu_check.py`` reports the estimate beside the measured peak
allocated and reserved memory, to calibrate it from).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from dd.data import DatasetSpec
from dd.distill.config import MTTConfig
from dd.distributed import world_size
from dd.functional import has_batchnorm

# Calibrated on the CPU resident set (scripts/bench_memory.py worker, ConvNet at 3x32x32 with minibatches 10 and 40:
# 29.1 and 113.5 MiB per inner step, i.e. 2.81 MiB per image = 1.32 x its 2.13 MiB of activations, plus about one
# parameter vector; digits' ConvNet at minibatch 50: 1.38 x).
FULL_ACTIVATION_FACTOR = 1.4  # floats kept per activation float and inner step
FULL_PARAM_FACTOR = 1.0  # parameter-sized vectors kept per inner step
# The checkpointed backward of one step holds that step's graph and its vector-Jacobian product's at once: on the
# CPU resident set (bench_memory, checkpointed unroll of 2 steps at 16 images over the fixed part) 18-24 MB per
# Tiny ImageNet image through ConvNetD4 = 2.0-2.6 x its 9.05 MB of activations (CIFAR's ConvNet: 1.6 x).
CKPT_ACTIVATION_FACTOR = 2.5  # floats held per activation float of the minibatch, in one checkpointed step
HEADROOM = 0.8  # the estimate must fit in this fraction of the free memory (the fixed part, fragmentation)
CUDA_MARGIN = 1.25  # CUDA's allocator rounding and cuDNN workspaces over the CPU-measured factors (see above)

# (free bytes the driver reports, bytes PyTorch has reserved, bytes PyTorch has allocated) of a CUDA device
MemoryReader = Callable[[torch.device], tuple[int, int, int]]


def activation_factors(device: torch.device) -> tuple[float, float]:
    """(full unroll's, checkpointed step's) floats kept per activation float on ``device``: the CPU-calibrated
    factors, times ``CUDA_MARGIN`` on CUDA."""
    margin = CUDA_MARGIN if torch.device(device).type == "cuda" else 1.0
    return FULL_ACTIVATION_FACTOR * margin, CKPT_ACTIVATION_FACTOR * margin


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
                      image_floats: int, device: torch.device = torch.device("cpu")) -> int:
    """Estimated peak bytes of one iteration with the full unroll on ``device``: ``syn_steps`` graphs of ``batch``
    images of ``activations`` floats each and ``params`` parameters, plus the synthetic set (images, their gradient
    and momentum) of ``num_images`` images of ``image_floats`` floats."""
    per_step = activation_factors(device)[0] * batch * activations + FULL_PARAM_FACTOR * params
    return int(4 * (syn_steps * per_step + 3 * num_images * image_floats))


def checkpointed_chunk(activations: int, params: int, batch: int, syn_steps: int, snapshot_every: int,
                       num_images: int, image_floats: int, free: int,
                       device: torch.device = torch.device("cpu")) -> int | None:
    """The chunk (synthetic images per graph) the checkpointed unroll needs to fit ``HEADROOM`` of ``free`` bytes:
    None when one step's graph of the whole ``batch`` fits beside the kept states (about ``syn_steps /
    snapshot_every + snapshot_every`` parameter vectors) and the synthetic set, else the most images whose graph
    does (at least 1)."""
    states = math.ceil(syn_steps / snapshot_every) + snapshot_every
    budget = HEADROOM * free - 4 * (states * params + 3 * num_images * image_floats)
    per_image = 4 * activation_factors(device)[1] * activations
    graph = budget - 4 * FULL_PARAM_FACTOR * params
    if batch * per_image <= graph:
        return None
    return max(1, int(graph // per_image))


def cuda_memory(device: torch.device) -> tuple[int, int, int]:
    """The ``MemoryReader`` of a real CUDA device: ``mem_get_info``'s free bytes, ``memory_reserved``,
    ``memory_allocated``."""
    return (int(torch.cuda.mem_get_info(device)[0]), torch.cuda.memory_reserved(device),
            torch.cuda.memory_allocated(device))


def free_bytes(device: torch.device, read: MemoryReader = cuda_memory) -> int:
    """Memory the run may still take: on CUDA the driver's free bytes plus PyTorch's reserved-but-unallocated cache
    (``read`` gives the three; tests pass a fake), else the CPU's available RAM (MemAvailable of /proc/meminfo;
    total RAM where that file is absent)."""
    if device.type == "cuda":
        free, reserved, allocated = read(device)
        return free + max(0, reserved - allocated)
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


def resolve_unroll(config: MTTConfig, model: nn.Module, spec: DatasetSpec, device: torch.device,
                   preferred: str | None = None) -> MTTConfig:
    """``config`` with ``unroll: auto`` replaced by the method's ``preferred`` unroll when it has one, else by
    ``pick_unroll``'s choice for its synthetic set (ipc images per class of ``spec``, minibatch ``batch_syn``
    shared by the processes, ``syn_steps`` steps of ``model``) on ``device``, printed with the reason; the snapshot
    stride becomes 1 when the full unroll is picked. A checkpointed unroll (picked or given) without
    ``--unroll-chunk`` gets ``checkpointed_chunk``'s chunk when one step of the whole minibatch would not fit
    (not for BatchNorm students, whose statistics span the minibatch), also printed. Other values pass unchanged."""
    if config.unroll not in ("auto", "checkpointed"):
        return config
    if config.unroll == "auto" and preferred is not None:
        print(f"unroll auto: {preferred} (the {config.method} method's own)", flush=True)
        return dataclasses.replace(config, unroll=preferred)
    shape = (spec.channels, *spec.size)
    num_images = config.ipc * spec.num_classes
    batch = math.ceil(min(config.batch_syn or num_images, num_images) / world_size())
    activations, params = activation_floats(model, shape), sum(p.numel() for p in model.parameters())
    free = free_bytes(device)
    name, why = config.unroll, ""
    if name == "auto":
        name, why = pick_unroll(full_unroll_bytes(activations, params, batch, config.syn_steps, num_images,
                                                  math.prod(shape), device), free)
    chunk = config.unroll_chunk
    if name == "checkpointed" and chunk is None:
        need = checkpointed_chunk(activations, params, batch, config.syn_steps, config.unroll_snapshot_every,
                                  num_images, math.prod(shape), free, device)
        batchnorm = has_batchnorm(model)
        step = f"one step of {batch} images does not fit {HEADROOM:.0%} of the {_gib(free)} GiB free"
        if need is not None and not batchnorm:
            chunk = need
            why += ("; " if why else "") + f"{step}: --unroll-chunk {chunk}"
        elif need is not None:
            why += ("; " if why else "") + (f"{step}, and {config.model}'s BatchNorm rules out --unroll-chunk: lower "
                                            "--batch-syn")
    if why:
        print(f"unroll {config.unroll}: {name} ({why})", flush=True)
    return dataclasses.replace(config, unroll=name, unroll_chunk=chunk,
                               unroll_snapshot_every=config.unroll_snapshot_every if name != "full" else 1)
