"""`repro archive`: an image put on a shelf as a self-describing preservation package.

The package is a BagIt 1.0 bag (a directory, or one tar when the name ends in .tar) whose payload is:

    data/image/                 the image as an OCI image layout, SBOMs and provenance as its referrers
    data/sbom/spdx.json         SPDX 2.3
    data/sbom/cyclonedx.json    CycloneDX 1.6
    data/provenance.json        in-toto Statement v1, SLSA provenance v1 (built by repro, or --spec)
    data/runs.json              the recorded runs: command, exit status, hashes, environment
    data/image.sif              with --with sif
    data/rootfs.tar             with --with rootfs (the flattened tree, for a bare chroot)
    data/image.docker.tar       with --with docker-archive (for `docker load` without skopeo)
    data/ro-crate-metadata.json RO-Crate 1.1, for research repositories
    data/README.txt             for a person, decades from now, without repro

Everything is a function of the image, the records and SOURCE_DATE_EPOCH (else the image's creation
time): the same inputs give the same package bytes.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from builders import definition, frontend
from converters.archive import LAYOUT_DIR, LAYOUT_TAG
from repro import __version__, referrers
from repro.atomic import atomic_dir, atomic_file
from repro.clock import document_time, source_date_epoch
from repro.errors import ReproError
from repro.files import open_regular
from repro.image import Image
from repro.layers import TarWriter
from repro.preserve import bag, package_docs, provenance
from repro.preserve.records import Record, record
from repro.refs import Options, open_image, parse, write_image
from repro.run import container
from sbom.generate import MEDIA_TYPES, generate_many

WITH = ("sif", "rootfs", "docker-archive")
SBOM_FILES = {"spdx-json": "sbom/spdx.json", "cyclonedx-json": "sbom/cyclonedx.json"}
PROVENANCE_FILE = "provenance.json"
RUNS_FILE = "runs.json"
RENDITIONS = {"sif": "image.sif", "rootfs": "rootfs.tar", "docker-archive": "image.docker.tar"}


@dataclass(frozen=True)
class RecordRequest:
    command: str
    outputs: tuple[str, ...] = ()


def docker_name(source: str, image: Image) -> str:
    """A name `docker load` gives the image: the source's repository and tag, lower-cased and cleaned."""
    ref = parse(source)
    body = ref.body.removeprefix("//")
    if ref.transport.naming == "path":
        path, tag = ref.split_path()
        repo, tag = Path(path).name, tag or "latest"
    elif ref.transport.naming == "repository":
        body = body.split("@", 1)[0]
        repo, _, tag = body.rpartition(":") if ":" in body.rsplit("/", 1)[-1] else (body, "", "latest")
        repo = repo.rsplit("/", 1)[-1]
    else:
        repo, tag = Path(body.split(":", 1)[0]).stem, "latest"
    repo = re.sub(r"[^a-z0-9._-]+", "-", repo.lower()).strip("-._") or "image"
    tag = re.sub(r"[^A-Za-z0-9._-]+", "-", tag)[:128] or "latest"
    return f"archived/{repo}:{tag}"


def _bag_info(image: Image, source: str, created: str) -> list[tuple[str, str]]:
    return [
        ("Bagging-Date", created[:10]),
        ("Bag-Software-Agent", f"repro {__version__}"),
        ("External-Identifier", image.digest),
        ("External-Description", f"Container image {image.digest} with its SBOMs, provenance and recorded runs"),
        ("Source-Reference", source),
    ]


def write(source: str, output: str, *, spec: str | None = None, records: list[RecordRequest] | None = None,
          renditions: tuple[str, ...] = (), executor: str | None = None, options: Options | None = None,
          log=None) -> Image:
    """Make the package at `output` (a directory, or a tar if it ends in .tar), atomically."""
    options = options or Options()
    unknown = [r for r in renditions if r not in WITH]
    if unknown:
        raise ReproError(f"--with {unknown[0]}: unknown rendition", f"choose from {', '.join(WITH)}")
    image = open_image(source, options)
    target = Path(output)
    if target.exists():
        raise ReproError(f"{output}: already exists", "choose a new name; a package is never overwritten")
    def build(root: Path) -> None:
        (root / "data").mkdir(parents=True)
        _fill(image, source, root / "data", spec, records or [], renditions, executor, options, log)
        bag.make(root, _bag_info(image, source, document_time(image)))

    if output.endswith(".tar"):
        if not target.parent.is_dir():
            raise ReproError(f"{output}: directory {target.parent} does not exist", "create it first")
        with tempfile.TemporaryDirectory(prefix=f".{target.name}.repro-tmp-", dir=target.parent) as tmp:
            root = Path(tmp) / target.name.removesuffix(".tar")
            build(root)
            _write_tar(root, target)
    else:
        with atomic_dir(target) as root:
            build(root)
    return image


