"""SBOMs: valid SPDX 2.3 and CycloneDX 1.6, the right packages from synthetic databases, files checked
against what the databases recorded, deterministic bytes, and attachment as an OCI referrer."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from repro import open as open_reference
from sbom import record_store, spdx
from sbom.catalogers.package import Package
from sbom.generate import generate
from sbom.licenses import copyright_licenses, expression
from sbom.owners import files_with_packages
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
    text = repro("sbom", "--format", "cyclonedx-json", f"oci:{sbom_layout}:pkgs").stdout
    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    assert errors is None, errors


def test_spdx_validates(sbom_layout, tmp_path):
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

    site = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    listed = json.loads(subprocess.run([sys.executable, "-m", "pip", "list", "--format", "json"],
                                       capture_output=True, text=True, check=True).stdout)
    truth = {(p["name"].lower().replace("_", "-"), p["version"]) for p in listed
             if "editable_project_location" not in p}
    tree = tmp_path / "tree" / "usr" / "lib" / "python3" / "site-packages"
    tree.parent.mkdir(parents=True)

    shutil.copytree(site, tree, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    repro("convert", f"rootfs:{tmp_path}/tree", f"oci:{tmp_path}/layout:pip")
    doc = sbom(f"oci:{tmp_path}/layout:pip", "cyclonedx-json")
    found = {(c["name"].lower().replace("_", "-"), c["version"]) for c in doc["components"]
             if c["purl"].startswith("pkg:pypi/")}
    assert truth <= found, truth - found


LINKED_STATUS = b"Package: foo\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1\n"
LINKED_COPYRIGHT = COPYRIGHT.replace("License: Expat\n", "License: Apache-2 with LLVM exception\n")


def linked_entries() -> list[E]:
    """A merged-/usr tree whose links are absolute (bin -> /usr/bin): resolved inside the image, they
    reach the package's files; followed on the host, they would not."""
    return [
        E("bin", kind="symlink", target="/usr/bin"),
        E("usr/bin/tool", b"tool"),
        E("usr/share/doc/bar/copyright", LINKED_COPYRIGHT.encode()),
        E("usr/share/doc/foo", kind="symlink", target="/usr/share/doc/bar"),
        E("loop", kind="symlink", target="loop2"),
        E("loop2", kind="symlink", target="/loop"),
        E("var/lib/dpkg/status", LINKED_STATUS),
        E("var/lib/dpkg/info/foo.list", b"/bin\n/bin/tool\n/bin/gone\n/loop/x\n/usr/share/doc/foo\n"),
        E("var/lib/dpkg/info/foo.md5sums", f"{hashlib.md5(b'tool').hexdigest()}  bin/tool\n"
                                           f"{hashlib.md5(b'x').hexdigest()}  bin/gone\n"
                                           f"{hashlib.md5(b'x').hexdigest()}  loop/x\n".encode()),
    ]


def _write_tree(root: Path, entries: list[E]) -> None:
    for e in entries:
        path = root / e.path
        path.parent.mkdir(parents=True, exist_ok=True)
        if e.kind == "symlink":
            os.symlink(e.target, path)
        else:
            path.write_bytes(e.content or b"")


@pytest.mark.parametrize("form", ["oci", "rootfs"])
def test_package_paths_resolve_through_the_image_links(tmp_path, form):
    if form == "oci":
        make_image(tmp_path / "layout", "linked", [linked_entries()])
        ref = f"oci:{tmp_path}/layout:linked"
    else:
        _write_tree(tmp_path / "tree", linked_entries())
        ref = f"rootfs:{tmp_path}/tree"
    doc = sbom(ref, "cyclonedx-json")
    (foo,) = doc["components"]
    properties = {(p["name"], p["value"]) for p in foo["properties"]}
    # bin/tool is there through bin -> /usr/bin; bin/gone is not; loop/x goes round a link loop.
    assert {v for k, v in properties if k == "repro:missing-file"} == {"bin/gone", "loop/x"}
    assert not {v for k, v in properties if k == "repro:modified-file"}
    # The copyright file is found through usr/share/doc/foo -> /usr/share/doc/bar.
    assert foo["licenses"] == [{"expression": "Apache-2.0 WITH LLVM-exception AND GPL-2.0-or-later"}]


