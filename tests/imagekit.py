"""Crafting test images: layers from lists of entries, written with repro's own mutate API or,
for hostile or broken images, byte by byte."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from repro.clock import rfc3339
from repro.image import OCI_INDEX, OCI_MANIFEST, Descriptor, Index, Platform, canonical_json
from repro.layers import TarWriter
from repro.mutate import NewLayer, commit, new_config, write_layer
from repro.store import Layout
from repro.transfer import manifest_descriptor


@dataclass
class E:
    """One tar entry: a file (content), dir, symlink or hardlink (target), or whiteout."""

    path: str
    content: bytes | None = None
    kind: str = "file"  # file, dir, symlink, hardlink, char, fifo
    target: str = ""
    mode: int = -1
    uid: int = 0
    gid: int = 0
    mtime: int = 1700000000
    pax: dict = field(default_factory=dict)

    def tarinfo(self) -> tarfile.TarInfo:
        info = tarfile.TarInfo(self.path)
        info.type = {
            "file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
            "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE,
        }[self.kind]
        info.mode = self.mode if self.mode >= 0 else (0o755 if self.kind == "dir" else 0o644)
        info.uid, info.gid, info.mtime = self.uid, self.gid, self.mtime
        info.linkname = self.target
        info.pax_headers = dict(self.pax)
        if self.kind == "file":
            info.size = len(self.content or b"")
        return info


def write_entries(tar: TarWriter, entries: list[E]) -> None:
    for e in entries:
        info = e.tarinfo()
        tar.add(info, io.BytesIO(e.content or b"") if e.kind == "file" else None)


def make_image(
    layout_dir: Path,
    tag: str,
    layers: list[list[E]],
    *,
    compression: str = "gzip",
    config: dict | None = None,
    platform: Platform | None = None,
) -> str:
    """Write an image with one layer per entry list into `layout_dir` under `tag`; returns its digest."""
    layout = Layout.open_existing(layout_dir) if (layout_dir / "oci-layout").exists() else _init(layout_dir)
    new_layers: list[NewLayer] = []
    for entries in layers:
        new_layers.append(write_layer(layout, lambda tar, e=entries: write_entries(tar, e), compression))
    created = rfc3339(1700000000)
    history = [{"created": created, "created_by": f"test layer {i}"} for i in range(len(layers))]
    cfg = new_config(platform or Platform.host(), created, [n.diff_id for n in new_layers], history, config)
    image = commit(layout, cfg, new_layers)

    layout.add_manifest(manifest_descriptor(image, {"org.opencontainers.image.ref.name": tag}), tag)
    return image.digest


def _init(path: Path) -> Layout:
    path.mkdir(parents=True, exist_ok=True)
    return Layout.initialize(path)


def raw_blob_image(layout_dir: Path, tag: str, layer_bytes: bytes, media_type: str, diff_id: str) -> str:
    """An image whose single layer blob is `layer_bytes` as given (possibly corrupt), correctly named."""
    layout = Layout.open_existing(layout_dir) if (layout_dir / "oci-layout").exists() else _init(layout_dir)
    layer = layout.put_bytes(layer_bytes, media_type)
    config = new_config(Platform.host(), rfc3339(0), [diff_id], [])
    config_descriptor = layout.put_bytes(canonical_json(config), "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_descriptor.to_json(),
                "layers": [layer.to_json()]}
    raw = canonical_json(manifest)
    descriptor = layout.put_bytes(raw, OCI_MANIFEST)
    named = Descriptor(OCI_MANIFEST, descriptor.digest, descriptor.size, {"org.opencontainers.image.ref.name": tag})
    layout.add_manifest(named, tag)
    return descriptor.digest


def add_index(layout_dir: Path, tag: str, manifests: list[tuple[str, Platform]]) -> str:
    """Tag a multi-platform index over manifests already in the layout (given by tag)."""
    layout = Layout.open_existing(layout_dir)
    entries = {d.ref_name: d for d in layout.read_index().manifests}
    children = tuple(
        Descriptor(OCI_MANIFEST, entries[t].digest, entries[t].size, {}, p) for t, p in manifests
    )
    raw = canonical_json(Index(children).to_json())
    descriptor = layout.put_bytes(raw, OCI_INDEX)
    named = Descriptor(OCI_INDEX, descriptor.digest, descriptor.size, {"org.opencontainers.image.ref.name": tag})
    layout.add_manifest(named, tag)
    return descriptor.digest


def read_json(path: Path) -> dict:
    return json.loads(path.read_bytes())
