"""The merged view of an image's layers: each path once, as the top-most layer that has it says.

Layers are walked from the top down, so what a higher layer replaces or deletes is never produced
from a lower one (OCI image-spec layer.md: whiteouts and opaque whiteouts hide lower layers only).
Everything that needs the final filesystem (flatten, per-file hashes, SBOM catalogers) reads it here.

Within one layer the entries apply in order, as tar extraction applies them, and a later one wins:
- an entry replaces what an earlier one put at its path; a directory over a directory only takes
  its metadata (the contents stay), anything else replaces the whole tree there;
- an entry whose parent an earlier entry made a non-directory (a file, a symlink) replaces that
  parent by a directory: nothing is ever written through a symlink, inside the tree or out of it;
- a hardlink is the file its target named when the link came: if the target is replaced afterwards
  (later in the layer, or by a higher layer), the link keeps the earlier file, which is then produced
  under the link's name. A hardlink that names nothing (a directory, a missing or deleted file) is
  left out, with a warning.
The view is de-duplicated, so every consumer (rootfs:, tar:, squashfs: and sif:, hashes, SBOMs) gets
the same tree, and tar2sqfs, which refuses a name twice, can read it.

Knowing at an entry whether a later entry of its layer replaces it needs that layer's later headers.
Inside `flattening()` each layer is read once, keeping only a compact table of its names (a few
dozen bytes a name), on the assumption, true of nearly every image, that a layer never replaces what
it already gave; the first layer that does (or whose hardlink needs a file it did not give, other than
one a higher layer replaced) makes the consumer start over, with that layer and the ones below it read
twice: their headers first, into an exact model of the names they leave, then their entries. A consumer
that cannot start over (outside `flattening()`) gets every layer read that way. A hardlink to a file of
its own layer that a higher layer replaced is common (a package upgraded in a later layer): that file is
read again from its layer after the layer's pass, under the link's name. Memory grows with the number
of names (at a few dozen bytes each), never with file contents.
"""

from __future__ import annotations

import collections
import contextvars
import copy
import logging
import os
import posixpath
import tarfile
import threading
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

from repro.confined import Tree, clean_path
from repro.errors import ReproError
from repro.extract import Extractor, Policy
from repro.image import Image
from repro.tarstream import CHUNK, Content, TarStream

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
MAX_LINK_CHAIN = 40

T = TypeVar("T")


def ancestors(path: str) -> Iterator[str]:
    """'a/b/c' -> 'a', 'a/b' (proper ancestors, outermost first)."""
    end = path.find("/")
    while end > 0:
        yield path[:end]
        end = path.find("/", end + 1)


DIR, IMPLICIT_DIR, OTHER = 1, 2, 3  # what a layer put at a path (0: nothing); IMPLICIT_DIR: made as a parent
Name = tuple[str, "tarfile.TarInfo | None"]  # a name a file gets, with the hardlink entry that gave it


@dataclass
class _Upper:
    """What the layers above the current one have said about paths."""

    claimed: _Claims = field(default_factory=lambda: _Claims())  # path -> DIR, IMPLICIT_DIR or OTHER
    deleted: set[str] = field(default_factory=set)
    opaque: set[str] = field(default_factory=set)
    sealed: set[str] = field(default_factory=set)  # nothing from further down survives at or under these
    # A hardlink of an upper layer whose target that layer (or one above it) replaced: the file a lower
    # layer has at the target, wanted under these names.
    wants: dict[str, list[Name]] = field(default_factory=dict)

    def hides(self, path: str, is_dir: bool) -> bool:
        """True if a lower layer's entry at `path` is replaced or deleted by an upper layer.

        A directory that an upper layer only implies (as the parent of its entries) still takes its
        metadata from the lower layer that has its entry, unless a non-directory came in between."""
        if not (self.claimed.count or self.deleted or self.opaque or self.sealed):
            return False  # the top layer (or one under layers that said nothing): the common case
        claim = self.claimed.get(path)
        if claim in (DIR, IMPLICIT_DIR) and not is_dir:
            return True
        if path in self.sealed or path in self.deleted or claim in (DIR, OTHER):
            return True
        for parent in ancestors(path):
            if (parent in self.deleted or parent in self.opaque or parent in self.sealed
                    or self.claimed.get(parent) == OTHER):
                return True
        return False


