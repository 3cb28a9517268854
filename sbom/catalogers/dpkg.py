"""Debian packages: /var/lib/dpkg/status (and distroless /var/lib/dpkg/status.d/*), their file
lists and md5sums, and the machine-readable /usr/share/doc/PKG/copyright for licenses."""

from __future__ import annotations

import re

from packageurl import PackageURL

from repro.confined import clean_path
from sbom.catalogers import Package, spdx_expression

STATUS = "var/lib/dpkg/status"
STATUS_D = "var/lib/dpkg/status.d/"
INFO = "var/lib/dpkg/info/"


def wanted(path: str) -> bool:
    return (
        path == STATUS
        or path.startswith(STATUS_D)
        or (path.startswith(INFO) and path.endswith((".list", ".md5sums")))
        or (path.startswith("usr/share/doc/") and path.endswith("/copyright"))
    )


def _paragraphs(text: str):
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        last = ""
        for line in block.splitlines():
            if line.startswith((" ", "\t")) and last:
                fields[last] += "\n" + line.strip()
            elif ":" in line:
                last, _, value = line.partition(":")
                fields[last] = value.strip()
        if fields:
            yield fields


def _copyright_licenses(text: str) -> list[str]:
    if "copyright-format" not in text.split("\n", 1)[0]:
        return []
    names = []
    for match in re.finditer(r"^License:[ \t]*(\S[^\n]*)", text, re.M):
        for name in re.split(r"\s+(?:or|and)\s+|\s*[|,]\s*", match.group(1).strip()):
            if name:
                names.append(name.strip())
    return names


def catalog(scan, distro: dict[str, str]) -> list[Package]:
    sources = [STATUS] if STATUS in scan.contents else []
    sources += sorted(p for p in scan.contents if p.startswith(STATUS_D))
    records = scan.by_path()
    out = []
    for source in sources:
        for fields in _paragraphs(scan.contents[source].decode(errors="replace")):
            status = fields.get("Status", "install ok installed")
            if not status.endswith(" installed") or "Package" not in fields:
                continue
            name, version, arch = fields["Package"], fields.get("Version", ""), fields.get("Architecture", "")
            qualifiers = {"arch": arch} if arch else {}
            if distro.get("ID"):
                qualifiers["distro"] = f"{distro['ID']}-{distro.get('VERSION_ID', '')}".rstrip("-")
            purl = PackageURL("deb", distro.get("ID", "debian"), name, version, qualifiers).to_string()
            package = Package("deb", name, version, purl, database=source)
            listing = scan.contents.get(f"{INFO}{name}:{arch}.list") or scan.contents.get(f"{INFO}{name}.list")
            list_path = (
                f"{INFO}{name}:{arch}.list" if f"{INFO}{name}:{arch}.list" in scan.contents else (f"{INFO}{name}.list")
            )
            if listing:
                for line in listing.decode(errors="replace").splitlines():
                    path = clean_path(line.strip())
                    record = records.get(path)
                    if path and (record is None or record.type != "dir"):
                        package.files.append(path)
            if list_path in records:
                package.layer = records[list_path].layer
            elif source in records:
                package.layer = records[source].layer
            sums = scan.contents.get(f"{INFO}{name}:{arch}.md5sums") or scan.contents.get(f"{INFO}{name}.md5sums")
            if sums:
                for line in sums.decode(errors="replace").splitlines():
                    digest, _, path = line.partition("  ")
                    path = path.strip()
                    if not path:
                        continue
                    if path not in records:
                        package.missing.append(path)
                    elif records[path].type == "file" and scan.md5.get(path) not in (None, digest):
                        package.modified.append(path)
            copyright_text = scan.contents.get(f"usr/share/doc/{name}/copyright")
            if copyright_text:
                package.licenses, package.license_text = spdx_expression(
                    _copyright_licenses(copyright_text.decode(errors="replace"))
                )
            out.append(package)
    return out
