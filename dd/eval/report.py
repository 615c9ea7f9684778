"""Result records and their Markdown tables (source x architecture, mean ± std over seeds).

A record is the identity of one training run (the set or baseline, the data, the split, the complete
protocol, labels, model, seed) plus what it measured (``RESULT_FIELDS``). Records are grouped so that
one table cell only ever holds runs that differ in their seed:
  * a *context* is everything that must be equal for two runs to be compared at all (dataset and its
    fingerprint, split, the protocol apart from its lr): one section of ``results.md`` each;
  * a *source* (one row: a set or a baseline) is everything else but the model and the seed (source,
    method, ipc, the set's checksum, lr, labels); a column is a model.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from typing import Any

SOURCE_ORDER = ("distilled", "random", "full")
RESULT_FIELDS = ("accuracy", "max_accuracy")
"""Fields a run measured; every other field identifies it."""
CONTEXT_FIELDS = ("dataset", "data", "split", "protocol")
"""Fields (the protocol without its lr) shared by every run of one section."""


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population std (0 for a single value)."""
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def format_cell(values: list[float]) -> str:
    """``mean ± std`` in percent with the number of seeds, e.g. ``91.23 ± 0.40 (5)``."""
    mean, std = mean_std(values)
    return f"{100 * mean:.2f} ± {100 * std:.2f} ({len(values)})"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def identity(run: dict[str, Any]) -> dict[str, Any]:
    """The fields that identify ``run``: all but the measured ones and the set's path (the same set,
    by checksum, at another path is the same run)."""
    found = {k: v for k, v in run.items() if k not in RESULT_FIELDS}
    if isinstance(found.get("set"), dict):
        found["set"] = {k: v for k, v in found["set"].items() if k != "path"}
    return found


def run_key(run: dict[str, Any]) -> str:
    """What makes two records the same run: every identifying field (``identity``), canonically."""
    return _canonical(identity(run))


def _protocol_without_lr(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.get("protocol", {}).items() if k != "lr"}


def context_key(run: dict[str, Any]) -> str:
    """The section a run belongs to: dataset, data fingerprint, split and the protocol without its lr."""
    return _canonical({"dataset": run.get("dataset"), "data": run.get("data"), "split": run.get("split", "test"),
                       "protocol": _protocol_without_lr(run)})


def source_key(run: dict[str, Any]) -> str:
    """The source (table row) of a run inside its section: its identity without the context, model and seed."""
    found = {k: v for k, v in identity(run).items() if k not in (*CONTEXT_FIELDS, "model", "seed")}
    found["lr"] = run.get("protocol", {}).get("lr")
    return _canonical(found)


def augment_of(run: dict[str, Any]) -> str:
    """``dsa``, ``dc`` (DC's own augmentation) or ``none``: the record's ``augment`` field, or (older records) read
    off its protocol."""
    if run.get("augment"):
        return run["augment"]
    return "none" if run.get("protocol", {}).get("augment", "dsa") in ("", "none") else "dsa"


def source_name(run: dict[str, Any]) -> str:
    """``mtt ipc1``, ``random ipc1`` or ``full``."""
    name = run["source"] if run["source"] != "distilled" else f"{run.get('method', 'distilled')}"
    if run["source"] != "full":
        name += f" ipc{run.get('ipc')}"
    return name


def _set_tag(run: dict[str, Any]) -> str:
    found = run.get("set") or {}
    parts = [f"it{found['iteration']}" if found.get("iteration") is not None else "",
             found.get("sha256", "")[:8]]
    return " ".join(p for p in parts if p)


def source_names(runs: list[dict[str, Any]]) -> dict[str, str]:
    """A distinct display name per source key of ``runs``: ``mtt ipc1``, made unique where needed by the
    labels, then the set's iteration and checksum prefix, then the lr, then a number."""
    columns = {source_key(r): r for r in runs}
    names = {key: source_name(run) for key, run in columns.items()}
    for extra in (lambda r: f"labels {r.get('labels', 'hard')}", _set_tag,
                  lambda r: f"lr {r.get('protocol', {}).get('lr', 0):.4g}"):
        groups: dict[str, list[str]] = defaultdict(list)
        for key, name in names.items():
            groups[name].append(key)
        for keys in groups.values():
            if len({extra(columns[k]) for k in keys}) > 1:  # this detail tells the duplicates apart
                for key in keys:
                    names[key] += f" [{extra(columns[key])}]"
    seen: dict[str, int] = defaultdict(int)
    for key in names:
        seen[names[key]] += 1
        if seen[names[key]] > 1:
            names[key] += f" ({seen[names[key]]})"
    return names


def _ordered_sources(runs: list[dict[str, Any]]) -> list[str]:
    order = {}
    for run in runs:
        rank = SOURCE_ORDER.index(run["source"]) if run["source"] in SOURCE_ORDER else len(SOURCE_ORDER)
        order.setdefault(source_key(run), (rank, len(order)))
    return sorted(order, key=order.get)