@dataclass(frozen=True, slots=True)
class MergedEntry:
    layer: int  # index in image.layers, 0 = bottom
    path: str  # clean relative path
    info: tarfile.TarInfo
    content: Content | None  # for regular files: readable until the next entry is produced


@dataclass
class MergeReport:
    """What the merged view left out."""

    unresolved_links: list[str] = field(default_factory=list)  # hardlinks that name no file


def whiteout_target(path: str) -> tuple[str, str] | None:
    """('whiteout'|'opaque', target) if `path` is a whiteout entry, else None."""
    parent, base = posixpath.split(path)
    if base == OPAQUE_WHITEOUT:
        return "opaque", parent
    if base.startswith(WHITEOUT_PREFIX):
        target = base[len(WHITEOUT_PREFIX) :]
        if target in ("", ".", "..") or target.startswith(WHITEOUT_PREFIX):
            return "invalid", path
        return "whiteout", posixpath.join(parent, target)
    return None


# --- one layer, names only ------------------------------------------------------------------------


class _Node:
    """What a layer's entries left at one path."""

    __slots__ = ("children", "index", "info", "inode", "kind")

    def __init__(self, kind: int, index: int) -> None:
        self.kind = kind  # DIR, IMPLICIT_DIR (made as the parent of an entry) or OTHER
        self.index = index  # the entry that made it, -1 for an implied directory
        # For OTHER: the file it is: the index of the entry that made the file, a path in the layers
        # below (a hardlink to a file there), or None (a hardlink that names nothing).
        self.inode: int | str | None = index
        self.info: tarfile.TarInfo | None = None  # a hardlink's own header
        self.children: set[str] | None = None  # paths of the entries under a directory


class _LayerModel:
    """The names one layer leaves, its entries applied in order (see the module docstring), exactly:
    for a layer that replaces what it gave, read headers first."""

    def __init__(self) -> None:
        self.nodes: dict[str, _Node] = {}
        self.sealed: set[str] = set()  # a non-directory was put here: nothing from below survives at or under it
        self.whiteouts = _Whiteouts()
        self.headers: dict[int, tarfile.TarInfo] = {}  # a directory entry -> its later duplicate's header

    def _put(self, path: str, node: _Node) -> None:
        self.nodes[path] = node
        parent = path.rpartition("/")[0]
        if parent:
            above = self.nodes[parent]
            if above.children is None:
                above.children = set()
            above.children.add(path)

    def _drop(self, path: str) -> None:
        """Remove what is at `path`, a whole tree included."""
        todo = [path]
        while todo:
            node = self.nodes.pop(todo.pop())
            if node.children:
                todo.extend(node.children)
        parent = path.rpartition("/")[0]
        if parent:
            siblings = self.nodes[parent].children
            if siblings is not None:
                siblings.discard(path)

    def _directories_for(self, path: str) -> None:
        """Make every parent of `path` a directory: missing ones are implied, non-directories replaced."""
        for parent in ancestors(path):
            node = self.nodes.get(parent)
            if node is not None and node.kind != OTHER:
                continue
            if node is not None:
                self._drop(parent)
            self._put(parent, _Node(IMPLICIT_DIR, -1))

    def gone(self, path: str) -> bool:
        """Whether a file the layers below have at `path` is deleted or replaced by this layer so far."""
        if path in self.sealed or self.whiteouts.cover(path):
            return True
        return any(p in self.sealed for p in ancestors(path))

    def mentions(self, path: str) -> bool:
        """Whether this layer decides what is at `path`, for a hardlink of a higher layer to it."""
        return path in self.nodes or self.gone(path)

    def whiteout(self, path: str, kind: str, target: str) -> None:
        self.whiteouts.add(path, kind, target)
        for parent in ancestors(path):  # a whiteout lives in its directory: that directory exists in this layer
            if parent not in self.nodes:
                self._put(parent, _Node(IMPLICIT_DIR, -1))

    def add(self, index: int, path: str, info: tarfile.TarInfo) -> None:
        """Apply entry `index` at `path`."""
        inode: int | str | None = index
        if info.islnk():  # what the target names before this entry applies (it may be `path` itself)
            inode = self._inode_of(clean_path(info.linkname))
        self._directories_for(path)
        node = self.nodes.get(path)
        if node is not None:
            if info.isdir() and node.kind != OTHER:  # a directory over a directory: its header only
                if node.kind == IMPLICIT_DIR:
                    node.kind, node.index = DIR, index
                else:
                    self.headers[node.index] = info
                return
            self._drop(path)
        node = _Node(DIR if info.isdir() else OTHER, index)
        self._put(path, node)
        if not info.isdir():
            self.sealed.add(path)
            node.inode = inode
            if info.islnk():
                node.info = info

    def _inode_of(self, target: str) -> int | str | None:
        node = self.nodes.get(target)
        if node is not None:
            return node.inode if node.kind == OTHER else None
        if not target or self.gone(target):
            return None
        return target


