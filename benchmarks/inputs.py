"""Deterministic benchmark inputs, generated once into a cache directory.

The synthetic image has five gzip layers with regular files (half compressible text, half random
bytes), directories, symlinks, hardlinks, files overwritten by upper layers, explicit whiteouts and
opaque directories. Its size and file count scale with `scale` (1.0 = about 1 GiB and 50,000 files);
`files`, when given, scales the file count apart from the size (4 GiB of 50,000 larger files).
"""

from __future__ import annotations

import io
import json
import random
import shutil
import sys
import tarfile
from pathlib import Path

from repro.clock import rfc3339
from repro.image import OCI_MANIFEST, Descriptor, Platform
from repro.layers import TarWriter
from repro.mutate import commit, new_config, write_layer
from repro.store import Layout

TAG = "synthetic"
LAYERS = 5


def _file(rng: random.Random, size: int) -> bytes:
    if rng.random() < 0.5:
        return rng.randbytes(size)
    words = [b"alpha", b"beta", b"gamma", b"delta", b"epsilon", b"zeta", b"eta", b"theta", b"\n"]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" "
    return bytes(out[:size])


def _layer_entries(number: int, scale: float, files_scale: float) -> list[tuple[tarfile.TarInfo, bytes]]:
    rng = random.Random(f"repro-bench-{number}")
    files = int(10_000 * files_scale)
    total = int((1 << 30) * scale / LAYERS)
    mean = max(total // max(files, 1), 1)
    entries: list[tuple[tarfile.TarInfo, bytes]] = []

    def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "", mode: int = 0o644) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime, info.linkname = kind, mode, 1700000000, link
        info.size = len(data)
        entries.append((info, data))

    dirs = [f"data/d{d:03d}" for d in range(max(files // 100, 1))]
    add("data", tarfile.DIRTYPE, mode=0o755)
    for d in dirs:
        add(d, tarfile.DIRTYPE, mode=0o755)
    budget = total
    for _ in range(files):
        size = min(int(rng.expovariate(1 / mean)) + 1, max(budget, 1), 64 << 20)
        budget -= size
        # Layers share names, so upper layers overwrite files of lower ones.
        name = f"{rng.choice(dirs)}/f{rng.randrange(files * 2):06d}"
        add(name, data=_file(rng, size))
    if number:
        for _ in range(files // 50):
            add(f"{rng.choice(dirs)}/.wh.f{rng.randrange(files * 2):06d}")
        add(f"{dirs[number % len(dirs)]}/.wh..wh..opq")
        regular = [info.name for info, _ in entries if info.isreg() and ".wh." not in info.name]
        for i in range(files // 100):
            add(f"{regular[i]}.hard{number}", tarfile.LNKTYPE, link=regular[i])
            add(f"{regular[i]}.sym{number}", tarfile.SYMTYPE, link=regular[i].rsplit("/", 1)[-1], mode=0o777)
    # A tar may name a path once per layer; keep the last, and put whiteouts before their siblings.
    unique = {info.name: (info, data) for info, data in entries}
    return sorted(unique.values(), key=lambda e: (".wh." not in e[0].name, e[0].name))


def synthetic_image(cache: Path, scale: float, files: float | None = None) -> Path:
    """An OCI layout holding the synthetic image as :synthetic (generated once per scale)."""
    files = scale if files is None else files
    path = cache / (f"synthetic-{scale:g}" if files == scale else f"synthetic-{scale:g}-files-{files:g}")
    if (path / "index.json").exists() and (path / ".complete").exists():
        return path

    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    layout = Layout.initialize(path)
    layers = []
    for number in range(LAYERS):
        entries = _layer_entries(number, scale, files)

        def produce(tar: TarWriter, entries=entries) -> None:
            for info, data in entries:
                tar.add(info, io.BytesIO(data) if info.isreg() else None)

        layers.append(write_layer(layout, produce, "gzip"))
    created = rfc3339(1700000000)
    history = [{"created": created, "created_by": f"synthetic layer {i}"} for i in range(LAYERS)]
    config = new_config(Platform.host(), created, [x.diff_id for x in layers], history,
                        {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]})
    image = commit(layout, config, layers)
    layout.add_manifest(Descriptor(OCI_MANIFEST, image.digest, len(image.raw_manifest),
                                   {"org.opencontainers.image.ref.name": TAG}), TAG)
    (path / ".complete").write_text(image.digest)
    return path


def layer_blobs(layout: Path, tag: str | None = None) -> list[tuple[Path, str]]:
    """(blob path, media type) of each layer of the image `tag` (or the only one) of an OCI layout."""

    def blob(digest: str) -> Path:
        algorithm, hex_digest = digest.split(":", 1)
        return layout / "blobs" / algorithm / hex_digest

    manifests = json.loads((layout / "index.json").read_text())["manifests"]
    chosen = [m for m in manifests if tag is None or m.get("annotations", {}).get(
        "org.opencontainers.image.ref.name") == tag]
    if len(chosen) != 1:
        raise RuntimeError(f"{layout}: no single manifest tagged {tag!r}")
    manifest = json.loads(blob(chosen[0]["digest"]).read_text())
    return [(blob(layer["digest"]), layer["mediaType"]) for layer in manifest["layers"]]


def decompress_command(layout: Path, tag: str | None = None) -> str:
    """A shell command writing the uncompressed layers of an image to stdout, one after another, with
    the fastest decompressors at hand (ISA-L's igzip for gzip, as repro reads gzip): the floor under
    anything that reads every layer's content."""

    gunzip = "igzip -dc" if shutil.which("igzip") else f"{sys.executable} -m isal.igzip -dc"
    parts = []
    for path, media_type in layer_blobs(layout, tag):
        if media_type.endswith("gzip"):
            parts.append(f"{gunzip} {path}")
        elif media_type.endswith("zstd"):
            parts.append(f"zstd -dcq {path}")
        else:
            parts.append(f"cat {path}")
    return "{ " + "; ".join(parts) + "; }"
