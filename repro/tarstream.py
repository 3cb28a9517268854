"""Reading a tar stream front to back (layers), faster than tarfile's stream mode.

tarfile's "r|" mode costs more Python per header and per read than inflating the layer does. This
reader parses the 512-byte headers itself, hands content out as slices of the chunks it reads, and
skips unread content by moving an offset. It gives tarfile.TarInfo objects and follows tarfile's
rules (ustar prefixes, GNU long names and links, pax extended and global headers, where the archive
ends), so callers see what tarfile would show them. GNU sparse files are refused.

Where tarfile would loop, recurse or quietly lose its place, this reader refuses: a negative or absurd
number (size, times, ids, device numbers), a GNU long name or pax header larger than MAX_EXTENSION, a
malformed pax record, a long chain of extension headers, or a NUL inside a name make the stream
"damaged" (a ReproError), so nothing can hide a member from the files that are hashed or extracted.

copy_tar_stream imports a foreign tar (tar:, squashfs, SIF, a Debian bootstrap) into a layer through
this reader: compressed or not, names cleaned, times clamped.
"""

from __future__ import annotations

import bz2
import io
import lzma
import math
import re
import struct
import tarfile
import zlib
from typing import BinaryIO

from repro.confined import clean_path
from repro.digest import RawReader, read_pieces
from repro.errors import ReproError
from repro.layers import GuardedReader, TarWriter, decompressed, sniff_compression

BLOCK = 512
CHUNK = 1 << 20
_ZERO_BLOCK = bytes(BLOCK)
_PAX_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
_LONG_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
# Types whose size field says nothing about data after the header (tarfile skips data of all others).
_NO_DATA = frozenset(tarfile.SUPPORTED_TYPES) - frozenset(tarfile.REGULAR_TYPES)
_PAX_LENGTH = re.compile(rb"(\d{1,20}) ")

MAX_EXTENSION = 1 << 20  # bytes in one GNU long name or link, or one pax header; also all global records
MAX_GLOBAL_RECORDS = 256  # every later member carries them: more would make each member cost more
MAX_CHAINED = 32  # extension headers in a row before a member (real archives have one to three)
MAX_SIZE = (1 << 63) - 1  # what an off_t, and Go's archive/tar, can hold
MAX_ID = 0xFFFFFFFE  # the largest uid or gid a Linux file can have (-1 means "unchanged" to chown)
MAX_DEVICE = (1 << 31) - 1  # os.makedev takes C ints
MAX_MODE = 0o7777777  # the largest octal number the mode field holds
MAX_MTIME = ((1 << 63) - 1) // 10**9  # seconds whose nanoseconds fit an int64 (1677 to 2262)


class TarDamaged(ReproError):
    """Not a tar stream, or a damaged one; `detail` says what is wrong, for callers that word it."""

    def __init__(self, message: str, hint: str, detail: str) -> None:
        super().__init__(message, hint)
        self.detail = detail


class _HeaderError(Exception):
    """A header that cannot be read; where it is decides whether the archive just ends there."""


class _EndOfArchive(_HeaderError):
    """A zero block: the archive's end."""


class _Missing(_HeaderError):
    """No header at all, or part of one: the data ends."""


class _Empty(_Missing):
    """No header at all."""


class _Invalid(_HeaderError):
    """A block that is not a header (bad checksum, a number that is not a number)."""


class _Subsequent(_HeaderError):
    """A bad header after an extension header (pax, GNU long name): always an error."""


