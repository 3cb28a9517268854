"""`transport:reference` strings, as skopeo writes them, mapped to the module that handles each.

Every module in converters/ offers `read(ref, options) -> Image` and/or `write(image, ref, options)`;
conversion between any two formats is then `write(read(src), dst)`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType

from repro.errors import ReproError
from repro.image import Image, Platform

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
class Reference:
    transport: str
    body: str  # what follows "transport:"

    def __str__(self) -> str:
        return f"{self.transport}:{self.body}"

    def split_path(self) -> tuple[str, str]:
        """PATH[:REST] -> (PATH, REST); the path ends at the first colon, as in skopeo."""
        path, _, rest = self.body.partition(":")
        if not path:
            raise ReproError(f"{self}: missing path", f"write it as {self.transport}:PATH")
        return path, rest


@dataclass(frozen=True, slots=True)
class Options:
    platform: Platform | None = None
    extra: dict = field(default_factory=dict)


def parse(text: str) -> Reference:
    transport, sep, body = text.partition(":")
    if not sep or transport not in TRANSPORTS:
        known = ", ".join(f"{t}:" for t in TRANSPORTS)
        raise ReproError(
            f"{text!r}: unknown transport {transport + ':' if sep else '(none given)'}", f"use one of {known}"
        )
    return Reference(transport, body)


def transport_module(ref: Reference) -> ModuleType:
    return importlib.import_module(TRANSPORTS[ref.transport])


def open_image(text: str, options: Options | None = None) -> Image:
    """Read an image from any reference."""
    ref = parse(text)
    module = transport_module(ref)
    if not hasattr(module, "read"):
        raise ReproError(f"{ref}: {ref.transport}: cannot be read", "")
    return module.read(ref, options or Options())


def write_image(image: Image, text: str, options: Options | None = None, progress=None) -> str:
    """Write `image` to any reference; returns a short description of what was written."""
    ref = parse(text)
    module = transport_module(ref)
    if not hasattr(module, "write"):
        hint = "packages are made with repro archive" if ref.transport == "archive" else ""
        raise ReproError(f"{ref}: {ref.transport}: cannot be written", hint)
    return module.write(image, ref, options or Options(), progress)