@pytest.mark.parametrize(("field", "expected"), [
    ("Apache-2", "Apache-2.0"),
    ("GPL-2+", "GPL-2.0-or-later"),
    ("GPL-2", "GPL-2.0-only"),
    ("Artistic-2", "Artistic-2.0"),
    ("Artistic", "Artistic-1.0-Perl"),
    ("LGPL-2.1+", "LGPL-2.1-or-later"),
    ("LGPLv2.1+", "LGPL-2.1-or-later"),
    ("BSD-3-clause", "BSD-3-Clause"),
    ("Expat", "MIT"),
    ("zlib", "Zlib"),
    ("GFDL-NIV-1.3+", "GFDL-1.3-no-invariants-or-later"),
    ("GPL-3+ with Bison-2.2 exception", "GPL-3.0-or-later WITH Bison-exception-2.2"),
    ("GPL-3+ with Bison exception", "GPL-3.0-or-later WITH Bison-exception-2.2"),
    ("GPL-2+ with Autoconf exception", "GPL-2.0-or-later WITH Autoconf-exception-2.0"),
    ("GPL-3+-autoconf-exception", "GPL-3.0-or-later WITH Autoconf-exception-3.0"),
    ("GPL-3+ with GCC-Runtime-3.1 exception", "GPL-3.0-or-later WITH GCC-exception-3.1"),
    ("GPL-2 with Linux-syscall-note exception", "GPL-2.0-only WITH Linux-syscall-note"),
    ("GPL-1+ or Artistic", "Artistic-1.0-Perl OR GPL-1.0-or-later"),
    ("GPL-1+ or Artistic, and Expat", "(Artistic-1.0-Perl OR GPL-1.0-or-later) AND MIT"),
    ("LGPLv3+_or_GPLv2+", "GPL-2.0-or-later OR LGPL-3.0-or-later"),
    ("ISC and/or LGPL-2.1+", "ISC OR LGPL-2.1-or-later"),
    ("Expat and MIT or MIT", "MIT"),
    ("GPL-2+ with OpenSSL exception", "LicenseRef-GPL-2-plus-with-OpenSSL-exception"),
    ("public-domain", "LicenseRef-public-domain"),
])
def test_debian_license_names(field, expected):
    assert expression(field, {"public-domain": "No rights reserved."})[0] == expected


def test_licenses_of_copyright_files_that_are_not_machine_readable():
    gnu = ("This library is free software; you can redistribute it and/or\nmodify it under the terms of the GNU "
           "Lesser General Public\n License as published by the Free Software Foundation; either\n version 2.1 of "
           "the License, or (at your option) any later version.\n\nThe utilities are under the GNU General Public "
           "License as published\nby the Free Software Foundation; version 2 of the License.\nOn Debian systems, "
           "see `/usr/share/common-licenses/GPL-2'.\n")
    assert copyright_licenses(gnu).expression == "GPL-2.0-only AND LGPL-2.1-or-later"
    mit = "Copyright 2001 Someone\n\nPermission is hereby granted, free of charge, to any person obtaining a copy\n"
    assert copyright_licenses(mit).expression == "MIT"
    bsd = ("Redistribution and use in source and binary forms, with or without\nmodification, are permitted provided "
           "that ...\n3. Neither the name of the University nor the names of its contributors may be used")
    assert copyright_licenses(bsd).expression == "BSD-3-Clause"
    pd = "This library (libselinux) is public domain software, i.e. not copyrighted.\n"
    found = copyright_licenses(pd)
    assert found.expression == "LicenseRef-public-domain" and found.refs["LicenseRef-public-domain"]
    assert copyright_licenses("Nothing to see here.\n").expression == ""


def test_spdx_declares_every_license_ref_once_per_text(tmp_path):
    packages = [
        Package("deb", "a", "1", "pkg:deb/debian/a@1", licenses="LicenseRef-permissive AND MIT",
                license_refs={"LicenseRef-permissive": "Do what you like."}),
        Package("deb", "b", "1", "pkg:deb/debian/b@1", licenses="GPL-2.0-only OR LicenseRef-permissive",
                license_refs={"LicenseRef-permissive": "Anything goes."}),
        Package("npm", "c", "1", "pkg:npm/c@1", licenses="LicenseRef-Foo", license_text="Foo License"),
    ]
    out = tmp_path / "doc.spdx.json"
    out.write_bytes(spdx.document("x", "sha256:" + "0" * 64, "2024-01-01T00:00:00Z", packages, "repro-test"))
    messages = validate_full_spdx_document(parse_file(str(out)))
    assert [m.validation_message for m in messages] == []
    doc = json.loads(out.read_text())
    texts = {x["licenseId"]: x["extractedText"] for x in doc["hasExtractedLicensingInfos"]}
    assert sorted(texts.values()) == ["Anything goes.", "Do what you like.", "Foo License"]
    declared = {p["name"]: p.get("licenseDeclared") for p in doc["packages"]}
    assert declared["a"] != "LicenseRef-permissive AND MIT" and declared["a"].endswith(" AND MIT")
    assert declared["c"] == "LicenseRef-Foo"


