"""An OCI image layout on disk used as a content-addressed blob store.

Invariants: a file under blobs/ALG/ always holds exactly the content its name says (blobs are
written under a temporary name, checked, then renamed); index.json changes only under an exclusive
lock on the layout directory and by an atomic rename, so concurrent writers add their tags instead
of overwriting each other's.

copy_into fills a layout from any image; LayoutBlobs serves the blobs of a layout (a directory, or an
archive read through the same calls) as the BlobSource an image is read from.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from repro.atomic import atomic_file, fsync_dir
from repro.confined import Tree
from repro.digest import (
    CHUNK,
    HashingWriter,
    VerifyingReader,
    algorithm_and_hex,
    sha256_bytes,
)
from repro.errors import ReproError
from repro.files import DirectoryFiles, Files
from repro.image import OCI_INDEX, Descriptor, Image, Index, canonical_json, parse_json
from repro.transfer import blob_progress, image_blobs, manifest_descriptor

LAYOUT_VERSION = "1.0.0"
OCI_LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
TEMP_PREFIX = ".tmp-"


def blob_name(digest: str) -> str:
    algorithm, hexpart = algorithm_and_hex(digest)
    return f"blobs/{algorithm}/{hexpart}"


def layout_marker() -> bytes:
    return canonical_json({"imageLayoutVersion": LAYOUT_VERSION})


def empty_index() -> Index:
    return Index((), {}, OCI_INDEX)


def default_store() -> Path:
    """The local store: $REPRO_STORE, else ~/.local/share/repro/store."""
    return Path(os.environ.get("REPRO_STORE") or Path.home() / ".local" / "share" / "repro" / "store")


class Layout(DirectoryFiles):
    """A directory holding an OCI image layout; read as any directory of files (repro.files)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        super().__init__(self.path, f"oci:{self.path}", "layout")
        self._pending: dict[str, Path] | None = None  # digest -> verified temporary, in a transaction

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Blobs written inside the block get their names only if the block completes, so a failed
        copy leaves the layout as it was (a killed one leaves at most hidden `.tmp-*` files)."""
        self._pending = {}
        try:
            yield
            with self.locked():
                for digest, tmp in self._pending.items():
                    os.replace(tmp, self.path / blob_name(digest))
            self._pending = None
        finally:
            for tmp in (self._pending or {}).values():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            self._pending = None

    # --- opening and creating -------------------------------------------------------------
    @classmethod
    def open_existing(cls, path: str | os.PathLike) -> Layout:
        layout = cls(path)
        if not layout.path.exists():
            raise ReproError(f"{layout.name}: {layout.path} does not exist", "check the path")
        if not layout.path.is_dir() or not layout.exists(OCI_LAYOUT_FILE):
            raise ReproError(
                f"{layout.name}: {layout.path} is not an OCI image layout (no oci-layout file)", ""
            )
        obj = parse_json(layout.read(OCI_LAYOUT_FILE), f"{layout.name}: oci-layout")
        if not isinstance(obj, dict) or obj.get("imageLayoutVersion") != LAYOUT_VERSION:
            raise ReproError(f"{layout.name}: unsupported imageLayoutVersion in oci-layout", "expected 1.0.0")
        return layout

    @classmethod
    def initialize(cls, path: str | os.PathLike) -> Layout:
        """Create the skeleton of an empty layout in an existing empty directory."""
        layout = cls(path)
        (layout.path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (layout.path / OCI_LAYOUT_FILE).write_bytes(layout_marker())
        (layout.path / INDEX_FILE).write_bytes(canonical_json(empty_index().to_json()))
        return layout

    # --- reading (exists, open, read: repro.files.DirectoryFiles) ------------------------------
    def has_blob(self, digest: str) -> bool:
        return (self._pending is not None and digest in self._pending) or self.exists(blob_name(digest))

    def read_index(self) -> Index:
        return Index.parse(self.read(INDEX_FILE), f"{self.name}: index.json")

    # --- writing --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _temp_blob(self, algorithm: str) -> Iterator[tuple[BinaryIO, Callable[[str], None]]]:
        directory = self.path / "blobs" / algorithm
        directory.mkdir(parents=True, exist_ok=True)
        with Tree(self.path, self.name) as tree:  # no link out of the layout
            os.close(tree.open_dir(f"blobs/{algorithm}", follow=False))
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=directory)
        committed = False

        def commit(digest: str) -> None:
            nonlocal committed
            os.chmod(tmp, 0o644)
            if self._pending is not None:
                self._pending.setdefault(digest, Path(tmp))
                if self._pending[digest] != Path(tmp):
                    os.unlink(tmp)
            else:
                os.replace(tmp, self.path / blob_name(digest))
            committed = True

        try:
            with os.fdopen(fd, "wb") as out:
                yield out, commit
        finally:
            if not committed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    def put_blob(self, descriptor: Descriptor, src: BinaryIO, progress=None) -> None:
        """Store a blob whose digest is known; the content is verified before it gets its name."""
        if self.has_blob(descriptor.digest):
            return
        if not (isinstance(src, VerifyingReader) and src.expected_digest == descriptor.digest):
            src = VerifyingReader(src, descriptor.digest, descriptor.size, f"blob {descriptor.digest}")
        algorithm, _ = algorithm_and_hex(descriptor.digest)
        with self._temp_blob(algorithm) as (out, commit):
            while chunk := src.read(CHUNK):
                out.write(chunk)
                if progress is not None:
                    progress(len(chunk))
            src.finish()
            out.flush()
            os.fsync(out.fileno())
            commit(descriptor.digest)

    def put_bytes(self, data: bytes, media_type: str) -> Descriptor:
        digest = sha256_bytes(data)
        descriptor = Descriptor(media_type, digest, len(data))
        if not self.has_blob(digest):
            with self._temp_blob("sha256") as (out, commit):
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
                commit(digest)
        return descriptor

    def put_stream(self, write: Callable[[BinaryIO], None]) -> tuple[str, int]:
        """Store a blob produced by `write(out)` whose digest is not known in advance."""
        with self._temp_blob("sha256") as (out, commit):
            hashing = HashingWriter(out)
            write(hashing)
            out.flush()
            os.fsync(out.fileno())
            digest = hashing.digest
            if self.has_blob(digest):
                return digest, hashing.size
            commit(digest)
        return digest, hashing.size

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """An exclusive lock on the layout directory (flock on the directory itself)."""
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def update_index(self, change: Callable[[Index], Index]) -> Index:
        """Apply `change` to index.json under the lock and replace it atomically."""
        with self.locked():
            index = self.read_index() if self.exists(INDEX_FILE) else empty_index()
            new = change(index)
            with atomic_file(self.path / INDEX_FILE) as out:
                out.write(canonical_json(new.to_json()))
        fsync_dir(self.path)
        return new

    def add_manifest(self, descriptor: Descriptor, tag: str) -> Index:
        """Point `tag` (or, without a tag, an untagged entry) at `descriptor`, keeping other entries."""

        def change(index: Index) -> Index:
            kept = [
                d
                for d in index.manifests
                if not (d.ref_name == tag if tag else (not d.ref_name and d.digest == descriptor.digest))
            ]
            return Index((*kept, descriptor), index.annotations, index.media_type)

        return self.update_index(change)


PARALLEL = 3  # blobs copied at once: hashing, socket reads and writes release the GIL


def copy_into(layout: Layout, image: Image, progress=None) -> Descriptor:
    """Store every blob of `image` and its manifest in `layout`; returns the manifest descriptor."""

    def copy(blob) -> None:
        with blob.open() as src:
            layout.put_blob(blob.descriptor, src, blob_progress(progress, blob.descriptor))

    missing = [blob for blob in image_blobs(image) if not layout.has_blob(blob.descriptor.digest)]
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        for future in [pool.submit(copy, blob) for blob in missing]:
            future.result()
    layout.put_bytes(image.raw_manifest, image.manifest.media_type)
    return manifest_descriptor(image)


class LayoutBlobs:
    """BlobSource (repro.blobs) over the blobs/ folder of a layout."""

    def __init__(self, files: Files, name: str) -> None:
        self.files = files
        self.name = name

    def open_blob(self, descriptor: Descriptor) -> BinaryIO:
        path = blob_name(descriptor.digest)
        try:
            return self.files.open(path)
        except FileNotFoundError:
            raise ReproError(
                f"{self.name}: blob {descriptor.digest} is missing ({path})",
                "the layout is incomplete; copy it again from its source",
            ) from None