# --- the layers, top down -------------------------------------------------------------------------


ENTRY, NONDIR, IMPLIED, LINK = 1, 2, 4, 8  # flags of a name in _Seen (LINK: a hardlink entry)
_MASK64 = (1 << 64) - 1


def _name_key(name: str) -> tuple[int, int]:
    """Two independent hashes of a name: 64 bits (never 0, which marks a free slot) and 32 bits."""
    return hash(name) & _MASK64 or 1, hash(name[::-1]) & 0xFFFFFFFF


class _NameTable:
    """A small number per name, in 13 to 26 bytes a name, the names themselves not kept (a layer, or the
    layers above one, may hold a million): open addressing over two independent hashes of each name
    (96 bits), so that two names are taken for one with a chance of 2**-96 per pair."""

    __slots__ = ("_checks", "_count", "_keys", "_mask", "_values")

    def __init__(self) -> None:
        self._allocate(1 << 10)

    def _allocate(self, size: int) -> None:
        self._keys = array("Q", bytes(8 * size))  # 64 bits of hash(name); 0: a free slot
        self._checks = array("I", bytes(4 * size))  # 32 bits of hash(reversed name)
        self._values = bytearray(size)
        self._mask = size - 1
        self._count = 0

    def _slot(self, key: int, check: int) -> int:
        keys, mask = self._keys, self._mask
        i = key & mask
        while True:
            found = keys[i]
            if found == 0 or (found == key and self._checks[i] == check):
                return i
            i = (i + 1) & mask

    @property
    def count(self) -> int:
        """How many names have a value."""
        return self._count

    def get(self, name: str) -> int:
        """The name's value, 0 if it has none."""
        return self._values[self._slot(*_name_key(name))]

    def _set(self, key: int, check: int, value: int, combine: bool) -> int:
        """Set (or, with `combine`, add the bits of) the value of the name hashed to key and check;
        returns the value it had."""
        i = self._slot(key, check)
        before = self._values[i]
        self._values[i] = before | value if combine else value
        if not self._keys[i]:
            self._keys[i], self._checks[i] = key, check
            self._count += 1
            if 2 * self._count > self._mask:
                self._grow()
        return before

    def _grow(self) -> None:
        keys, checks, values = self._keys, self._checks, self._values
        self._allocate(2 * len(values))
        for j, key in enumerate(keys):
            if key:
                i = self._slot(key, checks[j])
                self._keys[i], self._checks[i], self._values[i] = key, checks[j], values[j]
                self._count += 1

    def items(self) -> Iterator[tuple[int, int, int]]:
        """(key, check, value) of each name."""
        keys, checks, values = self._keys, self._checks, self._values
        return ((key, checks[j], values[j]) for j, key in enumerate(keys) if key)


class _Seen(_NameTable):
    """The names a layer has given so far, with ENTRY/NONDIR/IMPLIED/LINK flags."""

    __slots__ = ()

    def mark(self, name: str, flags: int) -> int:
        """Add `flags` to `name`; returns the flags it had (0: not seen)."""
        return self._set(*_name_key(name), flags, combine=True)

    def gone(self, name: str) -> bool:
        """Whether a parent of `name` is a non-directory of the layer."""
        return any(self.get(parent) & NONDIR for parent in ancestors(name))