def test_a_scan_past_its_memory_budget_gives_the_same_listing_and_sbom(tmp_path, monkeypatch):
    """Past MEMORY_RECORDS the records go to a temporary database (memory stays bounded for images of
    millions of files): the listing, its order, the hardlinks' hashes, the catalogers' lookups through
    linked directories and the md5 checks come out the same as from memory."""
    odd = "srv/caf\udce9"  # a name that is not UTF-8: sorted by its bytes, shown escaped
    linked = [dataclasses.replace(e, path="var/lib/dpkg/status.d/foo") if e.path == "var/lib/dpkg/status" else e
              for e in linked_entries()]
    entries = [*layers()[0], *linked, E(odd, b"latin-1 name"),
               E("srv/a-link", kind="hardlink", target="usr/bin/hello-tool"),
               E("srv/with-xattr", b"x", pax={"SCHILY.xattr.user.note": "kept"}),
               *[E(f"srv/many/{n:03}", str(n).encode()) for n in range(40)]]
    make_image(tmp_path / "layout", "big", [entries, layers()[1]])
    image = open_reference(f"oci:{tmp_path}/layout:big")

    def outputs() -> tuple[list[dict], bytes, bytes]:
        listing = list(files_with_packages(image))
        return (listing, generate(image, "spdx-json", "big"), generate(image, "cyclonedx-json", "big"))

    in_memory = outputs()
    spills = []
    original = record_store.RecordStore._spill
    monkeypatch.setattr(record_store, "MEMORY_RECORDS", 5)
    monkeypatch.setattr(record_store.RecordStore, "_spill", lambda self: spills.append(1) or original(self))
    on_disk = outputs()
    assert len(spills) >= 3  # the listing and both documents each went past the budget (a replan scans again)
    assert on_disk == in_memory
    listing = {r["path"]: r for r in in_memory[0]}
    assert listing["srv/a-link"]["sha256"] == hashlib.sha256(b"changed after install").hexdigest()
    assert listing["srv/with-xattr"]["xattrs"] == {"user.note": "kept"}
    assert "srv/caf\\xe9" in listing
    paths = [r["path"].encode("utf-8", "surrogateescape") for r in in_memory[0]]
    assert paths == sorted(paths)
    assert listing["usr/bin/hello-tool"]["package"].startswith("pkg:deb/debian/hello-tool@")
    assert listing["usr/bin/tool"]["package"].startswith("pkg:deb/debian/foo@")


@pytest.mark.parametrize("form", ["oci", "rootfs"])
def test_large_files_are_checked_against_md5sums(tmp_path, form):
    """Files of several chunks are checked against dpkg's md5sums: a changed one is reported, an intact
    one is not, whether read from layers or from a directory in place."""
    big = bytes(range(256)) * 4096  # 1 MiB
    entries = [
        E("var/lib/dpkg/status", b"Package: big\nStatus: install ok installed\nArchitecture: all\nVersion: 1\n"),
        E("var/lib/dpkg/info/big.list", b"/opt/intact\n/opt/changed\n/opt/small\n/opt/huge\n"),
        E("var/lib/dpkg/info/big.md5sums", (f"{hashlib.md5(big).hexdigest()}  opt/intact\n"
                                            f"{hashlib.md5(big).hexdigest()}  opt/changed\n"
                                            f"{hashlib.md5(b'small').hexdigest()}  opt/small\n"
                                            f"{hashlib.md5(big * 20).hexdigest()}  opt/huge\n").encode()),
        E("opt/intact", big),
        E("opt/changed", big[:-1] + b"!"),
        E("opt/small", b"small"),
        E("opt/huge", big * 20),
    ]
    if form == "oci":
        make_image(tmp_path / "layout", "big", [entries])
        ref = f"oci:{tmp_path}/layout:big"
    else:
        _write_tree(tmp_path / "tree", entries)
        ref = f"rootfs:{tmp_path}/tree"
    (component,) = sbom(ref, "cyclonedx-json")["components"]
    properties = {(p["name"], p["value"]) for p in component["properties"]}
    assert {v for k, v in properties if k == "repro:modified-file"} == {"opt/changed"}
    assert not {v for k, v in properties if k == "repro:missing-file"}
