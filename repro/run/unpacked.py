"""Unpacked images kept in the store, so that a job array of a thousand runs unpacks its image once.

A tree is unpacked per manifest digest and per id mode (shifted for runc as root, the caller's own ids
for a plain user) under `$REPRO_STORE/unpacked/`, and never changed afterwards: runs see it through an
overlay whose upper layer is thrown away (see repro.run.executors). Two jobs unpacking the same image at
once each unpack into a private temporary directory and the first rename wins; a killed unpack leaves
only a temporary directory, which is never used and which `prune` removes.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from repro.confined import Tree, remove_tree
from repro.extract import Policy
from repro.flatten import extract
from repro.image import Image
from repro.run import executors

TEMP_PREFIX = ".unpacking-"
USED = "last-used"  # touched by every run: what `prune` ages by


def directory(store: Path) -> Path:
    return Path(store) / "unpacked"


def _key(image: Image, executor: str) -> str:
    mode = f"shift{executors.id_offset(executor)}" if executors.id_offset(executor) else f"uid{os.getuid()}"
    return f"{image.digest.partition(':')[2]}-{mode}"


def tree(store: Path, image: Image, executor: str) -> Path:
    """The unpacked root filesystem of `image` for `executor`, unpacking it first if needed."""
    base = directory(store)
    final = base / _key(image, executor)
    if not (final / "rootfs").is_dir():
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=base))
        try:
            root = executors.new_root(tmp, executor)
            offset = executors.id_offset(executor)
            extract(image, root, Policy(id_offset=offset))
            with Tree(root, owner=offset or None) as made:
                for mount_point in executors.MOUNT_POINTS:  # a run makes no change in this tree
                    if made.lstat(mount_point) is None:
                        made.resolve_dir(mount_point, create=True)
            os.chmod(tmp, 0o755)
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / "rootfs").is_dir():
                    raise
                remove_tree(tmp)  # another job finished first: its tree is as good as ours
        except BaseException:
            remove_tree(tmp)
            raise
    (final / USED).touch()
    return final / "rootfs"


@dataclass(frozen=True)
class Pruned:
    path: Path
    age_days: float


def prune(store: Path, older_than_days: float) -> list[Pruned]:
    """Remove unpacked trees not used for `older_than_days`, and unpacks that were killed half-way."""
    base = directory(store)
    if not base.is_dir():
        return []
    now = time.time()
    removed = []
    for entry in sorted(base.iterdir()):
        stamp = entry / USED if not entry.name.startswith(TEMP_PREFIX) else entry
        with contextlib.suppress(FileNotFoundError):
            age = (now - os.stat(stamp, follow_symlinks=False).st_mtime) / 86400
            stale_temp = entry.name.startswith(TEMP_PREFIX) and age > 1 / 24
            if stale_temp or (not entry.name.startswith(TEMP_PREFIX) and age >= older_than_days):
                remove_tree(entry)
                removed.append(Pruned(entry, age))
    return removed
