"""Reading what the stages left on disk: a distillation run folder and an expert trajectory store.

Only the artefacts are read (JSON, JSON lines and PNG paths), never a stage's code or tensors, so a report
can be made on a machine without the data or a GPU.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dd import schema
from dd.errors import DDError
from dd.eval.results import read_runs
from dd.io import read_json
from dd.schema import check_schema
from dd.viz import grid_history


@dataclass
class Run:
    """A distillation run folder: its config, its metrics by kind, its grids and its evaluation records."""

    path: Path
    config: dict[str, Any]
    steps: list[dict[str, Any]]  # metrics records with the matching loss (every log_every iterations)
    evaluations: list[dict[str, Any]]  # metrics records with val/... (and test/...) accuracies
    synset: dict[str, Any] | None  # synset/synset.json, when the set was saved
    grids: list[tuple[int, Path]]  # (iteration, grids/grid_<iteration>.png), or the last grid.png alone
    results: dict[Path, list[dict[str, Any]]] = field(default_factory=dict)  # results.json path -> records
    label: str = ""  # the name shown in a report, where folder names alone would collide

    @property
    def name(self) -> str:
        return self.label or self.path.name

    @property
    def iteration(self) -> int:
        """The last iteration that was logged (0 before the first log line)."""
        return max((int(r["iteration"]) for r in self.steps + self.evaluations), default=0)

    def accuracy_keys(self) -> list[str]:
        """The accuracy series of the run, in order of appearance: ``val/<model>``, ``test/<model>``."""
        keys = [k for r in self.evaluations for k in r if k.split("/", 1)[0] in ("val", "test")]
        return list(dict.fromkeys(keys))

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(iterations, values) of metric ``key`` over the records that hold it."""
        records = [r for r in self.steps + self.evaluations if isinstance(r.get(key), (int, float))]
        records.sort(key=lambda r: r["iteration"])
        return [int(r["iteration"]) for r in records], [float(r[key]) for r in records]

    def seconds_per_iteration(self) -> float | None:
        """The median seconds per iteration of the logged stretches (evaluation and saving excluded)."""
        values = [r["seconds_per_iteration"] for r in self.steps if isinstance(r.get("seconds_per_iteration"),
                                                                                (int, float))]
        return statistics.median(values) if values else None

    def test_records(self) -> list[dict[str, Any]]:
        """The ``dd.eval`` records (any results.json in the folder) of this run's final set on the run's own data:
        the set's checksum, and the set's data fingerprint where it records one (``dd.identity``)."""
        return [r for r in self.set_records() if self.own_data(r)]

    def set_records(self) -> list[dict[str, Any]]:
        """Every ``dd.eval`` record of this run's final set (by checksum), on whatever data."""
        sha = (self.synset or {}).get("sha256")
        return [r for records in self.results.values() for r in records
                if r.get("source") == "distilled" and (r.get("set") or {}).get("sha256") == sha]

    def own_data(self, record: dict[str, Any]) -> bool:
        """Whether ``record`` trained on the data the run distilled on: its data check passed (``verified``) for a
        set that records its data; a set without a fingerprint matches by checksum alone (recorded unverified)."""
        if not isinstance((self.synset or {}).get("data"), dict):
            return True
        return (record.get("set") or {}).get("data_check", "verified") == "verified"


@dataclass
class Buffer:
    """An expert trajectory store: its manifest and the record of every finished expert."""

    path: Path
    manifest: dict[str, Any]
    experts: list[dict[str, Any]]

    @property
    def name(self) -> str:
        return self.path.name

    def test_accuracy(self) -> tuple[list[int], list[float], list[float], list[int]]:
        """(epochs, mean, population std, experts counted) of the experts' test accuracy at every epoch where
        at least one expert was tested."""
        epochs, means, stds, counts = [], [], [], []
        longest = max((len(e.get("test_acc") or []) for e in self.experts), default=0)
        for epoch in range(longest):
            values = [e["test_acc"][epoch] for e in self.experts
                      if epoch < len(e.get("test_acc") or []) and e["test_acc"][epoch] is not None]
            if values:
                epochs.append(epoch)
                means.append(statistics.fmean(values))
                stds.append(statistics.pstdev(values) if len(values) > 1 else 0.0)
                counts.append(len(values))
        return epochs, means, stds, counts


def _metrics(path: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` (a line torn by a kill is skipped; a resume's own note is dropped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("iteration"), (int, float)) and "resumed" not in record:
            records.append(record)
    return records


def is_buffer(path: Path) -> bool:
    return (path / "manifest.json").is_file()


def is_run(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "metrics.jsonl").is_file()


def read_run(path: Path) -> Run:
    """The run folder at ``path`` (``dd.distill --run-dir``)."""
    records = _metrics(path / "metrics.jsonl")
    evaluations = [r for r in records if any(k.startswith(("val/", "test/")) for k in r)]
    steps = [r for r in records if "loss" in r]
    config = read_json(path / "config.json", "run config") if (path / "config.json").is_file() else {}
    check_schema(config, schema.RUN_CONFIG, path / "config.json", "run config", "restore it or leave the run out")
    synset_file = path / "synset" / "synset.json"
    synset = read_json(synset_file, "set metadata") if synset_file.is_file() else None
    if synset is not None:
        check_schema(synset, schema.SYNSET_META, synset_file, "set metadata", "restore it or leave the run out")
    grids = grid_history(path / "grids") or ([(int((synset or {}).get("iteration", 0)), path / "grid.png")]
                                            if (path / "grid.png").is_file() else [])
    results = {p: read_runs(p) for p in sorted(path.rglob("results.json"))}
    return Run(path, config, steps, evaluations, synset, grids, results)


def read_buffer(path: Path) -> Buffer:
    """The trajectory store at ``path`` (``dd.buffer``): the manifest and each finished expert's record."""
    manifest = read_json(path / "manifest.json", "buffer manifest")
    check_schema(manifest, schema.MANIFEST, path / "manifest.json", "buffer manifest", "restore it or leave it out")
    experts = []
    for record_path in sorted(p for p in path.glob("expert_*.json") if p.with_suffix(".safetensors").is_file()):
        experts.append(read_json(record_path, "expert record"))
        check_schema(experts[-1], schema.EXPERT_RECORD, record_path, "expert record", "delete it or leave it out")
    return Buffer(path, manifest, experts)


def read(path: str | Path) -> Run | Buffer:
    """A run folder or a trajectory store, by what the folder holds."""
    path = Path(path)
    if not path.is_dir():
        raise DDError(f"{path} is not a folder; pass a run folder (dd.distill --run-dir) or an expert buffer folder")
    if is_buffer(path):
        return read_buffer(path)
    if is_run(path):
        return read_run(path)
    raise DDError(f"{path} holds neither a run (config.json, metrics.jsonl) nor an expert buffer (manifest.json); "
                  "pass a dd.distill run folder or a dd.buffer store")
