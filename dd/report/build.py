"""Writing a report on run folders and buffers: ``curves.png``, one figure per buffer, ``report.md`` and the
self-contained ``report.html``."""

from __future__ import annotations

import os
import shutil
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from dd.errors import DDError
from dd.eval.report import context_key, results_markdown, source_key
from dd.io import atomic_write_bytes
from dd.report.artefacts import Buffer, Run, read
from dd.report.html import markdown_to_html
from dd.report.plots import plot_buffer, plot_curves, require_matplotlib

# Keys of a run's config that say where or how long it ran, not what it is: left out of the comparison.
NOT_COMPARED = frozenset({"run_dir", "resume", "device", "wandb", "data_path", "download"})


def default_out(paths: Sequence[Path]) -> Path:
    """``<folder>/report`` for one folder, ``<their common parent>/report`` for several."""
    if len(paths) == 1:
        return paths[0] / "report"
    return Path(os.path.commonpath([p.resolve() for p in paths])) / "report"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _rel(path: Path, out: Path) -> str:
    """``path`` relative to ``out``, percent-encoded for a Markdown link (a space stays valid)."""
    return quote(Path(os.path.relpath(path.resolve(), out.resolve())).as_posix())


def _best_and_final(run: Run, key: str) -> tuple[str, str]:
    xs, ys = run.series(key)
    if not xs:
        return "–", "–"
    best = max(range(len(ys)), key=lambda i: (ys[i], -xs[i]))
    return f"{_percent(ys[best])} (it {xs[best]})", f"{_percent(ys[-1])} (it {xs[-1]})"


def _cell_key(record: dict[str, Any]) -> tuple[str, str, str]:
    """What one table cell may hold: records of one section, source (protocol and lr included) and model."""
    return context_key(record), source_key(record), record["model"]


def _test_cell(run: Run) -> str:
    """The final set's test-split dd.eval records of one setting (the run's own model and the set's own protocol
    first, then the first recorded), named by model and protocol; the other settings are counted, not merged."""
    records = [r for r in run.test_records() if r.get("split", "test") == "test"]
    elsewhere = len([r for r in run.set_records() if r.get("split", "test") == "test"]) - len(records)
    foreign = f"; {elsewhere} record{'s' * (elsewhere > 1)} on other data not shown" if elsewhere else ""
    own = (run.config.get("model"), (run.synset or {}).get("protocol"))
    records.sort(key=lambda r: (r["model"] != own[0], r.get("protocol", {}).get("name") != own[1]))  # stable
    if not records:
        return "–" + (f" ({foreign[2:]})" if foreign else "")
    first = _cell_key(records[0])
    values = [r["accuracy"] for r in records if _cell_key(r) == first]
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    others = len({_cell_key(r) for r in records}) - 1
    more = f"; {others} other setting{'s' * (others > 1)} below" if others else ""
    protocol = records[0].get("protocol", {}).get("name", "?")
    return (f"{_percent(statistics.fmean(values))} ± {100 * std:.2f} ({len(values)} seeds, {records[0]['model']}, "
            f"protocol {protocol}{more}{foreign})")


