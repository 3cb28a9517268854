"""The file records of one scan, by path: in memory up to a budget, beyond it in a temporary database.

A record is a few hundred bytes in Python; an image of millions of files would hold them all, since
the listing is sorted by path and the catalogers look files up by name after the scan. Past
MEMORY_RECORDS the records go to SQLite's private temporary database (on disk under TMPDIR, deleted
when closed, its page cache bounded), which answers both: lookups by key and the listing in byte order
of the path (the key is the path's bytes, compared as memcmp). Small images never pay for it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

MEMORY_RECORDS = 65536
CACHE_KIB = 8192
BATCH = 2048

_COLUMNS = "path, type, mode, uid, gid, size, sha256, target, layer, mtime, xattrs"
_SCHEMA = f"""
CREATE TABLE files (key BLOB PRIMARY KEY, {_COLUMNS}, md5) WITHOUT ROWID;
CREATE TABLE links (key BLOB PRIMARY KEY, target BLOB) WITHOUT ROWID;
"""


@dataclass(slots=True)
class FileRecord:
    """One file of the flattened image, as `repro hash --files` lists it."""

    path: str
    type: str
    mode: str
    uid: int
    gid: int
    size: int
    sha256: str
    target: str
    layer: int
    mtime: int = 0
    xattrs: dict[str, str] | None = None

    def to_json(self) -> dict:
        out = {"path": self.path, "type": self.type, "mode": self.mode, "uid": self.uid, "gid": self.gid,
               "size": self.size, "sha256": self.sha256, "target": self.target, "layer": self.layer,
               "mtime": self.mtime}
        if self.xattrs is not None:
            out["xattrs"] = dict(self.xattrs)
        return out


def _key(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


class RecordStore:
    """Records by their raw path (as the merged view names them); a later record of a path replaces it."""

    def __init__(self, limit: int | None = None) -> None:
        self._limit = MEMORY_RECORDS if limit is None else limit
        self._records: dict[str, FileRecord] = {}
        self._md5: dict[str, str] = {}
        self._links: list[tuple[str, str]] = []  # (hardlink, the path it names)
        self._db: sqlite3.Connection | None = None
        self._batch: list[tuple] = []

    @property
    def spilled(self) -> bool:
        return self._db is not None

    def add(self, path: str, record: FileRecord, md5: str | None = None, link_target: str | None = None) -> None:
        """Keep `record` under `path`; `md5` of a regular file's content; `link_target`: the path a
        hardlink names, whose size and sha256 it takes (see finish)."""
        if self._db is None:
            self._records[path] = record
            if md5 is not None:
                self._md5[path] = md5
            if link_target is not None:
                self._links.append((path, link_target))
            if len(self._records) > self._limit:
                self._spill()
            return
        self._batch.append((_key(path), *_row(record), md5))
        if link_target is not None:
            self._db.execute("INSERT OR REPLACE INTO links VALUES (?, ?)", (_key(path), _key(link_target)))
        if len(self._batch) >= BATCH:
            self._flush()

    def _spill(self) -> None:
        db = sqlite3.connect("", isolation_level=None)  # "": private, on disk when large, gone when closed
        db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        db.execute("PRAGMA journal_mode = OFF")
        db.execute("PRAGMA synchronous = OFF")
        db.executescript(_SCHEMA)
        db.execute("BEGIN")
        self._db = db
        for path, record in self._records.items():
            self._batch.append((_key(path), *_row(record), self._md5.get(path)))
            if len(self._batch) >= BATCH:
                self._flush()
        self._flush()
        db.executemany("INSERT OR REPLACE INTO links VALUES (?, ?)",
                       ((_key(path), _key(target)) for path, target in self._links))
        self._records, self._md5, self._links = {}, {}, []

    def _flush(self) -> None:
        if self._batch and self._db is not None:
            self._db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                 self._batch)
        self._batch = []

    def finish(self) -> None:
        """After the scan: a hardlink is the file it names, with that file's size and sha256."""
        if self._db is None:
            for path, target in self._links:
                found = self._records.get(target)
                if found is not None:
                    record = self._records[path]
                    record.sha256, record.size = found.sha256, found.size
            self._links = []
            return
        self._flush()
        self._db.execute("""
            UPDATE files SET sha256 = named.sha256, size = named.size
            FROM (SELECT links.key AS key, t.sha256 AS sha256, t.size AS size
                  FROM links JOIN files AS t ON t.key = links.target) AS named
            WHERE files.key = named.key""")
        self._db.execute("COMMIT")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # --- lookups (the catalogers) ----------------------------------------------------------
    def get(self, path: str) -> FileRecord | None:
        if self._db is None:
            return self._records.get(path)
        self._flush()
        row = self._db.execute(f"SELECT {_COLUMNS} FROM files WHERE key = ?", (_key(path),)).fetchone()
        return _record(row) if row is not None else None

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and self.get(path) is not None

    def __getitem__(self, path: str) -> FileRecord:
        record = self.get(path)
        if record is None:
            raise KeyError(path)
        return record

    def md5(self, path: str) -> str | None:
        """The md5 of the regular file at `path` (kept when the scan was asked for them)."""
        if self._db is None:
            return self._md5.get(path)
        self._flush()
        row = self._db.execute("SELECT md5 FROM files WHERE key = ?", (_key(path),)).fetchone()
        return row[0] if row is not None else None

    def sorted(self) -> Iterator[FileRecord]:
        """Every record, in byte order of the path."""
        if self._db is None:
            records = self._records
            for path in sorted(records, key=_key):
                yield records[path]
            return
        self._flush()
        for row in self._db.execute(f"SELECT {_COLUMNS} FROM files ORDER BY key"):
            yield _record(row)


def _row(record: FileRecord) -> tuple:
    xattrs = json.dumps(record.xattrs, sort_keys=True) if record.xattrs is not None else None
    return (record.path, record.type, record.mode, record.uid, record.gid, record.size, record.sha256,
            record.target, record.layer, record.mtime, xattrs)


def _record(row: tuple) -> FileRecord:
    *fields, xattrs = row
    return FileRecord(*fields, xattrs=json.loads(xattrs) if xattrs is not None else None)