class _Claims(_NameTable):
    """What a layer (or the layers above one) put at each path: DIR, IMPLICIT_DIR or OTHER."""

    __slots__ = ()

    def put(self, name: str, claim: int) -> None:
        self._set(*_name_key(name), claim, combine=False)

    def merge_below(self, layer: _Claims) -> None:
        """Add a lower layer's claims: a directory an upper layer gave stays what it said."""
        for key, check, claim in layer.items():
            if self._values[self._slot(key, check)] != DIR:
                self._set(key, check, claim, combine=False)


@dataclass
class _Whiteouts:
    """A layer's whiteouts (they apply before its entries)."""

    deleted: set[str] = field(default_factory=set)
    opaque: set[str] = field(default_factory=set)
    dirs: set[str] = field(default_factory=set)  # directories that hold a whiteout

    def add(self, path: str, kind: str, target: str) -> None:
        (self.opaque if kind == "opaque" else self.deleted).add(target)
        self.dirs.update(ancestors(path))

    def cover(self, path: str) -> bool:
        """Whether they leave no file at `path` from the layers below: deleted, or held a directory (a
        whiteout lives in a directory of its layer)."""
        if path in self.deleted or path in self.dirs:
            return True
        return any(p in self.deleted or p in self.opaque for p in ancestors(path))


class _Replan(ReproError):
    """A layer replaced, within itself, an entry already handed out: `flattening()` starts over."""

    def __init__(self, image: Image, layer: int) -> None:
        super().__init__(f"{image.name}: layer {layer} replaces entries it already gave",
                         "flatten it again (this is a fault in repro)")
        self.image = image
        self.layer = layer


# Inside flattening(): the layers of each image (by id) that are read twice, headers first; from index
# -1 (none) up. Outside it, None: every layer is.
_PLANS: contextvars.ContextVar[dict[int, int] | None] = contextvars.ContextVar("repro_flatten_plans", default=None)


def flattening(run: Callable[[], T], reset: Callable[[], None] | None = None) -> T:
    """run(), which consumes merged views, reading each layer once, unless a layer replaces within
    itself an entry already handed out: then reset() (undo what run() wrote) and run() again, with
    that layer and the ones below it read headers first."""
    plans: dict[int, int] = {}
    token = _PLANS.set(plans)
    try:
        while True:
            try:
                return run()
            except _Replan as again:
                key = id(again.image)
                if plans.get(key, -1) >= again.layer:
                    raise
                plans[key] = again.layer
                if reset is not None:
                    reset()
    finally:
        _PLANS.reset(token)


