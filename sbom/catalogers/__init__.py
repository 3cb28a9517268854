"""Package catalogers: each reads one kind of package database from the flattened image.

They see the image through one Scan (sbom/files.py): whiteouts are already applied, so a package
removed in an upper layer is not reported. Each package carries its purl, its licenses as an SPDX
expression where one parses, its files, the layer that introduced it and any file that no longer
matches what its database recorded.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from license_expression import get_spdx_licensing

_licensing = get_spdx_licensing()


@dataclass
class Package:
    ecosystem: str  # deb, rpm, apk, pypi, npm
    name: str
    version: str
    purl: str
    licenses: str = ""  # an SPDX expression, or "" when unknown
    license_text: str = ""  # what the package said, when it is not an SPDX expression
    files: list[str] = field(default_factory=list)
    layer: int = -1
    database: str = ""
    modified: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    part_of: str = ""  # the purl of a Debian package that installed this one

    @property
    def key(self) -> tuple[str, str, str]:
        return self.ecosystem, self.name, self.version


# Debian's short license names (copyright-format 1.0) and their SPDX identifiers.
_DEBIAN_NAMES = {
    "expat": "MIT", "mit": "MIT", "bsd-2-clause": "BSD-2-Clause", "bsd-3-clause": "BSD-3-Clause",
    "bsd-4-clause": "BSD-4-Clause", "isc": "ISC", "zlib": "Zlib", "apache-2.0": "Apache-2.0", "mpl-2.0": "MPL-2.0",
    "psf-2": "PSF-2.0", "python": "Python-2.0", "artistic": "Artistic-1.0-Perl", "cc0-1.0": "CC0-1.0",
    "gpl-1": "GPL-1.0-only", "gpl-1+": "GPL-1.0-or-later", "gpl-2": "GPL-2.0-only", "gpl-2+": "GPL-2.0-or-later",
    "gpl-3": "GPL-3.0-only", "gpl-3+": "GPL-3.0-or-later", "lgpl-2": "LGPL-2.0-only", "lgpl-2+": "LGPL-2.0-or-later",
    "lgpl-2.1": "LGPL-2.1-only", "lgpl-2.1+": "LGPL-2.1-or-later", "lgpl-3": "LGPL-3.0-only",
    "lgpl-3+": "LGPL-3.0-or-later", "agpl-3": "AGPL-3.0-only", "agpl-3+": "AGPL-3.0-or-later",
    "gfdl-1.2": "GFDL-1.2-only", "gfdl-1.2+": "GFDL-1.2-or-later", "gfdl-1.3": "GFDL-1.3-only",
    "gfdl-1.3+": "GFDL-1.3-or-later", "bsl-1.0": "BSL-1.0", "unicode-dfs-2016": "Unicode-DFS-2016",
}


def _spdx_id(name: str) -> str:
    """One license name as an SPDX identifier, or a LicenseRef- when SPDX has none for it."""
    name = name.strip()
    try:
        parsed = _licensing.parse(name, validate=True, strict=True)
        if parsed is not None and " " not in str(parsed):
            return str(parsed)
    except Exception:  # not an SPDX identifier as written
        pass
    mapped = _DEBIAN_NAMES.get(name.lower())
    if mapped:
        return mapped
    safe = "".join(c if c.isalnum() or c in ".-" else "-" for c in name).strip("-")
    return f"LicenseRef-{safe or 'unknown'}"


def spdx_expression(names: list[str]) -> tuple[str, str]:
    """(SPDX expression, original text) for license names; ("", text) when nothing usable is given.

    A whole expression that parses is kept as it is; otherwise each name becomes an SPDX identifier
    (Debian's short names are mapped) or a LicenseRef-, joined with AND."""
    names = [n.strip() for n in names if n and n.strip()]
    if not names:
        return "", ""
    text = " AND ".join(sorted(set(names)))
    if len(names) == 1:
        try:
            parsed = _licensing.parse(names[0], validate=True, strict=False)
            if parsed is not None:
                return str(_licensing.dedup(parsed)), ""
        except Exception:  # fall back to names one by one
            pass
    ids = sorted({_spdx_id(n) for n in names})
    return " AND ".join(ids), text if any(i.startswith("LicenseRef-") for i in ids) else ""


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
