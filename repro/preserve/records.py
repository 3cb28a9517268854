"""Recorded runs: a command run in an image, with what is needed to tell later whether it still behaves.

A record keeps the command, its exit status, the sha256 of its standard output and error and of each
output file it names, and where it ran (architecture, kernel, executor). Outputs are hashed as they
stream from temporary files, so a large output costs disk, not memory. Only hashes are recorded, so a
replay that differs can show its own standard error's last lines, never the recorded run's.
"""

from __future__ import annotations

import os
import platform
import tempfile
from dataclasses import dataclass, field

from repro import __version__
from repro.digest import sha256_stream
from repro.errors import ReproError
from repro.run.container import Invocation, Session


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    stdout_sha256: str
    stderr_sha256: str
    outputs: dict[str, str] = field(default_factory=dict)  # path -> sha256, or "missing: why"
    stderr_tail: str = ""  # the last lines of standard error, printable; shown, never recorded


@dataclass(frozen=True)
class Record:
    command: str
    outputs: tuple[str, ...]
    outcome: Outcome
    environment: dict[str, str]

    def to_json(self) -> dict:
        return {
            "command": self.command,
            "exit_code": self.outcome.exit_code,
            "stdout_sha256": self.outcome.stdout_sha256,
            "stderr_sha256": self.outcome.stderr_sha256,
            "outputs": [{"path": p, "sha256": self.outcome.outputs.get(p, "")} for p in self.outputs],
            "environment": dict(sorted(self.environment.items())),
        }

    @classmethod
    def from_json(cls, obj: dict, where: str) -> Record:
        try:
            outputs = tuple(str(o["path"]) for o in obj.get("outputs", []))
            hashes = {str(o["path"]): str(o["sha256"]) for o in obj.get("outputs", [])}
            outcome = Outcome(int(obj["exit_code"]), str(obj["stdout_sha256"]), str(obj["stderr_sha256"]), hashes)
            return cls(str(obj["command"]), outputs, outcome, dict(obj.get("environment") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise ReproError(f"{where}: a run record is malformed ({exc})", "the package is damaged") from None


TAIL_LINES = 10
TAIL_BYTES = 4096


def _sha256_of(stream) -> str:
    return sha256_stream(stream)[0]


def _tail(stream) -> str:
    """The last lines of a stream, cut to printable text: it comes from the image and goes to a terminal,
    where an escape sequence could rewrite what the user sees."""
    size = stream.seek(0, os.SEEK_END)
    stream.seek(max(0, size - TAIL_BYTES))
    lines = stream.read().decode("utf-8", errors="replace").splitlines()
    if size > TAIL_BYTES:
        lines = lines[1:]  # begun mid-line
    lines = ["".join(c if c.isprintable() or c == "\t" else "?" for c in line).rstrip() for line in lines]
    return "\n".join([line for line in lines if line][-TAIL_LINES:])


def environment(executor: str) -> dict[str, str]:
    uname = os.uname()
    return {"arch": platform.machine(), "kernel": f"{uname.sysname} {uname.release}", "executor": executor,
            "tool": f"repro {__version__}"}


def run(session: Session, command: str, outputs: tuple[str, ...] = ()) -> Outcome:
    """Run `command` (a shell line) in the session and hash what it produced."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, open(os.devnull, "rb") as nothing:
        code = session.run(Invocation(shell=command), stdout=out, stderr=err, stdin=nothing)
        out.seek(0)
        err.seek(0)
        stdout_sha, stderr_sha = _sha256_of(out), _sha256_of(err)
        tail = _tail(err)
    hashes = {}
    for path in outputs:
        try:
            with session.open_file(path) as stream:
                hashes[path] = _sha256_of(stream)
        except ReproError as exc:
            hashes[path] = f"missing: {exc.message}"
    return Outcome(code, stdout_sha, stderr_sha, hashes, tail)


def record(session: Session, command: str, outputs: tuple[str, ...] = ()) -> Record:
    return Record(command, outputs, run(session, command, outputs), environment(session.name))


def compare(expected: Record, got: Outcome) -> list[tuple[str, str, str, bool]]:
    """(what, recorded, replayed, matches) for the exit status, both streams and every output."""
    rows = [("exit status", str(expected.outcome.exit_code), str(got.exit_code),
             expected.outcome.exit_code == got.exit_code),
            ("stdout sha256", expected.outcome.stdout_sha256, got.stdout_sha256,
             expected.outcome.stdout_sha256 == got.stdout_sha256),
            ("stderr sha256", expected.outcome.stderr_sha256, got.stderr_sha256,
             expected.outcome.stderr_sha256 == got.stderr_sha256)]
    for path in expected.outputs:
        want, have = expected.outcome.outputs.get(path, ""), got.outputs.get(path, "")
        rows.append((f"output {path}", want, have, want == have and not want.startswith("missing")))
    return rows
