"""Device selection and seeding helpers shared by every stage."""

from __future__ import annotations

import os

import torch

from dd.errors import DDError

TF32_HELP = ("TensorFloat-32 in CUDA matrix products and convolutions: faster on Ampere and later GPUs, about 1e-3 "
             "relative error (off: CUDA runs match the CPU's float32 to rounding)")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; anything else must be a valid torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DDError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DDError(f"device '{name}' asked for but CUDA is not available; use --device cpu")
    return device


def auto_fallback_warning(name: str, device: torch.device) -> str | None:
    """The warning for ``--device auto`` landing on the CPU although this torch was built with CUDA (a driver too
    old for it, no GPU visible, ``CUDA_VISIBLE_DEVICES`` empty); None otherwise (a CPU-only torch is no surprise)."""
    if name != "auto" or device.type != "cpu" or torch.version.cuda is None:
        return None
    return (f"warning: --device auto found no usable GPU although torch {torch.__version__} was built with CUDA "
            f"{torch.version.cuda} (driver, visible devices?); running on the CPU")


def configure_backends(tf32: bool, deterministic: bool = False) -> None:
    """The one place that sets torch's numerical backend switches of a stage: TF32 in matrix products and cuDNN
    convolutions exactly as ``tf32`` says (torch's own defaults differ between the two), and either the
    deterministic settings (``use_deterministic``) or cuDNN's autotuner (``cudnn.benchmark``: each new input shape
    is timed once, then the fastest kernel runs)."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    if deterministic:
        use_deterministic(True)
    else:
        torch.backends.cudnn.benchmark = True


def setup_device(name: str, tf32: bool = False, deterministic: bool = False, quiet: bool = False) -> torch.device:
    """Resolve ``name`` (``resolve_device``; plain ``cuda`` becomes ``cuda:N``, the current GPU), apply
    ``configure_backends`` and print the device actually used in one line (``auto_fallback_warning``'s text instead
    when it applies) unless ``quiet``. Stages record ``str`` of the result as their config's ``device``."""
    configure_backends(tf32, deterministic)
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if not quiet:
        print(auto_fallback_warning(name, device) or f"device: {describe_device(device)}", flush=True)
    return device


def describe_device(device: torch.device) -> str:
    """``cpu``, or ``cuda:N (GPU name)``."""
    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def runtime_facts(device: torch.device) -> dict:
    """What decides a run's numbers besides its config: the device used, torch, CUDA, cuDNN and driver versions,
    TF32, cuDNN autotuning and deterministic mode (for config.json, records and benchmark notes)."""
    facts = {"device": describe_device(device), "torch": torch.__version__, "cuda": torch.version.cuda,
             "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
             "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
             "cudnn_benchmark": torch.backends.cudnn.benchmark,
             "deterministic": torch.are_deterministic_algorithms_enabled()}
    if device.type == "cuda":
        facts["driver"] = cuda_driver_version()
        facts["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return facts


def cuda_driver_version() -> str | None:
    """The NVIDIA driver's version as /proc/driver/nvidia/version states it, else the CUDA version the driver
    supports; None without either."""
    try:
        with open("/proc/driver/nvidia/version") as f:
            words = f.readline().split()
        return next((w for w in words if w[:1].isdigit() and "." in w), None)
    except OSError:
        pass
    version = getattr(torch._C, "_cuda_getDriverVersion", lambda: 0)() if torch.version.cuda else 0
    return f"CUDA API {version // 1000}.{version % 1000 // 10}" if version else None


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A seeded generator on ``device``: each component draws from its own, never the global RNG."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def describe_machine() -> str:
    """One line naming the CPU (and GPU), core count and torch version, for benchmark and result notes."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        text += (f", {props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, cuDNN "
                 f"{torch.backends.cudnn.version()}, driver {cuda_driver_version()}, TF32 matmul "
                 f"{'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'} / cuDNN "
                 f"{'on' if torch.backends.cudnn.allow_tf32 else 'off'}")
    return text


_MALLOC_TUNABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TOP_PAD_")
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters of glibc's malloc.h
_retained: list[bool] = []


def retain_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of handing it back to the kernel; process-wide, once.

    By default glibc serves each block of 128 KiB to 32 MiB from its own ``mmap`` until a free raises that threshold,
    always maps blocks above 32 MiB, and trims the heap's free top: a training loop that allocates the same large
    activations every batch then page-faults them in afresh each time, and the kernel's zeroing of those pages is
    system time (26 % of expert training's and 43 % of full-data evaluation's CPU time on a 28x28 folder;
    before/after in docs/benchmarks.md). With mmap off and
    trimming off, the freed blocks are reused: the resident set stays at the peak of live memory. Does nothing (and
    returns False) off glibc or when the user set glibc's malloc tunables (``MALLOC_*_`` or ``GLIBC_TUNABLES``)."""
    import ctypes
    import os

    if _retained:
        return _retained[0]
    applied = False
    user_set = any(k in os.environ for k in _MALLOC_TUNABLES) or "malloc" in os.environ.get("GLIBC_TUNABLES", "")
    if not user_set:
        try:
            libc = ctypes.CDLL("libc.so.6")
            applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
        except (OSError, AttributeError):  # not glibc
            applied = False
    _retained.append(applied)
    return applied


def use_deterministic(on: bool) -> None:
    """With ``on``: deterministic kernels only (``torch.use_deterministic_algorithms``; an op without one raises),
    cuDNN deterministic and not benchmarking, cuBLAS with a fixed workspace (``CUBLAS_WORKSPACE_CONFIG``). This is
    what makes a CUDA run, and its resume, bitwise repeatable on one machine; the CPU kernels already are. Call it
    before the first CUDA work of the process. Off: leaves torch's defaults alone."""
    import os

    if not on:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def physical_memory() -> int:
    """Bytes of this machine's memory (0 when the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def check_fits(flag: str, count: int, bytes_each: int, what: str) -> None:
    """DDError when ``count`` (the value of ``flag``) items of at least ``bytes_each`` bytes (``what`` holds them)
    would not fit this machine's memory: a count that could never run is refused before any work."""
    have = physical_memory()
    if have and count * bytes_each > have:
        raise DDError(f"{flag} {count}: {what} alone would need more than this machine's {have / 2**30:.3g} GiB of "
                      f"memory; lower {flag}")


MAX_SEED = 2**63 - 1
"""The largest seed a generator takes (``torch.Generator.manual_seed`` overflows past it)."""


def check_seed(flag: str, seed: int, scale: int = 1, offsets: int = 0) -> None:
    """DDError unless ``flag``'s ``seed`` is an int with ``seed * scale + offsets`` (the largest seed derived from
    it) within 0..``MAX_SEED``."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise DDError(f"{flag} must be an integer, got {seed!r}")
    top = (MAX_SEED - offsets) // scale
    if not 0 <= seed <= top:
        raise DDError(f"{flag} must be in 0..{top}, got {seed}; pass a smaller seed")
