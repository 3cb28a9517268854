"""SBOMs: valid SPDX 2.3 and CycloneDX 1.6, the right packages from synthetic databases, files checked
against what the databases recorded, deterministic bytes, and attachment as an OCI referrer."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from tests.conftest import repro
from tests.imagekit import E, make_image
from tests.oci_schema import validate

WHEEL_FILE = b"print('hello')\n"
RECORD_HASH = base64.urlsafe_b64encode(hashlib.sha256(WHEEL_FILE).digest()).rstrip(b"=").decode()

DPKG_STATUS = """Package: hello-tool
Status: install ok installed
Architecture: amd64
Version: 1.2-3

Package: removed-later
Status: install ok installed
Architecture: all
Version: 0.1

Package: half-gone
Status: deinstall ok config-files
Architecture: amd64
Version: 9
"""
COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
License: GPL-2+

Files: lib/*
License: Expat
"""


def layers() -> list[list[E]]:
    base = [
        E("etc/os-release", b'ID=debian\nVERSION_ID="12"\n'),
        E("var/lib/dpkg/status", DPKG_STATUS.encode()),
        E("var/lib/dpkg/info/hello-tool.list", b"/usr\n/usr/bin\n/usr/bin/hello-tool\n/usr/bin/gone\n"),
        E("var/lib/dpkg/info/hello-tool.md5sums",
          f"{hashlib.md5(b'original').hexdigest()}  usr/bin/hello-tool\n"
          f"{hashlib.md5(b'x').hexdigest()}  usr/bin/gone\n".encode()),
        E("usr/bin/hello-tool", b"changed after install"),
        E("usr/share/doc/hello-tool/copyright", COPYRIGHT.encode()),
        E("usr/lib/python3/dist-packages/tiny-1.0.dist-info/METADATA",
          b"Metadata-Version: 2.1\nName: tiny\nVersion: 1.0\nLicense-Expression: MIT\n"),
        E("usr/lib/python3/dist-packages/tiny-1.0.dist-info/RECORD",
          f"tiny.py,sha256={RECORD_HASH},15\ntiny-1.0.dist-info/METADATA,,\n".encode()),
        E("usr/lib/python3/dist-packages/tiny.py", WHEEL_FILE),
        E("lib/apk/db/installed", b"P:musl\nV:1.2.4-r2\nA:x86_64\nL:MIT\nF:lib\nR:ld-musl-x86_64.so.1\n\n"
                                  b"P:busybox\nV:1.36.1-r5\nA:x86_64\nL:GPL-2.0-only\n\n"),
        E("srv/app/node_modules/left-pad/package.json",
          b'{"name": "left-pad", "version": "1.3.0", "license": "WTFPL"}'),
        E("srv/app/node_modules/@scope/util/package.json", b'{"name": "@scope/util", "version": "2.0.0", '
                                                           b'"license": {"type": "Apache-2.0"}}'),
        E("srv/app/node_modules/@scope/util/test/package.json", b'{"name": "not-a-package", "version": "0"}'),
    ]
    # The upper layer removes a Debian package (its status is rewritten) and an npm package.
    top = [
        E("var/lib/dpkg/status", "\n\n".join(DPKG_STATUS.split("\n\n")[::2]).encode()),
        E("srv/app/node_modules/.wh.left-pad", b""),
    ]
    return [base, top]