class _Merge:
    def __init__(self, image: Image, report: MergeReport) -> None:
        self.image = image
        self.report = report
        plans = _PLANS.get()
        self.planned_from = len(image.layers) - 1 if plans is None else plans.get(id(image), -1)
        self.upper = _Upper()
        self.links: dict[str, tuple[int, tarfile.TarInfo, str]] = {}  # hardlink path -> (layer, header, target)
        self.awaited: set[str] = set()  # targets of those links
        self.found: set[str] = set()  # ... among the non-directories handed out
        self._last_parent: str | None = None  # the directory of the last path whose parents were claimed

    def entries(self) -> Iterator[MergedEntry]:
        layers = self.image.layers
        for index in range(len(layers) - 1, -1, -1):
            if index <= self.planned_from:
                yield from self._planned(index)
            else:
                yield from self._once(index)
        for names in self.upper.wants.values():  # wanted below the bottom layer: nothing there
            self._unresolved(names)
        yield from self._links()

    def _what(self, index: int) -> str:
        return f"{self.image.name}: layer {self.image.layers[index].descriptor.digest}"

    def _unresolved(self, names: list[Name]) -> None:
        self.report.unresolved_links.extend(name for name, _ in names)

    # --- a layer in one pass ------------------------------------------------------------------

    def _once(self, index: int) -> Iterator[MergedEntry]:
        """The layer's entries, read once. Should an entry replace one of the layer's earlier entries
        (or need one it did not hand out), _Replan: the layer is then read headers first (_planned)."""
        upper, image = self.upper, self.image
        seen = _Seen()
        whiteouts = _Whiteouts()
        claims: _Claims | None = _Claims() if index else None  # the bottom layer has nothing below to hide
        self._last_parent = None
        sealed: set[str] = set()
        consumed: set[str] = set()  # wanted paths the layer has a file at
        below: list[tuple[list[Name], str]] = []  # hardlinks to a file of the layers below
        relinked: dict[str, list[Name]] = {}  # hardlinks to a file of the layer that a higher layer hides
        parents: dict[str, None] = {}  # directories the layer's entries were last placed in
        what = self._what(index)
        with image.layers[index].open_uncompressed(read_ahead=True) as stream:
            tar = TarStream(stream, what)
            for info in tar:
                path = clean_path(info.name)
                if not path:
                    continue
                kind = whiteout_target(path)
                if kind is not None:
                    _check_whiteout(kind, info, what)
                    whiteouts.add(path, *kind)
                    if claims is not None:
                        self._claim_parents(claims, path)
                    continue
                parent = path.rpartition("/")[0]
                if parent and parent not in parents:  # a parent seen as a directory stays one (or: _Replan)
                    for above in ancestors(path):
                        if seen.mark(above, IMPLIED) & NONDIR:
                            raise _Replan(image, index)  # placed under a file or symlink of the layer
                    if len(parents) >= 4096:
                        parents.clear()
                    parents[parent] = None
                is_dir = info.isdir()
                before = seen.mark(path, ENTRY if is_dir else ENTRY | NONDIR | (LINK if info.islnk() else 0))
                if before & ENTRY or (before & IMPLIED and not is_dir):
                    raise _Replan(image, index)  # the same name again, or a non-directory over a tree
                if is_dir:
                    if not upper.hides(path, True):
                        if claims is not None:
                            claims.put(path, DIR)
                            self._claim_parents(claims, path)
                        yield MergedEntry(index, path, info, None)
                    continue
                hidden = upper.hides(path, False)
                if hidden:
                    if upper.claimed.get(path) in (DIR, IMPLICIT_DIR):
                        sealed.add(path)  # it replaced what is below, before a higher layer made a directory
                elif claims is not None:
                    claims.put(path, OTHER)
                    self._claim_parents(claims, path)
                names: list[Name] = [] if hidden else [(path, info if info.islnk() else None)]
                if path in upper.wants:
                    names += upper.wants[path]
                    consumed.add(path)
                if not names:
                    continue
                if info.islnk():
                    target = clean_path(info.linkname)  # what it names before this entry took `path`:
                    flags = before if target == path else seen.get(target)
                    self._link_once(index, seen, names, target, flags, below, relinked)
                    continue
                if names[0][0] in self.awaited or len(names) > 1:
                    self.found.add(names[0][0])
                yield self._hand_out(index, names, info, tar.content() if info.isreg() else None)
            # Drain what the tar reader left unread so the digest check at the end of the stream runs.
            stream.finish()
        if relinked:
            yield from self._relinked_files(index, relinked)
        for path in consumed:
            del upper.wants[path]
        for path in [p for p in upper.wants if seen.get(p) or seen.gone(p) or whiteouts.cover(p)]:
            self._unresolved(upper.wants.pop(path))  # a directory here, or deleted: the link names nothing
        for names, target in below:
            touched = bool(seen.get(target) or seen.gone(target))
            self._link_below(index, names, target, whiteouts.cover(target), touched)
        if claims is not None:
            self._merge_claims(claims, whiteouts, sealed)

    def _link_once(self, index: int, seen: _Seen, names: list[Name], target: str, flags: int,
                   below: list[tuple[list[Name], str]], relinked: dict[str, list[Name]]) -> None:
        if not flags and not seen.gone(target):
            below.append((names, target))  # a file of the layers below (unless the layer replaces it later)
            return
        if not flags & NONDIR or flags & LINK:
            # A directory, or under a file of the layer (it names nothing), or another hardlink of the
            # layer (the file that one names): the layer's headers tell for sure.
            raise _Replan(self.image, index)
        # A file the layer gave before (the layer has not replaced it: that would have been a _Replan).
        first = target if not self.upper.hides(target, False) else None
        if first is None and target in self.upper.wants:
            first = self.upper.wants[target][0][0]
        if first is None:  # handed out under no name, yet needed under the link's: read again after the layer
            relinked.setdefault(target, []).extend(names)
            return
        self.found.add(first)
        for name, header in names:
            if name != first:
                self._add_link(index, name, header, first)

    def _hand_out(self, index: int, names: list[Name], info: tarfile.TarInfo, content: Content | None) -> MergedEntry:
        """The file of entry `info` under the first of `names`; the others become hardlinks to it."""
        first = names[0][0]
        for name, header in names[1:]:
            self._add_link(index, name, header, first)
        return MergedEntry(index, first, info, content)

    def _relinked_files(self, index: int, relinked: dict[str, list[Name]]) -> Iterator[MergedEntry]:
        """The files of layer `index` that a higher layer hides but a hardlink of the layer names, read
        again from the layer (that one only, memory bounded by the number of such links) and handed out
        under the links' names. Each is the layer's only entry at its path: a second is a _Replan."""
        with self.image.layers[index].open_uncompressed(read_ahead=True) as stream:
            tar = TarStream(stream, self._what(index))
            for info in tar:
                names = relinked.pop(clean_path(info.name), None) if relinked else None
                if names is not None:
                    self.found.add(names[0][0])
                    yield self._hand_out(index, names, info, tar.content() if info.isreg() else None)
            stream.finish()
        if relinked:
            raise ReproError(f"{self._what(index)}: changed while it was read",
                             "read the image when nothing is changing it")

    def _claim_parents(self, claims: _Claims, path: str) -> None:
        parent = path.rpartition("/")[0]
        if not parent or parent == self._last_parent:  # its parents are claimed already
            return
        self._last_parent = parent
        for above in ancestors(path):
            if not claims.get(above) and not self.upper.claimed.get(above):
                claims.put(above, IMPLICIT_DIR)

    def _merge_claims(self, claims: _Claims, whiteouts: _Whiteouts, sealed: set[str]) -> None:
        upper = self.upper
        upper.claimed.merge_below(claims)
        upper.deleted |= whiteouts.deleted
        upper.opaque |= whiteouts.opaque
        upper.sealed |= sealed

    # --- a layer read twice, headers first ----------------------------------------------------

    def _plan(self, index: int) -> _LayerModel:
        """The layer's names, from a pass over its headers."""
        model = _LayerModel()
        what = self._what(index)
        with self.image.layers[index].open_uncompressed(read_ahead=True) as stream:
            for position, info in enumerate(TarStream(stream, what)):
                path = clean_path(info.name)
                if not path:
                    continue
                kind = whiteout_target(path)
                if kind is None:
                    model.add(position, path, info)
                else:
                    _check_whiteout(kind, info, what)
                    model.whiteout(path, *kind)
            stream.finish()
        return model

    def _planned(self, index: int) -> Iterator[MergedEntry]:
        """The layer's entries, knowing from its headers what each leaves (see _LayerModel)."""
        upper = self.upper
        model = self._plan(index)
        files = self._files(model)
        emitted: dict[int, str] = {}  # file (entry index) -> the name it was handed out under
        with self.image.layers[index].open_uncompressed(read_ahead=True) as stream:
            tar = TarStream(stream, self._what(index))
            for position, info in enumerate(tar):
                path = clean_path(info.name)
                if not path or whiteout_target(path) is not None or info.islnk():
                    continue  # hardlinks come last, once every file is out
                if info.isdir():
                    node = model.nodes.get(path)
                    # Not the directory that stays (replaced later in the layer), or a duplicate of it
                    # whose header the first one takes: nothing to hand out.
                    if node is not None and node.index == position and not upper.hides(path, True):
                        yield MergedEntry(index, path, model.headers.get(position, info), None)
                    continue
                names = files.get(position)  # a file replaced later in the layer may be kept by a link
                if names:
                    emitted[position] = names[0][0]
                    if names[0][0] in self.awaited:
                        self.found.add(names[0][0])
                    yield MergedEntry(index, names[0][0], info, tar.content() if info.isreg() else None)
            stream.finish()
        for inode, names in files.items():
            if isinstance(inode, str):
                self._link_below(index, names, inode, model.whiteouts.cover(inode), model.mentions(inode))
                continue
            first = emitted.get(inode)
            if first is None:
                raise ReproError(f"{self._what(index)}: changed while it was read",
                                 "read the image when nothing is changing it")
            self.found.add(first)
            for name, header in names[1:]:
                self._add_link(index, name, header, first)
        if index:
            claims = _Claims()
            for path, node in model.nodes.items():
                if node.kind == IMPLICIT_DIR:
                    if not upper.claimed.get(path):
                        claims.put(path, IMPLICIT_DIR)
                elif not upper.hides(path, node.kind == DIR):
                    claims.put(path, node.kind)
            self._merge_claims(claims, model.whiteouts, model.sealed)

    def _files(self, model: _LayerModel) -> dict:
        """The names each file of the layer is handed out under, keyed by the entry that made it (its
        own path first when it is seen); for the layer's hardlinks to a file below, keyed by its path."""
        upper = self.upper
        files: dict = {}
        for path, node in model.nodes.items():
            if node.kind != OTHER:
                continue
            names: list[Name] = [(path, node.info)] if not upper.hides(path, False) else []
            names += upper.wants.pop(path, [])
            if not names:
                continue
            if node.inode is None:
                self._unresolved(names)
            else:
                files.setdefault(node.inode, []).extend(names)
        for path in [p for p in upper.wants if model.mentions(p)]:  # a directory, or deleted here
            self._unresolved(upper.wants.pop(path))
        return files

    # --- hardlinks ----------------------------------------------------------------------------

    def _link_below(self, index: int, names: list[Name], target: str, whited_out: bool, touched: bool) -> None:
        """Hardlinks of layer `index` to the file `target` of a layer below it."""
        if whited_out:  # deleted before the layer's entries applied: they name nothing
            self._unresolved(names)
        elif touched or self.upper.hides(target, False):
            # Replaced after the link, in the layer or above it: the file below is wanted under the
            # links' names (the first layer below that has something at `target` gives it).
            self.upper.wants.setdefault(target, []).extend(names)
        else:
            for name, header in names:
                self._add_link(index, name, header, target)

    def _add_link(self, index: int, name: str, info: tarfile.TarInfo | None, target: str) -> None:
        header = copy.copy(info) if info is not None else tarfile.TarInfo(name)
        header.pax_headers = dict(header.pax_headers)
        header.type, header.size = tarfile.LNKTYPE, 0
        self.links[name] = (index, header, target)
        self.awaited.add(target)

    def _links(self) -> Iterator[MergedEntry]:
        for name, (index, header, target) in self.links.items():
            for _ in range(MAX_LINK_CHAIN):
                if target not in self.links:
                    break
                target = self.links[target][2]
            if target not in self.found:
                self.report.unresolved_links.append(name)
                continue
            header.linkname = target
            yield MergedEntry(index, name, header, None)


