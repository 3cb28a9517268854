"""`sif:PATH`: Singularity/Apptainer images.

Writing: the flattened image, with what Apptainer expects in its root filesystem, streams into
tar2sqfs; the squashfs becomes the primary system partition of a SIF after a deffile and two JSON
objects (inspect-metadata.json, oci-config.json), in the order Apptainer writes them. An image built
from a def file (repro build app.def, or Apptainer's) keeps its own /.singularity.d files, and its
def file is the deffile object, as in the SIFs Apptainer builds. Times come
from SOURCE_DATE_EPOCH and the SIF's UUID from the manifest digest, so the same image gives the same
bytes. Reading: the partition's tree becomes one layer; the config comes from oci-config.json, else
from the environment scripts, runscript and labels.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import uuid
from pathlib import Path
from typing import BinaryIO

from converters import sif_format as fmt
from converters import sif_rootfs as sd
from converters.squashfs import COMPRESSORS, run_tar2sqfs
from repro.atomic import atomic_file
from repro.clock import source_date_epoch
from repro.digest import MAX_DOCUMENT_SIZE
from repro.errors import ReproError
from repro.flatten import flat_entries
from repro.image import Image, Platform, canonical_json, parse_json
from repro.layers import TarWriter
from repro.mutate import image_from_layer_writer
from repro.refs import Options, Reference, Transport, Written
from repro.tarstream import copy_tar_stream

UUID_NAMESPACE = uuid.UUID("6f3c2a4e-5d1b-4f7a-9c8e-2b1d0e9f7a63")  # repro's namespace for SIF ids


def sif_id(digest: str) -> uuid.UUID:
    return uuid.uuid5(UUID_NAMESPACE, digest)


def source_name(image: Image) -> str:
    """A short, path-free name of the source for the deffile (`layout:tag`)."""
    body = image.name.partition(":")[2]
    path, _, tag = body.partition(":")
    base = Path(path).name or "image"
    return f"{base}:{tag}" if tag else base


def copy_range(src: int, dst: int, size: int, src_offset: int, dst_offset: int, what: str) -> None:
    """Copy `size` bytes between files inside the kernel (no pass through Python)."""
    copied = 0
    while copied < size:
        n = os.copy_file_range(src, dst, size - copied, src_offset + copied, dst_offset + copied)
        if n == 0:
            raise ReproError(f"{what}: ends {size - copied} bytes early", "the file is truncated")
        copied += n


def _bytes_object(data_type: int, name: str, data: bytes) -> fmt.NewObject:
    def write(out: BinaryIO) -> int:
        out.write(data)
        return len(data)

    return fmt.NewObject(data_type, name, write)


def _file_object(path: Path, arch: str) -> fmt.NewObject:
    def write(out: BinaryIO) -> int:
        out.flush()
        size = path.stat().st_size
        start = out.tell()
        with open(path, "rb") as src:
            copy_range(src.fileno(), out.fileno(), size, 0, start, str(path))
        out.seek(start + size)
        return size

    extra = fmt.partition_extra(fmt.FS_SQUASHFS, fmt.PART_PRIMARY, arch)
    return fmt.NewObject(fmt.DATA_PARTITION, "", write, extra, alignment=fmt.PARTITION_ALIGNMENT)


def sif_entries(image: Image, deffile_text: str, mtime: int, own: dict[str, bytes] | None = None):
    """The flattened image with Apptainer's files: each path once, as tar2sqfs needs.

    Without `own`, repro's /.singularity.d replaces the image's. With it (an image built from a def
    file), the image's /.singularity.d files stay and repro's fill in only what it lacks; the files
    named in OWN_FILES are copied into `own` on the way."""
    overlay = sd.overlay_entries(image.config, deffile_text, mtime)
    if own is not None:
        yield from _own_entries(image, overlay, mtime, own)
        return
    owned = {info.name for info, _ in overlay}
    files = {info.name for info, _ in overlay if not info.isdir()}

    for info, data in overlay:
        yield info, io.BytesIO(data)
    seen: set[str] = set()
    for info, content in flat_entries(image):
        name = info.name
        if name in owned or name.startswith(f"{sd.SD}/") or any(name.startswith(f + "/") for f in files):
            continue
        if info.isdir():
            seen.add(name)
        yield info, content
    yield from _default_dirs(seen, mtime)


def _default_dirs(seen: set[str], mtime: int):
    for path in sd.DEFAULT_DIRS:
        if path not in seen:
            info = tarfile.TarInfo(path)
            info.type, info.mtime = tarfile.DIRTYPE, mtime
            info.mode = 0o1777 if path.endswith("tmp") else 0o755
            yield info, None


def _own_entries(image: Image, overlay, mtime: int, own: dict[str, bytes]):
    """The image first, its /.singularity.d included; then repro's overlay where the image has nothing.
    Outside /.singularity.d the overlay still wins (etc/hosts, the /singularity links)."""

    def in_sd(name: str) -> bool:
        return name == sd.SD or name.startswith(f"{sd.SD}/")

    owned = {info.name for info, _ in overlay if not in_sd(info.name)}
    files = {info.name for info, _ in overlay if info.name in owned and not info.isdir()}
    seen: set[str] = set()
    blocked: set[str] = set()  # image paths under /.singularity.d that are not directories
    for info, content in flat_entries(image):
        name = info.name
        if name in owned or any(name.startswith(f + "/") for f in files):
            continue
        seen.add(name)
        if in_sd(name) and not info.isdir():
            blocked.add(name)
            if name in sd.OWN_FILES and info.isreg() and content is not None and info.size <= sd.MAX_OWN_FILE:
                data = content.read(info.size)
                own[name] = data
                content = io.BytesIO(data)
        yield info, content
    for info, data in overlay:
        if info.name in seen or any(info.name.startswith(b + "/") for b in blocked):
            continue
        yield info, io.BytesIO(data)
    yield from _default_dirs(seen, mtime)


def write(image: Image, ref: Reference, options: Options, progress=None) -> Written:
    if not ref.body:
        raise ReproError(f"{ref}: missing file name", "write it as sif:FILE")
    target = Path(ref.body)
    if not target.parent.is_dir():
        raise ReproError(f"{ref}: directory {target.parent} does not exist", "create it first")
    compression = options.compression or "gzip"
    if compression not in COMPRESSORS:
        raise ReproError(f"--compression {compression}: not supported", f"use one of {', '.join(COMPRESSORS)}")
    epoch = source_date_epoch()
    config = image.config
    deffile_text = sd.deffile(source_name(image), image.digest)
    own: dict[str, bytes] | None = {} if sd.built_from_def(config) else None
    config_obj = parse_json(image.raw_config, f"{image.name}: config").get("config") or {}
    fd, squashfs = tempfile.mkstemp(prefix=f".{target.name}.sqfs-", dir=target.parent)
    os.close(fd)
    try:
        def produce(out: BinaryIO) -> None:
            tar = TarWriter(out)
            for info, content in sif_entries(image, deffile_text, epoch, own):
                tar.add(info, content)
            tar.close()

        run_tar2sqfs(produce, Path(squashfs), compression, epoch, str(ref))
        deffile_bytes, metadata = _metadata(config, deffile_text, own)
        arch = config.architecture or Platform.host().architecture
        objects = [
            _bytes_object(fmt.DATA_DEFFILE, "", deffile_bytes),
            _bytes_object(fmt.DATA_GENERIC_JSON, "inspect-metadata.json", canonical_json(metadata)),
            _bytes_object(fmt.DATA_GENERIC_JSON, "oci-config.json", canonical_json(config_obj)),
            _file_object(Path(squashfs), arch),
        ]
        with atomic_file(target) as out:
            fmt.write(out, objects, sif_id(image.digest), epoch)
    finally:
        if os.path.exists(squashfs):
            os.unlink(squashfs)
    return Written(image.digest)


def _metadata(config, deffile_text: str, own: dict[str, bytes] | None) -> tuple[bytes, dict]:
    """The deffile object's bytes and inspect-metadata.json: from repro's files, or, for an image built
    from a def file, from the image's own (its def file, as Apptainer stores the one it built from)."""
    files = sd.files_for(config, deffile_text)
    labels = dict(config.labels)
    if own is None:
        return deffile_text.encode(), sd.inspect_metadata(files, labels)
    files.update({name: data.decode(errors="replace") for name, data in own.items()})
    try:
        stored = json.loads(own.get(f"{sd.SD}/labels.json", b"null"))
    except ValueError:
        stored = None
    if isinstance(stored, dict):
        labels = {str(k): str(v) for k, v in stored.items()}
    return own.get(f"{sd.SD}/Singularity", deffile_text.encode()), sd.inspect_metadata(files, labels)


