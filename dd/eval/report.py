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
