"""Content digests, and the streaming pieces every reader and writer of content is built from.

Nothing in repro trusts a blob because of where it came from: every read of content that is named
by a digest goes through VerifyingReader, which fails at the end of the stream (or as soon as the
stream is longer than declared) when the content does not match its name. HashingWriter names what is
written; sha256_stream what a stream holds. The rest keeps streams bounded and copies few: read_bounded
caps a document, RawReader gives a reader its readinto, read_pieces fills a read from smaller pieces.
All of it reads in chunks: memory never grows with the size of the content.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable
from typing import BinaryIO

from repro.errors import DigestMismatch, ReproError

CHUNK = 1 << 20
MAX_DOCUMENT_SIZE = 4 << 20  # manifests, indexes, configs, layout and package metadata are held whole: capped
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$|^sha512:[a-f0-9]{128}$")


def validate(digest: str, where: str = "digest") -> str:
    """Return `digest` if it is a well-formed sha256/sha512 digest, else raise."""
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise ReproError(f"{where}: {digest!r} is not a valid digest", "expected sha256:<64 hex digits>")
    return digest


def algorithm_and_hex(digest: str) -> tuple[str, str]:
    algo, _, hexpart = validate(digest).partition(":")
    return algo, hexpart


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_stream(stream: BinaryIO) -> tuple[str, int]:
    """The hex sha256 and the size of what `stream` yields, read in chunks."""
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def read_bounded(stream: BinaryIO, limit: int, what: str, hint: str = "the input is damaged or hostile") -> bytes:
    """All of `stream` if it holds at most `limit` bytes, else ReproError: a document that is a link to
    /dev/zero or a huge sparse file costs `limit` bytes of memory, never its own size."""
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = stream.read(min(CHUNK, limit + 1 - size))
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        size += len(chunk)
    raise ReproError(f"{what} is larger than {limit} bytes", hint)


def read_pieces(read1: Callable[[int], bytes | memoryview], size: int) -> bytes:
    """`size` bytes (fewer only at the end) from `read1`, which gives at most that many at a time: a first
    piece that is all that was asked is handed back uncopied (bytes(b) is b), else the pieces are joined once."""
    first = read1(size)
    if len(first) == size or not first:
        return bytes(first)
    parts = [first]
    size -= len(first)
    while size and (piece := read1(size)):
        parts.append(piece)
        size -= len(piece)
    return b"".join(parts)


class RawReader(io.RawIOBase):
    """A raw reader whose subclass only says how to read(size): readinto, which io's buffered readers
    call, copies what read gives into the caller's buffer."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n


class WrappingReader(RawReader):
    """A reader over another stream (`_raw`), which closing this one closes."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


class HashingWriter:
    """Hashes (sha256) and counts what is written on its way to `out`; without `out` it only hashes."""

    def __init__(self, out: BinaryIO | None = None) -> None:
        self._out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self._out.write(data) if self._out is not None else len(data)

    def flush(self) -> None:
        if self._out is not None:
            self._out.flush()

    def writable(self) -> bool:
        return True

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


class HashingReader(WrappingReader):
    """Pass-through reader that hashes and counts what is read."""

    def __init__(self, raw: BinaryIO, algorithm: str = "sha256") -> None:
        super().__init__(raw)
        self.hash = hashlib.new(algorithm)
        self.size = 0
        self._algorithm = algorithm

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size if size is not None and size >= 0 else -1)
        self._consume(data)
        return data

    def read1(self, size: int = -1) -> bytes:
        """What one read of the inner stream gives (see PrefetchReader.read1): no joining, no copy."""
        read1 = getattr(self._raw, "read1", None)
        data = read1(size) if read1 is not None else self._raw.read(size)
        self._consume(data)
        return data

    def _consume(self, data: bytes) -> None:
        if data:
            self.hash.update(data)
            self.size += len(data)

    @property
    def digest(self) -> str:
        return f"{self._algorithm}:{self.hash.hexdigest()}"


class VerifyingReader(HashingReader):
    """Reader that raises DigestMismatch if the stream is not exactly (digest, size).

    `what` names the content in the error (a blob path, a member of an archive).
    The check happens when EOF is reached; call finish() to drain and check explicitly.
    """

    def __init__(self, raw: BinaryIO, digest: str, size: int | None, what: str, also=None) -> None:
        super().__init__(raw, algorithm_and_hex(digest)[0])
        self.expected_digest = digest
        self.expected_size = size
        self.what = what
        self.verified = False
        self.also = also  # a further check fed the same bytes (repro.layers.LayerChecker)

    def read(self, size: int = -1) -> bytes:
        """As HashingReader.read, but "all of it" means at most one byte past the declared size, in
        chunks: an endless stream fails there instead of filling memory."""
        if (size is None or size < 0) and self.expected_size is not None:
            parts = []
            while chunk := super().read(min(CHUNK, max(self.expected_size - self.size, 0) + 1)):
                parts.append(chunk)
            return b"".join(parts)
        return super().read(size)

    def _consume(self, data: bytes) -> None:
        super()._consume(data)
        if self.also is not None and data:
            self.also.update(data)
        if self.expected_size is not None and self.size > self.expected_size:
            raise DigestMismatch(
                f"{self.what}: content is larger than the declared size {self.expected_size}",
                "the image is corrupt or was modified; fetch or rebuild it",
            )
        if not data:
            self._check()

    def _check(self) -> None:
        if self.verified:
            return
        if self.expected_size is not None and self.size != self.expected_size:
            raise DigestMismatch(
                f"{self.what}: size is {self.size} bytes, expected {self.expected_size}",
                "the image is corrupt or truncated; fetch or rebuild it",
            )
        if self.digest != self.expected_digest:
            raise DigestMismatch(
                f"{self.what}: content has digest {self.digest}, expected {self.expected_digest}",
                "the image is corrupt or was modified; fetch or rebuild it",
            )
        if self.also is not None:
            self.also.finish()
        self.verified = True

    def finish(self) -> None:
        """Read whatever is left and verify."""
        while self.read(CHUNK):
            pass
        self._check()