def _fill(image: Image, source: str, data: Path, spec: str | None, records: list[RecordRequest],
          renditions: tuple[str, ...], executor: str | None, options: Options, log) -> None:
    created = document_time(image)
    layout_ref = f"oci:{data / LAYOUT_DIR}:{LAYOUT_TAG}"
    write_image(image, layout_ref, options)
    copied = _copy_referrers(source, image, layout_ref, options)
    image = open_image(layout_ref)  # everything below reads the local copy, not the source again
    name = docker_name(source, image)
    documents = generate_many(image, tuple(SBOM_FILES), name)
    for fmt, rel in SBOM_FILES.items():
        document = documents[fmt]
        _put(data / rel, document)
        if not any(a.descriptor.artifact_type == MEDIA_TYPES[fmt] for a in copied):
            referrers.attach(layout_ref, image, document, MEDIA_TYPES[fmt], MEDIA_TYPES[fmt], created)
    statement = None
    if spec:
        statement = provenance.statement(image, *definition.of_spec(frontend.load(spec)))
    else:
        statement = next((a.document for a in copied if a.descriptor.artifact_type == provenance.MEDIA_TYPE), None)
    if statement is not None:
        _put(data / PROVENANCE_FILE, statement)
        if spec:
            referrers.attach(layout_ref, image, statement, provenance.MEDIA_TYPE, provenance.MEDIA_TYPE, created)
    made = _record(image, records, executor, log)
    _put(data / RUNS_FILE, (json.dumps({"runs": [r.to_json() for r in made]}, indent=2, sort_keys=True,
                                       ensure_ascii=False) + "\n").encode())
    for rendition in renditions:
        path = data / RENDITIONS[rendition]
        if rendition == "sif":
            write_image(image, f"sif:{path}", options)
        elif rendition == "rootfs":
            write_image(image, f"tar:{path}", options)
        else:
            write_image(image, f"docker-archive:{path}:{name}", options)
    layers = [layer.descriptor for layer in image.layers]
    _put(data / "README.txt", package_docs.readme(image, name, made, renditions, statement is not None, layers))
    _put(data / "ro-crate-metadata.json",
         package_docs.ro_crate(image, name, made, renditions, statement is not None, created))


def _copy_referrers(source: str, image: Image, layout_ref: str, options: Options) -> list[referrers.Artifact]:
    """The source's own referrers come along where the source can have them (oci:, docker://)."""
    if parse(source).transport.attach_referrer is None:
        return []
    return referrers.copy(source, image, layout_ref, options)


def _record(image: Image, requests: list[RecordRequest], executor: str | None, log) -> list[Record]:
    if not requests:
        return []
    made = []
    with container.session(image, executor) as active:
        for request in requests:
            if log:
                log(f"recording: {request.command}")
            made.append(record(active, request.command, request.outputs))
            for digest in made[-1].outcome.outputs.values():
                if digest.startswith("missing"):
                    raise ReproError(f"--record {request.command!r}: {digest.removeprefix('missing: ')}",
                                     "name a file the command writes (inside the image)")
    return made


def _put(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _write_tar(root: Path, target: Path) -> None:
    """The bag as one tar: its top directory and every file, sorted, owned by 0:0, times from the bag's date."""
    mtime = source_date_epoch()
    with atomic_file(target) as out:
        tar = TarWriter(out)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root.parent)
            tar.add_dir(rel, mtime=mtime)
            for name in sorted(filenames):
                info = tarfile.TarInfo(f"{rel}/{name}")
                with open_regular(root.parent, info.name, str(target), "package") as src:  # never a link's target
                    info.size, info.mode, info.mtime = os.fstat(src.fileno()).st_size, 0o644, mtime
                    tar.add(info, src)
        tar.close()
