"""`oci:PATH[:TAG]`: an OCI image layout directory.

Reading selects a manifest by its `org.opencontainers.image.ref.name` tag (or the only one) and then
a platform. Writing into an existing layout adds the tag under the layout's lock; a new layout is
assembled under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import re
from pathlib import Path

from repro.atomic import atomic_dir
from repro.blobs import BlobImage, IndexImage, read_document, read_index, select_manifest
from repro.errors import ReproError
from repro.files import Files
from repro.image import MANIFEST_TYPES, REF_NAME, Descriptor, Image, Index, Manifest
from repro.refs import Options, Reference, Transport, Written
from repro.store import (
    INDEX_FILE,
    OCI_LAYOUT_FILE,
    Layout,
    LayoutBlobs,
    copy_into,
    layout_marker,
    parse_json,
)
from repro.transfer import manifest_descriptor

# image-spec annotations.md: the ref.name grammar, simplified to the characters it allows.
_TAG_RE = re.compile(r"^[A-Za-z0-9._:@/+-]+$")


def check_tag(tag: str, ref: Reference) -> str:
    if tag and not _TAG_RE.match(tag):
        raise ReproError(f"{ref}: {tag!r} is not a valid tag", "use letters, digits and . _ - : / @ +")
    return tag


def read_from_files(files: Files, tag: str, options: Options, name: str) -> Image | IndexImage:
    """Read one image from a layout's index.json (shared by oci: and oci-archive:)."""
    if not files.exists(OCI_LAYOUT_FILE):
        raise ReproError(f"{name}: not an OCI image layout (no oci-layout file)", "check the path")
    marker = parse_json(files.read(OCI_LAYOUT_FILE), f"{name}: oci-layout")
    if not isinstance(marker, dict) or "imageLayoutVersion" not in marker:
        raise ReproError(f"{name}: oci-layout has no imageLayoutVersion", "the layout is not valid")
    if not files.exists(INDEX_FILE):
        raise ReproError(f"{name}: index.json is missing", "the layout is incomplete")
    index = Index.parse(files.read(INDEX_FILE), f"{name}: index.json")
    if tag:
        chosen = [d for d in index.manifests if d.ref_name == tag]
        if not chosen:
            tags = sorted({d.ref_name for d in index.manifests if d.ref_name})
            raise ReproError(
                f"{name}: tag {tag!r} is not in index.json",
                f"available tags: {', '.join(tags)}" if tags else "the layout has no tagged images",
            )
    else:
        chosen = [d for d in index.manifests if not d.artifact_type]  # referrers are not the image
        if len(chosen) != 1:
            tags = sorted({d.ref_name for d in index.manifests if d.ref_name})
            raise ReproError(
                f"{name}: index.json holds {len(chosen)} images; name one with :TAG",
                f"available tags: {', '.join(tags)}" if tags else "the layout is empty",
            )
    source = LayoutBlobs(files, name)
    if options.all_platforms:
        whole = read_index(source, chosen[0])
        if whole is not None:
            return whole
    descriptor, raw = select_manifest(source, chosen[0], options.platform)
    return BlobImage(source, raw, descriptor.media_type)


def read(ref: Reference, options: Options) -> Image | IndexImage:
    path, tag = ref.split_path()
    layout = Layout.open_existing(path)
    return read_from_files(layout, check_tag(tag, ref), options, str(ref))


def _store(layout: Layout, image: Image | IndexImage, progress) -> Descriptor:
    if isinstance(image, IndexImage):
        for child in image.children:
            copy_into(layout, child, progress)
        layout.put_bytes(image.raw, image.media_type)
        return Descriptor(image.media_type, image.digest, len(image.raw))
    copy_into(layout, image, progress)
    return manifest_descriptor(image)


def write(image: Image | IndexImage, ref: Reference, options: Options, progress=None) -> Written:
    path_text, tag = ref.split_path()
    check_tag(tag, ref)
    path = Path(path_text)
    annotations = {REF_NAME: tag} if tag else {}
    if path.exists():
        layout = Layout.open_existing(path)
        with layout.transaction():
            descriptor = _store(layout, image, progress)
        layout.add_manifest(Descriptor(descriptor.media_type, descriptor.digest, descriptor.size, annotations), tag)
    else:
        with atomic_dir(path) as tmp:
            layout = Layout.initialize(tmp)
            descriptor = _store(layout, image, progress)
            layout.add_manifest(Descriptor(descriptor.media_type, descriptor.digest, descriptor.size, annotations),
                                tag)
            (tmp / OCI_LAYOUT_FILE).write_bytes(layout_marker())
    return Written(descriptor.digest)


def attach_referrer(ref: Reference, options: Options, artifact, subject_digest: str) -> None:
    """Store an artifact in the layout, listed untagged in index.json (image-spec 1.1's layout referrers)."""
    layout = Layout.open_existing(ref.split_path()[0])
    if not layout.has_blob(subject_digest):
        raise ReproError(f"{ref}: the layout does not hold {subject_digest}", "copy the image into it first")
    with layout.transaction():
        for descriptor, data in artifact.blobs:
            layout.put_bytes(data, descriptor.media_type)
        layout.put_bytes(artifact.raw, artifact.descriptor.media_type)
    layout.add_manifest(artifact.descriptor, "")


def referrers(ref: Reference, options: Options, subject_digest: str) -> tuple[list[Descriptor], LayoutBlobs]:
    """The manifests in index.json whose subject is `subject_digest`."""
    layout = Layout.open_existing(ref.split_path()[0])
    source = LayoutBlobs(layout, str(ref))
    found = []
    for descriptor in Index.parse(layout.read(INDEX_FILE), f"{ref}: index.json").manifests:
        if descriptor.media_type not in MANIFEST_TYPES or not layout.has_blob(descriptor.digest):
            continue
        manifest = Manifest.parse(read_document(source, descriptor), f"{ref}: {descriptor.digest}")
        if manifest.subject is not None and manifest.subject.digest == subject_digest:
            artifact_type = manifest.artifact_type or manifest.config.media_type
            found.append(Descriptor(descriptor.media_type, descriptor.digest, descriptor.size,
                                    dict(manifest.annotations), None, (), artifact_type))
    return found, source


TRANSPORT = Transport("oci", read=read, write=write, index=True, naming="path", attach_referrer=attach_referrer,
                      list_referrers=referrers)
