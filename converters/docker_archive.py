"""`docker-archive:PATH[:NAME:TAG|:@N]`: the tarball of `docker save` / `docker load`.

Written in the classic layout that docker load and udocker read: manifest.json, repositories,
<config hex>.json and, per layer, <v1 id>/{VERSION,json,layer.tar} with the layer uncompressed.
Read from what docker save (before and since Docker 25), skopeo and buildah write: the manifest
is synthesized as an OCI manifest, so the config digest and every diff_id are kept.
"""

from __future__ import annotations

import hashlib
import tarfile
from functools import cached_property
from typing import BinaryIO

from repro.atomic import atomic_file
from repro.blobs import BlobImage
from repro.clock import source_date_epoch
from repro.digest import CHUNK, MAX_DOCUMENT_SIZE, sha256_bytes, sha256_stream
from repro.errors import ReproError
from repro.files import TarFiles
from repro.image import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    Descriptor,
    Image,
    ImageConfig,
    Manifest,
    canonical_json,
    parse_json,
)
from repro.layers import TarWriter, sniff_compression
from repro.refs import Options, Reference, Transport, Written
from repro.transfer import blob_progress, with_progress

_MEDIA_TYPE = {"": OCI_LAYER, "gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}


def familiar(name: str) -> str:
    """`docker.io/library/busybox` -> `busybox:latest`: the form docker prints and compares."""
    for prefix in ("docker.io/", "index.docker.io/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    if name.startswith("library/") and name.count("/") == 1:
        name = name[len("library/") :]
    last = name.rsplit("/", 1)[-1]
    if ":" not in last and "@" not in last:
        name += ":latest"
    return name


class ArchiveBlobs:
    """BlobSource mapping digests to members of a docker-archive."""

    def __init__(self, files: TarFiles, name: str) -> None:
        self.files = files
        self.name = name
        self.members: dict[str, str] = {}

    def open_blob(self, descriptor: Descriptor) -> BinaryIO:
        member = self.members.get(descriptor.digest)
        if member is None:
            raise ReproError(
                f"{self.name}: no member holds blob {descriptor.digest}", "the archive is incomplete"
            )
        return self.files.open(member)


class DockerArchiveImage(BlobImage):
    """An image from one manifest.json entry; its OCI manifest is built from the members."""

    def __init__(self, files: TarFiles, entry: dict, name: str) -> None:
        self.files = files
        self.entry = entry
        self.blobs = ArchiveBlobs(files, name)
        self.name = name
        self.source = self.blobs
        self._media_type = ""

    def _member(self, path: str, what: str) -> str:
        if not isinstance(path, str) or not self.files.exists(path):
            raise ReproError(
                f"{self.name}: manifest.json names {what} {path!r}, which is not in the archive",
                "the archive is incomplete",
            )
        return path

    @cached_property
    def raw_config(self) -> bytes:
        member = self._member(self.entry.get("Config"), "config")
        data = _document(self.files, member)
        digest = sha256_bytes(data)
        stem = member.rsplit("/", 1)[-1].removesuffix(".json")
        if len(stem) == 64 and all(c in "0123456789abcdef" for c in stem) and stem != digest[7:]:
            raise ReproError(f"{self.name}: config {member} has digest {digest}", "the archive is corrupt")
        self.blobs.members[digest] = member
        return data

    @cached_property
    def config(self) -> ImageConfig:
        return ImageConfig.parse(self.raw_config, f"{self.name}: config")

    @cached_property
    def raw_manifest(self) -> bytes:
        raw_config = self.raw_config
        config = Descriptor(OCI_CONFIG, sha256_bytes(raw_config), len(raw_config))
        paths = self.entry.get("Layers")
        if not isinstance(paths, list):
            raise ReproError(
                f"{self.name}: manifest.json entry has no Layers list", "the archive is not valid"
            )
        diff_ids = self.config.diff_ids
        if len(paths) != len(diff_ids):
            raise ReproError(
                f"{self.name}: manifest.json lists {len(paths)} layers, the config {len(diff_ids)} diff_ids",
                "the archive is inconsistent",
            )
        layers = [
            self._layer_descriptor(self._member(p, "layer"), d) for p, d in zip(paths, diff_ids, strict=True)
        ]
        manifest = Manifest("application/vnd.oci.image.manifest.v1+json", config, tuple(layers))
        return canonical_json(manifest.to_json())

    def _layer_descriptor(self, member: str, diff_id: str) -> Descriptor:
        size = self.files.size(member)
        with self.files.open(member) as f:
            compression = sniff_compression(f.read(4))
        # An uncompressed layer's digest is its diff_id, verified when the layer is read.
        digest = _hash_member(self.files, member) if compression else diff_id
        self.blobs.members[digest] = member
        return Descriptor(_MEDIA_TYPE[compression], digest, size)


def _document(files: TarFiles, member: str) -> bytes:
    """A JSON member, capped, and a link there is refused. Layers may stay links (docker save links a layer
    that appears twice to its first copy): TarFiles resolves them only to regular members of the archive."""
    files.refuse_link(member)
    return files.read(member, MAX_DOCUMENT_SIZE)


def _hash_member(files: TarFiles, member: str) -> str:
    with files.open(member) as f:
        return "sha256:" + sha256_stream(f)[0]


def read(ref: Reference, options: Options) -> Image:
    path, selector = ref.split_path()
    files = TarFiles(path, str(ref))
    if not files.exists("manifest.json"):
        raise ReproError(f"{ref}: {path} has no manifest.json", "it is not a docker save archive")
    entries = parse_json(_document(files, "manifest.json"), f"{ref}: manifest.json")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise ReproError(
            f"{ref}: manifest.json must be a non-empty list of images", "the archive is not valid"
        )
    return DockerArchiveImage(files, _select(entries, selector, ref), str(ref))


def _select(entries: list[dict], selector: str, ref: Reference) -> dict:
    if selector.startswith("@"):
        number = selector[1:]
        if not number.isdigit() or int(number) >= len(entries):
            raise ReproError(
                f"{ref}: no image {selector} in the archive", f"it holds @0 to @{len(entries) - 1}"
            )
        return entries[int(number)]
    if selector:
        wanted = familiar(selector)
        for entry in entries:
            if wanted in {familiar(t) for t in entry.get("RepoTags") or ()}:
                return entry
        tags = sorted({familiar(t) for e in entries for t in e.get("RepoTags") or ()})
        raise ReproError(
            f"{ref}: no image tagged {selector!r} in the archive",
            f"available: {', '.join(tags) or 'no tags; use @N'}",
        )
    if len(entries) > 1:
        raise ReproError(
            f"{ref}: the archive holds {len(entries)} images", "choose one with :NAME:TAG or :@N"
        )
    return entries[0]


def _v1_ids(diff_ids: tuple[str, ...]) -> list[str]:
    """Deterministic legacy layer ids: each names its whole chain of diff_ids, like a chain id."""
    ids, parent = [], ""
    for diff_id in diff_ids:
        parent = hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()
        ids.append(parent)
    return ids


def _v1_json(layer_id: str, parent: str, config: dict, top: bool) -> bytes:
    obj: dict = {"id": layer_id, "created": config.get("created") or "1970-01-01T00:00:00Z"}
    if parent:
        obj["parent"] = parent
    if top:
        for key in ("architecture", "os", "variant", "config", "author"):
            if key in config:
                obj[key] = config[key]
    obj["container_config"] = {"Cmd": None, "Env": None, "Image": "", "Labels": None}
    return canonical_json(obj)


def write(image: Image, ref: Reference, options: Options, progress=None) -> Written:
    path, name = ref.split_path()
    repo_tags = [familiar(name)] if name else []
    if name and (name.startswith("@") or "@" in name):
        raise ReproError(f"{ref}: {name!r} cannot name an image in a docker archive", "give NAME:TAG")
    raw_config = image.raw_config
    config_obj = parse_json(raw_config, f"{image.name}: config")
    config_name = image.manifest.config.digest.split(":", 1)[1] + ".json"
    layers = image.layers
    ids = _v1_ids(tuple(layer.diff_id for layer in layers))
    mtime = source_date_epoch()

    manifest = [
        {"Config": config_name, "Layers": [f"{i}/layer.tar" for i in ids], "RepoTags": repo_tags or None}
    ]
    files: dict[str, object] = {config_name: raw_config, "manifest.json": canonical_json(manifest)}
    if repo_tags and ids:
        repo, _, tag = repo_tags[0].rpartition(":")
        files["repositories"] = canonical_json({repo: {tag: ids[-1]}})
    for position, (layer, layer_id) in enumerate(zip(layers, ids, strict=True)):
        parent = ids[position - 1] if position else ""
        files[f"{layer_id}/"] = None
        files[f"{layer_id}/VERSION"] = b"1.0"
        files[f"{layer_id}/json"] = _v1_json(layer_id, parent, config_obj, position == len(ids) - 1)
        files.setdefault(f"{layer_id}/layer.tar", layer)

    with atomic_file(path) as out:
        tar = TarWriter(out)
        for member in sorted(files):
            content = files[member]
            if member.endswith("/"):
                tar.add_dir(member, mtime=mtime)
            elif isinstance(content, bytes):
                tar.add_bytes(member, content, mtime=mtime)
            elif content is not None:
                info = tarfile.TarInfo(member)
                info.mode, info.mtime = 0o644, mtime
                with content.open_uncompressed() as src:  # type: ignore[attr-defined]
                    tar.add_stream(info, with_progress(src, blob_progress(progress, content.descriptor, None)))
                    _drain(src)
        tar.close()
    return Written(image.manifest.config.digest)


def _drain(src: BinaryIO) -> None:
    finish = getattr(src, "finish", None)
    if finish is not None:
        finish()
    else:
        while src.read(CHUNK):
            pass


TRANSPORT = Transport("docker-archive", read=read, write=write)