def _check_whiteout(kind: tuple[str, str], info: tarfile.TarInfo, what: str) -> None:
    if kind[0] == "invalid":
        raise ReproError(f"{what}: {info.name!r} is not a valid whiteout",
                         "the layer is damaged or hostile; do not use this image")


def apply_layer(extractor: Extractor, stream: BinaryIO, what: str) -> None:
    """Apply one layer onto the tree that holds the layers below it (a build's working tree): a whiteout
    deletes what is below, an opaque whiteout empties its directory of it, other entries are written."""
    tar = TarStream(stream, what)
    for info in tar:
        path = clean_path(info.name)
        kind = whiteout_target(path)
        if kind is None:
            extractor.add(path, info, tar.content() if info.isreg() else None)
        else:
            _check_whiteout(kind, info, what)
            (extractor.whiteout if kind[0] == "whiteout" else extractor.opaque)(kind[1])


def merged(image: Image, report: MergeReport | None = None) -> Iterator[MergedEntry]:
    """Yield the entries of the flattened filesystem, top layer first, hardlinks last; the root itself
    is skipped. Inside flattening(), a layer may make it raise so that the consumer starts over."""
    own = report is None
    report = report if report is not None else MergeReport()
    yield from _Merge(image, report).entries()
    if own and report.unresolved_links:
        log.warning("%s: left out %d hardlinks that name no file (first: %r)", image.name,
                    len(report.unresolved_links), report.unresolved_links[0])


