"""The times repro writes: SOURCE_DATE_EPOCH, never the clock, so the same input gives the same bytes.

Layers, configs and archives take their times from SOURCE_DATE_EPOCH; documents about an image (SBOMs,
attestations, packages) from it too, else from the image's own creation time.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from repro.errors import ReproError

ENV = "SOURCE_DATE_EPOCH"


def source_date_epoch(default: int = 0) -> int:
    """SOURCE_DATE_EPOCH from the environment, else `default`."""
    value = os.environ.get(ENV, "")
    if value and not value.isdigit():
        raise ReproError(f"{ENV}={value!r} is not a number of seconds", "unset it or give an integer")
    return int(value) if value else default


def rfc3339(epoch: int) -> str:
    """`epoch` as the UTC time stamp configs and documents carry (2023-11-14T22:13:20Z)."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def document_time(image) -> str:
    """The time to stamp on a document about `image` (an SBOM, an attestation, a package): SOURCE_DATE_EPOCH
    when set, else the image's own creation time, so the same image gives the same document bytes."""
    if os.environ.get(ENV):
        return rfc3339(source_date_epoch())
    created = image.config.created
    return created[:19] + "Z" if created and len(created) >= 19 else rfc3339(0)
