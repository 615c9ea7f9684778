"""The GPU check (scripts/gpu_check.sh runs it): the CUDA tests, every method and unroll for a few iterations at the
CIFAR-10 shape, checkpointed = full and CUDA = CPU, s/iteration and peak memory per unroll, ``unroll: auto``'s
estimate against the measured peak, GPU busy time against wall time per iteration, and evaluation seeds batched
vs sequential and bf16 vs fp32.

    PYTHONPATH=. python3 scripts/gpu_check.py --out docs              # on a GPU: docs/benchmarks-gpu.{md,json}
    PYTHONPATH=. python3 scripts/gpu_check.py --device cpu --quick --out /tmp/g
    PYTHONPATH=. python3 scripts/gpu_check.py --stages fashion --fashion-data DIR    # the paper-setting rows

It runs in stages (``--stages``; default every stage but ``fashion``); each stage's rows are written (JSON lines on
stdout, ``<out>/benchmarks-gpu.{md,json}`` rewritten) as soon as the stage ends, and a failing stage or case (an
out-of-memory, a crashed command) becomes a row with its error while the rest go on; the exit status is 1 when any
stage failed. Data are generated: CIFAR-shaped PNG folders for the commands, tensors of the real shape (3x32x32,
10 classes) for the in-process rows. Seconds are medians over ``repeats`` after a warm-up; peak memory is
``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` on CUDA, the resident set's high-water mark on the
CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a bare checkout: the repository's dd, not an installed one
    sys.path.insert(0, str(ROOT))

from dd.augment import DSA  # noqa: E402
from dd.device import configure_backends, describe_machine, make_generator, resolve_device, runtime_facts  # noqa: E402
from dd.distill.memory import activation_floats, full_unroll_bytes  # noqa: E402
from dd.distill.methods import METHODS  # noqa: E402
from dd.distill.methods.base import normalized_distance  # noqa: E402
from dd.distill.unroll import Student, make_plan, make_unroll  # noqa: E402
from dd.functional import flatten_params  # noqa: E402
from dd.models import create_model  # noqa: E402
from dd.multiseed import train_and_test_seeds  # noqa: E402
from dd.protocols import get_protocol  # noqa: E402

SHAPE, CLASSES = (3, 32, 32), 10
OWN_LOOP = ("dc", "dsa", "dm", "krr_st")  # the methods outside the trajectory engine
STAGES = ("tests", "methods", "equivalence", "unroll", "profile", "eval", "fashion")
DEFAULT_STAGES = tuple(s for s in STAGES if s != "fashion")
Row = dict


# -- measuring ------------------------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict:
    """Peak allocated and reserved MiB since ``reset_peak`` on CUDA; the process's resident high-water mark on
    the CPU (not reset: an upper bound)."""
    if device.type == "cuda":
        return {"peak_allocated_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
                "peak_reserved_mb": round(torch.cuda.max_memory_reserved(device) / 2**20, 1)}
    return {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()  # warm-up (cuDNN autotuning, allocator)
    times = []
    for _ in range(repeats):
        synchronize(device)
        tic = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - tic)
    return round(statistics.median(times), 4)


def guarded(row: Row, fn: Callable[[], Row], device: torch.device) -> Row:
    """``row`` updated by ``fn()``, or by the error that stopped it (an out-of-memory frees the cache first)."""
    try:
        return {**row, **fn()}
    except Exception as e:  # one case's failure must not lose the others' rows
        if device.type == "cuda":
            torch.cuda.empty_cache()
        oom = isinstance(e, torch.cuda.OutOfMemoryError)
        return {**row, "error": "out of memory" if oom else f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}


# -- in-process cases at the CIFAR-10 shape ---------------------------------------------------------------------------
def synthetic(ipc: int, device: torch.device, seed: int = 0, shape: tuple[int, ...] = SHAPE
              ) -> tuple[torch.Tensor, torch.Tensor]:
    g = make_generator(seed)
    n = ipc * CLASSES
    return torch.randn(n, *shape, generator=g).to(device), torch.arange(n).remainder(CLASSES).to(device)


class Iteration:
    """One distillation iteration from a random start towards a random target (MTT's CIFAR-10 settings: the
    whole set per step), with ``unroll`` ("full", "checkpointed", "tesla", or "checkpointed:K:C" for snapshot
    stride K and chunk C)."""

    def __init__(self, device: torch.device, ipc: int, unroll: str, syn_steps: int, dsa: str = "",
                 shape: tuple[int, int, int] = SHAPE) -> None:
        name, _, rest = unroll.partition(":")
        stride, _, chunk = rest.partition(":")
        self.device, self.syn_steps = device, syn_steps
        self.images, self.labels = synthetic(ipc, device, shape=shape)
        self.images.requires_grad_(True)
        self.model = create_model("ConvNet", shape[0], CLASSES, shape[1:], seed=0).to(device)
        self.student = Student(self.model, DSA(dsa or "none"))
        self.unroll = make_unroll(name, int(stride or 1), int(chunk) if chunk else None)
        self.w_start = flatten_params(self.model)
        self.w_target = self.w_start + 0.01 * torch.randn(self.w_start.shape, generator=make_generator(1)).to(device)
        self.lr = torch.tensor(0.01, device=device, requires_grad=True)
        self.generator = make_generator(2)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, gradient of the images, gradient of the lr) of one iteration."""
        n = self.images.shape[0]
        plan = make_plan(n, n, self.syn_steps, self.generator, self.device)
        (w,) = self.unroll(self.student, self.w_start, self.images, self.labels, self.lr, plan, [self.syn_steps])
        loss = normalized_distance(w, self.w_start, self.w_target)
        images_grad, lr_grad = torch.autograd.grad(loss, [self.images, self.lr])
        return loss.detach(), images_grad, lr_grad


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm().clamp_min(1e-30))


