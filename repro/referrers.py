"""OCI 1.1 referrers: documents about an image (an SBOM, a provenance statement) that point at it.

A referrer is an artifact manifest: its `subject` is the image's manifest, its config is the empty
descriptor, its one layer is the document, its `artifactType` says what the document is. Where it is
kept is the transport's business (`attach_referrer` and `referrers` in the transport's module): an `oci:`
layout lists it untagged in index.json; a registry indexes it by subject itself (the referrers API) or,
where it cannot, under the fallback tag `sha256-<hex>` of the subject (distribution-spec's tag schema).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Protocol

from repro.digest import sha256_bytes
from repro.errors import DigestMismatch, ReproError
from repro.image import OCI_MANIFEST, Descriptor, Image, Manifest, canonical_json
from repro.refs import Options, Reference, parse
from repro.transfer import manifest_descriptor

EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"
CREATED = "org.opencontainers.image.created"
MAX_DOCUMENT = 256 << 20  # an attached document is held in memory; SBOMs of large images stay far below


class BlobSource(Protocol):
    def open_blob(self, descriptor: Descriptor) -> BinaryIO: ...


@dataclass(frozen=True)
class Artifact:
    """An artifact manifest with the blobs it names, ready to be stored anywhere."""

    descriptor: Descriptor  # of the manifest, carrying artifactType and annotations (as listings show them)
    raw: bytes
    blobs: tuple[tuple[Descriptor, bytes], ...]

    @property
    def manifest(self) -> Manifest:
        return Manifest.parse(self.raw, f"referrer {self.descriptor.digest}")

    @property
    def document(self) -> bytes:
        return self.blobs[-1][1]


def make_artifact(subject: Descriptor, document: bytes, media_type: str, artifact_type: str, created: str,
                  annotations: dict[str, str] | None = None) -> Artifact:
    """The artifact manifest for `document` about `subject` (deterministic: same inputs, same digest)."""
    config = Descriptor(EMPTY_MEDIA_TYPE, sha256_bytes(EMPTY_JSON), len(EMPTY_JSON))
    layer = Descriptor(media_type, sha256_bytes(document), len(document))
    notes = {CREATED: created, **(annotations or {})}
    subject = Descriptor(subject.media_type, subject.digest, subject.size)
    raw = canonical_json(Manifest(OCI_MANIFEST, config, (layer,), notes, subject, artifact_type).to_json())
    descriptor = Descriptor(OCI_MANIFEST, sha256_bytes(raw), len(raw), notes, None, (), artifact_type)
    return Artifact(descriptor, raw, ((config, EMPTY_JSON), (layer, document)))


def _read_verified(source: BlobSource, descriptor: Descriptor, where: str) -> bytes:
    if descriptor.size > MAX_DOCUMENT:
        raise ReproError(f"{where}: blob {descriptor.digest} is {descriptor.size} bytes",
                         f"referrer documents are read whole, up to {MAX_DOCUMENT} bytes")
    with source.open_blob(descriptor) as stream:
        data = stream.read(descriptor.size + 1)
    if len(data) != descriptor.size or sha256_bytes(data) != descriptor.digest:
        raise DigestMismatch(f"{where}: blob {descriptor.digest} does not match its digest or size",
                             "the store or registry is corrupt; fetch it again")
    return data


def fetch(source: BlobSource, descriptor: Descriptor, where: str) -> Artifact:
    """Read a referrer and its blobs, each checked against its digest."""
    raw = _read_verified(source, descriptor, where)
    manifest = Manifest.parse(raw, f"{where}: referrer {descriptor.digest}")
    blobs = tuple((d, _read_verified(source, d, where)) for d in (manifest.config, *manifest.layers))
    listed = Descriptor(OCI_MANIFEST, descriptor.digest, descriptor.size, dict(manifest.annotations), None, (),
                        manifest.artifact_type or manifest.config.media_type)
    return Artifact(listed, raw, blobs)


def _carrying(ref_text: str, action: str) -> Reference:
    """The reference, whose transport must be able to hold referrers."""
    ref = parse(ref_text)
    if ref.transport.attach_referrer is None or ref.transport.list_referrers is None:
        raise ReproError(f"{ref_text}: {ref.transport.name}: images cannot carry referrers",
                         f"{action} in an oci: layout or a docker:// registry")
    return ref


def attach(ref_text: str, image: Image, document: bytes, media_type: str, artifact_type: str, created: str,
           options: Options | None = None, annotations: dict[str, str] | None = None) -> Artifact:
    """Store `document` as a referrer of `image`, which was read from `ref_text`."""
    ref = _carrying(ref_text, "attach documents")
    artifact = make_artifact(manifest_descriptor(image), document, media_type, artifact_type, created, annotations)
    ref.transport.attach_referrer(ref, options or Options(), artifact, image.digest)
    return artifact


def listing(ref_text: str, image: Image, options: Options | None = None,
            artifact_type: str = "") -> tuple[list[Descriptor], BlobSource]:
    """The referrers of `image` (descriptors as the store lists them) and where to read them from."""
    ref = _carrying(ref_text, "list referrers")
    found, source = ref.transport.list_referrers(ref, options or Options(), image.digest)
    chosen = [d for d in found if not artifact_type or d.artifact_type == artifact_type]
    return sorted(chosen, key=lambda d: (d.artifact_type, d.annotations.get(CREATED, ""), d.digest)), source


def copy(src_text: str, image: Image, dst_text: str, options: Options | None = None) -> list[Artifact]:
    """Copy every referrer of `image` from `src_text` to `dst_text` (an image already written there)."""
    descriptors, source = listing(src_text, image, options)
    dst = _carrying(dst_text, "copy referrers")
    copied = []
    for descriptor in descriptors:
        artifact = fetch(source, descriptor, src_text)
        dst.transport.attach_referrer(dst, options or Options(), artifact, image.digest)
        copied.append(artifact)
    return copied
