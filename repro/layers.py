"""Layer bytes: compression detection, (de)compressing streams, and the deterministic tar writer.

Reproducibility lives here: every tar repro writes goes through TarWriter (PAX format, integer
mtimes, fixed PAX header names, empty user/group names, a trailer of exactly two zero blocks), and
every gzip stream through gzip_writer (no file name, mtime 0, OS byte 255, fixed level).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import queue
import tarfile
import threading
import zlib
from typing import BinaryIO

import zstandard
from isal import isal_zlib

from repro import parallel_gzip
from repro.digest import CHUNK, RawReader, WrappingReader
from repro.errors import DigestMismatch, ReproError

BLOCK = 512
XATTR_RECORD = "SCHILY.xattr."  # the pax records TarWriter passes on
GZIP_LEVEL = 6
ZSTD_LEVEL = 3
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def sniff_compression(head: bytes) -> str:
    """'gzip', 'zstd' or '' from the first bytes of a stream."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return ""


GZIP_STREAM = f"zlib gzip level={GZIP_LEVEL} mtime=0 os=255"  # one zlib stream, one core
GZIP_COMPRESSORS = (GZIP_STREAM, parallel_gzip.ID)


def compressed_writer_id(compression: str, compressor: str = "") -> str:
    """Which compressor and settings made a layer; recorded in the layer's annotations because
    another implementation (zlib-ng, pigz) can give other bytes. No versions: they go in the lock.
    `compressor` picks one of GZIP_COMPRESSORS; empty is the single stream."""
    if compression == "gzip":
        return compressor or GZIP_STREAM
    if compression == "zstd":
        return f"zstd level={ZSTD_LEVEL} checksum"
    return "none"


def compressor_versions() -> dict[str, str]:
    return {"zlib": zlib.ZLIB_RUNTIME_VERSION, "zstd": ".".join(map(str, zstandard.ZSTD_VERSION))}


EXPANSION_ENV = "REPRO_MAX_EXPANSION"
DEFAULT_MAX_EXPANSION = 1000
EXPANSION_SLACK = 64 << 20


def max_expansion() -> int:
    """How many times its compressed size a layer may grow when decompressed (a gzip bomb guard).

    Real layers expand 2 to 20 times; zeros expand about 1000 times under gzip. Raise the limit with
    REPRO_MAX_EXPANSION for a trusted image that holds large runs of zeros; 0 turns it off."""
    value = os.environ.get(EXPANSION_ENV, "")
    if not value:
        return DEFAULT_MAX_EXPANSION
    if not value.isdigit():
        raise ReproError(f"{EXPANSION_ENV}={value!r} is not a whole number", "give a ratio such as 5000, or 0")
    return int(value)


