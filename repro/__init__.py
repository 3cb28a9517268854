"""repro: build container images reproducibly, convert, flatten, hash and archive them.

The Python API has the shape of the CLI:

    import repro
    image = repro.open("docker-archive:busybox.tar")
    print(image.digest, image.config.diff_ids)
    repro.write(image, "oci:out:1.0")
"""

from __future__ import annotations

from repro.errors import CheckFailed, ReproError
from repro.image import Image, Platform
from repro.refs import Options, open_image, write_image


def open(ref: str, platform: str | None = None) -> Image:
    """Read the image at `ref` (any `transport:reference`), choosing `platform` from an index."""
    return open_image(ref, Options(Platform.parse(platform) if platform else None))


def write(image: Image, ref: str) -> str:
    """Write `image` to `ref`; returns the digest that names what was written."""
    return write_image(image, ref).digest


def convert(src: str, dst: str, platform: str | None = None) -> str:
    """`write(open(src), dst)`: any readable reference to any writable one."""
    return write(open(src, platform), dst)


__version__ = "0.1.0"
__all__ = ["CheckFailed", "Image", "Platform", "ReproError", "convert", "open", "write"]
