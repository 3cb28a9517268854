"""What a step's layer leaves out: files that differ on every run (apt's lists, logs, caches, /tmp).

They are left out of the layer, not removed from the working tree, so a Containerfile's
`RUN apt-get update` followed by `RUN apt-get install` works as in docker, and /tmp lasts from one
RUN to the next. The image never holds them; the tree does until the build ends. `LeftOut` keeps
the account: which paths the tree holds that the image does not (and whether the image holds an
older version, which a deletion must still white out), and a digest of that state for cache keys,
since two trees with the same layers but other left-out files are not the same starting point.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from repro.confined import Tree
from repro.image import canonical_json

# What changes on every run; the step's layer leaves it out (files and links, never directories).
VOLATILE = (
    "var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/log/*", "var/log/*/*",
    "var/cache/ldconfig/aux-cache", "var/lib/dbus/machine-id", "var/cache/debconf/*-old", "var/lib/dpkg/*-old",
    "etc/*-", "root/.cache/*", "tmp/*", "var/tmp/*",
)
STABLE = ("var/lib/apt/lists/partial", "var/lib/apt/lists/lock", "var/cache/apt/archives/partial",
          "var/cache/apt/archives/lock")
EMPTIED = ("etc/machine-id",)  # emptied in the tree itself: a new machine-id must never reach a layer
PYCACHE = "__pycache__"
_PATTERNS = [pattern.split("/") for pattern in VOLATILE]


def is_volatile(path: str) -> bool:
    """A path matching one of VOLATILE, component by component (`tmp/*` is /tmp's own entries)."""
    if path in STABLE:
        return False
    parts = path.split("/")
    return any(len(parts) == len(pattern)
               and all(fnmatch.fnmatchcase(p, q) for p, q in zip(parts, pattern, strict=True))
               for pattern in _PATTERNS)


def is_volatile_stream_path(path: str) -> bool:
    """For streams that never touch a tree (the Debian base tarball): everything under the patterns."""
    if path in STABLE:
        return False
    return any(fnmatch.fnmatchcase(path, p) for p in VOLATILE) or f"/{PYCACHE}/" in f"/{path}/"


def empty_machine_id(root: Path) -> list[str]:
    """Empty what must be empty in the tree (a step may have written a machine-id); the paths emptied."""
    with Tree(root) as tree:
        return [rel for rel in EMPTIED if tree.truncate(rel)]


@dataclass
class Shaped:
    """A step's changes split in what its layer holds and what it leaves out."""

    changed: list[str]  # into the layer
    whiteouts: list[str]  # into the layer
    left: list[str]  # changed in the tree, left out of the layer
    removed: list[str]  # gone from the tree; the image never had them, so no whiteout


@dataclass
class LeftOut:
    """The working tree's paths that the image does not hold as they are (path -> the image holds an
    older version of it)."""

    paths: dict[str, bool] = field(default_factory=dict)
    state: str = ""  # sha256 of what the left-out paths hold; "" when there are none

    def shape(self, before: dict, after: dict, changed: list[str], deleted: list[str]) -> Shaped:
        """Split a step's changes (tree snapshots before and after it) and update the account."""
        def in_new_pycache(path: str) -> bool:
            parts = path.split("/")
            for i, name in enumerate(parts):
                if name == PYCACHE:
                    top = "/".join(parts[: i + 1])
                    return top not in before or top in self.paths
            return False

        shaped = Shaped([], [], [], [])
        for path in changed:
            if in_new_pycache(path) or (after[path].kind != "dir" and is_volatile(path)):
                self.paths.setdefault(path, path in before)
                shaped.left.append(path)
            else:
                self.paths.pop(path, None)
                shaped.changed.append(path)
        for path in deleted:
            had = self.paths.pop(path, True)
            (shaped.whiteouts if had else shaped.removed).append(path)
        for path in [p for p in self.paths if p not in after]:  # under a deleted directory
            del self.paths[path]
        self.state = digest_of(self.paths, after)
        return shaped

    def follow(self, before: dict, after: dict) -> None:
        """After a layer was applied to the tree: what it wrote or removed is the image's now."""
        for path in list(self.paths):
            if path not in after or path not in before or not before[path].same_content(after[path]):
                del self.paths[path]
        self.state = digest_of(self.paths, after)

    def record(self) -> dict:
        return {"paths": dict(sorted(self.paths.items())), "state": self.state}

    def restore(self, record: dict | None) -> None:
        record = record or {}
        self.paths = dict(record.get("paths") or {})
        self.state = record.get("state") or ""


def digest_of(paths: Iterable[str], nodes: dict) -> str:
    rows = [[p, nodes[p].kind, nodes[p].mode, nodes[p].uid, nodes[p].gid, nodes[p].link, nodes[p].sha256]
            for p in sorted(paths) if p in nodes]
    return hashlib.sha256(canonical_json(rows)).hexdigest() if rows else ""
