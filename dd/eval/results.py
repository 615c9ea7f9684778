"""The ``results.json`` of an eval folder, written so that a killed run loses no finished run.

One process rewrites ``results.json`` after every run. Under torchrun each rank r rewrites its own
``results.rank<r>.json`` with the runs it finished; rank 0 merges them into ``results.json`` at the end.
A killed multi-rank run leaves its part files behind, and the next run (of any world size) merges them
into ``results.json`` before it starts. Runs are identified by ``run_key``, so merging never duplicates one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dd import distributed
from dd.errors import DDError
from dd.eval.report import SOURCE_ORDER, run_key
from dd.io import atomic_write_json, read_json
from dd.schema import CLASSIFICATION_RECORD, RESULT_RECORD, check_schema

RESULTS = "results.json"
REQUIRED = ("source", "model", "seed", "accuracy")


def merge(*lists: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs of ``lists`` in order, keeping the first record of each run."""
    seen: set[tuple] = set()
    merged = []
    for run in (r for runs in lists for r in runs):
        if run_key(run) not in seen:
            seen.add(run_key(run))
            merged.append(run)
    return merged


def read_runs(path: Path) -> list[dict[str, Any]]:
    """The records of a results file, refusing one that is not dd's ``{"runs": [record, ...]}``."""
    if not path.is_file():
        return []
    found = read_json(path, "results")
    runs = found.get("runs") if isinstance(found, dict) else None
    if not isinstance(runs, list) or not all(isinstance(r, dict) and set(REQUIRED) <= r.keys() for r in runs):
        raise DDError(f"results {path} is not a dd.eval results file (a list 'runs' of records with "
                      f"{', '.join(REQUIRED)}); move it away or pass another --out")
    for n, run in enumerate(runs):
        kind = CLASSIFICATION_RECORD if run.get("source") in SOURCE_ORDER else RESULT_RECORD
        check_schema(run, kind, f"{path} (record {n})", "results", "restore it, or move it away")
    return runs


@dataclass
class Evaluation:
    """What an evaluation produced: the records of the runs asked for (earlier calls' included, in job order;
    empty on a rank other than 0 under torchrun) and where every record and the tables are."""

    runs: list[dict[str, Any]]
    results: Path
    markdown: Path


class Results:
    """The runs recorded in ``out``: those of earlier (possibly killed) runs, then this run's."""

    def __init__(self, out: Path, config: dict[str, Any]) -> None:
        self.path = out / RESULTS
        self.part = out / f"results.rank{distributed.rank()}.json"
        self.config = config
        self.new: list[dict[str, Any]] = []
        parts = sorted(out.glob("results.rank*.json"))
        if distributed.is_main() and parts:
            self._write(self.path, merge(read_runs(self.path), *map(read_runs, parts)))
            for part in parts:
                part.unlink()
        distributed.barrier()  # every rank reads the merged file; no rank writes a part before the old ones go
        self.previous = read_runs(self.path)

    def _write(self, path: Path, runs: list[dict[str, Any]]) -> None:
        atomic_write_json(path, {"config": self.config, "runs": runs})

    def add(self, run: dict[str, Any]) -> None:
        """Record a finished run on disk at once (``results.json``, or this rank's part file)."""
        self.new.append(run)
        if distributed.world_size() == 1:
            self._write(self.path, self.previous + self.new)
        else:
            self._write(self.part, self.new)

    def finish(self) -> list[dict[str, Any]]:
        """Every rank's runs, merged in job order; under torchrun rank 0 writes them to ``results.json``."""
        runs = merge(self.previous, distributed.gather_shards(self.new))
        if distributed.world_size() > 1:
            if distributed.is_main():
                self._write(self.path, runs)
            distributed.barrier()  # the merged file is on disk before any part file goes
            self.part.unlink(missing_ok=True)
        return runs