def _round_up(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


def _text(field: bytes, encoding: str, errors: str) -> str:
    if not field or not field[0]:
        return ""
    end = field.find(b"\0")
    return (field if end < 0 else field[:end]).decode(encoding, errors)


_known_numbers: dict[bytes, int] = {}  # modes, owners, times and zeros repeat from header to header


def _number(field: bytes) -> int:
    """An octal number, or GNU's base-256 form (first byte 0x80, or 0xff for negative numbers)."""
    value = _known_numbers.get(field)
    if value is not None:
        return value
    if field[0] in (0x80, 0xFF):
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0xFF else value
    end = field.find(b"\0")
    try:
        value = int((field if end < 0 else field[:end]).decode("ascii").strip() or "0", 8)
    except ValueError:
        raise _Invalid("invalid header") from None
    if len(_known_numbers) < 4096:
        _known_numbers[field] = value
    return value


def _byte_sum(block: bytes) -> int:
    """The sum of a block's bytes, computed in C: Adler-32's first half is 1 plus the byte sum modulo
    65521, exact for 256 bytes (at most 65280)."""
    return (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2


def _signed_checksum(block: bytes) -> int:
    """The checksum as Sun's and NeXT's tars computed it, with signed bytes."""
    return 256 + sum(struct.unpack_from("148b8x356b", block))


def _parse(block: bytes, encoding: str, errors: str) -> tarfile.TarInfo:
    """One ustar/GNU header block, as tarfile.TarInfo.frombuf reads it."""
    if len(block) != BLOCK:
        raise _Empty("empty header") if not block else _Missing("truncated header")
    if block == _ZERO_BLOCK:
        raise _EndOfArchive("end of file header")
    checksum = _number(block[148:156])
    if checksum != _byte_sum(block) - sum(block[148:156]) + 256 and checksum != _signed_checksum(block):
        raise _Invalid("bad checksum")
    info = tarfile.TarInfo()
    name = _text(block[0:100], encoding, errors)
    info.mode = _number(block[100:108])
    info.uid = _number(block[108:116])
    info.gid = _number(block[116:124])
    info.size = _number(block[124:136])
    info.mtime = _number(block[136:148])
    info.chksum = checksum
    kind = info.type = block[156:157]
    info.linkname = _text(block[157:257], encoding, errors)
    info.uname = _text(block[265:297], encoding, errors)
    info.gname = _text(block[297:329], encoding, errors)
    info.devmajor = _number(block[329:337])
    info.devminor = _number(block[337:345])
    prefix = _text(block[345:500], encoding, errors)
    if kind == tarfile.AREGTYPE and name.endswith("/"):  # V7 tar's directories
        kind = info.type = tarfile.DIRTYPE
    if kind == tarfile.DIRTYPE:
        name = name.rstrip("/")
    if prefix and kind not in tarfile.GNU_TYPES:
        name = prefix + "/" + name
    info.name = name
    return info


def _apply_pax(info: tarfile.TarInfo, headers: dict[str, str]) -> None:
    """Let pax records override the header's fields, as tarfile does."""
    for keyword, value in headers.items():
        if keyword in tarfile.PAX_FIELDS:
            if keyword in tarfile.PAX_NUMBER_FIELDS:
                try:
                    value = tarfile.PAX_NUMBER_FIELDS[keyword](value)
                except ValueError:
                    value = 0
            if keyword == "path":
                info.name = value.rstrip("/")
            elif keyword == "linkpath":
                info.linkname = value
            else:
                setattr(info, keyword, value)
    info.pax_headers = headers.copy()


def _shown(name: str) -> str:
    return repr(name if len(name) <= 100 else name[:100] + "...")


def member_problem(info: tarfile.TarInfo) -> str:
    """Why a member's fields cannot be right ('' if they can): what tar readers would crash on, loop
    on (a negative size moves the reader backwards) or pass on to a file system that refuses them."""
    numbers = (("size", info.size, 0, MAX_SIZE), ("mode", info.mode, 0, MAX_MODE), ("uid", info.uid, 0, MAX_ID),
               ("gid", info.gid, 0, MAX_ID), ("devmajor", info.devmajor, 0, MAX_DEVICE),
               ("devminor", info.devminor, 0, MAX_DEVICE))
    for field, value, low, high in numbers:
        if not isinstance(value, int) or not low <= value <= high:
            return f"{_shown(info.name)}: {field} {value!r} is out of range"
    mtime = info.mtime
    if not isinstance(mtime, (int, float)) or not math.isfinite(mtime) or not -MAX_MTIME <= mtime <= MAX_MTIME:
        return f"{_shown(info.name)}: mtime {mtime!r} is out of range"
    if "\0" in info.name or "\0" in info.linkname:
        return f"{_shown(info.name)}: a NUL byte in its name or link target"
    return ""


class Content:
    """The content of one regular member: readable until the stream moves on to the next member."""

    __slots__ = ("_generation", "_stream")

    def __init__(self, stream: TarStream) -> None:
        self._stream = stream
        self._generation = stream._generation

    def _live(self) -> TarStream:
        if self._generation != self._stream._generation:
            raise ValueError("the tar stream has moved past this member")
        return self._stream

    def readable(self) -> bool:
        return True

    def readview(self, size: int = CHUNK) -> memoryview:
        """Up to `size` bytes without copying (fewer at a chunk boundary); empty at the end."""
        return self._live()._view(size)

    def read(self, size: int = -1) -> bytes:
        stream = self._live()
        return read_pieces(stream._view, stream._left if size is None or size < 0 else size)

    def readinto(self, buffer) -> int:
        view = self._live()._view(len(buffer))
        buffer[: len(view)] = view
        return len(view)

    def close(self) -> None:
        pass


class TarStream:
    """The members of a tar stream, in order, as tarfile.TarInfo; content() reads the current one.

    Errors are ReproErrors worded after `what`: a first header that cannot be read means the stream
    is not a tar stream; later damage (or data that ends inside a member) means it is damaged.
    Like tarfile, a zero block ends the archive, and so does an unreadable header after the first.
    """

    def __init__(self, source: BinaryIO, what: str, encoding: str = "utf-8", errors: str = "surrogateescape",
                 seekable: bool = False) -> None:
        """`seekable`: `source` is a file read from its start; content that is skipped is seeked over,
        so listing an archive's members reads only their headers."""
        self._read = getattr(source, "read1", None) or source.read
        self._seek = source.seek if seekable else None
        self._end = source.seek(0, 2) if seekable else 0
        if seekable:
            source.seek(0)
        self.what = what
        self.encoding = encoding
        self.errors = errors
        self._chunk: bytes = b""
        self._view_of = memoryview(b"")
        self._pos = 0
        self._offset = 0  # of the first byte of _chunk in the stream
        self._left = 0  # content bytes of the current member still unread
        self._after = 0  # bytes between the end of that content and the next header
        self._generation = 0
        self._globals: dict[str, str] = {}
        self._done = False

    def __iter__(self) -> TarStream:
        return self

    def __next__(self) -> tarfile.TarInfo:
        info = self.next()
        if info is None:
            raise StopIteration
        return info

    # --- bytes ---------------------------------------------------------------------------------

    def _fill(self) -> bool:
        """Make the next chunk current; False at the end of the data."""
        self._offset += len(self._chunk)
        data = self._read(CHUNK)
        self._chunk, self._view_of, self._pos = data, memoryview(data), 0
        return bool(data)

    def _take(self, size: int) -> bytes:
        """Up to `size` bytes (fewer only at the end of the data), as a copy."""
        pos = self._pos
        if pos + size <= len(self._chunk):
            self._pos = pos + size
            return self._chunk[pos : pos + size]
        parts = [self._chunk[pos:]]
        size -= len(parts[0])
        while size and self._fill():
            piece = self._chunk[:size]
            self._pos = len(piece)
            parts.append(piece)
            size -= len(piece)
        return b"".join(parts)

    def _discard(self, size: int) -> bool:
        """Skip `size` bytes; False if the data ends first."""
        if self._seek is not None and size > len(self._chunk) - self._pos:
            target = self._tell() + size
            if target > self._end:
                return False
            self._seek(target)
            self._offset, self._chunk, self._view_of, self._pos = target, b"", memoryview(b""), 0
            return True
        while size:
            available = len(self._chunk) - self._pos
            if size <= available:
                self._pos += size
                return True
            size -= available
            self._pos = len(self._chunk)
            if not self._fill():
                return False
        return True

    def _view(self, size: int) -> memoryview:
        """Content of the current member, up to `size` bytes from the current chunk."""
        size = min(size, self._left)
        if not size:
            return self._view_of[:0]
        if self._pos == len(self._chunk) and not self._fill():
            raise self._damaged("unexpected end of data")
        pos = self._pos
        end = min(pos + size, len(self._chunk))
        self._pos = end
        self._left -= end - pos
        return self._view_of[pos:end]

    def _tell(self) -> int:
        return self._offset + self._pos

    # --- members -------------------------------------------------------------------------------

    def _damaged(self, detail: str) -> TarDamaged:
        return TarDamaged(f"{self.what}: damaged tar stream ({detail})", "the layer is corrupt", detail)

    def content(self) -> Content:
        """A reader of the current member's content (regular files)."""
        return Content(self)

    def next(self) -> tarfile.TarInfo | None:
        """The next member, None at the end of the archive."""
        if self._done:
            return None
        self._generation += 1
        if not self._discard(self._left + self._after):
            raise self._damaged("unexpected end of data")
        self._left = self._after = 0
        start = self._tell()
        try:
            info, size = self._member()
        except _Subsequent as exc:
            raise self._error(start, str(exc)) from None
        except _HeaderError as exc:
            if start == 0 and not isinstance(exc, _EndOfArchive):
                raise self._error(start, "empty file" if isinstance(exc, _Empty) else str(exc)) from None
            self._done = True
            return None
        problem = member_problem(info)
        if problem:
            raise self._damaged(problem)
        self._left = size
        self._after = _round_up(size) - size
        return info

    def _error(self, start: int, detail: str) -> TarDamaged:
        if start == 0:
            return TarDamaged(f"{self.what}: not a tar stream ({detail})", "the layer is damaged", detail)
        return self._damaged(detail)

    def _member(self, depth: int = 0) -> tuple[tarfile.TarInfo, int]:
        """A member and the size of the data that follows its header, extension headers applied."""
        start = self._tell()
        info = _parse(self._take(BLOCK), self.encoding, self.errors)
        info.offset = start
        kind = info.type
        if kind in _LONG_TYPES or kind in _PAX_TYPES:
            if depth >= MAX_CHAINED:
                raise self._damaged(f"more than {MAX_CHAINED} extension headers in a row")
            if not 0 <= info.size <= MAX_EXTENSION:
                raise self._damaged(f"an extension header of {info.size} bytes (at most {MAX_EXTENSION})")
            if kind in _LONG_TYPES:
                return self._long_name(info, depth)
            return self._pax(info, depth)
        if kind == tarfile.GNUTYPE_SPARSE:
            raise self._sparse(info.name)
        info.offset_data = self._tell()
        size = 0 if kind in _NO_DATA else info.size
        if self._globals:
            _apply_pax(info, self._globals)
            if kind == tarfile.DIRTYPE:
                info.name = info.name.rstrip("/")
        return info, size

    def _sparse(self, name: str) -> ReproError:
        return ReproError(f"{self.what}: {_shown(name)}: GNU sparse files are not supported",
                          "store the file without --sparse")

    def _following(self, depth: int) -> tuple[tarfile.TarInfo, int]:
        try:
            return self._member(depth + 1)
        except _HeaderError as exc:
            raise _Subsequent(str(exc)) from None

    def _long_name(self, header: tarfile.TarInfo, depth: int) -> tuple[tarfile.TarInfo, int]:
        data = self._take(_round_up(header.size))[: header.size]
        info, size = self._following(depth)
        info.offset = header.offset
        if header.type == tarfile.GNUTYPE_LONGNAME:
            info.name = _text(data, self.encoding, self.errors)
        else:
            info.linkname = _text(data, self.encoding, self.errors)
        if info.isdir():
            info.name = info.name.removesuffix("/")
        return info, size

    def _pax(self, header: tarfile.TarInfo, depth: int) -> tuple[tarfile.TarInfo, int]:
        data = self._take(_round_up(header.size))[: header.size]
        is_global = header.type == tarfile.XGLTYPE
        records = self._globals if is_global else self._globals.copy()
        parsed = self._pax_records(data)
        for keyword, value in parsed:
            if keyword == b"hdrcharset":
                records["hdrcharset"] = value.decode("utf-8", self.errors)
                break
        encoding = self.encoding if records.get("hdrcharset") == "BINARY" else "utf-8"
        for keyword, value in parsed:
            name = _pax_text(keyword, "utf-8", self.errors)
            if name in tarfile.PAX_NAME_FIELDS:
                records[name] = _pax_text(value, encoding, self.errors, self.encoding)
            else:
                records[name] = _pax_text(value, "utf-8", self.errors)
        if any(k.startswith("GNU.sparse.") for k in records):
            raise self._sparse(records.get("path", records.get("GNU.sparse.name", header.name)))
        if is_global:
            if "size" in records:
                raise _Subsequent("a global pax header sets the size of every member")
            if (len(records) > MAX_GLOBAL_RECORDS
                    or sum(len(k) + len(v) for k, v in records.items()) > MAX_EXTENSION):
                raise self._damaged(f"global pax records beyond {MAX_GLOBAL_RECORDS} records or "
                                    f"{MAX_EXTENSION} bytes")
        info, size = self._following(depth)
        if not is_global:
            _apply_pax(info, records)
            info.offset = header.offset
            if "size" in records:
                size = 0 if info.type in _NO_DATA else info.size
        return info, size

    def _pax_records(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """The `LENGTH KEYWORD=VALUE` lines of a pax header, each found within its own length (tarfile's
        pattern may scan the rest of the header for every record: quadratic time)."""
        out = []
        pos = 0
        while (match := _PAX_LENGTH.match(data, pos)) is not None:
            length = int(match.group(1))
            end = pos + length
            equals = data.find(b"=", match.end(), end)
            if end > len(data) or equals <= match.end():
                raise self._damaged("a malformed pax record")
            out.append((data[match.end() : equals], data[equals + 1 : end - 1]))
            pos = end
        if data[pos:].strip(b"\0"):
            raise self._damaged("a malformed pax record")
        return out


def _pax_text(value: bytes, encoding: str, errors: str, fallback: str = "utf-8") -> str:
    """A pax value: strictly in its encoding, else as the archive's names are read."""
    try:
        return value.decode(encoding, "strict")
    except UnicodeDecodeError:
        return value.decode(fallback, errors)


# --- importing a foreign tar stream into a layer ----------------------------------------------
XZ_MAGIC = b"\xfd7zXZ\x00"
BZIP2_MAGIC = b"BZh"
INFLATE_DAMAGE = (lzma.LZMAError, EOFError, OSError)  # what xz and bzip2 readers raise for damaged input


class _Counted(RawReader):
    """The bytes already read to sniff the compression, then the rest of the source; `size` counts
    what was read (the decompression-bomb guard compares it with the output)."""

    def __init__(self, head: bytes, source: BinaryIO) -> None:
        self._head = head
        self._source = source
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = CHUNK
        if self._head:
            data, self._head = self._head[:size], self._head[size:]
        else:
            data = self._source.read(size)
        self.size += len(data)
        return data


def _uncompressed(source: BinaryIO, what: str) -> BinaryIO:
    """`source` without its compression, if it has one that tar readers accept."""
    head = source.read(6)
    counted = _Counted(head, source)
    compression = sniff_compression(head)
    if compression:
        return decompressed(counted, compression, what)  # type: ignore[arg-type]
    if head.startswith(XZ_MAGIC):
        return GuardedReader(lzma.LZMAFile(counted), counted, what, "xz",  # type: ignore[arg-type]
                             INFLATE_DAMAGE, "the file is damaged")
    if head.startswith(BZIP2_MAGIC):
        return GuardedReader(bz2.BZ2File(counted), counted, what, "bzip2",  # type: ignore[arg-type]
                             INFLATE_DAMAGE, "the file is damaged")
    return counted  # type: ignore[return-value]


def copy_tar_stream(source: BinaryIO, tar: TarWriter, what: str, mtime_limit: int,
                    capture: tuple[set[str], dict[str, bytes]] | None = None, skip=None) -> None:
    """Copy a foreign tar stream into a layer: names cleaned, mtimes clamped, headers normalized.

    `capture` = (names, found): the content of those (small) files is also kept in `found`;
    `skip(name)` drops entries (the build's hygiene list)."""
    stream = TarStream(_uncompressed(source, what), what)
    try:
        for info in stream:
            name = clean_path(info.name)
            if not name or (skip is not None and skip(name)):
                continue
            info.name = name
            info.mtime = min(int(info.mtime), mtime_limit)
            if info.islnk():
                info.linkname = clean_path(info.linkname)
            content = stream.content() if info.isreg() else None
            if capture is not None and name in capture[0] and content is not None and info.size < (1 << 20):
                data = content.read()
                capture[1][name] = data
                content = io.BytesIO(data)  # type: ignore[assignment]
            tar.add(info, content)
    except TarDamaged as exc:
        raise ReproError(f"{what}: not a readable tar archive ({exc.detail})", "check the file") from None
