"""The SIF container format (sylabs/sif, version 01), read and written byte for byte.

Little-endian and packed: a 128-byte global header, a table of 585-byte descriptors (48 by default,
at offset 4096), then the data objects (partitions aligned to 4096 bytes). Written from the format's
description in repro's design notes; cross-checked against `siftool`.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from repro.digest import MAX_DOCUMENT_SIZE
from repro.errors import ReproError

LAUNCH_SCRIPT = b"#!/usr/bin/env run-singularity\n"
MAGIC = b"SIF_MAGIC\0"
VERSION = b"01\0"
HEADER = struct.Struct("<32s10s3s3s16s8q")
DESCRIPTOR = struct.Struct("<iBIII7q128s384s")
PARTITION = struct.Struct("<ii3s")
DESCRIPTORS_OFFSET = 4096
DEFAULT_CAPACITY = 48
GROUP_MASK = 0xF0000000
DEFAULT_GROUP = 1
PARTITION_ALIGNMENT = 4096

DATA_DEFFILE = 0x4001
DATA_ENVVAR = 0x4002
DATA_LABELS = 0x4003
DATA_PARTITION = 0x4004
DATA_SIGNATURE = 0x4005
DATA_GENERIC_JSON = 0x4006
DATA_GENERIC = 0x4007
DATA_NAMES = {
    DATA_DEFFILE: "Def.FILE", DATA_ENVVAR: "Env.Vars", DATA_LABELS: "JSON.Labels", DATA_PARTITION: "FS",
    DATA_SIGNATURE: "Signature", DATA_GENERIC_JSON: "JSON.Generic", DATA_GENERIC: "Generic/Raw",
    0x4008: "Cryptographic Message", 0x4009: "SBOM", 0x400A: "OCI.RootIndex", 0x400B: "OCI.Blob",
}
FS_SQUASHFS = 1
FS_NAMES = {1: "Squashfs", 2: "Ext3", 3: "Archive", 4: "Raw", 5: "Encrypted squashfs"}
PART_SYSTEM, PART_PRIMARY, PART_DATA, PART_OVERLAY = 1, 2, 3, 4
PART_NAMES = {1: "System", 2: "*System", 3: "Data", 4: "Overlay"}
ARCH_CODES = {
    "386": b"01", "amd64": b"02", "arm": b"03", "arm64": b"04", "ppc64": b"05", "ppc64le": b"06",
    "mips": b"07", "mipsle": b"08", "mips64": b"09", "mips64le": b"10", "s390x": b"11", "riscv64": b"12",
    "loong64": b"13",
}
ARCH_NAMES = {code: name for name, code in ARCH_CODES.items()}


def arch_code(arch: str) -> bytes:
    return ARCH_CODES.get(arch, b"00") + b"\0"


@dataclass(frozen=True, slots=True)
class Header:
    launch: bytes
    arch: str
    id: uuid.UUID
    created: int
    modified: int
    free: int
    total: int
    descriptors_offset: int
    descriptors_size: int
    data_offset: int
    data_size: int


@dataclass(frozen=True, slots=True)
class Descriptor:
    data_type: int
    id: int
    group: int  # without the group mask; 0 = no group
    link: int
    offset: int
    size: int
    size_with_padding: int
    created: int
    modified: int
    name: str
    extra: bytes

    @property
    def partition(self) -> tuple[int, int, str] | None:
        """(fstype, parttype, arch) for a partition object."""
        if self.data_type != DATA_PARTITION:
            return None
        fstype, parttype, arch = PARTITION.unpack_from(self.extra)
        return fstype, parttype, ARCH_NAMES.get(arch[:2], "unknown")


@dataclass
class NewObject:
    """A data object to write: its content comes from `write(out) -> size` at the current offset."""

    data_type: int
    name: str
    write: Callable[[BinaryIO], int]
    extra: bytes = b""
    group: int = DEFAULT_GROUP
    link: int = 0
    alignment: int = 0


def partition_extra(fstype: int, parttype: int, arch: str) -> bytes:
    return PARTITION.pack(fstype, parttype, arch_code(arch))


def _aligned(offset: int, alignment: int) -> int:
    if alignment <= 0 or offset % alignment == 0:
        return offset
    return offset + alignment - offset % alignment


def write(out: BinaryIO, objects: list[NewObject], image_id: uuid.UUID, timestamp: int,
          capacity: int = DEFAULT_CAPACITY) -> None:
    """Write a whole SIF into the seekable, empty file `out`."""
    if len(objects) > capacity:
        raise ReproError(f"SIF: {len(objects)} objects do not fit {capacity} descriptors", "")
    descriptors_size = capacity * DESCRIPTOR.size
    data_offset = DESCRIPTORS_OFFSET + descriptors_size
    end = data_offset
    arch = b"00\0"
    table = bytearray()
    for number, obj in enumerate(objects, start=1):
        offset = _aligned(end, obj.alignment)
        out.seek(offset)
        size = obj.write(out)
        name = obj.name.encode()
        if len(name) > 128:
            raise ReproError(f"SIF: object name {obj.name!r} is longer than 128 bytes", "")
        table += DESCRIPTOR.pack(obj.data_type, 1, number, (obj.group | GROUP_MASK) if obj.group else 0, obj.link,
                                 offset, size, offset - end + size, timestamp, timestamp, 0, 0, name,
                                 obj.extra)
        if obj.data_type == DATA_PARTITION and PARTITION.unpack_from(obj.extra.ljust(PARTITION.size, b"\0"))[1] == (
                PART_PRIMARY):
            arch = obj.extra[8:11]
        end = offset + size
    table += bytes(descriptors_size - len(table))
    out.seek(DESCRIPTORS_OFFSET)
    out.write(table)
    out.seek(0)
    out.write(HEADER.pack(LAUNCH_SCRIPT, MAGIC, VERSION, arch, image_id.bytes, timestamp, timestamp,
                          capacity - len(objects), capacity, DESCRIPTORS_OFFSET, descriptors_size, data_offset,
                          end - data_offset))
    out.write(bytes(DESCRIPTORS_OFFSET - HEADER.size))
    out.seek(0, 2)
    if out.tell() < end:
        out.truncate(end)


def read(f: BinaryIO, file_size: int, what: str) -> tuple[Header, list[Descriptor]]:
    """Parse and check the header and the used descriptors of a SIF file."""
    raw = f.read(HEADER.size)
    if len(raw) < HEADER.size:
        raise ReproError(f"{what}: too short to be a SIF file ({file_size} bytes)", "check the file")
    launch, magic, version, arch, ident, created, modified, free, total, d_off, d_size, data_off, data_size = (
        HEADER.unpack(raw))
    if magic != MAGIC:
        raise ReproError(f"{what}: not a SIF file (no SIF_MAGIC)", "check the file")
    if version != VERSION:
        shown = version.rstrip(bytes(1)).decode(errors="replace")
        raise ReproError(f"{what}: unsupported SIF version {shown!r}", "repro reads SIF version 01")
    if total < 0 or d_size != total * DESCRIPTOR.size or d_off < HEADER.size:
        raise ReproError(f"{what}: descriptor table is malformed ({total} descriptors, {d_size} bytes)", "")
    if d_size > MAX_DOCUMENT_SIZE:  # read whole: Apptainer writes 48 descriptors, this allows some 7000
        raise ReproError(f"{what}: descriptor table is {d_size} bytes ({total} descriptors)",
                         f"tables over {MAX_DOCUMENT_SIZE} bytes are refused; the file is corrupt or hostile")
    if d_off + d_size > file_size:
        raise ReproError(f"{what}: descriptor table runs past the end of the file (truncated?)", "")
    header = Header(launch.rstrip(b"\0"), ARCH_NAMES.get(arch[:2], "unknown"), uuid.UUID(bytes=ident), created,
                    modified, free, total, d_off, d_size, data_off, data_size)
    f.seek(d_off)
    table = f.read(d_size)  # at most MAX_DOCUMENT_SIZE, checked above
    if len(table) != d_size:
        raise ReproError(f"{what}: descriptor table ends early (truncated?)", "the file is corrupt")
    descriptors = []
    for i in range(total):
        (data_type, used, ident, group, link, offset, size, padded, d_created, d_modified, _uid, _gid, name,
         extra) = DESCRIPTOR.unpack_from(table, i * DESCRIPTOR.size)
        if not used:
            continue
        if offset < 0 or size < 0 or offset + size > file_size:
            raise ReproError(f"{what}: object {ident} ({offset}+{size}) points past the end of the file "
                             f"({file_size} bytes)", "the file is truncated or corrupt")
        descriptors.append(Descriptor(data_type, ident, group & ~GROUP_MASK if group else 0, link, offset, size,
                                      padded, d_created, d_modified, name.rstrip(b"\0").decode(errors="replace"),
                                      extra))
    return header, descriptors


def primary_partition(descriptors: list[Descriptor], what: str) -> Descriptor:
    candidates = [d for d in descriptors if d.partition and d.partition[1] == PART_PRIMARY]
    if not candidates:
        raise ReproError(f"{what}: has no primary system partition", "it holds no container root filesystem")
    part = candidates[0]
    if part.partition[0] != FS_SQUASHFS:  # type: ignore[index]
        fs = FS_NAMES.get(part.partition[0], str(part.partition[0]))  # type: ignore[index]
        raise ReproError(f"{what}: the primary partition is {fs}, not squashfs", "repro reads squashfs partitions")
    return part
