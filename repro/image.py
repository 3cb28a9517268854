"""The image model: descriptors, manifests, indexes, configs, and the Image/Layer interfaces.

Every transport reads into or writes from these objects. An Image gives its manifest and config as
the exact bytes that were read (so digests are preserved on copy) and its layers as streams.
"""

from __future__ import annotations

import json
import platform as _platform
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from repro import digest as _digest
from repro.errors import ReproError

# Media types (image-spec media-types.md, and Docker's schema 2 equivalents).
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = OCI_LAYER + "+gzip"
OCI_LAYER_ZSTD = OCI_LAYER + "+zstd"
OCI_LAYER_ND = "application/vnd.oci.image.layer.nondistributable.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_TYPES = {OCI_MANIFEST, DOCKER_MANIFEST}
INDEX_TYPES = {OCI_INDEX, DOCKER_MANIFEST_LIST}
CONFIG_TYPES = {OCI_CONFIG, DOCKER_CONFIG}

# Layer media type -> compression ("", "gzip", "zstd").
LAYER_COMPRESSION = {
    OCI_LAYER: "",
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    OCI_LAYER_ND: "",
    OCI_LAYER_ND + "+gzip": "gzip",
    OCI_LAYER_ND + "+zstd": "zstd",
    DOCKER_LAYER_GZIP: "gzip",
    DOCKER_FOREIGN_LAYER: "gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "",
}

REF_NAME = "org.opencontainers.image.ref.name"