@pytest.fixture(scope="module")
def sbom_layout(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sbom") / "layout"
    make_image(path, "pkgs", layers())
    return path


def sbom(ref: str, fmt: str) -> dict:
    return json.loads(repro("sbom", "--format", fmt, ref).stdout)


def test_packages_found(sbom_layout):
    doc = sbom(f"oci:{sbom_layout}:pkgs", "cyclonedx-json")
    found = {c["purl"]: c for c in doc["components"]}
    assert set(found) == {
        "pkg:deb/debian/hello-tool@1.2-3?arch=amd64&distro=debian-12",
        "pkg:pypi/tiny@1.0",
        "pkg:apk/alpine/musl@1.2.4-r2?arch=x86_64",
        "pkg:apk/alpine/busybox@1.36.1-r5?arch=x86_64",
        "pkg:npm/%40scope/util@2.0.0",
    }
    tool = found["pkg:deb/debian/hello-tool@1.2-3?arch=amd64&distro=debian-12"]
    props = {(p["name"], p["value"]) for p in tool["properties"]}
    assert ("repro:modified-file", "usr/bin/hello-tool") in props
    assert ("repro:missing-file", "usr/bin/gone") in props
    assert tool["licenses"] == [{"expression": "GPL-2.0-or-later AND MIT"}]
    assert found["pkg:pypi/tiny@1.0"]["licenses"] == [{"expression": "MIT"}]
    assert found["pkg:npm/%40scope/util@2.0.0"]["licenses"] == [{"expression": "Apache-2.0"}]
    assert ("repro:layer", "0") in {(p["name"], p["value"]) for p in tool["properties"]}


def test_cyclonedx_validates(sbom_layout, tmp_path):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    text = repro("sbom", "--format", "cyclonedx-json", f"oci:{sbom_layout}:pkgs").stdout
    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    assert errors is None, errors


def test_spdx_validates(sbom_layout, tmp_path):
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    out = tmp_path / "image.spdx.json"
    repro("sbom", "--format", "spdx-json", f"oci:{sbom_layout}:pkgs", "-o", str(out))
    messages = validate_full_spdx_document(parse_file(str(out)))
    assert messages == [], [m.validation_message for m in messages]
    doc = json.loads(out.read_text())
    assert doc["creationInfo"]["creators"] == ["Tool: repro-0.1.0"]
    assert len(doc["packages"]) == 6  # the image and its five packages


@pytest.mark.parametrize("fmt", ["spdx-json", "cyclonedx-json"])
def test_sbom_is_deterministic(sbom_layout, fmt):
    first = repro("sbom", "--format", fmt, f"oci:{sbom_layout}:pkgs").stdout
    assert repro("sbom", "--format", fmt, f"oci:{sbom_layout}:pkgs").stdout == first
    assert "urn:uuid:" in first or "documentNamespace" in first


def test_attach_as_referrer(sbom_layout, tmp_path):
    import shutil

    layout = tmp_path / "layout"
    shutil.copytree(sbom_layout, layout)
    image = json.loads(repro("inspect", "--json", f"oci:{layout}:pkgs").stdout)
    repro("sbom", "--attach", "--format", "spdx-json", f"oci:{layout}:pkgs")
    index = json.loads((layout / "index.json").read_bytes())
    referrers = [d for d in index["manifests"] if d.get("artifactType") == "application/spdx+json"]
    assert len(referrers) == 1
    manifest_bytes = (layout / "blobs" / referrers[0]["digest"].replace(":", "/")).read_bytes()
    validate("manifest", manifest_bytes)
    manifest = json.loads(manifest_bytes)
    assert manifest["subject"]["digest"] == image["digest"]
    blob = (layout / "blobs" / manifest["layers"][0]["digest"].replace(":", "/")).read_bytes()
    assert json.loads(blob)["spdxVersion"] == "SPDX-2.3"
    assert json.loads(repro("inspect", "--json", f"oci:{layout}:pkgs").stdout)["digest"] == image["digest"]


def rpm_header(tags: list[tuple[int, int, object]]) -> bytes:
    """An RPM header blob (as rpmdb.sqlite stores it) from (tag, type, value) triples."""
    import struct

    index, data = b"", b""
    for tag, kind, value in tags:
        if kind == 4:
            while len(data) % 4:
                data += b"\0"
        offset = len(data)
        if kind == 6:
            data += value.encode() + b"\0"
            count = 1
        elif kind == 8:
            data += b"".join(v.encode() + b"\0" for v in value)
            count = len(value)
        else:
            data += b"".join(struct.pack(">i", v) for v in value)
            count = len(value)
        index += struct.pack(">iiii", tag, kind, offset, count)
    return struct.pack(">ii", len(tags), len(data)) + index + data


def test_rpm_sqlite_database(tmp_path):
    import sqlite3

    db = tmp_path / "rpmdb.sqlite"
    connection = sqlite3.connect(db)
    connection.execute("CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL)")
    for name, version, files in (("bash", "5.1.8", ["bash"]), ("zlib", "1.2.11", ["libz.so.1", "gone.so"])):
        header = rpm_header([(1000, 6, name), (1001, 6, version), (1002, 6, "6.el9"), (1014, 6, "GPL-3.0-or-later"),
                             (1022, 6, "x86_64"), (1116, 4, [0] * len(files)), (1117, 8, files),
                             (1118, 8, ["/usr/lib64/"])])
        connection.execute("INSERT INTO Packages (blob) VALUES (?)", (header,))
    connection.commit()
    connection.close()
    make_image(tmp_path / "layout", "rpm", [[
        E("etc/os-release", b'ID="rocky"\nVERSION_ID="9.3"\n'),
        E("var/lib/rpm/rpmdb.sqlite", db.read_bytes()),
        E("usr/lib64/bash", b"#!"), E("usr/lib64/libz.so.1", b"\x7fELF"),
    ]])
    doc = sbom(f"oci:{tmp_path}/layout:rpm", "cyclonedx-json")
    found = {c["purl"]: c for c in doc["components"]}
    assert set(found) == {"pkg:rpm/rocky/bash@5.1.8-6.el9?arch=x86_64&distro=rocky-9.3",
                          "pkg:rpm/rocky/zlib@1.2.11-6.el9?arch=x86_64&distro=rocky-9.3"}
    zlib = found["pkg:rpm/rocky/zlib@1.2.11-6.el9?arch=x86_64&distro=rocky-9.3"]
    assert ("repro:missing-file", "usr/lib64/gone.so") in {(p["name"], p["value"]) for p in zlib["properties"]}
    assert zlib["licenses"] == [{"expression": "GPL-3.0-or-later"}]


def test_pip_installed_packages_are_all_found(tmp_path):
    """Ground truth from a real pip installation: this test run's own virtualenv, imported as an image,
    lists every distribution `pip list` knows, with its version."""
    import subprocess
    import sys

    site = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    listed = json.loads(subprocess.run([sys.executable, "-m", "pip", "list", "--format", "json"],
                                       capture_output=True, text=True, check=True).stdout)
    truth = {(p["name"].lower().replace("_", "-"), p["version"]) for p in listed
             if "editable_project_location" not in p}
    tree = tmp_path / "tree" / "usr" / "lib" / "python3" / "site-packages"
    tree.parent.mkdir(parents=True)
    import shutil

    shutil.copytree(site, tree, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    repro("convert", f"rootfs:{tmp_path}/tree", f"oci:{tmp_path}/layout:pip")
    doc = sbom(f"oci:{tmp_path}/layout:pip", "cyclonedx-json")
    found = {(c["name"].lower().replace("_", "-"), c["version"]) for c in doc["components"]
             if c["purl"].startswith("pkg:pypi/")}
    assert truth <= found, truth - found