def flat_entries(image: Image, report: MergeReport | None = None) -> Iterator[tuple[tarfile.TarInfo, BinaryIO | None]]:
    """The merged view as tar entries named by their clean paths, hardlinks last (after every
    possible target, since a link's target may come from a lower layer)."""
    for entry in merged(image, report):
        info = entry.info
        info.name = entry.path
        yield info, entry.content


def extract(image: Image, root: Path, policy=None, owners: dict[str, tuple[int, int]] | None = None,
            hashes: dict[str, str] | None = None):
    """Flatten `image` into the existing, empty directory `root`; returns the extraction statistics.

    The files are written by a second thread (see _Writer): creating a file is a system call of tens
    to hundreds of microseconds on ext4 that runs without the GIL, beside the reading thread that
    parses the layers and checks their digests. `owners`: a plain user's table of owners, `hashes`:
    each file's sha256 (see Extractor)."""
    fresh = next(os.scandir(root), None) is None

    def once():
        report = MergeReport()
        extractor = Extractor(root, image.name, policy or Policy(), fresh=fresh, owners=owners, whiteouts=False,
                              hashes=hashes)
        try:
            with _Writer(extractor) as writer:
                for entry in merged(image, report):
                    writer.add(entry.path, entry.info, entry.content)
            stats = extractor.finish()
        finally:
            extractor.close()
        stats.unresolved_links[:0] = report.unresolved_links
        return stats

    def reset() -> None:
        for table in (owners, hashes):
            if table is not None:
                table.clear()
        with Tree(root, image.name) as tree:
            tree.empty_dir("")

    return flattening(once, reset)