def _open_checked(path: Path, ref: Reference) -> tuple[fmt.Header, list[fmt.Descriptor]]:
    if not ref.body:
        raise ReproError(f"{ref}: missing file name", "write it as sif:FILE")
    try:  # O_NONBLOCK: a FIFO given as the file is refused below instead of blocking the open
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ReproError(f"{ref}: {path} does not exist", "check the path") from None
    except OSError as exc:
        raise ReproError(f"{ref}: {path} cannot be read ({exc.strerror})", "check the path") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ReproError(f"{ref}: {path} is not a regular file", "give the path of a SIF file")
        return fmt.read(f, st.st_size, str(ref))


def describe(ref: Reference) -> dict:
    """The header and every data object, like `siftool list` and `siftool header`."""
    header, descriptors = _open_checked(Path(ref.body), ref)
    objects = []
    for d in descriptors:
        item = {"id": d.id, "type": fmt.DATA_NAMES.get(d.data_type, hex(d.data_type)), "name": d.name,
                "group": d.group, "link": d.link, "offset": d.offset, "size": d.size}
        if d.partition:
            fstype, parttype, arch = d.partition
            item["partition"] = {"fstype": fmt.FS_NAMES.get(fstype, str(fstype)),
                                 "parttype": fmt.PART_NAMES.get(parttype, str(parttype)), "arch": arch}
        objects.append(item)
    return {"header": {"launch": header.launch.decode(errors="replace"), "arch": header.arch,
                       "id": str(header.id), "created": header.created, "modified": header.modified,
                       "descriptors_free": header.free, "descriptors_total": header.total,
                       "descriptors_offset": header.descriptors_offset, "descriptors_size": header.descriptors_size,
                       "data_offset": header.data_offset, "data_size": header.data_size},
            "objects": objects}


