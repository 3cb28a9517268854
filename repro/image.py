"""The image model: descriptors, manifests, indexes, configs, and the Image/Layer interfaces.

Every transport reads into or writes from these objects. An Image gives its manifest and config as
the exact bytes that were read (so digests are preserved on copy) and its layers as streams.
"""

from __future__ import annotations

import json
import platform as _platform
from collections.abc import Sequence
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


MAX_JSON_DEPTH = 64  # OCI documents nest five or six levels; Python's json has no limit of its own


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is out of range")
    return value


def _too_deep(obj: Any) -> bool:
    """True if containers nest more than MAX_JSON_DEPTH levels (walked without recursion)."""
    pending = [(obj, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > MAX_JSON_DEPTH:
            return True
        if isinstance(node, dict):
            pending.extend((v, depth + 1) for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            pending.extend((v, depth + 1) for v in node if isinstance(v, (dict, list)))
    return False


def parse_json(data: bytes, where: str) -> Any:
    """A JSON document, refusing what the OCI and Docker formats never hold and what would crash
    the code that reads it: NaN and Infinity, and nesting deeper than MAX_JSON_DEPTH."""
    try:
        obj = json.loads(data, parse_constant=_refuse_constant, parse_float=_finite)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReproError(f"{where}: invalid JSON ({exc})", "the file is corrupt; re-create it") from None
    except RecursionError:
        obj = None
        deep = True
    else:
        deep = _too_deep(obj)
    if deep:
        raise ReproError(f"{where}: invalid JSON (nested more than {MAX_JSON_DEPTH} levels deep)",
                         "the file is corrupt or hostile")
    return obj


def _require(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ReproError(f"{where}: missing field {key!r}", "the document is not a valid OCI/Docker object")
    value = obj[key]
    if not _is(value, kind):
        expected = _NAMES.get(kind, "another type") if isinstance(kind, type) else "another type"
        raise ReproError(f"{where}: field {key!r} must be {expected}, not {_json_type(value)}",
                         "the document is not valid")
    return value


def _is(value: Any, kind: type | tuple[type, ...]) -> bool:
    """isinstance, except that a bool is not an int (JSON's true is not a number)."""
    return isinstance(value, kind) and not (isinstance(value, bool) and bool not in (
        kind if isinstance(kind, tuple) else (kind,)))


_NAMES = {str: "a string", int: "an integer", list: "an array", dict: "an object", bool: "a boolean"}


def _optional(obj: dict, key: str, kind: type, where: str, default: Any) -> Any:
    """obj[key] if present and of type `kind`; `default` if absent or null; else one error line."""
    value = obj.get(key)
    if value is None:
        return default
    if not _is(value, kind):
        raise ReproError(f"{where}: field {key!r} must be {_NAMES[kind]}, not {_json_type(value)}",
                         "the document is not valid")
    return value


def _json_type(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
            dict: "an object"}.get(type(value), type(value).__name__)


def _strings(obj: dict, key: str, where: str) -> tuple[str, ...]:
    """An optional array of strings (Env, Cmd, urls, ...)."""
    value = _optional(obj, key, list, where, [])
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ReproError(f"{where}: {key}[{i}] must be a string, not {_json_type(item)}",
                             "the document is not valid")
    return tuple(value)


def _string_map(obj: dict, key: str, where: str) -> dict[str, str]:
    """An optional object of strings (annotations, Labels)."""
    value = _optional(obj, key, dict, where, {})
    for name, item in value.items():
        if not isinstance(item, str):
            raise ReproError(f"{where}: {key}[{name!r}] must be a string, not {_json_type(item)}",
                             "the document is not valid")
    return dict(value)


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
    def from_json(cls, obj: dict, where: str = "platform") -> Platform:
        return cls(
            _optional(obj, "os", str, where, ""),
            _optional(obj, "architecture", str, where, ""),
            _optional(obj, "variant", str, where, ""),
            _optional(obj, "os.version", str, where, ""),
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
        if not isinstance(obj, dict):
            raise ReproError(f"{where}: a descriptor must be a JSON object", "the document is not valid")
        media_type = _require(obj, "mediaType", str, where)
        digest = _digest.validate(_require(obj, "digest", str, where), f"{where}.digest")
        size = _require(obj, "size", int, where)
        if size < 0:
            raise ReproError(f"{where}.size: negative size {size}", "the document is not valid")
        platform = _optional(obj, "platform", dict, where, None)
        return cls(
            media_type,
            digest,
            size,
            _string_map(obj, "annotations", where),
            Platform.from_json(platform, f"{where}.platform") if platform is not None else None,
            _strings(obj, "urls", where),
            _optional(obj, "artifactType", str, where, ""),
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
        mt = _optional(obj, "mediaType", str, where, "") or media_type or OCI_MANIFEST
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
        subject = obj.get("subject")
        return cls(
            mt, config, layers, _string_map(obj, "annotations", where),
            Descriptor.from_json(subject, f"{where}: subject") if subject is not None else None,
            _optional(obj, "artifactType", str, where, ""),
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
        return cls(manifests, _string_map(obj, "annotations", where),
                   _optional(obj, "mediaType", str, where, "") or OCI_INDEX)

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
        cfg = _optional(obj, "config", dict, where, {})
        inner = f"{where}: config"
        history = _optional(obj, "history", list, where, [])
        for i, item in enumerate(history):
            if not isinstance(item, dict):
                raise ReproError(f"{where}: history[{i}] must be an object, not {_json_type(item)}",
                                 "the document is not valid")
        return cls(
            os=_optional(obj, "os", str, where, ""),
            architecture=_optional(obj, "architecture", str, where, ""),
            variant=_optional(obj, "variant", str, where, ""),
            created=_optional(obj, "created", str, where, ""),
            env=_strings(cfg, "Env", inner),
            entrypoint=_strings(cfg, "Entrypoint", inner),
            cmd=_strings(cfg, "Cmd", inner),
            workdir=_optional(cfg, "WorkingDir", str, inner, ""),
            user=_optional(cfg, "User", str, inner, ""),
            labels=_string_map(cfg, "Labels", inner),
            diff_ids=diff_ids,
            history=tuple(history),
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


class ImageIndex(Protocol):
    """Several platforms' images under one index, kept whole (`--all`, a multi-platform build): the index's
    exact bytes and each platform's image."""

    name: str
    raw: bytes
    media_type: str

    @property
    def digest(self) -> str: ...

    @property
    def children(self) -> Sequence[Image]: ...
