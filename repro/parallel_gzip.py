"""gzip compressed on every core, with bytes that do not depend on how many there are.

One zlib stream is one core's work: the packages layer of a Debian build spent most of its CPU in
it. This compressor cuts the uncompressed stream into blocks of BLOCK bytes and deflates each on its
own, primed with the DICTIONARY bytes that come before it (as pigz does) and ended by a sync flush,
so that the pieces join into one ordinary deflate stream that any gunzip reads. A block's bytes
depend on its own input, the input before it and zlib's level, never on the number of threads or on
how the caller's writes were cut. They differ from one zlib stream's, so this is a compressor of its
own: its id goes into each layer's annotations and into the build lock, which keeps a lock made with
the single stream building with that one.
"""

from __future__ import annotations

import collections
import struct
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from isal import isal_zlib

BLOCK = 1 << 20
DICTIONARY = 32 << 10  # deflate's window: a block may refer this far back, into the block before it
LEVEL = 6
ID = f"zlib gzip level={LEVEL} mtime=0 os=255 blocks={BLOCK} dictionary={DICTIONARY}"
# magic, deflate, no flags, mtime 0, no extra flags, OS unknown (255): as the single-stream writer's
HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def _deflate(block: bytes, dictionary: bytes, last: bool) -> bytes:
    """One block as raw deflate; zlib lets go of the GIL while it works, so blocks run side by side."""
    if dictionary:
        compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS, zlib.DEF_MEM_LEVEL,
                                      zlib.Z_DEFAULT_STRATEGY, dictionary)
    else:
        compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS, zlib.DEF_MEM_LEVEL)
    return compressor.compress(block) + compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


class ParallelGzipWriter:
    """A file-like writer of one gzip member into `out`, its blocks deflated by `threads` threads.

    At most two blocks a thread are in flight, so memory stays at a few MiB whatever the size of the
    stream. `close` ends the member and does not close `out`."""

    def __init__(self, out: BinaryIO, threads: int = 1) -> None:
        self._out = out
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="repro-deflate") if threads > 1 else None
        self._in_flight: collections.deque[Future] = collections.deque()
        self._limit = 2 * threads
        self._buffer = bytearray()
        self._dictionary = b""
        self._crc = 0
        self._size = 0
        self._closed = False
        out.write(HEADER)

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        size = len(data)
        self._crc = isal_zlib.crc32(data, self._crc)  # the same CRC-32 as zlib's, several times faster
        self._size += size
        self._buffer += data
        # a full block goes only once more input follows it: the last block is the one close() ends
        while len(self._buffer) > BLOCK:
            block = bytes(self._buffer[:BLOCK])
            del self._buffer[:BLOCK]
            self._submit(block, last=False)
        return size

    def _submit(self, block: bytes, last: bool) -> None:
        dictionary, self._dictionary = self._dictionary, block[-DICTIONARY:]
        if self._pool is None:
            self._out.write(_deflate(block, dictionary, last))
            return
        self._in_flight.append(self._pool.submit(_deflate, block, dictionary, last))
        while len(self._in_flight) > self._limit or (last and self._in_flight):
            self._out.write(self._in_flight.popleft().result())

    def close(self) -> None:
        """Deflate what is left as the last block and write the trailer (CRC-32, size mod 2**32)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._submit(bytes(self._buffer), last=True)
            self._out.write(struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF))
        finally:
            self._buffer = bytearray()
            self._stop()

    def abort(self) -> None:
        """Stop without ending the member (the caller failed; what was written is thrown away)."""
        self._closed = True
        self._buffer = bytearray()
        self._stop()

    def _stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._in_flight.clear()
