"""Python distributions: *.dist-info/METADATA (with RECORD hashes checked) and *.egg-info/PKG-INFO."""

from __future__ import annotations

import base64
import csv
import io
import re

from packageurl import PackageURL

from repro.confined import clean_path
from sbom.catalogers.package import Package, layer_of, spdx_expression

_CLASSIFIER = re.compile(r"^License :: (?:OSI Approved :: )?(.+)$")
_CLASSIFIER_TO_SPDX = {
    "MIT License": "MIT",
    "BSD License": "BSD-3-Clause",
    "Apache Software License": "Apache-2.0",
    "Python Software Foundation License": "PSF-2.0",
    "Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
    "GNU General Public License v3 (GPLv3)": "GPL-3.0-only",
    "ISC License (ISCL)": "ISC",
    "GNU Lesser General Public License v3 (LGPLv3)": "LGPL-3.0-only",
}


def wanted(path: str) -> bool:
    return path.endswith((".dist-info/METADATA", ".dist-info/RECORD", ".egg-info/PKG-INFO"))


def _metadata(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(": ")
        if sep and not line.startswith((" ", "\t")):
            out.setdefault(key, []).append(value.strip())
    return out


def catalog(scan, distro: dict[str, str]) -> list[Package]:
    records = scan.by_path()
    out = []
    for path in sorted(p for p in scan.contents if p.endswith((".dist-info/METADATA", ".egg-info/PKG-INFO"))):
        meta = _metadata(scan.contents[path].decode(errors="replace"))
        name, version = (meta.get("Name") or [""])[0], (meta.get("Version") or [""])[0]
        if not name:
            continue
        purl = PackageURL("pypi", None, name.lower().replace("_", "-"), version).to_string()
        package = Package("pypi", name, version, purl, database=path.rpartition("/")[0])
        package.layer = layer_of(records, path)
        names = meta.get("License-Expression") or []
        if not names:
            classifiers = [m.group(1) for c in meta.get("Classifier", []) if (m := _CLASSIFIER.match(c))]
            names = [_CLASSIFIER_TO_SPDX.get(c, c) for c in classifiers] or [
                v for v in meta.get("License", []) if len(v) < 100
            ]
        package.licenses, package.license_text = spdx_expression(names)
        record_path = path.rpartition("/")[0] + "/RECORD"
        if record_path in scan.contents:
            site = path.rpartition("/")[0].rpartition("/")[0]
            for row in csv.reader(io.StringIO(scan.contents[record_path].decode(errors="replace"))):
                if not row or not row[0]:
                    continue
                file_path = clean_path(row[0] if row[0].startswith("/") else f"{site}/{row[0]}")
                resolved, record = scan.find(file_path)
                package.files.append(resolved)
                if len(row) > 1 and row[1].startswith("sha256="):
                    expected = base64.urlsafe_b64decode(row[1][7:] + "==").hex()
                    if record is None:
                        package.missing.append(file_path)
                    elif record.sha256 and record.sha256 != expected:
                        package.modified.append(file_path)
        out.append(package)
    return out


def link_to_debian(packages: list[Package]) -> None:
    """A Python distribution installed by a Debian package is marked as part of it, not listed apart."""
    owner: dict[str, str] = {}
    for package in packages:
        if package.ecosystem == "deb":
            for path in package.files:
                owner[path] = package.purl
    for package in packages:
        if package.ecosystem == "pypi":
            deb = (
                owner.get(package.database + "/METADATA")
                or owner.get(package.database + "/PKG-INFO")
                or owner.get(package.database)
            )
            if deb:
                package.part_of = deb
