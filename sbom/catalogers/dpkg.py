"""Debian packages: /var/lib/dpkg/status (and distroless /var/lib/dpkg/status.d/*), their file
lists and md5sums, and /usr/share/doc/PKG/copyright for licenses.

The paths dpkg recorded are the ones the packages shipped (/bin/sh); a merged-/usr image holds them
under its directory links (bin -> usr/bin), so each is resolved through the image's own links before
it is looked up.
"""

from __future__ import annotations

from packageurl import PackageURL

from repro.confined import clean_path
from repro.flatten import ancestors
from sbom.catalogers.package import Package
from sbom.deb822 import paragraphs
from sbom.licenses import copyright_licenses

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


def catalog(scan, distro: dict[str, str]) -> list[Package]:
    sources = [STATUS] if STATUS in scan.contents else []
    sources += sorted(p for p in scan.contents if p.startswith(STATUS_D))
    records = scan.by_path()
    out = []
    for source in sources:
        for fields in paragraphs(scan.contents[source].decode(errors="replace")):
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
                listed = [clean_path(line.strip()) for line in listing.decode(errors="replace").splitlines()]
                # dpkg lists the directories a package has files in; a linked one (bin) is one of them.
                parents = {parent for path in listed for parent in ancestors(path)}
                for path in listed:
                    if not path or path in parents:
                        continue
                    resolved, record = scan.find(path)
                    if record is None or record.type != "dir":
                        package.files.append(resolved)
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
                    resolved, record = scan.find(path)
                    if record is None:
                        package.missing.append(path)
                    elif record.type == "file" and scan.md5(resolved) not in (None, digest):
                        package.modified.append(path)
            copyright_text = scan.contents.get(scan.resolve(f"usr/share/doc/{name}/copyright"))
            if copyright_text:
                found = copyright_licenses(copyright_text.decode(errors="replace"))
                package.licenses, package.license_refs = found.expression, dict(found.refs)
                package.license_text = found.source
            out.append(package)
    return out