def summary_table(runs: Sequence[Run]) -> str:
    """One row per run: method, dataset, ipc, iterations done, best and final validation accuracy (with the
    iteration), the final set's test accuracy from ``dd.eval`` and the median seconds per iteration."""
    lines = ["| run | method | dataset | ipc | iterations | selected on | best | final | test (dd.eval) | s/it |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        cfg = run.config
        keys = [k for k in run.accuracy_keys() if k.startswith("val/")] or run.accuracy_keys()
        key = keys[0] if keys else None
        best, final = _best_and_final(run, key) if key else ("–", "–")
        seconds = run.seconds_per_iteration()
        done = f"{run.iteration} of {cfg.get('iterations', '?')}"
        lines.append(f"| {run.name} | {cfg.get('method', '?')} | {cfg.get('dataset', '?')} | {cfg.get('ipc', '?')} | "
                     f"{done} | {key or '–'} | {best} | {final} | {_test_cell(run)} | "
                     f"{'–' if seconds is None else f'{seconds:.3g}'} |")
    return "\n".join(lines) + ("\n\nAccuracy in %. *best* and *final* are the in-run evaluations on the split "
                               "named under *selected on* (validation: the test split is read by dd.eval only).\n")


def config_differences(runs: Sequence[Run]) -> str:
    """A table of the config keys whose values differ between the runs (empty for one run or none)."""
    if len(runs) < 2:
        return ""
    keys = list(dict.fromkeys(k for run in runs for k in run.config if k not in NOT_COMPARED))
    differing = [k for k in keys if len({repr(run.config.get(k)) for run in runs}) > 1]
    if not differing:
        return "The runs share every config key (apart from where and how long they ran).\n"
    lines = ["| key | " + " | ".join(run.name for run in runs) + " |", "|---|" + "---|" * len(runs)]
    lines += [f"| {k} | " + " | ".join(f"`{run.config.get(k)}`" for run in runs) + " |" for k in differing]
    return "\n".join(lines) + "\n"


def _demote(markdown: str, levels: int) -> str:
    return "\n".join("#" * levels + line if line.startswith("#") else line for line in markdown.splitlines())


def _copy(path: Path, folder: Path) -> Path:
    """``path`` copied into ``folder`` (so that the report folder can move without losing its images)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, folder / path.name)
    return folder / path.name


def run_section(run: Run, out: Path, images: Path) -> str:
    """A run's part of report.md: where it is, its images at each evaluation (copied into ``images``) and its
    dd.eval tables."""
    parts = [f"## {run.name}\n\n`{run.path}`"]
    if run.synset is not None:
        parts.append(f"Final set: iteration {run.synset.get('iteration')}, learned lr {run.synset.get('lr', 0):.4g}, "
                     f"buffer `{run.synset.get('buffer')}`.")
    if run.grids:
        parts.append("### images at each evaluation\n\n" + " ".join(
            f"![iteration {it}]({_rel(_copy(p, images), out)})" for it, p in run.grids))
        if (run.path / "progress.gif").is_file():
            parts.append(f"Animation: ![progress]({_rel(_copy(run.path / 'progress.gif', images), out)})")
    for path, records in run.results.items():
        if records:
            parts.append(f"### dd.eval results (`{path}`)\n\n{_demote(results_markdown(records), 2)}")
    return "\n\n".join(parts) + "\n"


def _recipe_table(recipe: dict[str, Any]) -> str:
    lines = ["| recipe | value |", "|---|---|"] + [f"| {k} | `{v}` |" for k, v in recipe.items()]
    return "\n".join(lines) + "\n"


def buffer_section(buffer: Buffer, figure: Path, out: Path) -> str:
    """A buffer's part of report.md: the experts' test accuracy per epoch (figure and table) and the recipe."""
    epochs, means, stds, counts = buffer.test_accuracy()
    dataset = buffer.manifest.get("dataset", {})
    rows = ["| epoch | test accuracy (%) | experts |", "|---|---|---|"]
    rows += [f"| {e} | {100 * m:.2f} ± {100 * s:.2f} | {n} |" for e, m, s, n in zip(epochs, means, stds, counts,
                                                                                      strict=True)]
    seconds = [e["train_seconds"] for e in buffer.experts if isinstance(e.get("train_seconds"), (int, float))]
    timing = f", {statistics.fmean(seconds):.1f} s per expert (mean)" if seconds else ""
    return (f"## buffer {buffer.name}\n\n`{buffer.path}`: {len(buffer.experts)} finished experts of "
            f"{buffer.manifest.get('num_epochs', '?')} epochs, {buffer.manifest.get('model', {}).get('name', '?')} on "
            f"{dataset.get('name', '?')} {dataset.get('channels', '?')}x{'x'.join(map(str, dataset.get('size', [])))}"
            f"{timing}.\n\n![expert test accuracy]({_rel(figure, out)})\n\n" + "\n".join(rows)
            + "\n\nMean ± population std over the experts tested at that epoch.\n\n"
            + _recipe_table(buffer.manifest.get("recipe", {})))


def label_apart(runs: Sequence[Run]) -> None:
    """Runs whose folders share a name are labelled by their path below the runs' common folder (``a/r1``,
    ``b/r1``), so that no two rows, curves or sections of a report carry one name."""
    names = [run.path.name for run in runs]
    clashing = [run for run in runs if names.count(run.path.name) > 1]
    if not clashing:
        return
    common = Path(os.path.commonpath([run.path.resolve() for run in clashing]))
    for run in clashing:
        relative = run.path.resolve().relative_to(common).as_posix()
        run.label = run.path.name if relative == "." else relative


def make_report(paths: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Write the report on the run folders and buffers ``paths`` into ``out`` (default: ``default_out``):
    ``curves.png`` (runs), ``buffer_<n>_<name>.png`` (buffers), ``images/`` (copies of the runs' grids, so the
    folder can move), ``report.md`` and ``report.html``. Returns ``out``."""
    if not paths:
        raise DDError("no folder to report on; pass one or more run folders or buffer folders")
    require_matplotlib()
    folders = [Path(p) for p in paths]
    items = [read(p) for p in folders]
    out = Path(out) if out is not None else default_out(folders)
    out.mkdir(parents=True, exist_ok=True)
    runs = [i for i in items if isinstance(i, Run)]
    buffers = [i for i in items if isinstance(i, Buffer)]
    label_apart(runs)
    sections = ["# dd report\n"]
    if runs:
        plot_curves(runs, out / "curves.png")
        sections += ["## runs\n", summary_table(runs), config_differences(runs), "![curves](curves.png)\n"]
        sections += [run_section(run, out, out / "images" / f"{n}-{run.name}") for n, run in enumerate(runs)]
    for n, buffer in enumerate(buffers):
        figure = out / f"buffer_{n}_{buffer.name}.png"
        plot_buffer(buffer, figure)
        sections.append(buffer_section(buffer, figure, out))
    markdown = "\n".join(s for s in sections if s)
    atomic_write_bytes(out / "report.md", markdown.encode())
    atomic_write_bytes(out / "report.html", markdown_to_html(markdown, out, "dd report").encode())
    return out
