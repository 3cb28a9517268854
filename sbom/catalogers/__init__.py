"""Package catalogers: each reads one kind of package database from the flattened image.

They see the image through one Scan (sbom/files.py): whiteouts are already applied, so a package
removed in an upper layer is not reported. Each package carries its purl, its licenses as an SPDX
expression where one parses, its files, the layer that introduced it and any file that no longer
matches what its database recorded.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from sbom.licenses import from_names


@dataclass
class Package:
    ecosystem: str  # deb, rpm, apk, pypi, npm
    name: str
    version: str
    purl: str
    licenses: str = ""  # an SPDX expression, or "" when unknown
    license_text: str = ""  # what the package said, when it is not an SPDX expression
    license_refs: dict[str, str] = field(default_factory=dict)  # LicenseRef- in `licenses` -> its text
    files: list[str] = field(default_factory=list)
    layer: int = -1
    database: str = ""
    modified: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    part_of: str = ""  # the purl of a Debian package that installed this one

    @property
    def key(self) -> tuple[str, str, str]:
        return self.ecosystem, self.name, self.version


def spdx_expression(names: list[str]) -> tuple[str, str]:
    """(SPDX expression, original text) for license names; ("", "") when nothing usable is given.

    A whole expression that parses is kept as it is; otherwise each name becomes an SPDX identifier
    (Debian's short names and other common spellings are mapped) or a LicenseRef-. The original text
    is returned when a LicenseRef- was needed: it is that license's only description."""
    found = from_names(names)
    return found.expression, found.source


def catalog(scan, distro: dict[str, str]) -> list[Package]:
    from sbom.catalogers import apk, dpkg, npm, python, rpm

    packages: list[Package] = []
    for module in (dpkg, apk, rpm, python, npm):
        packages.extend(module.catalog(scan, distro))
    python.link_to_debian(packages)
    return sorted(packages, key=lambda p: (p.ecosystem, p.name, p.version))


@functools.cache
def _wanted_by() -> tuple:
    from sbom.catalogers import apk, dpkg, npm, python, rpm

    return dpkg.wanted, apk.wanted, rpm.wanted, python.wanted, npm.wanted


def wanted(path: str) -> bool:
    """The files whose content the catalogers read (asked for every file of the image)."""
    if path in ("etc/os-release", "usr/lib/os-release"):
        return True
    dpkg, apk, rpm, python, npm = _wanted_by()
    return dpkg(path) or apk(path) or rpm(path) or python(path) or npm(path)


def os_release(scan) -> dict[str, str]:
    for path in ("etc/os-release", "usr/lib/os-release"):
        data = scan.contents.get(path)
        if data:
            out = {}
            for line in data.decode(errors="replace").splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    out[key.strip()] = value.strip().strip('"')
            return out
    return {}
