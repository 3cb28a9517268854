"""Alpine packages: /lib/apk/db/installed."""

from __future__ import annotations

from collections.abc import Iterator

from packageurl import PackageURL

from sbom.catalogers.package import Package, from_database, spdx_expression

INSTALLED = "lib/apk/db/installed"


def wanted(path: str) -> bool:
    return path == INSTALLED


def catalog(scan, distro: dict[str, str]) -> list[Package]:
    return from_database(scan, INSTALLED, lambda data: _packages(scan, data, distro))


def _packages(scan, data: bytes, distro: dict[str, str]) -> Iterator[Package]:
    for block in data.decode(errors="replace").split("\n\n"):
        fields: dict[str, str] = {}
        files: list[str] = []
        directory = ""
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if not sep:
                continue
            if key == "F":
                directory = value
            elif key == "R":
                files.append(f"{directory}/{value}" if directory else value)
            else:
                fields.setdefault(key, value)
        if "P" not in fields:
            continue
        qualifiers = {"arch": fields["A"]} if fields.get("A") else {}
        if distro.get("ID") == "alpine" and distro.get("VERSION_ID"):
            qualifiers["distro"] = f"alpine-{distro['VERSION_ID']}"
        purl = PackageURL("apk", "alpine", fields["P"], fields.get("V", ""), qualifiers).to_string()
        package = Package("apk", fields["P"], fields.get("V", ""), purl, database=INSTALLED)
        package.licenses, package.license_text = spdx_expression([fields.get("L", "")])
        package.add_files(scan, files)
        yield package