def equivalence_rows(device: torch.device, ipc: int, syn_steps: int, tolerance: float = 1e-4) -> list[Row]:
    """Checkpointed (stride 1 and 2, and chunked) and TESLA against the full unroll on ``device`` from the same
    plan; the full unroll on ``device`` against the CPU's (TF32 as set, DSA on)."""
    rows = []

    def run(dev: torch.device, unroll: str) -> tuple[torch.Tensor, ...]:
        return Iteration(dev, ipc, unroll, syn_steps, dsa="color_crop_cutout_flip_scale_rotate")()

    full = run(device, "full")
    for unroll in ("checkpointed", "checkpointed:2", f"checkpointed:1:{max(1, ipc * CLASSES // 3)}", "tesla"):
        def compare(unroll: str = unroll) -> Row:
            got = run(device, unroll)
            gap = max(relative_gap(g, f) for g, f in zip(got, full, strict=True))
            exact = unroll != "tesla"  # TESLA is first order: its gap is reported, not bounded
            return {"max_relative_gap": f"{gap:.2e}", "ok": gap < tolerance if exact else None}
        rows.append(guarded({"name": "equivalence", "case": f"{unroll} vs full", "device": str(device)}, compare,
                            device))
    if device.type != "cpu":
        def cuda_vs_cpu() -> Row:
            cpu = run(torch.device("cpu"), "full")
            gap = max(relative_gap(g, c) for g, c in zip(full, cpu, strict=True))
            return {"max_relative_gap": f"{gap:.2e}", "ok": gap < (1e-2 if torch.backends.cudnn.allow_tf32 else 1e-3)}
        rows.append(guarded({"name": "equivalence", "case": "full: device vs cpu", "device": str(device)},
                            cuda_vs_cpu, device))
    return rows


UNROLL_CASES = ("full", "checkpointed", "checkpointed:5", "checkpointed:1:{quarter}", "tesla")


