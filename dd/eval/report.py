"""Result records and the Markdown table (architecture x source, mean ± std over seeds)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

SOURCE_ORDER = ("distilled", "random", "full")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population std (0 for a single value)."""
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def format_cell(values: list[float]) -> str:
    """``mean ± std`` in percent with the number of seeds, e.g. ``91.23 ± 0.40 (5)``."""
    mean, std = mean_std(values)
    return f"{100 * mean:.2f} ± {100 * std:.2f} ({len(values)})"


def column_name(run: dict[str, Any]) -> str:
    name = run["source"] if run["source"] != "distilled" else f"{run.get('method', 'distilled')}"
    if run["source"] != "full":
        name += f" ipc{run['ipc']}"
    return name


def markdown_table(runs: list[dict[str, Any]]) -> str:
    """A Markdown table with one row per architecture and one column per (source, ipc)."""
    cells: dict[tuple[str, str], list[float]] = defaultdict(list)
    columns: list[tuple[int, str]] = []
    models: list[str] = []
    for run in runs:
        col = column_name(run)
        cells[(run["model"], col)].append(run["accuracy"])
        key = (SOURCE_ORDER.index(run["source"]) if run["source"] in SOURCE_ORDER else len(SOURCE_ORDER), col)
        if key not in columns:
            columns.append(key)
        if run["model"] not in models:
            models.append(run["model"])
    names = [c for _, c in sorted(columns)]
    lines = ["| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for model in models:
        row = [format_cell(cells[(model, c)]) if cells.get((model, c)) else "–" for c in names]
        lines.append(f"| {model} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n\nTest accuracy in %, mean ± std over seeds (number of seeds in brackets).\n"


def augment_of(run: dict[str, Any]) -> str:
    """``dsa`` or ``none``: the record's ``augment`` field, or (older records) read off its protocol."""
    if run.get("augment"):
        return run["augment"]
    return "none" if run.get("protocol", {}).get("augment", "dsa") in ("", "none") else "dsa"


def setting_name(setting: tuple[str, str]) -> str:
    """``labels soft, augment dsa`` for the setting ``("soft", "dsa")``."""
    return f"labels {setting[0]}, augment {setting[1]}"


def split_by_setting(runs: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Runs per (labels, augment) setting of the distilled set, in order of appearance. Baselines
    (hard labels) join every setting with their augmentation; an augmentation with no distilled run
    gets a setting ``("hard", augment)`` of its own."""
    settings: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        if run["source"] == "distilled":
            settings.setdefault((run.get("labels", "hard"), augment_of(run)), [])
    for run in runs:
        if run["source"] != "distilled" and augment_of(run) not in {a for _, a in settings}:
            settings[("hard", augment_of(run))] = []
    for run in runs:
        for (labels, augment), members in settings.items():
            if augment_of(run) == augment and (run["source"] != "distilled" or run.get("labels", "hard") == labels):
                members.append(run)
    return settings


def improvements(runs: list[dict[str, Any]]) -> dict[tuple[str, tuple[str, str]], tuple[float, float]]:
    """(distilled mean, random mean) accuracy in [0, 1] per (model, (labels, augment)) where both exist.

    Random real images are matched on model, augmentation and ipc (they always use hard labels)."""
    distilled: dict[tuple[str, tuple[str, str]], list[dict[str, Any]]] = defaultdict(list)
    randoms: dict[tuple[str, str, Any], list[float]] = defaultdict(list)
    for run in runs:
        if run["source"] == "distilled":
            distilled[(run["model"], (run.get("labels", "hard"), augment_of(run)))].append(run)
        elif run["source"] == "random":
            randoms[(run["model"], augment_of(run), run["ipc"])].append(run["accuracy"])
    found = {}
    for (model, setting), members in distilled.items():
        baseline = [a for ipc in dict.fromkeys(r["ipc"] for r in members) for a in randoms[(model, setting[1], ipc)]]
        if baseline:
            found[(model, setting)] = (statistics.fmean(r["accuracy"] for r in members), statistics.fmean(baseline))
    return found


def improvement_table(runs: list[dict[str, Any]]) -> str:
    """A Markdown table "improvement over random real": one row per architecture, one column per
    (labels, augment) setting, cell = distilled mean - random mean in percentage points (both means in
    brackets); empty string when no setting has both."""
    found = improvements(runs)
    if not found:
        return ""
    models = list(dict.fromkeys(model for model, _ in found))
    settings = list(dict.fromkeys(setting for _, setting in found))
    lines = ["| model | " + " | ".join(setting_name(s) for s in settings) + " |", "|---|" + "---|" * len(settings)]
    for model in models:
        cells = []
        for setting in settings:
            if (model, setting) not in found:
                cells.append("–")
                continue
            ours, theirs = found[(model, setting)]
            cells.append(f"{100 * (ours - theirs):+.2f} ({100 * ours:.2f} vs {100 * theirs:.2f})")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n\nDistilled mean − random-real mean in percentage points (distilled % vs random %);"
                               " random real images use hard labels and the same augmentation.\n")


def results_markdown(runs: list[dict[str, Any]]) -> str:
    """results.md: the architecture x source table of each (labels, augment) setting, then the
    improvement over random real images side by side."""
    parts = [f"## {setting_name(s)}\n\n{markdown_table(members)}" for s, members in split_by_setting(runs).items()]
    improvement = improvement_table(runs)
    if improvement:
        parts.append(f"## improvement over random real\n\n{improvement}")
    return "\n".join(parts)
