"""`repro verify`: prove an image, or a preservation package, is what it says it is.

An image: every blob named by its manifest (config, layers) and the manifest itself match their digests
and sizes, blobs hashed in parallel; `deep` also decompresses each layer against the config's diff_id.
A package: BagIt completeness and fixity first; then the OCI layout inside: every blob's name is the
digest of its content (taken from the bag's own verified hashes, so nothing is read twice), every
descriptor in index.json and in each manifest points at a blob of that size and kind, the image is the
one bag-info.txt names; and the SBOMs, the referrers and the provenance are about that image.
Each check adds a row to the report; the first failure raises CheckFailed naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from converters.archive import LAYOUT_DIR, LAYOUT_TAG, open_package
from repro.digest import MAX_DOCUMENT_SIZE
from repro.errors import CheckFailed, ReproError
from repro.files import Files, SubFiles
from repro.image import INDEX_TYPES, MANIFEST_TYPES, Image, Index, Manifest
from repro.preserve import bag, provenance
from repro.preserve.archive import PROVENANCE_FILE, RUNS_FILE, SBOM_FILES
from repro.referrers import MAX_DOCUMENT as MAX_ATTACHED  # SBOMs and provenance are referrers too
from repro.refs import Options, open_image
from repro.transfer import image_blobs
from sbom.generate import subject_digest

Rows = list[tuple[str, str]]
PARALLEL = 3


def _failed(error: ReproError) -> CheckFailed:
    return error if isinstance(error, CheckFailed) else CheckFailed(error.message, error.hint)


def verify_image(ref: str, options: Options | None = None, deep: bool = False) -> tuple[Image, Rows]:
    image = open_image(ref, options or Options())
    rows: Rows = [("manifest", f"{image.digest} ({len(image.raw_manifest)} bytes)")]
    try:
        blobs = image_blobs(image)
        with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            total = sum(pool.map(lambda blob: _drain(blob.open(), blob.descriptor.size), blobs))
        rows.append(("blobs", f"{len(blobs)} blobs, {total} bytes, every digest and size matches"))
        if deep:
            with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
                list(pool.map(lambda layer: _drain(layer.open(check_diff_id=True), 0), image.layers))
            rows.append(("layers", f"{len(image.layers)} layers decompress to their diff_ids"))
    except ReproError as exc:
        raise _failed(exc) from None
    return image, rows


def _drain(stream, size: int) -> int:
    """Read a verifying stream to its end, so every check it carries has run; returns `size`."""
    with stream:
        while stream.read(1 << 20):
            pass
        stream.finish()
    return size


def verify_package(path: str, deep: bool = False, report: Callable[[str, str], None] | None = None) -> Rows:
    files = open_package(path)
    rows: Rows = []

    def add(check: str, detail: str) -> None:
        rows.append((check, detail))
        if report:
            report(check, detail)

    for row in bag.check(files):
        add(*row)
    prefix = f"data/{LAYOUT_DIR}/"
    known = _bag_hashes(files)
    blobs = 0
    for name, digest in known.items():
        if name.startswith(prefix + "blobs/"):
            algorithm, _, hex_name = name[len(prefix + "blobs/"):].partition("/")
            if algorithm != "sha256" or hex_name != digest:
                raise CheckFailed(f"{files.name}: {name} holds content with sha256 {digest}, not what its name says",
                                  "the image's blob was replaced")
            blobs += 1
    add("OCI blobs", f"{blobs} blobs, each named by the sha256 of its content")
    layout = SubFiles(files, prefix)
    where = f"{files.name}: {prefix}index.json"
    try:
        index = Index.parse(layout.read("index.json"), where)
    except ReproError as exc:
        raise _failed(exc) from None
    present = {n[len(prefix):] for n in known if n.startswith(prefix)}
    for number, descriptor in enumerate(index.manifests):
        _walk(layout, present, descriptor, f"{where}: manifests[{number}]")
    add("OCI structure", f"index.json and {len(index.manifests)} manifests: every descriptor's blob present, "
                         "sizes and kinds match")
    expected = bag.read_info(files).get("External-Identifier", "")
    try:
        image = open_image(f"archive:{path}")
    except ReproError as exc:
        raise _failed(exc) from None
    if expected and image.digest != expected:
        raise CheckFailed(f"{where}: tag {LAYOUT_TAG!r} names {image.digest}, bag-info.txt says {expected}",
                          "the package's index was edited")
    add("image", f"{image.digest} is the image bag-info.txt names")
    if deep:
        try:
            for layer in image.layers:
                _drain(layer.open(check_diff_id=True), 0)
        except ReproError as exc:
            raise _failed(exc) from None
        add("layers", f"{len(image.layers)} layers decompress to their diff_ids")
    _check_documents(files, layout, index, image, add)
    return rows


def _bag_hashes(files: Files) -> dict[str, str]:
    """The payload's sha256 by path, from the bag manifest (bag.check has verified every one)."""
    out = {}
    for line in files.read(bag.MANIFEST).decode("utf-8", "replace").splitlines():
        digest, _, name = line.partition(" ")
        out[bag.decode_path(name.lstrip(" *"))] = digest.lower()
    return out