def markdown_table(runs: list[dict[str, Any]]) -> str:
    """A Markdown table with one row per source (``source_key``: a set, a baseline) and one column per
    architecture; a cell holds runs that differ only in their seed."""
    names = source_names(runs)
    sources = _ordered_sources(runs)
    cells: dict[tuple[str, str], list[float]] = defaultdict(list)
    models = list(dict.fromkeys(run["model"] for run in runs))
    for run in runs:
        cells[(source_key(run), run["model"])].append(run["accuracy"])
    lines = ["| source | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for source in sources:
        row = [format_cell(cells[(source, m)]) if cells.get((source, m)) else "–" for m in models]
        lines.append(f"| {names[source]} | " + " | ".join(row) + " |")
    split = {"val": "Validation"}.get(runs[0].get("split") if runs else None, "Test")  # a context has one split
    return "\n".join(lines) + f"\n\n{split} accuracy in %, mean ± std over seeds (number of seeds in brackets).\n"


def sets_legend(runs: list[dict[str, Any]]) -> str:
    """One line per distilled source: its name, path, checksum, iteration, lr and whether it was verified."""
    names = source_names(runs)
    lines = []
    for key in _ordered_sources(runs):
        run = next(r for r in runs if source_key(r) == key)
        found = run.get("set")
        if run["source"] != "distilled" or not isinstance(found, dict):
            continue
        verified = "" if found.get("verified", True) else ", NOT verified (--no-verify)"
        verified += f", data {found['data_check']}" if found.get("data_check") else ""
        lines.append(f"- {names[key]}: `{found.get('path')}` (sha256 {found.get('sha256', '?')[:16]}…, iteration "
                     f"{found.get('iteration')}, lr {run.get('protocol', {}).get('lr', 0):.4g}{verified})")
    return "\n".join(lines) + "\n" if lines else ""


def context_title(run: dict[str, Any]) -> str:
    """``digits (test split) · epochs 1000, momentum 0.9, ...``: what every run of a section shares."""
    protocol = ", ".join(f"{k} {v}" for k, v in _protocol_without_lr(run).items())
    data = run.get("data") or {}
    kind = (data.get("preprocess") or {}).get("kind") if isinstance(data.get("preprocess"), dict) else None
    fingerprint = (f", {kind}" if kind else "") + (f", data {data['sha256'][:8]}" if data.get("sha256") else "")
    return f"{run.get('dataset', '?')} ({run.get('split', 'test')} split{fingerprint}) · {protocol or 'protocol ?'}"


def improvements(runs: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[float, float]]:
    """(distilled mean, random mean) accuracy in [0, 1] per (model, row name) where both exist.

    ``runs`` share one context; a distilled source is compared with each random-real source (a whole identity:
    its lr too) of the same model, augmentation and ipc, never with a mean over several. The row is the distilled
    source's name, followed by ``vs <random source>`` where several random sources match."""
    names = source_names(runs)
    accuracies: dict[tuple[str, str], list[float]] = defaultdict(list)  # (source key, model) -> accuracies
    first: dict[str, dict[str, Any]] = {}
    for run in runs:
        if run["source"] in ("distilled", "random"):
            accuracies[(source_key(run), run["model"])].append(run["accuracy"])
            first.setdefault(source_key(run), run)
    match = defaultdict(list)  # (model, augmentation, ipc) -> random source keys
    for (key, model) in accuracies:
        if first[key]["source"] == "random":
            match[(model, augment_of(first[key]), first[key].get("ipc"))].append(key)
    found = {}
    for (key, model), ours in accuracies.items():
        run = first[key]
        if run["source"] != "distilled":
            continue
        randoms = match.get((model, augment_of(run), run.get("ipc")), [])
        for random_key in randoms:
            name = names[key] + (f" vs {names[random_key]}" if len(randoms) > 1 else "")
            found[(model, name)] = (statistics.fmean(ours), statistics.fmean(accuracies[(random_key, model)]))
    return found


def improvement_table(runs: list[dict[str, Any]]) -> str:
    """A Markdown table "improvement over random real" of runs of one context: one row per distilled
    source, one column per architecture, cell = distilled mean - random mean in percentage points (both
    means in brackets); empty string when no source has both."""
    found = improvements(runs)
    if not found:
        return ""
    models = list(dict.fromkeys(model for model, _ in found))
    sources = list(dict.fromkeys(name for _, name in found))
    lines = ["| source | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for name in sources:
        cells = []
        for model in models:
            if (model, name) not in found:
                cells.append("–")
                continue
            ours, theirs = found[(model, name)]
            cells.append(f"{100 * (ours - theirs):+.2f} ({100 * ours:.2f} vs {100 * theirs:.2f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n\nDistilled mean − random-real mean in percentage points (distilled % vs random %);"
                               " random real images use hard labels, the same ipc and the same augmentation.\n")


def by_context(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Runs per ``context_key``, in order of appearance."""
    found: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        found.setdefault(context_key(run), []).append(run)
    return found


def results_markdown(runs: list[dict[str, Any]]) -> str:
    """results.md: per context, the source x architecture table, the sets' legend and the improvement
    over random real images."""
    parts = []
    for members in by_context(runs).values():
        parts.append(f"## {context_title(members[0])}\n\n{markdown_table(members)}\n{sets_legend(members)}")
        improvement = improvement_table(members)
        if improvement:
            parts.append(f"### improvement over random real\n\n{improvement}")
    return "\n".join(parts)
