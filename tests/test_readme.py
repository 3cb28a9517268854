"""README.md's examples run as written (issue 14).

Every fenced block carries a language. Blocks in ```sh, ```bash or ```console (the `$ ` lines of a
transcript, with `\\` continuations; the rest is output and is not compared) and ```python run, in
README order, in one fresh directory holding what a checkout holds (its git-tracked files), as a user
would after `make setup`: the project's .venv/bin first on PATH, a fresh HOME (so the default store is
empty). A block that cannot run here is preceded by `<!-- not run: REASON -->`; anything else
(```yaml, ```text) is for reading. Each block runs on its own (`bash -e`, or the venv's python) and must
exit 0; files carry over from block to block, shell variables and `cd` do not.

The README's examples use two things a reader provides and this test provides from fixtures: a
registry at `$REGISTRY` (Debian's docker-registry) and a Docker engine at `$DOCKER_HOST` (dockerd).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
VENV_BIN = ROOT / ".venv" / "bin"
RUNS = {"sh": "shell", "bash": "shell", "console": "console", "python": "python"}
FENCE = re.compile(r"^(`{3,})\s*([^\s`]*)")
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(.*?)\s*-->$")
MAX_EXCLUDED = 3
BLOCK_TIMEOUT = 300


@dataclass
class Block:
    line: int  # README line of the opening fence
    lang: str
    code: str
    not_run: str | None = None  # the reason, when the block is marked not to run

    @property
    def first_line(self) -> str:
        return next((s for s in self.code.splitlines() if s.strip()), "")

    def script(self) -> str:
        """What to run: the block itself, or the commands of a console transcript."""
        if RUNS[self.lang] != "console":
            return self.code
        commands, continued = [], False
        for text in self.code.splitlines():
            if continued:
                commands.append(text)
            elif text.startswith("$ "):
                commands.append(text[2:])
            else:
                continue
            continued = text.endswith("\\")
        return "\n".join(commands) + "\n"


def parse(markdown: str) -> list[Block]:
    """The fenced blocks of `markdown`, each with the not-run reason written on the line before it."""
    blocks: list[Block] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start, ticks = i, fence.group(1)
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == ticks), None)
        if end is None:
            raise ValueError(f"README line {start + 1}: the block opened here is never closed")
        before = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = NOT_RUN.match(before)
        blocks.append(Block(start + 1, fence.group(2).lower(), "\n".join(lines[start + 1:end]) + "\n",
                            marker.group(1) if marker else None))
        i = end + 1
    return blocks


def run_block(block: Block, cwd: Path, env: dict[str, str]) -> float:
    """Run one block; raise AssertionError naming it (README line, first line) with its output."""
    if RUNS[block.lang] == "python":
        cmd = [str(VENV_BIN / "python"), "-"]
    else:
        cmd = ["bash", "-e", "-x", "-o", "pipefail", "-s"]  # -x: the output shows each command
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, input=block.script(), cwd=cwd, env=env, text=True, timeout=BLOCK_TIMEOUT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"README line {block.line} ({block.first_line!r}): still running after "
                             f"{BLOCK_TIMEOUT} s; output so far:\n{e.output or ''}") from None
    if proc.returncode != 0:
        raise AssertionError(f"README line {block.line} ({block.first_line!r}) exited {proc.returncode}:\n"
                             f"{proc.stdout[-6000:]}")
    return time.monotonic() - start


def checkout_copy(dst: Path) -> None:
    """What a fresh clone holds: the tracked files (as they are in the working tree)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in filter(None, listed.stdout.split("\0")):
        src = ROOT / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)


def user_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REPRO_", "DOCKER_", "VIRTUAL_ENV", "PYTEST_", "PYTHON"))}
    env.update(HOME=str(home), PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}", **extra)
    return env


def test_every_block_is_labelled_and_exclusions_are_few_and_explained():
    blocks = parse(README.read_text())
    unlabelled = [b.line for b in blocks if not b.lang]
    assert not unlabelled, f"README blocks without a language (```sh, ```console, ```text, ...) at lines {unlabelled}"
    excluded = [b for b in blocks if b.not_run is not None]
    assert all(b.not_run for b in excluded), "a `<!-- not run: -->` marker must say why"
    assert all(b.lang in RUNS for b in excluded), "only a block that would run needs a not-run marker"
    assert len(excluded) <= MAX_EXCLUDED, [f"line {b.line}: {b.not_run}" for b in excluded]
    hidden = [b.line for b in blocks if b.lang not in RUNS and re.search(r"^\$ ", b.code, re.M)]
    assert not hidden, f"transcripts with `$ ` commands belong in ```console blocks (they run): lines {hidden}"
    assert sum(b.lang in RUNS and b.not_run is None for b in blocks) >= 5


def test_a_failing_block_is_reported_with_its_line_and_output(tmp_path):
    """The runner can fail: a broken command stops it, naming the block and showing its output."""
    blocks = parse("intro\n\n```console\n$ echo fine\nfine\n$ ls no-such-file \\\n    --all\n$ echo after\n```\n")
    assert blocks[0].script() == "echo fine\nls no-such-file \\\n    --all\necho after\n"
    with pytest.raises(AssertionError, match=r"(?s)README line 3 \('\$ echo fine'\) exited 2:.*no-such-file"):
        run_block(blocks[0], tmp_path, user_env(tmp_path))
    assert parse("<!-- not run: needs Slurm -->\n```sh\nsbatch job.sh\n```\n")[0].not_run == "needs Slurm"


def test_readme_blocks_run_as_written(tmp_path, registry, dockerd):
    blocks = [b for b in parse(README.read_text()) if b.lang in RUNS and b.not_run is None]
    checkout = tmp_path / "repro"
    checkout_copy(checkout)
    (tmp_path / "home").mkdir()
    env = user_env(tmp_path / "home", REGISTRY=registry.host, DOCKER_HOST=dockerd["DOCKER_HOST"])
    timings = [(b.line, run_block(b, checkout, env)) for b in blocks]
    print("\n".join(f"README line {line}: {seconds:.1f} s" for line, seconds in timings))
