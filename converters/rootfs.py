"""`rootfs:DIR`: a plain directory tree, read as a one-layer image (like `docker import`).

The layer is deterministic: entries in byte order of path, mtimes clamped to SOURCE_DATE_EPOCH,
hardlinks kept. It is assembled in a private temporary store that lives as long as the image, and
only when something asks for the image's layers, digest or config: what needs only the files (an
SBOM, `hash --files`) reads the directory in place, as the merged view of that one layer. Files are
opened through repro.confined, never through a symlink in the tree.
"""

from __future__ import annotations

import logging
import os
import tarfile
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

from repro.atomic import atomic_dir
from repro.clock import rfc3339, source_date_epoch
from repro.confined import Tree
from repro.digest import CHUNK, HashingWriter
from repro.errors import ReproError
from repro.extract import Policy
from repro.flatten import MergedEntry, extract
from repro.image import Image
from repro.layers import TarWriter
from repro.mutate import directory_entries, image_from_layer_writer
from repro.refs import Options, Reference, Transport, Written

log = logging.getLogger(__name__)


class _FileContent:
    """A regular file's content as the merged view hands it out: exactly the size its header says."""

    __slots__ = ("_file", "_left", "_name")

    def __init__(self, file, size: int, name: str) -> None:
        self._file, self._left, self._name = file, size, name

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = self._left if size is None or size < 0 else min(size, self._left)
        if not size:
            return b""
        data = self._file.read(size)
        if not data:
            raise ReproError(f"{self._name}: the file shrank while it was read", "read the directory when nothing "
                             "is changing it")
        self._left -= len(data)
        return data

    def readview(self, size: int = CHUNK) -> bytes:
        return self.read(size)


def _imported(name: str) -> property:
    """One of DirectoryImage's Image attributes, read from the image the directory is imported as."""
    return property(lambda self: getattr(self._image, name))


class DirectoryImage:
    """A directory as a one-layer image, imported only when its image form is needed."""

    def __init__(self, root: Path, ref: Reference, options: Options) -> None:
        self.root = root
        self.name = str(ref)
        self._options = options
        self._epoch = source_date_epoch()
        self._tree_digest: str | None = None

    def _entries(self, tree: Tree) -> Iterator[tuple[tarfile.TarInfo, object]]:
        """The layer's headers in order, each regular file with its open (confined) file."""
        for info, _ in directory_entries(self.root, self._epoch):
            if not info.isreg():
                yield info, None
                continue
            with tree.open_file(info.name, follow=False) as file:
                if os.fstat(file.fileno()).st_size < info.size:
                    raise ReproError(f"{self.name}: {info.name} shrank while it was read",
                                     "read the directory when nothing is changing it")
                yield info, file

    def _write(self, tar: TarWriter) -> None:
        with Tree(self.root, self.name) as tree:
            for info, file in self._entries(tree):
                tar.add(info, file)  # type: ignore[arg-type]

    def merged_entries(self) -> Iterator[MergedEntry]:
        """The directory's files as the merged view of the layer it would be imported as, read in place.

        The layer's tar is hashed on the way (each file read again from the page cache once its
        entry is done with), so a complete pass also gives tree_digest."""
        sink = HashingWriter()
        tar = TarWriter(sink)  # type: ignore[arg-type]
        with Tree(self.root, self.name) as tree:
            for info, file in self._entries(tree):
                content = _FileContent(file, info.size, f"{self.name}: {info.name}") if file is not None else None
                yield MergedEntry(0, info.name, info, content)  # type: ignore[arg-type]
                if file is not None:
                    file.seek(0)  # type: ignore[attr-defined]
                tar.add(info, file)  # type: ignore[arg-type]
        tar.close()
        self._tree_digest = sink.digest

    @property
    def tree_digest(self) -> str:
        """The sha256 of the layer's uncompressed tar: the diff_id the imported image has, known without
        compressing the layer (which is most of an import's time)."""
        if self._tree_digest is None:
            sink = HashingWriter()
            tar = TarWriter(sink)  # type: ignore[arg-type]
            self._write(tar)
            tar.close()
            self._tree_digest = sink.digest
        return self._tree_digest

    @property
    def created(self) -> str:
        """The creation time the imported image has."""
        return rfc3339(self._epoch)

    @cached_property
    def _image(self) -> Image:
        return image_from_layer_writer(self._write, self.name, self._options.platform)

    # the Image interface: the imported image's
    raw_manifest = _imported("raw_manifest")
    manifest = _imported("manifest")
    digest = _imported("digest")
    raw_config = _imported("raw_config")
    config = _imported("config")
    layers = _imported("layers")

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._image, name)


def read(ref: Reference, options: Options) -> Image:
    root = Path(ref.body)
    if not ref.body:
        raise ReproError(f"{ref}: missing directory", "write it as rootfs:DIR")
    if not root.is_dir():
        raise ReproError(f"{ref}: {root} is not a directory", "check the path")
    return DirectoryImage(root, ref, options)  # type: ignore[return-value]


def new_directory(ref: Reference, hint: str) -> Path:
    """The directory a write makes: named, and not there yet (`hint` says what to do when it is)."""
    if not ref.body:
        raise ReproError(f"{ref}: missing directory", f"write it as {ref.transport.name}:DIR")
    target = Path(ref.body)
    if target.exists():
        raise ReproError(f"{ref}: {target} already exists", hint)
    return target


def write(image: Image, ref: Reference, options: Options, progress=None) -> Written:
    """Flatten into a new directory (assembled under a temporary name, renamed when complete)."""
    target = new_directory(ref, "flatten into a new directory")
    policy = Policy(devices=options.preserve_devices, setid=options.preserve_setuid)
    with atomic_dir(target) as tmp:
        stats = extract(image, tmp, policy)
    if stats.skipped_devices:
        how = "creating them needs root" if os.geteuid() else "--preserve-devices creates them"
        log.warning("%s: left out %d device nodes (%s)", ref, stats.skipped_devices, how)
    if stats.dropped_setid:
        log.warning("%s: dropped the setuid/setgid bits of %d files (--preserve-setuid keeps them)", ref,
                    stats.dropped_setid)
    if stats.skipped_xattrs:
        log.warning("%s: %d extended attributes could not be set here", ref, stats.skipped_xattrs)
    if stats.unresolved_links:
        log.warning("%s: %d hardlinks whose target is missing were skipped", ref, len(stats.unresolved_links))
    return Written(image.digest)


TRANSPORT = Transport("rootfs", read=read, write=write, flat=True)
