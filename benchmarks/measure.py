"""Running a command and measuring it: wall time, CPU time and peak RSS of its whole process tree.

The peak is each process's own high-water mark (VmHWM), summed over the processes of the tree alive at
a sample: a sample of the current RSS every 50 ms missed short peaks, and the longer a run, the more
of them it caught. wait4's ru_maxrss is no help: it counts the memory of the process before its exec,
which is this benchmark's own (vfork), about 27 MB."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    wall: float
    cpu: float
    peak_rss_mb: float


def _children_of() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _tree_peak_kb(root: int) -> int:
    tree = _children_of()
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(tree.get(pid, ()))
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def run(command: list[str] | str, env: dict | None = None) -> Sample:
    """Run `command` (a list, or a shell string for pipelines) and measure it."""
    shell = isinstance(command, str)
    start = time.perf_counter()
    before = os.times()
    proc = subprocess.Popen(command, shell=shell, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            executable="/bin/bash" if shell else None)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _tree_peak_kb(proc.pid))
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = proc.communicate()
    stop.set()
    sampler.join()
    wall = time.perf_counter() - start
    after = os.times()
    if proc.returncode != 0:
        raise RuntimeError(f"{command} failed ({proc.returncode}): {stderr.decode(errors='replace')[-500:]}")
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return Sample(wall, cpu, peak / 1024)
