"""Layers compressed on a second core are byte for byte the layers compressed in line, and the
reaper that a block disarms runs nothing when the block cleaned up after itself."""

from __future__ import annotations

import io
import random
import threading

import pytest

from repro.layers import BackgroundCompressor, compressing_writer
from repro.run.reaper import reaper


def _input() -> bytes:
    rng = random.Random(15)
    parts = []
    for _ in range(120):
        kind = rng.randrange(3)
        size = rng.randint(1, 200_000)
        parts.append(rng.randbytes(size) if kind == 0 else b"text line %d\n" % size * (size // 16 + 1)
                     if kind == 1 else b"\0" * 512)
    return b"".join(parts)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_background_compression_gives_the_same_bytes_for_any_pieces(compression):
    data = _input()
    direct = io.BytesIO()
    writer = compressing_writer(direct, compression)
    writer.write(data)
    writer.close()
    rng = random.Random(1)
    for _ in range(3):
        out = io.BytesIO()
        background = BackgroundCompressor(compressing_writer(out, compression))
        offset = 0
        while offset < len(data):
            size = rng.choice([1, 511, 512, 4096, 70_000, 1 << 20, 3 << 20])
            background.write(memoryview(data)[offset:offset + size])  # a view: copied before handing over
            offset += size
        background.close()
        assert out.getvalue() == direct.getvalue()


def test_a_failing_sink_fails_the_writer_and_an_abort_stops_the_thread():
    class Broken(io.RawIOBase):
        def write(self, data):
            raise OSError(28, "No space left on device")

    background = BackgroundCompressor(Broken())
    with pytest.raises(OSError, match="No space"):
        for _ in range(8):
            background.write(b"x" * (1 << 20))
        background.close()
    background.abort()
    assert not any(t.name == "repro-compress" and t.is_alive() for t in threading.enumerate())


@pytest.mark.parametrize("fails", [False, True])
def test_a_disarmed_reaper_runs_only_when_the_block_fails(tmp_path, fails):
    marker = tmp_path / "reaped"
    try:
        with reaper(["touch", str(marker)], disarm=True):
            if fails:
                raise RuntimeError("the block failed")
    except RuntimeError:
        pass
    assert marker.exists() == fails
