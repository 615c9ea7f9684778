"""The report's figures (matplotlib, an optional dependency): the curves of distillation runs and the
test accuracy of a buffer's experts.

Lines carry their run's name at their right end, so the figure reads without a legend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dd.errors import DDError
from dd.io import atomic_write
from dd.report.artefacts import Buffer, Run

INSTALL = "pip install 'dd[report]' (or pip install matplotlib)"
DPI = 100


def require_matplotlib() -> None:
    """DDError naming the install command when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise DDError(f"dd.report draws its figures with matplotlib, which is not installed; {INSTALL}") from None


def _figure(width: float, height: float) -> Any:
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig: Any, path: Path) -> None:
    atomic_write(path, lambda p: fig.savefig(str(p), format="png", dpi=DPI))


def _label_end(ax: Any, xs: Sequence[float], ys: Sequence[float], text: str, color: Any) -> None:
    """``text`` just right of the last point of a line, in the line's colour."""
    ax.annotate(text, (xs[-1], ys[-1]), xytext=(4, 0), textcoords="offset points", color=color, fontsize=8,
                va="center", ha="left", annotation_clip=False)


def _label_ends(ax: Any, ends: list[tuple[float, float, str, Any]], gap: float = 0.06) -> None:
    """Name each line (x, y of its last point, text, colour) right of its end, the names pushed apart
    vertically (at least ``gap`` of the axes' height) where lines end close together; a thin line joins a
    moved name to its point."""
    if not ends:
        return
    low, high = ax.get_ylim()
    span = (high - low) or 1.0
    order = sorted(range(len(ends)), key=lambda i: ends[i][1])
    wanted = [(ends[i][1] - low) / span for i in order]
    placed: list[float] = []
    for y in wanted:
        placed.append(max(y, placed[-1] + gap) if placed else y)
    overflow = max(0.0, placed[-1] - 0.98)  # shift the stack down when it runs off the top
    placed = [y - overflow for y in placed]
    x_low, x_high = ax.get_xlim()
    for i, y in zip(order, placed, strict=True):
        x, _, text, color = ends[i]
        ax.annotate(text, (x, ends[i][1]), xytext=((x - x_low) / (x_high - x_low) + 0.02, y),
                    textcoords="axes fraction", color=color, fontsize=8, va="center", ha="left",
                    annotation_clip=False, arrowprops={"arrowstyle": "-", "color": color, "lw": 0.5, "alpha": 0.6})


def run_names(runs: Sequence[Run]) -> list[str]:
    """A distinct short name per run: its folder's name, and where two runs share it, the first folder of their
    paths that differs, in brackets (``mtt-digits-ipc1 (lab)``)."""
    names = [run.name for run in runs]
    paths = [run.path.resolve().parts for run in runs]
    out = []
    for n, (name, parts) in enumerate(zip(names, paths, strict=True)):
        twins = [paths[m] for m in range(len(runs)) if names[m] == name and m != n]
        if not twins:
            out.append(name)
            continue
        common = min(next((i for i, (a, b) in enumerate(zip(parts, t, strict=False)) if a != b), len(parts) - 1)
                     for t in twins)
        out.append(f"{name} ({parts[min(common, len(parts) - 1)]})")
    return out if len(set(out)) == len(out) else [f"{name} ({n})" for n, name in enumerate(out)]


