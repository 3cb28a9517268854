"""Reading ahead in a second thread, so decompression and hashing overlap with what consumes them.

zlib, zstd and hashlib release the GIL on large buffers, so on two cores a layer is decompressed and
verified while the extractor writes the previous megabytes to disk. The queue is bounded: memory stays
at a few chunks whatever the layer's size.
"""

from __future__ import annotations

import queue
import threading
from typing import BinaryIO

from repro.digest import RawReader, read_pieces

CHUNK = 1 << 20
DEPTH = 8
_END = object()


class PrefetchReader(RawReader):
    def __init__(self, inner: BinaryIO, chunk: int = CHUNK, depth: int = DEPTH) -> None:
        self._inner = inner
        self._chunk = chunk
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._item = b""  # the piece being read, from _pos on
        self._pos = 0
        self._done = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._inner.read(self._chunk)
                if not data:
                    break
                self._put(data)
            self._put(_END)
        except BaseException as exc:  # handed to the reader, raised in its thread
            self._put(exc)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _next(self) -> bool:
        if self._done:
            return False
        item = self._queue.get()
        if item is _END:
            self._done = True
            return False
        if isinstance(item, BaseException):
            self._done = True
            raise item
        self._item, self._pos = item, 0
        return True

    def read1(self, size: int = -1) -> bytes:
        """What the producer read next, up to `size` bytes: a whole piece is handed over uncopied."""
        if self._pos == len(self._item) and not self._next():
            return b""
        item, pos = self._item, self._pos
        if size is None or size < 0 or size >= len(item) - pos:
            self._item, self._pos = b"", 0
            return item if pos == 0 else item[pos:]
        self._pos = pos + size
        return item[pos : pos + size]

    def readinto(self, buffer) -> int:  # type: ignore[override]
        """One piece at most, as a raw read may: no joining of pieces for the copy to come."""
        data = self.read1(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(self.read1, b""))
        return read_pieces(self.read1, size)

    def finish(self) -> None:
        """Read to the end, so every check of the inner stream has run."""
        self._item, self._pos = b"", 0
        while self._next():
            pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self._inner.close()
        finally:
            super().close()
