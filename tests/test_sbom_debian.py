"""SBOMs of a real Debian bookworm image (the catalog's python-science: 100+ packages).

Debian is merged-/usr: dpkg records /bin/cat, the image holds usr/bin/cat under `bin -> usr/bin`, so
a file is missing only if it is missing through the image's own links. Most copyright files are
machine-readable (DEP-5) with Debian's short license names; some (libc6, python3, base-files) are
not. The image is built once per session and shared with the catalog's tests.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from repro.clock import source_date_epoch
from repro.layers import TarWriter
from repro.mutate import NewLayer, add_directory, commit, write_layer
from repro.refs import open_image
from repro.store import Layout
from repro.transfer import manifest_descriptor
from sbom.generate import subject_digest
from tests.conftest import repro

DELETED = {("coreutils", "bin/cat"), ("python3.11-minimal", "usr/bin/python3.11")}


@dataclass
class Debian:
    layout: Path
    work: Path

    @property
    def base(self) -> str:
        return f"oci:{self.layout}:base"

    @property
    def deleted(self) -> str:
        return f"oci:{self.layout}:deleted"


@pytest.fixture(scope="session")
def debian(catalog_images, tmp_path_factory) -> Debian:
    """The catalog's python-science image (bookworm minbase with python3, numpy and scipy, built once per
    session) as oci:LAYOUT:base, and as oci:LAYOUT:deleted with one more layer whose whiteouts delete
    usr/bin/cat (dpkg says bin/cat) and usr/bin/python3.11."""
    work = tmp_path_factory.mktemp("debian")
    layout = work / "layout"
    repro("convert", catalog_images["python-science"]["ref"], f"oci:{layout}:base")
    _add_deleting_layer(layout, ["usr/bin/.wh.cat", "usr/bin/.wh.python3.11"])
    return Debian(layout, work)


def _add_deleting_layer(layout_dir: Path, whiteouts: list[str]) -> None:
    base = open_image(f"oci:{layout_dir}:base")
    layout = Layout.open_existing(layout_dir)

    def produce(tar: TarWriter) -> None:
        for name in whiteouts:
            info = tarfile.TarInfo(name)
            tar.add(info, io.BytesIO(b""))

    top = write_layer(layout, produce, "gzip")
    config = json.loads(base.raw_config)
    config["rootfs"]["diff_ids"].append(top.diff_id)
    config.setdefault("history", []).append({"created": config.get("created", ""), "created_by": "rm (test)"})
    layers = [NewLayer(layer.descriptor, layer.diff_id) for layer in base.layers] + [top]
    image = commit(layout, config, layers)
    layout.add_manifest(manifest_descriptor(image, {"org.opencontainers.image.ref.name": "deleted"}), "deleted")


def cyclonedx(ref: str) -> dict:
    return json.loads(repro("sbom", "--format", "cyclonedx-json", ref).stdout)


def missing_files(doc: dict) -> set[tuple[str, str]]:
    return {(c["name"], p["value"]) for c in doc["components"] for p in c.get("properties", [])
            if p["name"] == "repro:missing-file"}


def test_no_missing_files_through_merged_usr_links(debian):
    doc = cyclonedx(debian.base)
    debs = [c for c in doc["components"] if c["purl"].startswith("pkg:deb/")]
    assert len(debs) >= 100
    assert missing_files(doc) == set()


def test_file_deleted_in_a_later_layer_is_missing_and_only_it(debian, tmp_path):
    assert missing_files(cyclonedx(debian.deleted)) == DELETED
    out = tmp_path / "deleted.spdx.json"
    repro("sbom", "--format", "spdx-json", debian.deleted, "-o", str(out))
    comments = {p["name"]: p.get("comment", "") for p in json.loads(out.read_text())["packages"]}
    assert "missing files: bin/cat" in comments["coreutils"]
    assert {name for name, comment in comments.items() if "missing files" in comment} == {n for n, _ in DELETED}


def _top_level_terms(expression: str) -> list[str]:
    terms, depth, start = [], 0, 0
    for i, c in enumerate(expression):
        depth += {"(": 1, ")": -1}.get(c, 0)
        if depth == 0 and expression.startswith(" AND ", i):
            terms.append(expression[start:i])
            start = i + 5
    return [*terms, expression[start:]]


def test_spdx_validates_and_licenses_are_found(debian, tmp_path):
    out = tmp_path / "debian.spdx.json"
    repro("sbom", "--format", "spdx-json", debian.base, "-o", str(out))
    messages = validate_full_spdx_document(parse_file(str(out)))
    assert [m.validation_message for m in messages] == []

    doc = json.loads(out.read_text())
    debs = {p["name"]: p["licenseDeclared"] for p in doc["packages"] if p["SPDXID"] != "SPDXRef-Image"}
    licensed = [name for name, declared in debs.items() if declared != "NOASSERTION"]
    assert len(licensed) >= 100, sorted(set(debs) - set(licensed))
    # Copyright files that are not machine-readable still give their licenses.
    assert "LGPL-2.1-or-later" in _top_level_terms(debs["libc6"])
    assert debs["base-files"] == "GPL-2.0-or-later"
    assert "Python-2.0" in _top_level_terms(debs["python3.11"])
    assert debs["zlib1g"] == "Zlib"
    # Debian's short names become SPDX identifiers, never LicenseRef-s of their own; no term twice.
    declared = {x["licenseId"] for x in doc.get("hasExtractedLicensingInfos", [])}
    for short in ("Apache-2", "Expat", "GPL-2", "GPL-2-plus", "LGPL-2.1-plus", "Artistic", "BSD-3-clause",
                  "Artistic-2", "GPL-3-plus-with-Bison-exception"):
        assert f"LicenseRef-{short}" not in declared
    assert "GPL-3.0-or-later WITH Bison-exception-2.2" in _top_level_terms(debs["bash"])
    for name, expression in debs.items():
        terms = _top_level_terms(expression)
        assert len(terms) == len(set(terms)), (name, expression)


def _directory_diff_id(root: Path) -> str:
    """The diff_id `repro convert rootfs:DIR` gives, from the tar it writes (without compressing it)."""

    class Sink:
        def __init__(self) -> None:
            self.hash = hashlib.sha256()

        def write(self, data) -> int:
            self.hash.update(data)
            return len(data)

    sink = Sink()
    tar = TarWriter(sink)  # type: ignore[arg-type]
    add_directory(tar, root, source_date_epoch())
    tar.close()
    return "sha256:" + sink.hash.hexdigest()


def test_rootfs_is_read_in_place_and_lists_the_same_packages(debian):
    tree = debian.work / "rootfs"
    if not tree.exists():
        repro("convert", debian.base, f"rootfs:{tree}")
    started = time.monotonic()
    from_image = cyclonedx(debian.base)
    image_seconds = time.monotonic() - started
    started = time.monotonic()
    text = repro("sbom", "--format", "cyclonedx-json", f"rootfs:{tree}").stdout
    rootfs_seconds = time.monotonic() - started
    print(f"repro sbom oci: {image_seconds:.1f} s, rootfs: {rootfs_seconds:.1f} s")
    from_tree = json.loads(text)
    assert sorted(c["purl"] for c in from_tree["components"]) == sorted(c["purl"] for c in from_image["components"])
    assert missing_files(from_tree) == set()
    # Read in place, the directory is named by the diff_id its import gives, not by an image digest
    # (that would mean compressing a layer of it first).
    assert subject_digest(text.encode()) == _directory_diff_id(tree)
