"""The working tree's names without the working tree: the kind and link target of every path the
layers so far would extract, for the steps that only need to know where their entries land.

A copy or file step after cached steps used to extract the whole image (and hash it) just to look
its destinations up through the image's links (a merged-/usr base's bin -> usr/bin): 27 s after a
cached python-science packages step, for one changed file. The listing reads the layers' headers
instead, applied in order by the rules of repro.extract.Extractor, so that it names what the tree
would hold: an entry replaces whatever is on its way by a directory and never follows a link there;
a whiteout and an opaque directory are looked up through links, as Tree.remove and Tree.empty_dir do.
"""

from __future__ import annotations

import tarfile
from typing import BinaryIO

from repro.confined import clean_path, resolve_listed
from repro.flatten import apply_layer

_KINDS = {tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink"}


class Listing:
    """path -> (kind, link target) of a tree, with each directory's children for removals."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[str, str]] = {}
        self._children: dict[str, set[str]] = {"": set()}
        self._added: set[str] = set()  # the paths of the layer being applied (an opaque keeps them)

    def get(self, path: str) -> tuple[str, str] | None:
        return self.entries.get(path)

    def is_dir(self, path: str) -> bool:
        found = self.entries.get(path)
        return found is not None and found[0] == "dir"

    def apply(self, stream: BinaryIO, what: str) -> None:
        """One layer's entries and whiteouts (its content is skipped, never read)."""
        self._added = set()
        apply_layer(self, stream, what)  # type: ignore[arg-type] - the three calls an Extractor takes

    # --- the calls of apply_layer ---------------------------------------------------------
    def add(self, path: str, info: tarfile.TarInfo, content: BinaryIO | None) -> None:
        if not path:
            return
        self._make_dirs(path.rpartition("/")[0])
        self._added.add(path)
        if info.ischr() or info.isblk():  # a working tree takes no device node (Policy.devices)
            return
        kind = _KINDS.get(info.type, "file")  # hardlinks, FIFOs: no directory, no link
        if not (kind == "dir" and self.is_dir(path)):
            self._remove(path)
        self._set(path, kind, info.linkname if kind == "symlink" else "")

    def whiteout(self, path: str) -> None:
        parent, _, name = path.rpartition("/")
        resolved = self._resolve(parent)
        if resolved is not None:
            self._remove(f"{resolved}/{name}" if resolved else name)

    def opaque(self, directory: str) -> None:
        resolved = self._resolve(directory)
        if resolved is None or not (resolved == "" or self.is_dir(resolved)):
            return
        for child in list(self._children.get(resolved, ())):
            if child not in self._added:
                self._remove(child)

    def remove(self, path: str) -> None:
        """What a cached step's run removed of the files left out before it (not followed at the end)."""
        self.whiteout(clean_path(path))

    # --- the tree -------------------------------------------------------------------------
    def _resolve(self, directory: str) -> str | None:
        """A directory whiteouts look up through links; None: not there as a directory."""
        return resolve_listed(directory, self.entries.get) if directory else ""

    def _make_dirs(self, directory: str) -> None:
        """As Tree.make_dirs: what is on the way and not a directory (a link too) becomes one."""
        if not directory:
            return
        parts = directory.split("/")
        for end in range(1, len(parts) + 1):
            path = "/".join(parts[:end])
            if not self.is_dir(path):
                self._remove(path)
                self._set(path, "dir", "")

    def _set(self, path: str, kind: str, link: str) -> None:
        self.entries[path] = (kind, link)
        if kind == "dir":
            self._children.setdefault(path, set())
        self._children.setdefault(path.rpartition("/")[0], set()).add(path)

    def _remove(self, path: str) -> None:
        """`path` and all below it."""
        if path not in self.entries:
            return
        todo = [path]
        while todo:
            here = todo.pop()
            del self.entries[here]
            todo.extend(self._children.pop(here, ()))
        siblings = self._children.get(path.rpartition("/")[0])
        if siblings is not None:
            siblings.discard(path)