def _walk(layout: SubFiles, present: set[str], descriptor, where: str) -> None:
    """A descriptor's blob exists with its size; a manifest's or index's children too."""
    name = f"blobs/{descriptor.digest.replace(':', '/')}"
    if name not in present:
        raise CheckFailed(f"{where}: {descriptor.digest} is not in the package ({layout.name}/{name} is missing)",
                          "the layout is incomplete or its index was edited")
    size = layout.size(name)
    if size != descriptor.size:
        raise CheckFailed(f"{where}: {descriptor.digest} is {size} bytes, the descriptor says {descriptor.size}",
                          "the layout's index or a manifest was edited")
    try:
        if descriptor.media_type in INDEX_TYPES | MANIFEST_TYPES:
            raw = layout.read(name, min(descriptor.size, MAX_DOCUMENT_SIZE))
        if descriptor.media_type in INDEX_TYPES:
            child = Index.parse(raw, f"{layout.name}/{name}")
            for number, item in enumerate(child.manifests):
                _walk(layout, present, item, f"{layout.name}/{name}: manifests[{number}]")
        elif descriptor.media_type in MANIFEST_TYPES:
            manifest = Manifest.parse(raw, f"{layout.name}/{name}")
            for number, item in enumerate((manifest.config, *manifest.layers)):
                _walk(layout, present, item, f"{layout.name}/{name}: blob {number}")
    except ReproError as exc:
        raise _failed(exc) from None


def _check_documents(files: Files, layout: SubFiles, index: Index, image: Image, add) -> None:
    for rel in SBOM_FILES.values():
        name = f"data/{rel}"
        if not files.exists(name):
            raise CheckFailed(f"{files.name}: {name} is missing", "the package is incomplete")
        about = subject_digest(files.read(name, MAX_ATTACHED))
        if about != image.digest:
            raise CheckFailed(f"{files.name}: {name} describes {about or 'no image'}, not {image.digest}",
                              "the SBOM is not of this image")
    add("SBOMs", f"{', '.join(SBOM_FILES)} describe {image.digest}")
    referrers = 0
    for descriptor in index.manifests:
        if descriptor.media_type not in MANIFEST_TYPES:
            continue
        name = f"blobs/{descriptor.digest.replace(':', '/')}"
        manifest = Manifest.parse(layout.read(name, min(descriptor.size, MAX_DOCUMENT_SIZE)), descriptor.digest)
        if manifest.subject is None:
            continue
        referrers += 1
        if manifest.subject.digest != image.digest:
            raise CheckFailed(f"{layout.name}: referrer {descriptor.digest} is about {manifest.subject.digest}, "
                              f"not {image.digest}", "the package mixes images")
    add("referrers", f"{referrers} referrers, all about {image.digest}")
    name = f"data/{PROVENANCE_FILE}"
    if files.exists(name):
        subjects = provenance.subject_digests(files.read(name, MAX_ATTACHED))
        if image.digest not in subjects:
            raise CheckFailed(f"{files.name}: {name} is about {', '.join(subjects) or 'nothing'}, not {image.digest}",
                              "the provenance is not of this image")
        add("provenance", f"subject {image.digest}")
    name = f"data/{RUNS_FILE}"
    try:
        runs = json.loads(files.read(name))["runs"]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        raise CheckFailed(f"{files.name}: {name} is missing or malformed", "the package is damaged") from None
    add("recorded runs", f"{len(runs)} runs")