def _style(ax: Any, title: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def plot_curves(runs: Sequence[Run], path: Path) -> None:
    """``curves.png``: the matching loss, the learned lr and the evaluation accuracy (validation solid, test
    dashed) against the iteration; one colour per run, named at the end of its lines."""
    fig = _figure(11, 3.6)
    loss_ax, lr_ax, acc_ax = fig.subplots(1, 3, sharex=True)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    ends: dict[Any, list[tuple[float, float, str, Any]]] = {loss_ax: [], lr_ax: [], acc_ax: []}
    for run, name, color in zip(runs, run_names(runs), colors, strict=True):
        for ax, key in ((loss_ax, "loss"), (lr_ax, "syn_lr")):
            xs, ys = run.series(key)
            if xs:
                ax.plot(xs, ys, color=color, linewidth=1.2)
                ends[ax].append((xs[-1], ys[-1], name, color))
        for key in run.accuracy_keys():
            xs, ys = run.series(key)
            percent = [100 * y for y in ys]
            ax_style = "-" if key.startswith("val/") else "--"
            acc_ax.plot(xs, percent, ax_style, marker="o", markersize=3, color=color, linewidth=1.2)
            several = len(run.accuracy_keys()) > 1
            label = key if len(runs) == 1 else f"{name} {key}" if several else name
            ends[acc_ax].append((xs[-1], percent[-1], label, color))
    _style(loss_ax, "matching loss", "normalised parameter distance")
    _style(lr_ax, "learned lr", "inner-loop lr")
    _style(acc_ax, "accuracy (val solid, test dashed)", "accuracy (%)")
    for ax in (loss_ax, lr_ax, acc_ax):
        ax.set_xlabel("iteration")
    last = max((run.iteration for run in runs), default=1) or 1
    loss_ax.set_xlim(0, last * 1.3)  # shared by the three panels; the right part holds the end labels
    for ax, found in ends.items():
        _label_ends(ax, found)
    if len(runs) == 1:
        fig.suptitle(runs[0].name, fontsize=11)
    _save(fig, path)


def plot_buffer(buffer: Buffer, path: Path) -> None:
    """``<store>.png``: the experts' test accuracy per epoch, mean with a ± std band, and the number of experts."""
    epochs, means, stds, counts = buffer.test_accuracy()
    fig = _figure(6, 3.6)
    ax = fig.subplots()
    mean = [100 * m for m in means]
    low = [100 * (m - s) for m, s in zip(means, stds, strict=True)]
    high = [100 * (m + s) for m, s in zip(means, stds, strict=True)]
    ax.fill_between(epochs, low, high, color="C0", alpha=0.25, linewidth=0)
    ax.plot(epochs, mean, "-o", color="C0", markersize=3, linewidth=1.4)
    if epochs:
        _label_end(ax, epochs, mean, f"{mean[-1]:.1f} ± {100 * stds[-1]:.1f} % ({counts[-1]} experts)", "C0")
        right = max(epochs)
        ax.set_xlim(min(epochs) - 0.5, right + 0.45 * max(right - min(epochs), 1))
    model = buffer.manifest.get("model", {}).get("name", "?")
    dataset = buffer.manifest.get("dataset", {}).get("name", "?")
    _style(ax, f"expert test accuracy: {model} on {dataset} (mean ± std over experts)", "test accuracy (%)")
    ax.set_xlabel("epoch")
    _save(fig, path)


def plot_tuning(folder: str | Path, path: Path) -> None:
    """``tuning.png`` of a ``dd.tune`` folder (its ``trials.json``, no Optuna needed): one panel per searched key,
    the validation mean (± std) of each complete trial against the key's value (log axis for a log range), the
    pruned trials at their last in-run validation accuracy (crosses); the best trial ringed."""
    from dd.io import read_json

    table = read_json(Path(folder) / "trials.json", "tuning table")
    rows, space = table["trials"], (table.get("search") or {}).get("space", [])
    keys = [text.split("=", 1)[0] for text in space] or list(dict.fromkeys(k for r in rows for k in r["params"]))
    logs = {text.split("=", 1)[0] for text in space if text.split("=", 1)[1].startswith("log:")}
    fig = _figure(3.4 * max(len(keys), 1), 3.2)
    axes = fig.subplots(1, max(len(keys), 1), squeeze=False)[0]
    for ax, key in zip(axes, keys, strict=False):
        done = [r for r in rows if r["state"] == "complete" and key in r["params"]]
        pruned = [r for r in rows if r["pruned"] and r["last_reported"] is not None and key in r["params"]]
        categorical = any(isinstance(r["params"][key], (str, bool)) for r in done + pruned)
        x = (lambda v: str(v)) if categorical else (lambda v: v)
        ax.errorbar([x(r["params"][key]) for r in done], [100 * r["val_mean"] for r in done],
                    yerr=[100 * (r["val_std"] or 0) for r in done], fmt="o", color="C0", markersize=4, capsize=2,
                    label="complete")
        ax.plot([x(r["params"][key]) for r in pruned], [100 * r["last_reported"] for r in pruned], "x", color="C3",
                label="pruned (last in-run)")
        best = [r for r in done if r["number"] == table.get("best")]
        if best:
            ax.plot([x(best[0]["params"][key])], [100 * best[0]["val_mean"]], "o", markersize=11, fillstyle="none",
                    color="C2", label="best")
        if key in logs:
            ax.set_xscale("log")
            ax.tick_params(axis="x", which="minor", labelbottom=False)
        _style(ax, key, "validation accuracy (%)")
        ax.set_xlabel(key)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"dd.tune: {len(rows)} trials, validation split", fontsize=10)
    _save(fig, path)