def canonical_json(obj: Any) -> bytes:
    """The one JSON encoding repro writes: sorted keys, no insignificant whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def parse_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReproError(f"{where}: invalid JSON ({exc})", "the file is corrupt; re-create it") from None


def _require(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ReproError(f"{where}: missing field {key!r}", "the document is not a valid OCI/Docker object")
    value = obj[key]
    if not isinstance(value, kind):
        raise ReproError(f"{where}: field {key!r} has the wrong type", "the document is not valid")
    return value


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse `os/arch[/variant]`, as docker and skopeo accept it."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ReproError(f"--platform {text!r}: expected os/arch[/variant]", "for example linux/amd64")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "")

    @classmethod
    def host(cls) -> Platform:
        machine = _platform.machine().lower()
        arch, variant = {
            "x86_64": ("amd64", ""),
            "amd64": ("amd64", ""),
            "aarch64": ("arm64", ""),
            "arm64": ("arm64", ""),
            "armv7l": ("arm", "v7"),
            "ppc64le": ("ppc64le", ""),
            "s390x": ("s390x", ""),
            "riscv64": ("riscv64", ""),
            "i686": ("386", ""),
        }.get(machine, (machine, ""))
        return cls("linux", arch, variant)

    @classmethod
    def from_json(cls, obj: dict) -> Platform:
        return cls(
            str(obj.get("os", "")),
            str(obj.get("architecture", "")),
            str(obj.get("variant", "")),
            str(obj.get("os.version", "")),
        )

    def to_json(self) -> dict:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        if self.os_version:
            out["os.version"] = self.os_version
        return out

    def matches(self, wanted: Platform) -> bool:
        """True if this platform can serve `wanted` (a missing variant on either side matches)."""
        if (self.os, self.architecture) != (wanted.os, wanted.architecture):
            return False
        return not wanted.variant or not self.variant or self.variant == wanted.variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    artifact_type: str = ""

    @classmethod
    def from_json(cls, obj: Any, where: str) -> Descriptor:
        media_type = _require(obj, "mediaType", str, where)
        digest = _digest.validate(_require(obj, "digest", str, where), f"{where}.digest")
        size = _require(obj, "size", int, where)
        if size < 0:
            raise ReproError(f"{where}.size: negative size {size}", "the document is not valid")
        annotations = obj.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise ReproError(f"{where}.annotations: expected an object", "the document is not valid")
        platform = Platform.from_json(obj["platform"]) if isinstance(obj.get("platform"), dict) else None
        return cls(
            media_type,
            digest,
            size,
            {str(k): str(v) for k, v in annotations.items()},
            platform,
            tuple(obj.get("urls") or ()),
            str(obj.get("artifactType", "")),
        )

    def to_json(self) -> dict:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.urls:
            out["urls"] = list(self.urls)
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    @property
    def ref_name(self) -> str:
        return self.annotations.get(REF_NAME, "")


@dataclass(frozen=True, slots=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None
    artifact_type: str = ""

    @classmethod
    def parse(cls, raw: bytes, where: str, media_type: str = "") -> Manifest:
        obj = parse_json(raw, where)
        if not isinstance(obj, dict):
            raise ReproError(f"{where}: a manifest must be a JSON object", "the document is not valid")
        mt = obj.get("mediaType") or media_type or OCI_MANIFEST
        if mt in INDEX_TYPES:
            raise ReproError(f"{where}: is an index, not a manifest", "select a platform with --platform")
        if mt not in MANIFEST_TYPES:
            raise ReproError(
                f"{where}: unsupported manifest media type {mt!r}", "repro reads OCI and Docker v2 images"
            )
        if obj.get("schemaVersion") != 2:
            raise ReproError(f"{where}: schemaVersion must be 2", "the document is not a valid manifest")
        config = Descriptor.from_json(_require(obj, "config", dict, where), f"{where}: config")
        layers = tuple(
            Descriptor.from_json(d, f"{where}: layers[{i}]")
            for i, d in enumerate(_require(obj, "layers", list, where))
        )
        subject = Descriptor.from_json(obj["subject"], f"{where}: subject") if obj.get("subject") else None
        return cls(
            mt, config, layers, dict(obj.get("annotations") or {}), subject, str(obj.get("artifactType", ""))
        )

    def to_json(self) -> dict:
        out: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": self.config.to_json(),
            "layers": [d.to_json() for d in self.layers],
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.subject is not None:
            out["subject"] = self.subject.to_json()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out


@dataclass(frozen=True, slots=True)
class Index:
    manifests: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict)
    media_type: str = OCI_INDEX

    @classmethod
    def parse(cls, raw: bytes, where: str) -> Index:
        obj = parse_json(raw, where)
        if not isinstance(obj, dict):
            raise ReproError(f"{where}: an index must be a JSON object", "the document is not valid")
        if obj.get("schemaVersion") != 2:
            raise ReproError(f"{where}: schemaVersion must be 2", "the document is not a valid index")
        manifests = tuple(
            Descriptor.from_json(d, f"{where}: manifests[{i}]")
            for i, d in enumerate(_require(obj, "manifests", list, where))
        )
        return cls(manifests, dict(obj.get("annotations") or {}), str(obj.get("mediaType") or OCI_INDEX))

    def to_json(self) -> dict:
        out: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "manifests": [d.to_json() for d in self.manifests],
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """A typed view of the parts of an image config that repro reads."""

    os: str
    architecture: str
    variant: str
    created: str
    env: tuple[str, ...]
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    workdir: str
    user: str
    labels: dict[str, str]
    diff_ids: tuple[str, ...]
    history: tuple[dict, ...]

    @classmethod
    def parse(cls, raw: bytes, where: str) -> ImageConfig:
        obj = parse_json(raw, where)
        if not isinstance(obj, dict):
            raise ReproError(f"{where}: a config must be a JSON object", "the document is not valid")
        rootfs = _require(obj, "rootfs", dict, where)
        diff_ids = tuple(
            _digest.validate(d, f"{where}: rootfs.diff_ids[{i}]")
            for i, d in enumerate(_require(rootfs, "diff_ids", list, f"{where}: rootfs"))
        )
        cfg = obj.get("config") or {}
        return cls(
            os=str(obj.get("os", "")),
            architecture=str(obj.get("architecture", "")),
            variant=str(obj.get("variant", "")),
            created=str(obj.get("created", "")),
            env=tuple(cfg.get("Env") or ()),
            entrypoint=tuple(cfg.get("Entrypoint") or ()),
            cmd=tuple(cfg.get("Cmd") or ()),
            workdir=str(cfg.get("WorkingDir") or ""),
            user=str(cfg.get("User") or ""),
            labels=dict(cfg.get("Labels") or {}),
            diff_ids=diff_ids,
            history=tuple(obj.get("history") or ()),
        )

    @property
    def platform(self) -> Platform:
        return Platform(self.os, self.architecture, self.variant)


class Layer(Protocol):
    """One layer: its descriptor (compressed digest), its diff_id, and its content as streams."""

    descriptor: Descriptor
    diff_id: str

    def open(self) -> BinaryIO:
        """The layer blob as stored (possibly compressed), verified against the descriptor."""

    def open_uncompressed(self, read_ahead: bool = False) -> BinaryIO:
        """The layer as a tar stream, verified against the diff_id; `read_ahead` decompresses in a
        second thread."""


class Image(Protocol):
    """A single-platform image. Manifest and config are exact bytes; layers are streams."""

    name: str

    @property
    def raw_manifest(self) -> bytes: ...

    @property
    def manifest(self) -> Manifest: ...

    @property
    def digest(self) -> str: ...

    @property
    def raw_config(self) -> bytes: ...

    @property
    def config(self) -> ImageConfig: ...

    @property
    def layers(self) -> list[Layer]: ...