def unroll_rows(device: torch.device, ipcs: list[int], syn_steps: int, repeats: int,
                cases: tuple[str, ...] = UNROLL_CASES) -> list[Row]:
    """s/iteration and peak memory of each unroll of ``cases`` ("name:snapshot stride:chunk", the chunk a quarter
    of the set) at each IPC, with ``unroll: auto``'s estimate of the full unroll beside its measured peak."""
    rows = []
    model = create_model("ConvNet", SHAPE[0], CLASSES, SHAPE[1:], seed=0)
    activations, params = activation_floats(model, SHAPE), sum(p.numel() for p in model.parameters())
    for ipc in ipcs:
        n = ipc * CLASSES
        for unroll in (case.format(quarter=max(1, n // 4)) for case in cases):
            def case(unroll: str = unroll, ipc: int = ipc, n: int = n) -> Row:
                reset_peak(device)
                iteration = Iteration(device, ipc, unroll, syn_steps)
                seconds = median_seconds(iteration, repeats, device)
                row = {"s_per_iteration": seconds, **peak_memory(device)}
                if unroll == "full":
                    estimate = full_unroll_bytes(activations, params, n, syn_steps, n, math.prod(SHAPE), device)
                    row["auto_estimate_mb"] = round(estimate / 2**20, 1)
                    measured = row.get("peak_allocated_mb")
                    if measured:
                        row["estimate_over_peak"] = round(row["auto_estimate_mb"] / measured, 2)
                return row
            rows.append(guarded({"name": "unroll", "ipc": ipc, "syn_steps": syn_steps, "unroll": unroll}, case,
                                device))
    return rows


def inner_step_profile(device: torch.device, shape: tuple[int, int, int], ipc: int, dsa: str) -> Row:
    """Ops and host time of one inner step of a ConvNet on ``ipc`` images per class of ``shape`` (DSA ``dsa``),
    its share of the outer backward included: the difference between whole iterations (full unroll) of 4 and of 2
    inner steps, halved. On CUDA also its kernels and the GPU's busy time (the kernels' summed durations)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    found = {}
    for steps in (2, 4):
        iteration = Iteration(device, ipc, "full", steps, dsa=dsa, shape=shape)
        seconds = median_seconds(iteration, 10, device)
        synchronize(device)
        with profile(activities=activities) as prof:
            iteration()
            synchronize(device)
        events = prof.events()
        ops = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU and e.name.startswith("aten::")]
        top = [e for e in ops if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        found[steps] = (len(ops), len(top), seconds, len(kernels), sum(e.device_time for e in kernels) / 1e6)
    per_step = [(b - a) / 2 for a, b in zip(found[2], found[4], strict=True)]
    row = {"shape": "x".join(map(str, shape)), "ipc": ipc, "dsa": dsa, "aten_ops": round(per_step[0]),
           "top_level_ops": round(per_step[1]), "host_ms": round(1000 * per_step[2], 3),
           "iteration_ms_2_4_steps": [round(1000 * found[2][2], 2), round(1000 * found[4][2], 2)]}
    if device.type == "cuda":
        row.update(kernels=round(per_step[3]), gpu_busy_ms=round(1000 * per_step[4], 3),
                   gpu_busy_fraction=round(per_step[4] / per_step[2], 3) if per_step[2] > 0 else None)
    return row


STEP_CASES = (((1, 8, 8), 1, "none"), ((3, 32, 32), 1, "none"), ((3, 32, 32), 1, "color_crop_cutout_flip_scale_rotate"),
              ((3, 32, 32), 10, "color_crop_cutout_flip_scale_rotate"))


def profile_rows(device: torch.device, quick: bool, cases: tuple = STEP_CASES) -> list[Row]:
    """One inner step's ops, host time and GPU busy time at the digits and the CIFAR-10 shapes (``cases``: shape,
    ipc, DSA), and on CUDA GPU busy time against wall time of a whole iteration (full unroll, IPC 1 and 10)."""
    rows = [guarded({"name": "inner_step"}, lambda c=c: inner_step_profile(device, *c), device) for c in cases]
    if device.type == "cuda":
        for ipc in (1, 10):
            def whole(ipc: int = ipc) -> Row:
                from torch.profiler import ProfilerActivity, profile

                iteration = Iteration(device, ipc, "full", 30 if not quick else 2,
                                      dsa="color_crop_cutout_flip_scale_rotate")
                wall = median_seconds(iteration, 3, device)
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    iteration()
                    synchronize(device)
                busy = sum(e.device_time for e in prof.events()
                           if e.device_type == torch.autograd.DeviceType.CUDA) / 1e6
                return {"wall_s": wall, "gpu_busy_s": round(busy, 4), "gpu_busy_fraction": round(busy / wall, 3)}
            rows.append(guarded({"name": "iteration_busy", "ipc": ipc}, whole, device))
    return rows


def eval_case(device: torch.device, amp: str, batched: bool, epochs: int, seeds: int, repeats: int,
              ipc: int = 10) -> Row:
    """Seconds and mean test accuracy of ``seeds`` ConvNets trained on an ``ipc`` set under the mtt protocol."""
    train, test = synthetic(ipc, device), synthetic(ipc, device, seed=1)
    protocol = get_protocol("mtt", epochs=epochs, amp=amp)
    accs: list[float] = []

    def run() -> None:
        accs[:] = train_and_test_seeds("ConvNet", SHAPE[0], CLASSES, SHAPE[1:], train, test, 0.01, protocol,
                                       list(range(seeds)), batched=batched)

    seconds = median_seconds(run, repeats, device)
    return {"amp": amp, "seeds": seeds, "epochs": epochs, "seconds": seconds,
            "mean_acc": round(sum(accs) / len(accs), 4)}


def eval_rows(device: torch.device, epochs: int, seeds: int, repeats: int, ipc: int = 10) -> list[Row]:
    """Evaluation training of an ``ipc`` set: seeds sequential vs batched (fp32), and bf16 sequential (on a CPU,
    batched and bf16 are many times slower: the tests check the rows at IPC 1)."""
    rows = []
    for mode, amp, batched in (("sequential", "none", False), ("batched", "none", True), ("bf16", "bf16", False)):
        rows.append(guarded({"name": "eval_seeds", "mode": mode},
                            lambda a=amp, b=batched: eval_case(device, a, b, epochs, seeds, repeats, ipc), device))
    by = {r["mode"]: r.get("seconds") for r in rows}
    if all(by.values()):
        rows.append({"name": "eval_ratios", "batched_speedup": round(by["sequential"] / by["batched"], 3),
                     "bf16_speedup": round(by["sequential"] / by["bf16"], 3)})
    return rows


# -- commands: data, experts, every method and unroll, resume, dd.eval ----------------------------------------------
def make_folder(root: Path, per_class: int) -> Path:
    """A CIFAR-shaped ImageFolder of random 32x32 RGB PNGs (train and val, 10 classes)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", max(2, per_class // 5))):
        for c in range(CLASSES):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def command_plan(work: Path, device: str, quick: bool) -> list[tuple[str, list[str], Path | None]]:
    """(row name, dd command arguments, its run folder or None) of every command of the ``methods`` stage, in
    order: expert stores of the three recipes, a teacher, every registered method, every unroll option, a resume,
    and dd.eval's seeds batched and sequential, bf16 and deterministic."""
    data = ["--dataset", "imagefolder", "--data-path", str(work / "data"), "--image-size", "32", "--device", device]
    epochs = "2" if quick else "4"
    iters = "1" if quick else "5"
    experts = ["--num-experts", "2", "--epochs", epochs, "--batch-size", "64"]
    recipes = {"sgd": [], "gsam": ["--optimizer", "gsam"],
               "smooth": ["--momentum", "0.9", "--weight-decay", "0.001", "--lr-decay-epoch", "0", "--loss-warmup",
                          "--gp-lambda", "2"]}
    plan: list[tuple[str, list[str], Path | None]] = [
        (f"buffer_{r}", ["dd.buffer", *data, *experts, *flags, "--buffer-dir", str(work / f"buffers-{r}")], None)
        for r, flags in recipes.items()]
    plan.append(("buffer_teacher", ["dd.buffer", *data, "--teacher", "barlow_twins", "--epochs", "1", "--batch-size",
                                    "32", "--proj-dim", "64", "--buffer-dir", str(work / "buffers-teacher")], None))
    engine = ["--ipc", "1", "--iterations", iters, "--syn-steps", "2", "--expert-epochs", "1", "--min-start-epoch",
              "0", "--max-start-epoch", "1", "--eval-every", "0", "--eval-epochs", "1", "--lr-lr", "0",
              "--val-fraction", "0.2", "--log-every", "1"]  # lr-lr 0: random data must not drive the lr below 0
    store = {"ftd": "gsam", "datm": "gsam", "ast": "smooth"}
    options = {"datm": ["--soft-labels", "--threshold", "100"],
               "ast": ["--balance-loss", "--weight-perturb", "--middle-loss", "agg"]}
    for method in (m for m in METHODS if m not in OWN_LOOP):
        flags = ["--buffer-dir", str(work / f"buffers-{store.get(method, 'sgd')}"), *options.get(method, [])]
        run = work / "runs" / method
        plan.append((f"method_{method}", ["dd.distill", "--method", method, *data, *engine, *flags, "--run-dir",
                                          str(run)], run))
    own = ["--ipc", "1", "--iterations", iters, "--batch-real", "8", "--eval-every", "0", "--eval-epochs", "1",
           "--val-fraction", "0.2", "--log-every", "1"]
    for method in ("dc", "dsa", "dm"):
        run = work / "runs" / method
        plan.append((f"method_{method}", ["dd.distill", "--method", method, *data, *own, "--run-dir", str(run)], run))
    run = work / "runs" / "krr_st"
    plan.append(("method_krr_st", ["dd.distill", "--method", "krr_st", *data, "--buffer-dir",
                                   str(work / "buffers-teacher"), "--num-images", "10", "--iterations", iters,
                                   "--batch-real", "16", "--num-models", "2", "--online-iterations", "2",
                                   "--log-every", "1", "--run-dir", str(run)], run))
    sgd = ["--buffer-dir", str(work / "buffers-sgd")]
    unrolls = {"full": ["--unroll", "full"], "checkpointed": ["--unroll", "checkpointed"],
               "tesla": ["--unroll", "tesla"], "chunk": ["--unroll", "checkpointed", "--unroll-chunk", "3"],
               "snapshot": ["--unroll", "checkpointed", "--unroll-snapshot-every", "2"], "auto": ["--unroll", "auto"]}
    for name, flags in unrolls.items():
        run = work / "runs" / f"unroll-{name}"
        plan.append((f"unroll_{name}", ["dd.distill", "--method", "mtt", *data, *engine, "--syn-steps", "4", *sgd,
                                        *flags, "--run-dir", str(run)], run))
    resumed = work / "runs" / "unroll-full"
    plan.append(("resume", ["dd.distill", "--method", "mtt", *data, *engine, "--syn-steps", "4", *sgd, "--unroll",
                            "full", "--run-dir", str(resumed), "--resume", "--iterations", str(int(iters) + 1)],
                 resumed))
    synset = str(work / "runs" / "mtt" / "synset")
    evaluate = ["dd.eval", "--synset", synset, "--data-path", str(work / "data"), "--models", "ConvNet", "--runs", "2",
                "--epochs", "2" if quick else "20", "--device", device]
    for name, flags in {"batched": ["--batch-seeds", "on"], "sequential": ["--batch-seeds", "off"],
                        "bf16": ["--amp", "bf16"], "deterministic": ["--deterministic"]}.items():
        plan.append((f"dd_eval_{name}", [*evaluate, *flags, "--out", str(work / f"eval-{name}")], None))
    return plan


def run_command(name: str, args: list[str], run: Path | None, timeout: float) -> Row:
    """Run ``python -m <args>`` with the repository on the path; its row: status, seconds, and what the run folder
    measured (its recorded device and unroll, the last loss and s/iteration of metrics.jsonl)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(":")}
    tic = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=timeout,
                              cwd=ROOT)
        code, text = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired:
        code, text = -1, f"timed out after {timeout:.0f} s"
    row: Row = {"name": "command", "case": name, "status": "ok" if code == 0 else "failed",
                "seconds": round(time.perf_counter() - tic, 2)}
    if code != 0:
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        row["error"] = (next((ln for ln in reversed(lines) if ln.startswith("error:") or "Error" in ln), None)
                        or (lines[-1] if lines else f"exit {code}"))[:300]
        if "No module named 'kornia'" in text:
            row["status"] = "skipped: kornia is not installed (carry its wheel)"
    if run is not None and (run / "config.json").is_file():
        config = json.loads((run / "config.json").read_text())
        row.update({k: config[k] for k in ("device", "unroll", "unroll_chunk", "unroll_snapshot_every", "tf32")
                    if k in config})
    if run is not None and (run / "metrics.jsonl").is_file():
        lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        last = next((r for r in reversed(lines) if "seconds_per_iteration" in r), {})
        row.update({k: (round(v, 5) if isinstance(v, float) else v) for k, v in last.items()
                    if k in ("iteration", "loss", "seconds_per_iteration")})
    return row


def method_rows(device: torch.device, quick: bool, work: Path) -> list[Row]:
    make_folder(work / "data", 4 if quick else 50)
    rows = []
    for name, args, run in command_plan(work, str(device), quick):
        rows.append(run_command(name, args, run, timeout=600 if device.type == "cpu" else 240))
        print(json.dumps(rows[-1]), flush=True)
    return rows


# -- the CUDA tests and the Fashion-MNIST rows -----------------------------------------------------------------------
def junit_counts(path: Path) -> dict:
    """passed, skipped, failed (failures and errors) of a pytest junit XML report."""
    suites = ET.parse(path).getroot()
    suite = suites if suites.tag == "testsuite" else suites.find("testsuite")
    total, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
    failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    return {"passed": total - skipped - failed, "skipped": skipped, "failed": failed}


def cuda_test_row(counts: dict) -> Row:
    """The tests' row; ``status`` fails when a test failed or when none ran (all skipped means no CUDA was seen)."""
    ok = counts["failed"] == 0 and counts["passed"] > 0
    why = "" if ok else (" (every CUDA test was skipped)" if counts["failed"] == 0 else "")
    return {"name": "cuda_tests", **counts, "status": ("passed" if ok else "failed") + why}


def test_rows(work: Path) -> list[Row]:
    report = work / "cuda-tests.xml"
    tic = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda",
                           f"--junitxml={report}", "tests/"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    print(done.stdout[-3000:], done.stderr[-2000:], flush=True)
    if not report.is_file():
        return [{"name": "cuda_tests", "status": "failed", "error": (done.stderr or done.stdout).strip()[-300:]}]
    return [{**cuda_test_row(junit_counts(report)), "seconds": round(time.perf_counter() - tic, 1)}]


# The paper-setting Fashion-MNIST rows: scripts/results_fashion_mnist.py --paper runs each row's preset unchanged
# (experiments/<method>/fashionmnist_ipc<k>.yaml) and writes its table beside this check's.
FASHION_SCRIPT = ROOT / "scripts" / "results_fashion_mnist.py"


def fashion_commands(data: str, rows: str, work: Path, out: Path) -> list[list[str]]:
    return [[sys.executable, str(FASHION_SCRIPT), "--paper", "--data-path", data, "--rows", rows, "--work",
             str(work / "fashion"), "--out", str(out)]]


def fashion_rows(data: str | None, rows: str, work: Path, out: Path) -> list[Row]:
    if not data or not Path(data).is_dir():
        return [{"name": "fashion", "status": "failed", "error": "pass --fashion-data DIR (the carried idx files)"}]
    found = []
    for command in fashion_commands(data, rows, work, out):
        tic = time.perf_counter()
        code = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}).returncode
        found.append({"name": "fashion", "command": " ".join(command[1:]), "status": "ok" if code == 0 else "failed",
                      "seconds": round(time.perf_counter() - tic, 1)})
    return found


