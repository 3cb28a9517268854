"""Reading ahead in a second thread, so decompression and hashing overlap with what consumes them.

zlib, zstd and hashlib release the GIL on large buffers, so on two cores a layer is decompressed and
verified while the extractor writes the previous megabytes to disk. The queue is bounded: memory stays
at a few chunks whatever the layer's size.
"""

from __future__ import annotations

import io
import queue
import threading
from typing import BinaryIO

CHUNK = 1 << 20
DEPTH = 8
_END = object()


class PrefetchReader(io.RawIOBase):
    def __init__(self, inner: BinaryIO, chunk: int = CHUNK, depth: int = DEPTH) -> None:
        self._inner = inner
        self._chunk = chunk
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._buffer = memoryview(b"")
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

    def readable(self) -> bool:
        return True

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
        self._buffer = memoryview(item)
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if not self._buffer and not self._next():
            return 0
        n = min(len(buffer), len(self._buffer))
        buffer[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            parts = []
            while self._buffer or self._next():
                parts.append(bytes(self._buffer))
                self._buffer = memoryview(b"")
            return b"".join(parts)
        out = bytearray()
        while len(out) < size and (self._buffer or self._next()):
            n = min(size - len(out), len(self._buffer))
            out += self._buffer[:n]
            self._buffer = self._buffer[n:]
        return bytes(out)

    def finish(self) -> None:
        """Read to the end, so every check of the inner stream has run."""
        while self._next():
            self._buffer = memoryview(b"")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self._inner.close()
        finally:
            super().close()
