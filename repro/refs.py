"""`transport:reference` strings, as skopeo writes them, and the transports that handle them.

Each module in converters/ declares `TRANSPORT = Transport(...)`: how it reads and writes an image and
what it can hold. parse() reads a reference once and finds its transport through TRANSPORTS, by
importlib: the one place the core reaches up to the converters. Conversion between any two formats is
then `write(read(src), dst)`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from repro.errors import ReproError
from repro.image import Descriptor, Image, ImageIndex, Platform

TRANSPORTS: dict[str, str] = {
    "oci": "converters.oci_layout",
    "oci-archive": "converters.oci_archive",
    "docker-archive": "converters.docker_archive",
    "rootfs": "converters.rootfs",
    "tar": "converters.tarball",
    "squashfs": "converters.squashfs",
    "sif": "converters.sif",
    "docker": "converters.registry",
    "docker-daemon": "converters.docker_daemon",
    "archive": "converters.archive",
    "bundle": "converters.bundle",
}


@dataclass(frozen=True, slots=True)
class Options:
    """How to read or write: the platform an index is read for, and the settings some transports take."""

    platform: Platform | None = None
    all_platforms: bool = False  # oci:, docker://: read an index whole, every platform's image
    compression: str | None = None  # squashfs:, sif: the compressor (gzip when not given)
    creds: str | None = None  # docker://: USER:PASSWORD
    tls_verify: bool = True  # docker://: verify TLS of non-loopback registries
    chunk_size: int = 0  # docker://: upload blobs in chunks of this many bytes (0: one request)
    preserve_devices: bool = False  # rootfs:: create device nodes
    preserve_setuid: bool = False  # rootfs:: keep setuid/setgid bits


@dataclass(frozen=True, slots=True)
class BlobCounts:
    """A push's blobs: uploaded, already there, mounted from another repository of the registry."""

    pushed: int = 0
    skipped: int = 0
    mounted: int = 0


@dataclass(frozen=True, slots=True)
class Written:
    """What a transport's write did: the digest that names what was written and, for a push, its blobs."""

    digest: str
    blobs: BlobCounts | None = None


Naming = Literal["path", "repository", "file"]


@dataclass(frozen=True, slots=True)
class Transport:
    """One transport and what it can do; a capability it lacks is None or False."""

    name: str
    read: Callable[[Reference, Options], Image | ImageIndex] | None = None
    write: Callable[[Any, Reference, Options, Any], Written] | None = None
    write_hint: str = ""  # what to do instead when it cannot be written
    index: bool = False  # holds a multi-platform index whole (--all copies one)
    flat: bool = False  # one filesystem tree without image metadata (what flatten writes)
    package: bool = False  # a preservation package, not an image store
    naming: Naming = "file"  # the body: PATH[:TAG], [HOST/]REPOSITORY[:TAG][@DIGEST], or a file without a tag
    describe: Callable[[Reference], dict] | None = None  # the container format's own header and objects
    attach_referrer: Callable[[Reference, Options, Any, str], None] | None = None
    list_referrers: Callable[[Reference, Options, str], tuple[list[Descriptor], Any]] | None = None  # and a BlobSource


@dataclass(frozen=True, slots=True)
class Reference:
    transport: Transport
    body: str  # what follows "transport:"

    def __str__(self) -> str:
        return f"{self.transport.name}:{self.body}"

    def split_path(self) -> tuple[str, str]:
        """PATH[:REST] -> (PATH, REST); the path ends at the first colon, as in skopeo."""
        path, _, rest = self.body.partition(":")
        if not path:
            raise ReproError(f"{self}: missing path", f"write it as {self.transport.name}:PATH")
        return path, rest


def is_reference(text: str) -> bool:
    """Whether `text` starts with a known `transport:` (without loading the transport)."""
    name, sep, _ = text.partition(":")
    return bool(sep) and name in TRANSPORTS


def parse(text: str) -> Reference:
    """The reference and its transport's declaration, loaded from its converters module."""
    name, sep, body = text.partition(":")
    if not sep or name not in TRANSPORTS:
        known = ", ".join(f"{t}:" for t in TRANSPORTS)
        raise ReproError(f"{text!r}: unknown transport {name + ':' if sep else '(none given)'}", f"use one of {known}")
    return Reference(importlib.import_module(TRANSPORTS[name]).TRANSPORT, body)


def _reference(ref: str | Reference) -> Reference:
    return ref if isinstance(ref, Reference) else parse(ref)


def open_image(ref: str | Reference, options: Options | None = None) -> Image | ImageIndex:
    """Read an image (or with `all_platforms`, an index whole) from any reference."""
    ref = _reference(ref)
    if ref.transport.read is None:
        raise ReproError(f"{ref}: {ref.transport.name}: cannot be read", "")
    return ref.transport.read(ref, options or Options())


def write_image(image: Image | ImageIndex, ref: str | Reference, options: Options | None = None,
                progress=None) -> Written:
    """Write `image` to any reference; returns what was written (its digest, and a push's blob counts)."""
    ref = _reference(ref)
    if ref.transport.write is None:
        raise ReproError(f"{ref}: {ref.transport.name}: cannot be written", ref.transport.write_hint)
    return ref.transport.write(image, ref, options or Options(), progress)
