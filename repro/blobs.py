"""Images backed by a content-addressed blob source (an OCI layout, an archive, a registry).

A transport only has to say how to open a blob by its descriptor; BlobImage turns that into the
Image interface, and select_manifest() walks an index down to one platform's manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import BinaryIO, Protocol

from repro import layers as _layers
from repro.digest import MAX_DOCUMENT_SIZE, VerifyingReader, read_bounded, sha256_bytes
from repro.errors import ReproError
from repro.image import (
    INDEX_TYPES,
    LAYER_COMPRESSION,
    MANIFEST_TYPES,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
)
from repro.prefetch import PrefetchReader

MAX_DOCUMENT = MAX_DOCUMENT_SIZE  # manifests, indexes and configs are small; refuse to hold a huge one


class BlobSource(Protocol):
    name: str

    def open_blob(self, descriptor: Descriptor) -> BinaryIO:
        """The blob's bytes, unverified; BlobImage verifies them."""


def open_verified(source: BlobSource, descriptor: Descriptor) -> VerifyingReader:
    return VerifyingReader(
        source.open_blob(descriptor),
        descriptor.digest,
        descriptor.size,
        f"{source.name}: blob {descriptor.digest}",
    )


def read_document(source: BlobSource, descriptor: Descriptor) -> bytes:
    """A small JSON blob (manifest, index, config), verified."""
    if descriptor.size > MAX_DOCUMENT:
        raise ReproError(
            f"{source.name}: {descriptor.media_type} {descriptor.digest} is {descriptor.size} bytes",
            f"documents over {MAX_DOCUMENT} bytes are refused",
        )
    with open_verified(source, descriptor) as reader:
        data = read_bounded(reader, descriptor.size, f"{source.name}: blob {descriptor.digest}")
        reader.finish()
    return data


class BlobLayer:
    """A layer whose compressed blob comes from a BlobSource."""

    def __init__(self, source: BlobSource, descriptor: Descriptor, diff_id: str) -> None:
        self.source = source
        self.descriptor = descriptor
        self.diff_id = diff_id

    @property
    def compression(self) -> str:
        try:
            return LAYER_COMPRESSION[self.descriptor.media_type]
        except KeyError:
            raise ReproError(
                f"{self.source.name}: layer {self.descriptor.digest} has unsupported media type "
                f"{self.descriptor.media_type!r}",
                "repro reads tar, tar+gzip and tar+zstd layers",
            ) from None

    def open(self, check_diff_id: bool = False) -> BinaryIO:
        """The blob as stored, checked against its digest and size as it streams: all a copy needs, since
        the manifest's digest pins every byte (as skopeo and go-containerregistry copy). With
        `check_diff_id` it is also decompressed on the way and must match the config's diff_id, which
        costs two to three times the CPU; reading the layer's contents always checks it."""
        compression = self.compression  # refuses media types repro cannot read
        if not check_diff_id or (compression == "" and self.descriptor.digest == self.diff_id):
            return open_verified(self.source, self.descriptor)
        what = f"{self.source.name}: layer {self.descriptor.digest}"
        return VerifyingReader(self.source.open_blob(self.descriptor), self.descriptor.digest, self.descriptor.size,
                               what, _layers.LayerChecker(self.compression, self.diff_id, what))

    def open_uncompressed(self, read_ahead: bool = False) -> BinaryIO:
        """The tar stream, checked against the diff_id (finish() reads to the end and checks). With
        `read_ahead`, reading the blob, checking its digest, decompressing and checking the diff_id run
        in a second thread: the caller's thread keeps its core for the entries (hashing every file of
        an SBOM, parsing a flatten's), which took 7% off an SBOM's wall time on two cores."""
        what = f"{self.source.name}: layer {self.descriptor.digest}"
        if self.compression == "" and self.descriptor.digest == self.diff_id:
            if not read_ahead:
                return open_verified(self.source, self.descriptor)
            stream, expected_size = self.source.open_blob(self.descriptor), self.descriptor.size
            what = f"{self.source.name}: blob {self.descriptor.digest}"  # as open_verified names it
        else:
            stream = _layers.decompressed(open_verified(self.source, self.descriptor), self.compression, what)
            what, expected_size = f"{what} (uncompressed, diff_id {self.diff_id})", None
        checked = VerifyingReader(stream, self.diff_id, expected_size, what)
        return PrefetchReader(checked) if read_ahead else checked