def read(ref: Reference, options: Options) -> Image:
    path = Path(ref.body)
    header, descriptors = _open_checked(path, ref)
    part = fmt.primary_partition(descriptors, str(ref))
    oci_config: dict | None = None
    for d in descriptors:
        if d.data_type == fmt.DATA_GENERIC_JSON and d.name == "oci-config.json":
            if d.size > MAX_DOCUMENT_SIZE:
                raise ReproError(f"{ref}: oci-config.json is {d.size} bytes", f"documents over {MAX_DOCUMENT_SIZE} "
                                 "bytes are refused; the file is corrupt or hostile")
            with open(path, "rb") as f:
                f.seek(d.offset)
                loaded = parse_json(f.read(d.size), f"{ref}: oci-config.json")  # at most MAX_DOCUMENT_SIZE
            if isinstance(loaded, dict):
                oci_config = loaded
    wanted = {f"{sd.SD}/env/10-docker2singularity.sh", f"{sd.SD}/runscript", f"{sd.SD}/labels.json"}
    captured: dict[str, bytes] = {}
    epoch = source_date_epoch()
    sqfs2tar = shutil.which("sqfs2tar")
    if sqfs2tar is None:
        raise ReproError("sqfs2tar is not installed", "install squashfs-tools-ng (make setup does)")

    def produce(tar: TarWriter) -> None:
        with tempfile.NamedTemporaryFile(prefix="repro-sif-", suffix=".sqfs") as tmp, open(path, "rb") as src:
            copy_range(src.fileno(), tmp.fileno(), part.size, part.offset, 0, str(ref))
            tmp.flush()
            with open(tmp.name, "rb") as check:
                if check.read(4) != b"hsqs":
                    raise ReproError(f"{ref}: the primary partition is not a squashfs image", "the file is corrupt")
            proc = subprocess.Popen([sqfs2tar, "--no-skip", tmp.name], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                copy_tar_stream(proc.stdout, tar, str(ref), epoch, capture=(wanted, captured))  # type: ignore[arg-type]
            finally:
                proc.stdout.close()  # type: ignore[union-attr]
                stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                if proc.wait() != 0:
                    raise ReproError(f"{ref}: the squashfs partition cannot be read ({stderr.strip()[-200:]})",
                                     "the file is corrupt")

    def container_config() -> dict:
        if oci_config is not None:
            return oci_config
        out: dict = {}
        env_text = captured.get(f"{sd.SD}/env/10-docker2singularity.sh", b"").decode(errors="replace")
        if env := sd.parse_env_script(env_text):
            out["Env"] = env
        entrypoint, cmd = sd.parse_runscript(captured.get(f"{sd.SD}/runscript", b"").decode(errors="replace"))
        if entrypoint:
            out["Entrypoint"] = entrypoint
        if cmd:
            out["Cmd"] = cmd
        try:
            labels = json.loads(captured.get(f"{sd.SD}/labels.json", b"null"))
        except ValueError:
            labels = None
        if isinstance(labels, dict) and labels:
            out["Labels"] = {str(k): str(v) for k, v in labels.items()}
        return out

    arch = part.partition[2] if part.partition else header.arch  # type: ignore[index]
    platform = options.platform or Platform("linux", arch if arch != "unknown" else Platform.host().architecture)
    return image_from_layer_writer(produce, str(ref), platform, container_config)


TRANSPORT = Transport("sif", read=read, write=write, describe=describe)
