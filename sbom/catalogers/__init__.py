"""Package catalogers: each reads one kind of package database from the flattened image.

They see the image through one Scan (sbom/files.py): whiteouts are already applied, so a package
removed in an upper layer is not reported. Each package carries its purl, its licenses as an SPDX
expression where one parses, its files, the layer that introduced it and any file that no longer
matches what its database recorded.
"""

from __future__ import annotations

from sbom.catalogers import apk, dpkg, npm, python, rpm
from sbom.catalogers.package import Package

CATALOGERS = (dpkg, apk, rpm, python, npm)


def catalog(scan, distro: dict[str, str]) -> list[Package]:
    packages: list[Package] = []
    for module in CATALOGERS:
        packages.extend(module.catalog(scan, distro))
    python.link_to_debian(packages)
    return sorted(packages, key=lambda p: (p.ecosystem, p.name, p.version))


def wanted(path: str) -> bool:
    """The files whose content the catalogers read (asked for every file of the image)."""
    if path in ("etc/os-release", "usr/lib/os-release"):
        return True
    return dpkg.wanted(path) or apk.wanted(path) or rpm.wanted(path) or python.wanted(path) or npm.wanted(path)


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
