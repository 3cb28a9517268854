"""Assembling new images: deterministic layers from directory trees, configs, manifests.

Like go-containerregistry's mutate package: a new image is its base's layers plus appended ones, a
config derived from the base's, and a manifest over both, written into an OCI layout (the store).
An import (a tarball, a directory, a squashfs or SIF file) is the simplest case: one layer, no base
(image_from_layer_writer).
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from repro.blobs import BlobImage
from repro.clock import rfc3339, source_date_epoch
from repro.digest import HashingWriter
from repro.errors import ReproError
from repro.image import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
    Platform,
    canonical_json,
)
from repro.layers import (
    GZIP_STREAM,
    BackgroundCompressor,
    TarWriter,
    compressed_writer_id,
    compressing_writer,
    second_core,
)
from repro.parallel_gzip import ParallelGzipWriter
from repro.store import Layout, LayoutBlobs

LAYER_MEDIA_TYPES = {"": OCI_LAYER, "gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}
COMPRESSOR_ANNOTATION = "dev.repro.layer.compressor"


@dataclass(frozen=True, slots=True)
class NewLayer:
    descriptor: Descriptor
    diff_id: str


# one-core compressors, whose bytes depend on the input alone: a second thread may compress for them
SINGLE_STREAMS = (GZIP_STREAM, compressed_writer_id("zstd"))


def write_layer(layout: Layout, produce: Callable[[TarWriter], None], compression: str = "gzip",
                compressor: str = "") -> NewLayer:
    """Store the layer that `produce` writes (entries, then the trailer is added here); `compressor`
    is one of layers.GZIP_COMPRESSORS for gzip (empty: the single stream)."""
    diff_hash: list[str] = []
    writer_id = compressed_writer_id(compression, compressor)

    def write(out: BinaryIO) -> None:
        sink = compressing_writer(out, compression, compressor) if compression else out
        if writer_id in SINGLE_STREAMS and second_core():  # the same bytes, compressed on a second core
            sink = BackgroundCompressor(sink)
        tee = HashingWriter(sink)  # the uncompressed tar's digest (the diff_id) on its way into the compressor
        tar = TarWriter(tee)  # type: ignore[arg-type]
        try:
            produce(tar)
            tar.close()
        except BaseException:
            if isinstance(sink, (BackgroundCompressor, ParallelGzipWriter)):
                sink.abort()
            raise
        if compression:
            sink.close()
        diff_hash.append(tee.digest)

    digest, size = layout.put_stream(write)
    annotations = {COMPRESSOR_ANNOTATION: writer_id} if compression else {}
    return NewLayer(Descriptor(LAYER_MEDIA_TYPES[compression], digest, size, annotations), diff_hash[0])


def directory_entries(root: Path, mtime_limit: int) -> Iterator[tuple[tarfile.TarInfo, Path]]:
    """The tree under `root` as tar headers in byte order of path, hardlinks kept as links.

    mtimes are clamped to `mtime_limit`; the calling user's own ids become 0:0 when not root.
    """
    if not root.is_dir():
        raise ReproError(f"{root}: not a directory", "give the root of a file tree")
    paths: list[bytes] = []
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            paths.append(os.path.relpath(os.path.join(dirpath, name), base))
    paths.sort()
    uid, gid = os.getuid(), os.getgid()
    first_of_inode: dict[tuple[int, int], str] = {}
    for raw in paths:
        full = os.path.join(base, raw)
        st = os.lstat(full)
        name = os.fsdecode(raw)
        info = tarfile.TarInfo(name)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        if uid != 0:
            info.uid = 0 if st.st_uid == uid else st.st_uid
            info.gid = 0 if st.st_gid == gid else st.st_gid
        info.mtime = min(int(st.st_mtime), mtime_limit)
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(st.st_mode):
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(full).decode("utf-8", "surrogateescape")
        elif stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in first_of_inode:
                info.type, info.linkname = tarfile.LNKTYPE, first_of_inode[key]
            else:
                first_of_inode.setdefault(key, name)
                info.type, info.size = tarfile.REGTYPE, st.st_size
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(st.st_mode):
            info.type = tarfile.FIFOTYPE
        else:
            continue  # sockets do not belong in images
        yield info, Path(os.fsdecode(full))


def add_directory(tar: TarWriter, root: Path, mtime_limit: int) -> None:
    for info, full in directory_entries(root, mtime_limit):
        if info.isreg():
            with open(full, "rb") as f:
                tar.add(info, f)
        else:
            tar.add(info)


def new_config(
    platform: Platform,
    created: str,
    diff_ids: list[str],
    history: list[dict],
    container_config: dict | None = None,
) -> dict:
    config: dict = {
        "architecture": platform.architecture,
        "os": platform.os,
        "created": created,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": history,
        "config": container_config or {},
    }
    if platform.variant:
        config["variant"] = platform.variant
    return config


def commit(
    layout: Layout,
    config: dict,
    layers: list[NewLayer],
    annotations: dict[str, str] | None = None,
    name: str = "",
) -> BlobImage:
    """Write config and manifest for `layers` into `layout`; returns the image (not yet tagged)."""
    config_descriptor = layout.put_bytes(canonical_json(config), OCI_CONFIG)
    manifest = Manifest(
        OCI_MANIFEST, config_descriptor, tuple(layer.descriptor for layer in layers), dict(annotations or {})
    )
    raw = canonical_json(manifest.to_json())
    layout.put_bytes(raw, OCI_MANIFEST)
    return BlobImage(LayoutBlobs(layout, name or layout.name), raw, OCI_MANIFEST)


def image_from_layer_writer(produce: Callable[[TarWriter], None], name: str, platform: Platform | None = None,
                            container_config: Callable[[], dict] | None = None) -> BlobImage:
    """A one-layer image around the entries `produce` writes, in a temporary store that lives as long
    as the image (an import: tar:, rootfs:, squashfs:, sif:). Its times are SOURCE_DATE_EPOCH's.

    `container_config()`, called once the layer is written, gives the config's `config` part."""
    tmp = Path(tempfile.mkdtemp(prefix="repro-import-"))
    try:
        layout = Layout.initialize(tmp)
        layer = write_layer(layout, produce, "gzip")
        epoch = source_date_epoch()
        history = [{"created": rfc3339(epoch), "created_by": f"repro import {name.split(':', 1)[0]}"}]
        config = new_config(platform or Platform.host(), rfc3339(epoch), [layer.diff_id], history,
                            container_config() if container_config else None)
        image = commit(layout, config, [layer], name=name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    weakref.finalize(image, shutil.rmtree, tmp, True)
    return image