_END_OF_CONTENT = object()


class _Writer:
    """Hands entries to `extractor.add` in a second thread, in order. Content goes over as views of
    the tar reader's chunks (immutable bytes, never copied); at most BUDGET bytes and ITEMS items are
    in flight, so memory stays flat whatever the image's size."""

    BUDGET = 8 << 20
    ITEMS = 4096

    def __init__(self, extractor) -> None:
        self._extractor = extractor
        self._items: collections.deque = collections.deque()
        self._bytes = 0
        self._ready = threading.Condition()
        self._closed = False
        self._aborted = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="repro-extract", daemon=True)

    def __enter__(self) -> _Writer:
        self._thread.start()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        with self._ready:
            self._closed = True
            self._aborted = kind is not None
            self._ready.notify_all()
        self._thread.join()
        if kind is None and self._error is not None:
            raise self._error

    def _put(self, item, size: int = 0) -> None:
        with self._ready:
            while (self._bytes > self.BUDGET or len(self._items) >= self.ITEMS) and self._error is None:
                self._ready.wait()
            if self._error is not None:
                raise self._error
            self._items.append(item)
            self._bytes += size
            if len(self._items) == 1:
                self._ready.notify_all()

    def add(self, path: str, info: tarfile.TarInfo, content: Content | None) -> None:
        self._put((path, info, content is not None))
        if content is None:
            return
        while view := content.readview(CHUNK):
            if not isinstance(view.obj, bytes):  # a reusable buffer: copy what it holds now
                view = memoryview(view.tobytes())
            self._put(view, len(view))
        self._put(_END_OF_CONTENT)

    def _get(self):
        with self._ready:
            while not self._items:
                if self._closed:
                    return None
                self._ready.wait()
            item = self._items.popleft()
            if isinstance(item, memoryview):
                self._bytes -= len(item)
            if self._bytes <= self.BUDGET and len(self._items) < self.ITEMS:
                self._ready.notify_all()
            return item

    def readview(self, size: int = CHUNK):
        """The content of the entry being written, for extractor.add (read as the tar reader's views)."""
        if self._content_done:
            return b""
        item = self._get()
        if item is _END_OF_CONTENT or item is None:
            self._content_done = True
            return b""
        return item

    def _run(self) -> None:
        try:
            while (item := self._get()) is not None:
                if self._aborted:
                    return
                path, info, has_content = item
                self._content_done = not has_content
                self._extractor.add(path, info, self if has_content else None)
                while not self._content_done:  # what the extractor left unread
                    self.readview()
        except BaseException as exc:
            with self._ready:
                self._error = exc
                self._ready.notify_all()