# -- the report ------------------------------------------------------------------------------------------------------
def write(rows: list[Row], out: Path, command: str, machine: dict) -> None:
    """``<out>/benchmarks-gpu.json`` (machine, command, rows) and ``.md`` (a table per row name)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks-gpu.json").write_text(json.dumps({"machine": machine, "command": command, "rows": rows},
                                                        indent=1) + "\n")
    lines = ["# GPU check", "", f"Machine: {machine['summary']}  ", f"Command: `{command}`", "",
             " ".join(__doc__.strip().split("\n\n")[-1].split()), "", "| fact | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in machine.items() if k != "summary"]
    for name in dict.fromkeys(r["name"] for r in rows):
        group = [r for r in rows if r["name"] == name]
        columns = [c for c in dict.fromkeys(k for r in group for k in r) if c != "name"]
        lines += ["", f"## {name}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in group]
    (out / "benchmarks-gpu.md").write_text("\n".join(lines) + "\n")


def stage_runners(device: torch.device, args: argparse.Namespace, work: Path) -> dict[str, Callable[[], list[Row]]]:
    quick = args.quick
    return {
        "tests": lambda: test_rows(work),
        "methods": lambda: method_rows(device, quick, work),
        "equivalence": lambda: equivalence_rows(device, 1 if quick else 10, 2 if quick else 10),
        "unroll": lambda: unroll_rows(device, [1] if quick else [10, 50], 2 if quick else 30, 1 if quick else 3),
        "profile": lambda: profile_rows(device, quick, STEP_CASES[:3] if quick else STEP_CASES),
        "eval": lambda: eval_rows(device, 1 if quick else 300, 2 if quick else 5, 1),
        "fashion": lambda: fashion_rows(args.fashion_data, args.fashion_rows, work, Path(args.out)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke run of every row")
    parser.add_argument("--out", default="docs")
    parser.add_argument("--stages", default=",".join(DEFAULT_STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    parser.add_argument("--tf32", action="store_true", help="TF32 on (default off, as dd's stages)")
    parser.add_argument("--work", default=None, help="folder for generated data and runs (default: a temporary one)")
    parser.add_argument("--fashion-data", default=None, help="folder of the Fashion-MNIST idx files (stage fashion)")
    parser.add_argument("--fashion-rows", default="dm@1,mtt@1", help="rows method@ipc of the fashion stage")
    args = parser.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    device = resolve_device(args.device)
    configure_backends(args.tf32)
    if device.type == "cpu" and "tests" in stages and args.stages == parser.get_default("stages"):
        stages.remove("tests")  # the CUDA tests would all skip: the CPU form leaves them out
    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-check-"))
    import dd

    machine = {"summary": describe_machine(), **runtime_facts(device), "dd": str(Path(dd.__file__).parent)}
    command = "PYTHONPATH=. python3 scripts/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows: list[Row] = []
    runners = stage_runners(device, args, work)
    failed = []
    start = time.perf_counter()
    for stage in stages:
        tic = time.perf_counter()
        try:
            found = runners[stage]()
        except Exception as e:  # a stage's crash is its row; the next stage runs
            traceback.print_exc()
            found = [{"name": "stage_error", "stage": stage, "error": f"{type(e).__name__}: {e}"[:300]}]
        bad = [r for r in found if "error" in r or str(r.get("status", "ok")).startswith("failed")
               or r.get("ok") is False]
        if bad:
            failed.append(stage)
        rows += found
        rows.append({"name": "stage", "stage": stage, "seconds": round(time.perf_counter() - tic, 1),
                     "status": "failed" if bad else "ok"})
        for row in found:
            print(json.dumps(row), flush=True)
        write(rows, Path(args.out), command, machine)
    print(f"gpu_check: stages {', '.join(stages)} in {time.perf_counter() - start:.0f} s; wrote {args.out}/"
          f"benchmarks-gpu.md and .json" + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
