"""What every cataloger makes: a Package, with its licenses and the files it installed.

A module of its own so that the catalogers (apk, dpkg, npm, python, rpm) and the package that runs them
all import it, and none imports the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
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

    def add_files(self, scan, paths: Iterable[str]) -> None:
        """The files its database lists, as the image resolves them; those the image lacks are missing."""
        for path in paths:
            resolved, record = scan.find(path)
            self.files.append(resolved)
            if record is None:
                self.missing.append(path)


def spdx_expression(names: list[str]) -> tuple[str, str]:
    """(SPDX expression, original text) for license names; ("", "") when nothing usable is given.

    A whole expression that parses is kept as it is; otherwise each name becomes an SPDX identifier
    (Debian's short names and other common spellings are mapped) or a LicenseRef-. The original text
    is returned when a LicenseRef- was needed: it is that license's only description."""
    found = from_names(names)
    return found.expression, found.source


def from_database(scan, path: str, read: Callable[[bytes], Iterator[Package]]) -> list[Package]:
    """The packages `read` finds in the package database at `path`, each marked with the layer that gave
    that database; none when the image has no such database."""
    data = scan.contents.get(path)
    if not data:
        return []
    layer = layer_of(scan.by_path(), path)
    packages = list(read(data))
    for package in packages:
        package.layer = layer
    return packages


def layer_of(records: dict, path: str) -> int:
    """The layer that gave the image `path` (a package database), -1 when the image lacks it."""
    return records[path].layer if path in records else -1
