"""`repro replay`: run a package's recorded commands again in its image and compare what they produce."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from converters.archive import open_package
from repro.errors import ReproError
from repro.preserve import records
from repro.preserve.archive import RUNS_FILE
from repro.preserve.records import Record
from repro.refs import open_image
from repro.run import container


@dataclass(frozen=True)
class Replayed:
    record: Record
    rows: list[tuple[str, str, str, bool]]  # (what, recorded, replayed, matches)
    executor: str
    stderr_tail: str = ""  # the replayed run's last lines of standard error: a record keeps only hashes

    @property
    def matches(self) -> bool:
        return all(row[3] for row in self.rows)


def recorded_runs(package: str) -> list[Record]:
    files = open_package(package)
    name = f"data/{RUNS_FILE}"
    if not files.exists(name):
        raise ReproError(f"{package}: {name} is missing", "give a package made by repro archive")
    try:
        runs = json.loads(files.read(name))["runs"]
    except (ValueError, KeyError, TypeError):
        raise ReproError(f"{package}: {name} is malformed", "the package is damaged; run repro verify") from None
    return [Record.from_json(run, f"{package}: {name} run {number}") for number, run in enumerate(runs, 1)]


def replay(package: str, executor: str | None = None,
           report: Callable[[Replayed], None] | None = None) -> list[Replayed]:
    runs = recorded_runs(package)
    if not runs:
        raise ReproError(f"{package}: the package has no recorded runs", "record some with repro archive --record")
    image = open_image(f"archive:{package}")
    out = []
    with container.session(image, executor) as active:
        for run in runs:
            got = records.run(active, run.command, run.outputs)
            result = Replayed(run, records.compare(run, got), active.name, got.stderr_tail)
            out.append(result)
            if report:
                report(result)
    return out