class ExpansionGuard:
    """Fails once the output of a decompressor outgrows its input by more than the allowed ratio."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.ratio = max_expansion()
        self.compressed = 0
        self.uncompressed = 0

    def check(self, compressed: int, uncompressed: int) -> None:
        self.compressed, self.uncompressed = compressed, uncompressed
        if self.ratio and uncompressed > self.ratio * compressed + EXPANSION_SLACK:
            raise ReproError(
                f"{self.what}: expands to more than {self.ratio} times its compressed size "
                f"({uncompressed} bytes from {compressed}): refusing a possible decompression bomb",
                f"if the image is trusted, raise the limit with {EXPANSION_ENV}=N (0 for none)",
            )


LAYER_DAMAGE = (EOFError, zlib.error, isal_zlib.error, gzip.BadGzipFile, zstandard.ZstdError)
LAYER_DAMAGED = "the layer is damaged; fetch or rebuild the image"


class GuardedReader(RawReader):
    """A decompressor's output: its own exceptions (`damage`) become one ReproError naming the content,
    and the content may expand only so far (ExpansionGuard) over what was read of `source`, the
    compressed stream (counted by its `size`, checked by its `finish` before damage is reported)."""

    def __init__(self, inner: BinaryIO, source: BinaryIO, what: str, compression: str,
                 damage: tuple[type[BaseException], ...] = LAYER_DAMAGE, hint: str = LAYER_DAMAGED) -> None:
        self._inner = inner
        self._source = source
        self._what = what
        self._compression = compression
        self._damage = damage
        self._hint = hint
        self._guard = ExpansionGuard(what)
        self._out = 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:  # all of it, each chunk under the guard
            return b"".join(iter(lambda: self.read(CHUNK), b""))
        try:
            data = self._inner.read(size)
        except self._damage as exc:
            # A blob that fails its digest explains the damage better than the decompressor can.
            finish = getattr(self._source, "finish", None)
            if finish is not None:
                finish()
            raise ReproError(f"{self._what}: corrupt or truncated {self._compression} stream ({exc})",
                             self._hint) from None
        self._out += len(data)
        self._guard.check(getattr(self._source, "size", 0), self._out)
        return data

    def close(self) -> None:
        try:
            self._inner.close()
            self._source.close()
        finally:
            super().close()


class _Gunzip(WrappingReader):
    """The members of a gzip stream one after another, inflated by ISA-L.

    Reading only: any inflater gives the same bytes, and ISA-L's is about twice as fast as zlib's.
    Follows gzip.GzipFile's rules: zero bytes after a member are padding, anything else must be
    another member, and the stream must not end inside one."""

    INPUT = 1 << 18

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__(raw)
        self._inflater = None
        self._input = b""
        self._members = 0
        self._eof = False

    def _next_member(self) -> bool:
        """Start the next member; False at the end of the stream."""
        while True:
            if self._members:
                self._input = self._input.lstrip(b"\0")
            if len(self._input) >= 2:
                break
            more = self._raw.read(self.INPUT)
            if not more:
                if not self._input:
                    return False
                raise EOFError("Compressed file ended before the end-of-stream marker was reached")
            self._input += more
        if self._input[:2] != GZIP_MAGIC:
            raise gzip.BadGzipFile(f"Not a gzipped file ({self._input[:2]!r})")
        self._inflater = isal_zlib.decompressobj(16 + isal_zlib.MAX_WBITS)
        self._members += 1
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(1 << 20), b""))
        while size and not self._eof:
            if self._inflater is None and not self._next_member():
                self._eof = True
                break
            if not self._input:
                self._input = self._raw.read(self.INPUT)
                if not self._input:
                    raise EOFError("Compressed file ended before the end-of-stream marker was reached")
            out = self._inflater.decompress(self._input, size)
            if self._inflater.eof:
                self._input = self._inflater.unused_data
                self._inflater = None
            else:
                self._input = self._inflater.unconsumed_tail
            if out:
                return out
        return b""


def decompressed(raw: BinaryIO, compression: str, what: str) -> BinaryIO:
    """A reader of the uncompressed bytes of `raw`."""
    if compression == "":
        return raw
    if compression == "gzip":
        return GuardedReader(_Gunzip(raw), raw, what, "gzip")
    if compression == "zstd":
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True)
        return GuardedReader(reader, raw, what, "zstd")
    raise ReproError(f"{what}: unsupported compression {compression!r}", "use gzip, zstd or none")


class LayerChecker:
    """Follows a compressed layer as it streams past and checks its uncompressed digest (diff_id).

    Lets a copy that keeps the compressed bytes still prove what they decompress to, in one pass.
    Output is produced in bounded pieces, so a decompression bomb costs neither memory nor, past the
    expansion limit, time. Errors wait for finish(), after the compressed digest was checked: a blob
    that fails its digest is the better explanation of the damage.
    """

    def __init__(self, compression: str, diff_id: str, what: str) -> None:
        self.compression = compression
        self.diff_id = diff_id
        self.what = what
        self.hash = hashlib.new(diff_id.split(":", 1)[0])
        self._error: ReproError | None = None
        self._guard = ExpansionGuard(what)
        self._in = self._out = 0
        self._gzip = isal_zlib.decompressobj(16 + isal_zlib.MAX_WBITS) if compression == "gzip" else None
        self._zstd = (
            zstandard.ZstdDecompressor().stream_writer(self, write_size=1 << 20, closefd=False)
            if compression == "zstd" else None
        )
        self._zstd_done = False

    def _corrupt(self, detail: str) -> ReproError:
        return ReproError(f"{self.what}: corrupt or truncated {self.compression} stream ({detail})",
                          "the layer is damaged; fetch or rebuild the image")

    def write(self, data: bytes) -> int:
        """Uncompressed output (the zstd writer calls this)."""
        self._out += len(data)
        self._guard.check(self._in, self._out)
        self.hash.update(data)
        return len(data)

    def update(self, data: bytes) -> None:
        if self._error is not None:
            return
        self._in += len(data)
        try:
            if self._gzip is not None:
                self._feed_gzip(data)
            elif self._zstd is not None:
                self._zstd.write(data)
            else:
                self.write(data)
        except ReproError as exc:
            self._error = exc
        except (zlib.error, isal_zlib.error, zstandard.ZstdError) as exc:
            self._error = self._corrupt(str(exc))

    def _feed_gzip(self, data: bytes) -> None:
        while data:
            if self._gzip.eof:  # another gzip member follows
                self._gzip = isal_zlib.decompressobj(16 + isal_zlib.MAX_WBITS)
            self.write(self._gzip.decompress(data, 1 << 20))
            data = self._gzip.unconsumed_tail or (self._gzip.unused_data if self._gzip.eof else b"")

    def finish(self) -> None:
        if self._zstd is not None and self._error is None:
            try:
                self._zstd.flush()
            except zstandard.ZstdError as exc:
                self._error = self._corrupt(str(exc))
        if self._error is not None:
            raise self._error
        if self._gzip is not None and not self._gzip.eof:
            raise self._corrupt("the stream ends before its end marker")
        digest = f"{self.diff_id.split(':', 1)[0]}:{self.hash.hexdigest()}"
        if digest != self.diff_id:
            raise DigestMismatch(f"{self.what}: uncompressed content has digest {digest}, diff_id is {self.diff_id}",
                                 "the image is corrupt or was modified; fetch or rebuild it")


class _NoClose(io.RawIOBase):
    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        return self._inner.write(data)


def compressing_writer(out: BinaryIO, compression: str, compressor: str = "") -> BinaryIO:
    """A writer that compresses deterministically into `out`; closing it does not close `out`.
    `compressor` is one of GZIP_COMPRESSORS for gzip (empty: the single stream)."""
    if compression == "gzip" and compressor == parallel_gzip.ID:
        return parallel_gzip.ParallelGzipWriter(out, usable_cores())  # type: ignore[return-value]
    if compression == "gzip":
        if compressor not in ("", GZIP_STREAM):
            raise ReproError(f"unknown gzip compressor {compressor!r}", f"use one of: {'; '.join(GZIP_COMPRESSORS)}")
        return gzip.GzipFile(fileobj=_NoClose(out), mode="wb", compresslevel=GZIP_LEVEL, mtime=0, filename="")
    if compression == "zstd":
        params = zstandard.ZstdCompressionParameters.from_level(ZSTD_LEVEL, threads=0, write_checksum=True)
        return zstandard.ZstdCompressor(compression_params=params).stream_writer(
            out, closefd=False, write_return_read=True
        )
    raise ReproError(f"unsupported compression {compression!r}", "use gzip, zstd or none")


class BackgroundCompressor:
    """A compressing writer (compressing_writer's) fed from another thread: the caller's thread reads
    files, writes tar headers and hashes the diff_id while this one compresses, hashes the blob and
    writes it, on a second core (zlib and hashlib let go of the GIL on large buffers).

    The bytes are the same as writing to the compressor directly: it gets the same input in the same
    order, only in other pieces, and zlib's deflate without flushes depends on the input alone, never
    on how it was split (tests/test_layers_background.py holds it to that). Small writes are gathered
    into pieces of PIECE bytes so that a tar header does not cost a hand-over."""

    PIECE = 1 << 20
    DEPTH = 4  # pieces in flight: memory stays at a few MiB

    def __init__(self, sink: BinaryIO) -> None:
        self._sink = sink
        self._queue: queue.Queue = queue.Queue(self.DEPTH)
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="repro-compress", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (piece := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._sink.write(piece)
                except BaseException as exc:  # handed to the writing thread
                    self._error = exc

    def _hand_over(self) -> None:
        if self._error is not None:
            raise self._error
        if self._pending:
            piece = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
            self._pending, self._pending_size = [], 0
            self._queue.put(piece)

    def write(self, data) -> int:
        size = len(data)
        if size:
            self._pending.append(data if isinstance(data, bytes) else bytes(data))  # a caller may reuse its buffer
            self._pending_size += size
            if self._pending_size >= self.PIECE:
                self._hand_over()
        return size

    def close(self) -> None:
        """Compress what is left, end the compressed stream (its trailer) and stop the thread."""
        try:
            self._hand_over()
        finally:
            self._stop()
        if self._error is not None:
            raise self._error
        self._sink.close()

    def abort(self) -> None:
        """Stop without ending the stream (the caller failed; the blob is thrown away)."""
        self._pending, self._error = [], self._error or ReproError("layer writing was abandoned", "internal")
        self._stop()

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


def usable_cores() -> int:
    """How many cores this process may run on (a batch job is often pinned to fewer than the host has)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def second_core() -> bool:
    """Whether this process may run on more than one core."""
    return usable_cores() > 1


def _octal_or_base256(value: int, width: int) -> bytes:
    if value < 8 ** (width - 1):
        return b"%0*o\0" % (width - 1, value)
    out = bytearray(width)
    out[0] = 0x80
    for i in range(width - 1, 0, -1):
        out[i] = value & 0xFF
        value >>= 8
    return bytes(out)


def _set_size(header_block: bytearray, size: int) -> None:
    """Write `size` into a ustar header block (base-256 when it does not fit) and fix the checksum."""
    header_block[124:136] = _octal_or_base256(size, 12)
    header_block[148:156] = b" " * 8
    checksum = sum(header_block)
    header_block[148:156] = b"%06o\0 " % checksum


class TarWriter:
    """A streaming, deterministic tar writer.

    Entries are written as given: callers decide the order (sorted by path for layers). Streams of
    unknown length are supported when the output is seekable: the header is patched afterwards.
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.offset = 0

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self.offset += len(data)

    def _pad(self, size: int) -> None:
        remainder = size % BLOCK
        if remainder:
            self._write(b"\0" * (BLOCK - remainder))

    @staticmethod
    def normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
        """Apply the reproducibility rules to a header: integer mtime, no names, no device numbers.

        Of the pax records an entry brought from the tar it was read from, only extended attributes
        are kept: tarfile writes the others again from the fields, but a record left over from the
        input (path, linkpath, size, uid, ...) would override what the caller set, such as a
        cleaned name. The records the written fields need are added again by tarfile."""
        info.mtime = int(info.mtime)
        info.uname = ""
        info.gname = ""
        if info.type not in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            info.devmajor = info.devminor = 0
        info.pax_headers = {k: v for k, v in info.pax_headers.items() if k.startswith(XATTR_RECORD)}
        return info

    def add(self, info: tarfile.TarInfo, src: BinaryIO | None = None) -> None:
        """Write one entry; for a regular file, `src` must give exactly info.size bytes."""
        self.normalize(info)
        self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        if info.isreg() and info.size:
            if src is None:
                raise ValueError(f"{info.name}: regular file without content")
            remaining = info.size
            while remaining:
                chunk = src.read(min(remaining, 1 << 20))
                if not chunk:
                    raise ReproError(
                        f"{info.name}: content ended {remaining} bytes early", "the input is truncated"
                    )
                self._write(chunk)
                remaining -= len(chunk)
            self._pad(info.size)

    def add_stream(self, info: tarfile.TarInfo, src: BinaryIO) -> int:
        """Write a regular file whose size is not known in advance; the output must be seekable."""
        info.size = 0
        self.normalize(info)
        header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        header_pos = self._out.tell() + len(header) - BLOCK
        self._write(header)
        size = 0
        while True:
            chunk = src.read(1 << 20)
            if not chunk:
                break
            self._write(chunk)
            size += len(chunk)
        end = self._out.tell()
        block = bytearray(header[-BLOCK:])
        _set_size(block, size)
        self._out.seek(header_pos)
        self._out.write(block)
        self._out.seek(end)
        self._pad(size)
        return size

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644, mtime: int = 0) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), mode, mtime
        self.add(info, io.BytesIO(data))

    def add_dir(self, name: str, mode: int = 0o755, mtime: int = 0) -> None:
        info = tarfile.TarInfo(name.rstrip("/"))
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, mtime
        self.add(info)

    def close(self) -> None:
        """The trailer: exactly two zero blocks, no padding to a 10 KiB record."""
        self._write(b"\0" * (2 * BLOCK))
