"""The student's inner loop and the ways to differentiate through it.

An iteration first draws an ``InnerPlan`` (which synthetic images each step uses and the DSA seed of
each step), so any unroll can replay a step exactly. ``full_unroll`` keeps every step's graph, as in
the MTT code: memory grows linearly with the number of steps N. ``checkpointed_unroll`` gives the
same gradient in memory that does not grow with N beyond the student's state vectors: its forward
pass keeps only the state after each step, and its backward pass replays the steps in reverse, one
at a time, propagating the adjoint (reverse-mode accumulation through the unrolled optimiser, as in
Maclaurin et al. 2015 without the reversible arithmetic). It is exact, not TESLA's first-order
approximation: each replayed step keeps the second-order terms through its inner gradient.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from dd.augment import DSA
from dd.cli import check_interrupt
from dd.device import make_generator
from dd.distributed import share, sum_over_ranks, world_size
from dd.errors import DDError
from dd.functional import functional_forward
from dd.training import classification_loss, frozen_running_stats

State = tuple[torch.Tensor, ...]


@dataclass
class InnerPlan:
    """Per inner step: the synthetic indices of its minibatch and the seed of its augmentation."""

    indices: list[torch.Tensor]
    seeds: list[int]


def _answer_interrupt() -> None:
    """A held interrupt abandons the iteration at the next inner step (the engine undoes its draws), so a long
    unroll answers SIGTERM at once; across processes the step finishes first (a rank alone must not leave a
    collective the others are in)."""
    if world_size() == 1:
        check_interrupt()


def make_plan(num_images: int, batch_size: int, steps: int, generator: torch.Generator,
              device: torch.device | str = "cpu") -> InnerPlan:
    """Minibatches are consecutive chunks of fresh random permutations of the synthetic set (MTT).
    The indices are drawn on the CPU and moved to ``device`` in one copy, not one per step."""
    chunks: list[torch.Tensor] = []
    while len(chunks) < steps:
        _answer_interrupt()
        chunks.extend(torch.randperm(num_images, generator=generator).split(batch_size))
    chunks = chunks[:steps]
    seeds = torch.randint(0, 2**62, (steps,), generator=generator).tolist()
    indices = torch.cat(chunks).to(device, non_blocking=True).split([len(c) for c in chunks])
    return InnerPlan(list(indices), seeds)


class Student:
    """The student's inner optimiser as a function of flat parameters. Its state is a tuple whose first
    entry is the parameters; plain SGD keeps nothing else: w' = w - lr * grad_w loss(f(DSA(x_B); w), y_B).
    Methods with other inner optimisers (AST's heavy-ball momentum) override ``init_state`` and ``update``.

    The inner loss must be a mean over the minibatch (every method's is): its gradient is then the sum of
    the gradients of the parts' losses, each weighted by its share of the minibatch. Under torchrun each rank
    takes one contiguous part of every minibatch (``dd.distributed.share``) and the ranks' gradients are
    summed (``dd.distributed.sum_over_ranks``), so every rank holds the same student; without a graph a
    part can be taken ``chunk`` images at a time."""

    def __init__(self, model: nn.Module, augment: DSA,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = classification_loss) -> None:
        self.model = model
        self.augment = augment
        self.loss_fn = loss_fn

    def init_state(self, w0: torch.Tensor) -> State:
        """The inner optimiser's state at the start parameters."""
        return (w0,)

    def update(self, state: State, grad: torch.Tensor, lr: torch.Tensor) -> State:
        """The state after one step whose minibatch gradient is ``grad`` (plain SGD: w - lr * grad)."""
        return (state[0] - lr * grad,)

    def minibatch(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole minibatch ``index`` of a step, its images augmented with ``seed`` (the same on every rank:
        DSA draws its per-image parameters for the whole minibatch), and its labels."""
        index = index.to(images.device)
        return self.augment(images[index], make_generator(seed)), labels[index]

    def parts(self, size: int, chunk: int | None = None) -> list[slice]:
        """This rank's part of a minibatch of ``size`` images, as slices of at most ``chunk`` images."""
        mine = share(size)
        if mine.start == mine.stop:
            raise DDError(f"a minibatch of {size} synthetic images cannot be split across {world_size()} processes; "
                          "use a --batch-syn of at least the number of processes")
        stride = chunk or mine.stop - mine.start
        return [slice(i, min(i + stride, mine.stop)) for i in range(mine.start, mine.stop, stride)]

    def part_gradient(self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, part: slice,
                      create_graph: bool = True) -> torch.Tensor:
        """grad_w of the inner loss on rows ``part`` of the minibatch (x, y), weighted by their share of it."""
        size, n = y.shape[0], part.stop - part.start
        loss = self.loss_fn(functional_forward(self.model, w, x[part]), y[part])
        if n < size:
            loss = loss * (n / size)
        (grad,) = torch.autograd.grad(loss, w, create_graph=create_graph)
        return grad

    def gradient(self, w: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor,
                 seed: int, create_graph: bool = True, chunk: int | None = None) -> torch.Tensor:
        """grad_w of the inner loss on minibatch ``index`` augmented with ``seed``. With ``create_graph`` the
        graph of this rank's whole part is kept; without it the part is taken ``chunk`` images at a time."""
        x, y = self.minibatch(images, labels, index, seed)
        parts = self.parts(y.shape[0], None if create_graph else chunk)
        grad = self.part_gradient(w, x, y, parts[0], create_graph)
        for part in parts[1:]:
            grad = grad + self.part_gradient(w, x, y, part, create_graph)
        return sum_over_ranks(grad)

    def step(self, state: State, images: torch.Tensor, labels: torch.Tensor, lr: torch.Tensor,
             index: torch.Tensor, seed: int, create_graph: bool = True, chunk: int | None = None) -> State:
        """The state after one inner step."""
        grad = self.gradient(state[0], images, labels, index, seed, create_graph, chunk)
        return self.update(state, grad, lr)


def full_unroll(student: Student, w0: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                lr: torch.Tensor, plan: InnerPlan, capture: Sequence[int]) -> list[torch.Tensor]:
    """Student parameters after each step count in ``capture`` (e.g. ``[N]`` for the end point),
    differentiable w.r.t. images, labels and lr through every step (memory grows linearly with N)."""
    state = student.init_state(w0.detach().requires_grad_(True))
    captured = []
    for step, (index, seed) in enumerate(zip(plan.indices, plan.seeds, strict=True), start=1):
        _answer_interrupt()
        state = student.step(state, images, labels, lr, index, seed)
        if step in capture:
            captured.append(state[0])
    return captured


# -- the checkpointed unroll ---------------------------------------------------------------------------
def _replay(student: Student, state: State, images: torch.Tensor, labels: torch.Tensor, lr: torch.Tensor,
            plan: InnerPlan, step: int, chunk: int | None = None) -> State:
    """The detached state after 1-based inner ``step`` from the detached state before it, without a graph
    through the step (the inner gradient still needs one through the forward, ``chunk`` images at a time)."""
    with torch.enable_grad():
        w = state[0].detach().requires_grad_(True)
        grad = student.gradient(w, images, labels, plan.indices[step - 1], plan.seeds[step - 1], False, chunk)
    with torch.no_grad():
        return student.update(state, grad, lr)


def _step_backward(student: Student, before: Sequence[torch.Tensor], adjoint: Sequence[torch.Tensor],
                   data: Sequence[torch.Tensor], index: torch.Tensor, seed: int, chunk: int | None) -> None:
    """Accumulate into the ``.grad`` of the leaves ``before`` (the state before a step) and of the ``data``
    leaves (images, labels, lr) that require it the vector-Jacobian product of the step with ``adjoint``
    (the adjoint of the state after it).

    Unchunked, the step's whole graph is built at once. Chunked, the loss is a mean over the minibatch, so
    the step's gradient g is a sum over chunks and so is its VJP: g is first computed without a graph, the
    update's VJP gives the adjoint of g, and each chunk's graph (through its inner gradient) is then built,
    used and freed in turn; the augmentation's graph is walked once at the end."""
    images, labels, lr = data
    wanted = [x for x in data if x.requires_grad]
    with torch.enable_grad():
        if chunk is None:
            after = student.step(tuple(before), images, labels, lr, index, seed)
            torch.autograd.backward(after, adjoint, inputs=[*before, *wanted])
            return
        w = before[0]
        grad = student.gradient(w.detach().requires_grad_(True), images.detach(), labels.detach(), index, seed,
                                False, chunk).requires_grad_(True)
        after = student.update(tuple(before), grad, lr)
        torch.autograd.backward(after, adjoint, inputs=[*before, grad, *([lr] if lr.requires_grad else [])])
        grad_adjoint = sum_over_ranks(grad.grad)  # the backward of the ranks' sum in ``gradient``
        x, y = student.minibatch(images, labels, index, seed)
        x_leaf = x.detach().requires_grad_(images.requires_grad)
        y_leaf = y.detach().requires_grad_(labels.requires_grad)
        leaves = [w, *(v for v in (x_leaf, y_leaf) if v.requires_grad)]
        for part in student.parts(y.shape[0], chunk):
            part_grad = student.part_gradient(w, x_leaf, y_leaf, part)
            torch.autograd.backward(part_grad, grad_adjoint, inputs=leaves)
        pairs = [(v, leaf.grad) for v, leaf in ((x, x_leaf), (y, y_leaf)) if leaf.requires_grad]
        if pairs:
            torch.autograd.backward([v for v, _ in pairs], [g for _, g in pairs],
                                    inputs=[v for v in (images, labels) if v.requires_grad])


class _CheckpointedUnroll(torch.autograd.Function):
    """Forward: the captured parameters, keeping the state every ``snapshot_every`` steps. Backward: per
    segment between snapshots (last first), replay the segment's states, then walk its steps in reverse,
    each rebuilt with its graph, mapping the adjoint of the state after a step to the adjoint of the
    state before it (a vector-Jacobian product) and adding the step's images, labels and lr terms."""

    @staticmethod
    def forward(ctx, student: Student, plan: InnerPlan, capture: Sequence[int], snapshot_every: int,
                chunk: int | None, w0: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, lr: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        ctx.save_for_backward(images, labels, lr)
        data = (images.detach(), labels.detach(), lr.detach())
        steps = len(plan.seeds)
        state = tuple(s.detach() for s in student.init_state(w0.detach()))
        snapshots, captured = {0: state}, []
        for step in range(1, steps + 1):
            _answer_interrupt()
            state = _replay(student, state, *data, plan, step, chunk)
            if step % snapshot_every == 0:
                snapshots[step] = state
            if step in capture:
                captured.append(state[0])
        ctx.student, ctx.plan, ctx.snapshot_every, ctx.chunk = student, plan, snapshot_every, chunk
        ctx.snapshots = snapshots
        ctx.capture = [step for step in sorted(set(capture)) if step <= steps]
        return tuple(captured)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_captured: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        student, plan, k, chunk = ctx.student, ctx.plan, ctx.snapshot_every, ctx.chunk
        needs = ctx.needs_input_grad[6:]  # images, labels, lr
        data = [x.detach().requires_grad_(need) for x, need in zip(ctx.saved_tensors, needs, strict=True)]
        plain = [x.detach() for x in data]
        incoming = dict(zip(ctx.capture, grad_captured, strict=True))
        last = ctx.capture[-1]
        adjoint = [torch.zeros_like(s) for s in ctx.snapshots[0]]
        with frozen_running_stats(student.model):  # replays leave BatchNorm statistics as the forward left them
            for start in reversed(range(0, last, k)):
                end = min(start + k, last)
                states = [ctx.snapshots[start]]
                for step in range(start + 1, end):
                    states.append(_replay(student, states[-1], *plain, plan, step, chunk))
                for step in range(end, start, -1):
                    if step in incoming:
                        adjoint[0] = adjoint[0] + incoming[step]
                    before = [s.detach().requires_grad_(True) for s in states.pop()]
                    _step_backward(student, before, adjoint, data, plan.indices[step - 1], plan.seeds[step - 1], chunk)
                    adjoint = [torch.zeros_like(s) if s.grad is None else s.grad for s in before]
        return (None,) * 6 + tuple(x.grad if need else None for x, need in zip(data, needs, strict=True))


def checkpointed_unroll(student: Student, w0: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                        lr: torch.Tensor, plan: InnerPlan, capture: Sequence[int],
                        snapshot_every: int = 1, chunk: int | None = None) -> list[torch.Tensor]:
    """``full_unroll``'s values and exact gradient w.r.t. images, labels and lr (w0 is a constant, as there),
    holding one step's graph at a time plus the state after every ``snapshot_every``-th step. Each step
    runs once in the forward pass (no second-order graph) and once in the backward pass (with it); with
    k = ``snapshot_every`` > 1 the k - 1 steps inside each segment run once more to rebuild its states,
    so memory holds about N / k + k states instead of N. With ``chunk``, a step's graph holds at most
    ``chunk`` images of its minibatch at a time (for minibatches too large for one graph), at the cost of
    one more graph-free gradient per step in the backward pass; not for BatchNorm students, whose
    statistics span the minibatch."""
    return list(_CheckpointedUnroll.apply(student, plan, capture, snapshot_every, chunk, w0, images, labels, lr))


Unroll = Callable[[Student, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, InnerPlan, Sequence[int]],
                  list[torch.Tensor]]
UNROLLS: dict[str, Unroll] = {"full": full_unroll, "checkpointed": checkpointed_unroll}


def make_unroll(name: str, snapshot_every: int = 1, chunk: int | None = None) -> Unroll:
    """The registered unroll ``name``; ``snapshot_every`` and ``chunk`` are the checkpointed unroll's snapshot
    stride and images per chunk of a step's graph."""
    if name not in UNROLLS:
        raise DDError(f"unknown unroll '{name}'; choose from {', '.join(UNROLLS)}")
    if snapshot_every < 1:
        raise DDError(f"--unroll-snapshot-every must be positive, got {snapshot_every}")
    if chunk is not None and chunk < 1:
        raise DDError(f"--unroll-chunk must be positive, got {chunk}")
    if name == "checkpointed":
        return functools.partial(checkpointed_unroll, snapshot_every=snapshot_every, chunk=chunk)
    if snapshot_every != 1:
        raise DDError(f"--unroll-snapshot-every only applies to --unroll checkpointed, not '{name}'")
    if chunk is not None:
        raise DDError(f"--unroll-chunk only applies to --unroll checkpointed, not '{name}'")
    return UNROLLS[name]


# -- the TESLA unroll ----------------------------------------------------------------------------------
def first_order(student: Student) -> Student:
    """A copy of ``student`` whose inner gradient g_i = grad_w loss(f(DSA(x_B); w_i), y_B) treats w_i as a
    constant: g_i depends on the images, labels and lr only through step i's own minibatch, so no gradient
    flows back through the earlier steps that produced w_i (TESLA's approximation, Cui et al. 2023, section 4).
    The optimiser's own update (w - lr * g, a momentum buffer) stays differentiable."""
    approx = copy.copy(student)
    exact = student.gradient

    def gradient(w: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, seed: int,
                 create_graph: bool = True, chunk: int | None = None) -> torch.Tensor:
        return exact(w.detach().requires_grad_(True), images, labels, index, seed, create_graph, chunk)

    approx.gradient = gradient
    return approx


class _TeslaUnroll(torch.autograd.Function):
    """Plain-SGD students (state (w,)). Under the first-order approximation d w_{i+1} / d w_i = I, so the adjoint
    of the state after step i is the sum of the captured adjoints at steps >= i, known before any step is
    replayed. Forward: the steps without a graph, keeping only the current state. Backward: the steps again
    from w0 in order, each rebuilt with its graph, contributing the vector-Jacobian product of its update
    -lr * g_i(x_B, y_B) with that adjoint; the graph is freed before the next step."""

    @staticmethod
    def forward(ctx, student: Student, plan: InnerPlan, capture: Sequence[int], w0: torch.Tensor,
                images: torch.Tensor, labels: torch.Tensor, lr: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.save_for_backward(w0, images, labels, lr)
        data = (images.detach(), labels.detach(), lr.detach())
        state, captured = (w0.detach(),), []
        for step in range(1, len(plan.seeds) + 1):
            _answer_interrupt()
            state = _replay(student, state, *data, plan, step)
            if step in capture:
                captured.append(state[0])
        ctx.student, ctx.plan = student, plan
        ctx.capture = [step for step in sorted(set(capture)) if step <= len(plan.seeds)]
        return tuple(captured)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_captured: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        student, plan = first_order(ctx.student), ctx.plan
        w0, *data = [x.detach() for x in ctx.saved_tensors]
        needs = ctx.needs_input_grad[4:]  # images, labels, lr
        inputs = [x.requires_grad_(True) if need else x for x, need in zip(data, needs, strict=True)]
        wanted = [x for x in inputs if x.requires_grad]
        totals = [torch.zeros_like(x) for x in wanted]
        adjoints, suffix = {}, torch.zeros_like(w0)  # adjoint of the state after step s <= capture c
        for step, grad in reversed(list(zip(ctx.capture, grad_captured, strict=True))):
            suffix = suffix + grad
            adjoints[step] = suffix
        w = w0
        with frozen_running_stats(student.model):  # replays leave BatchNorm statistics as the forward left them
            for step in range(1, ctx.capture[-1] + 1):
                adjoint = adjoints[next(c for c in ctx.capture if c >= step)]
                with torch.enable_grad():
                    (after,) = student.step((w,), *inputs, plan.indices[step - 1], plan.seeds[step - 1])
                    grads = torch.autograd.grad(after, wanted, adjoint, allow_unused=True)
                for total, g in zip(totals, grads, strict=True):
                    if g is not None:
                        total.add_(g)
                w = after.detach()
        out = iter(totals)
        return (None, None, None, None, *(next(out) if need else None for need in needs))


def tesla_unroll(student: Student, w0: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                 lr: torch.Tensor, plan: InnerPlan, capture: Sequence[int]) -> list[torch.Tensor]:
    """``full_unroll``'s values with TESLA's first-order gradient (Cui et al. 2023): dL/dx =
    sum_i (dL/dw_{i+1})^T d(-lr * g_i)/dx with w_i held constant in g_i, exact for one step. A plain-SGD
    student holds w0, the current state and one step's graph, whatever ``syn_steps``: each step runs once in
    the forward pass and once (with its graph) in the backward pass. A student with more state (AST's
    momentum) has adjoints that change along the steps, so its approximate gradient is walked backwards
    from snapshots like ``checkpointed_unroll`` (about 2 sqrt(N) states, still one step's graph at a time)."""
    if len(student.init_state(w0)) > 1:
        every = max(1, math.isqrt(len(plan.seeds)))
        return checkpointed_unroll(first_order(student), w0, images, labels, lr, plan, capture, every)
    return list(_TeslaUnroll.apply(student, plan, capture, w0, images, labels, lr))


UNROLLS["tesla"] = tesla_unroll
