"""RPM packages from the sqlite database (var/lib/rpm/rpmdb.sqlite, used since RPM 4.16).

Each row of the Packages table is an RPM header blob: a count of index entries, the size of the data
store, 16-byte big-endian entries (tag, type, offset, count), then the data. The older Berkeley DB
`Packages` file is recognised and reported as unsupported (no reader for BDB is in Python's standard
library; images that still use it are RHEL/CentOS 7 and older).
"""

from __future__ import annotations

import sqlite3
import struct
import tempfile
from collections.abc import Iterator

from packageurl import PackageURL

from repro.confined import clean_path
from sbom.catalogers.package import Package, from_database, spdx_expression

SQLITE_DB = "var/lib/rpm/rpmdb.sqlite"
BDB = ("var/lib/rpm/Packages",)
TAG_NAME, TAG_VERSION, TAG_RELEASE, TAG_EPOCH, TAG_LICENSE, TAG_ARCH = 1000, 1001, 1002, 1003, 1014, 1022
TAG_DIRINDEXES, TAG_BASENAMES, TAG_DIRNAMES = 1116, 1117, 1118
STRING, STRING_ARRAY, I18NSTRING, INT32 = 6, 8, 9, 4


def wanted(path: str) -> bool:
    return path == SQLITE_DB


def parse_header(blob: bytes) -> dict[int, object]:
    """The tags of an RPM header blob that the cataloger uses."""
    count, size = struct.unpack_from(">ii", blob, 0)
    if count < 0 or size < 0 or 8 + 16 * count + size > len(blob):
        raise ValueError("malformed header")
    data = 8 + 16 * count
    out: dict[int, object] = {}
    for i in range(count):
        tag, kind, offset, n = struct.unpack_from(">iiii", blob, 8 + 16 * i)
        if tag not in (TAG_NAME, TAG_VERSION, TAG_RELEASE, TAG_EPOCH, TAG_LICENSE, TAG_ARCH, TAG_DIRINDEXES,
                       TAG_BASENAMES, TAG_DIRNAMES):
            continue
        start = data + offset
        if kind in (STRING, I18NSTRING):
            out[tag] = blob[start:blob.index(b"\0", start)].decode(errors="replace")
        elif kind == STRING_ARRAY:
            values, position = [], start
            for _ in range(n):
                end = blob.index(b"\0", position)
                values.append(blob[position:end].decode(errors="replace"))
                position = end + 1
            out[tag] = values
        elif kind == INT32:
            out[tag] = list(struct.unpack_from(f">{n}i", blob, start))
    return out


def catalog(scan, distro: dict[str, str]) -> list[Package]:
    return from_database(scan, SQLITE_DB, lambda data: _packages(scan, data, distro))


def _packages(scan, data: bytes, distro: dict[str, str]) -> Iterator[Package]:
    with tempfile.NamedTemporaryFile(suffix=".sqlite") as tmp:
        tmp.write(data)
        tmp.flush()
        connection = sqlite3.connect(f"file:{tmp.name}?mode=ro", uri=True)
        try:
            rows = connection.execute("SELECT blob FROM Packages").fetchall()
        except sqlite3.DatabaseError:
            return
        finally:
            connection.close()
    for (blob,) in rows:
        try:
            tags = parse_header(bytes(blob))
        except (ValueError, struct.error):
            continue
        name = str(tags.get(TAG_NAME, ""))
        if not name or name == "gpg-pubkey":
            continue
        epoch = tags.get(TAG_EPOCH)
        version = f"{tags.get(TAG_VERSION, '')}-{tags.get(TAG_RELEASE, '')}".strip("-")
        qualifiers = {"arch": str(tags[TAG_ARCH])} if tags.get(TAG_ARCH) else {}
        if epoch:
            qualifiers["epoch"] = str(epoch[0])  # type: ignore[index]
        if distro.get("ID"):
            qualifiers["distro"] = f"{distro['ID']}-{distro.get('VERSION_ID', '')}".rstrip("-")
        purl = PackageURL("rpm", distro.get("ID") or None, name, version, qualifiers).to_string()
        package = Package("rpm", name, version, purl, database=SQLITE_DB)
        package.licenses, package.license_text = spdx_expression([str(tags.get(TAG_LICENSE, ""))])
        dirs = tags.get(TAG_DIRNAMES) or []
        pairs = zip(tags.get(TAG_BASENAMES) or [], tags.get(TAG_DIRINDEXES) or [], strict=False)
        package.add_files(scan, [clean_path(f"{dirs[index]}{base}") for base, index in pairs])  # type: ignore[index]
        yield package


def uses_berkeley_db(scan) -> bool:
    return any(path in scan.by_path() for path in BDB) and SQLITE_DB not in scan.contents