class BlobImage:
    """An Image read from a manifest in a BlobSource. Nothing but the manifest is read up front."""

    def __init__(self, source: BlobSource, raw_manifest: bytes, media_type: str = "") -> None:
        self.source = source
        self.name = source.name
        self._raw_manifest = raw_manifest
        self._media_type = media_type

    @property
    def raw_manifest(self) -> bytes:
        return self._raw_manifest

    @cached_property
    def manifest(self) -> Manifest:
        return Manifest.parse(self.raw_manifest, f"{self.name}: manifest", self._media_type)

    @cached_property
    def digest(self) -> str:
        return sha256_bytes(self.raw_manifest)

    @cached_property
    def raw_config(self) -> bytes:
        return read_document(self.source, self.manifest.config)

    @cached_property
    def config(self) -> ImageConfig:
        return ImageConfig.parse(self.raw_config, f"{self.name}: config {self.manifest.config.digest}")

    @cached_property
    def layers(self) -> list[BlobLayer]:
        descriptors = self.manifest.layers
        diff_ids = self.config.diff_ids
        if len(diff_ids) != len(descriptors):
            raise ReproError(
                f"{self.name}: manifest has {len(descriptors)} layers, "
                f"the config lists {len(diff_ids)} diff_ids",
                "the image is inconsistent; rebuild it",
            )
        for d in descriptors:
            if d.media_type not in LAYER_COMPRESSION:
                raise ReproError(
                    f"{self.name}: layer {d.digest} has unsupported media type {d.media_type!r}",
                    "repro reads tar, tar+gzip and tar+zstd layers",
                )
        return [BlobLayer(self.source, d, diff_id) for d, diff_id in zip(descriptors, diff_ids, strict=True)]


def select_manifest(
    source: BlobSource, descriptor: Descriptor, platform: Platform | None, depth: int = 0
) -> tuple[Descriptor, bytes]:
    """Follow `descriptor` (a manifest or an index) to one manifest; returns it and its bytes."""
    if depth > 4:
        raise ReproError(f"{source.name}: indexes nested too deeply", "the image is not valid")
    raw = read_document(source, descriptor)
    if descriptor.media_type in MANIFEST_TYPES:
        return descriptor, raw
    if descriptor.media_type not in INDEX_TYPES:
        raise ReproError(
            f"{source.name}: {descriptor.digest} has unsupported media type {descriptor.media_type!r}",
            "repro reads OCI and Docker v2 images and indexes",
        )
    index = Index.parse(raw, f"{source.name}: index {descriptor.digest}")
    wanted = platform or Platform.host()
    candidates = [d for d in index.manifests if d.platform is not None and d.platform.matches(wanted)]
    if not candidates:
        available = ", ".join(str(d.platform) for d in index.manifests if d.platform) or "none"
        raise ReproError(
            f"{source.name}: no manifest for platform {wanted} (available: {available})",
            "choose one with --platform os/arch",
        )
    exact = [d for d in candidates if d.platform and d.platform.variant == wanted.variant]
    return select_manifest(source, (exact or candidates)[0], platform, depth + 1)


@dataclass
class IndexImage:
    """A multi-platform image copied whole (`--all`): the index's exact bytes and every child image."""

    name: str
    raw: bytes
    media_type: str
    children: list[BlobImage]

    @property
    def digest(self) -> str:
        return sha256_bytes(self.raw)


def read_index(source: BlobSource, descriptor: Descriptor) -> IndexImage | None:
    """The index `descriptor` names with all its child images, or None when it names one image."""
    if descriptor.media_type not in INDEX_TYPES:
        return None
    raw = read_document(source, descriptor)
    index = Index.parse(raw, f"{source.name}: index {descriptor.digest}")
    children = []
    for child in index.manifests:
        if child.media_type not in MANIFEST_TYPES:
            raise ReproError(f"{source.name}: nested index {child.digest}", "copy it with --platform instead")
        children.append(BlobImage(source, read_document(source, child), child.media_type))
    return IndexImage(source.name, raw, descriptor.media_type, children)
