"""The parallel gzip compressor: the same bytes on any number of threads and for any cutting of the
input, read back by independent gunzips; and builds record it in the lock, keep the compressor an old
lock names, and `repro diff` says when two images differ only in it."""

from __future__ import annotations

import gzip
import io
import json
import random
import shutil
import subprocess
import threading
import zlib
from pathlib import Path

import pytest
from isal import igzip

from repro import parallel_gzip
from repro.layers import GZIP_STREAM
from repro.mutate import COMPRESSOR_ANNOTATION
from tests.conftest import repro
from tests.test_build import build, digest_of, stage_hello

BLOCK = parallel_gzip.BLOCK


def _sample(size: int, seed: int) -> bytes:
    """Compressible but not trivial: words of a small vocabulary with random bytes among them."""
    rng = random.Random(seed)
    words = [bytes(rng.choices(range(97, 123), k=rng.randint(2, 9))) for _ in range(300)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + (bytes([rng.randrange(256)]) if rng.random() < 0.05 else b" ")
    return bytes(out[:size])


def _compress(data: bytes, threads: int, pieces: list[int] | None = None) -> bytes:
    out = io.BytesIO()
    writer = parallel_gzip.ParallelGzipWriter(out, threads)
    offset = 0
    for size in pieces or [len(data)]:
        writer.write(memoryview(data)[offset:offset + size])
        offset += size
    writer.write(data[offset:])
    writer.close()
    return out.getvalue()


@pytest.mark.parametrize("size", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 12345])
def test_bytes_do_not_depend_on_threads_or_pieces(size):
    data = _sample(size, size)
    one = _compress(data, 1)
    rng = random.Random(size)
    pieces = [rng.choice([1, 511, 512, 4096, 65537, BLOCK, BLOCK + 3]) for _ in range(40)]
    for threads in (2, 3, 8):
        assert _compress(data, threads, pieces) == one
    assert gzip.decompress(one) == data
    assert igzip.decompress(one) == data


@pytest.mark.parametrize("size", [0, 100, BLOCK])
def test_up_to_one_block_it_is_the_single_stream(size):
    """One block is one deflate stream with no flush: small layers keep the bytes they had."""
    data = _sample(size, 1)
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0, filename="") as single:
        single.write(data)
    assert _compress(data, 2) == out.getvalue()


def test_independent_gunzips_read_it(tmp_path):
    data = _sample(5 * BLOCK + 777, 7)
    blob = tmp_path / "layer.gz"
    blob.write_bytes(_compress(data, 2))
    assert subprocess.run(["gzip", "-t", str(blob)]).returncode == 0
    assert subprocess.run(["gzip", "-dc", str(blob)], capture_output=True).stdout == data
    listed = subprocess.run(["gzip", "-lv", str(blob)], capture_output=True, text=True).stdout
    assert f"{zlib.crc32(data):08x}" in listed  # the trailer's CRC-32 is the data's
    # within a few bytes a block of one zlib stream's size: the dictionary keeps matches across blocks
    assert blob.stat().st_size < len(gzip.compress(data, 6, mtime=0)) * 1.01


def test_an_abandoned_writer_stops_its_threads():
    writer = parallel_gzip.ParallelGzipWriter(io.BytesIO(), 2)
    writer.write(_sample(4 * BLOCK, 3))
    assert any(t.name.startswith("repro-deflate") for t in threading.enumerate())
    writer.abort()
    assert not any(t.name.startswith("repro-deflate") for t in threading.enumerate())


def _layer_compressors(layout: Path, tag: str) -> set[str]:
    index = json.loads((layout / "index.json").read_text())
    digest = next(m["digest"] for m in index["manifests"]
                  if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
    manifest = json.loads((layout / "blobs" / "sha256" / digest.split(":")[1]).read_text())
    return {layer["annotations"][COMPRESSOR_ANNOTATION] for layer in manifest["layers"]}


def test_a_new_lock_takes_the_parallel_compressor_an_old_one_keeps_its_own(tmp_path):
    spec = stage_hello(tmp_path)
    lock_file = spec.with_name("spec.lock")
    new = digest_of(build(spec, tmp_path / "store", "--no-cache"))
    assert json.loads(lock_file.read_text())["compressor"]["layers"] == parallel_gzip.ID
    assert _layer_compressors(tmp_path / "store", "hello:1.0") == {parallel_gzip.ID}
    # the lock committed beside catalog/hello names the single stream: its bytes, and its digest, stay
    shutil.copy(Path(__file__).resolve().parents[1] / "catalog" / "hello" / "spec.lock", lock_file)
    old = build(spec, tmp_path / "store", "--locked")  # with the cache of the first build: no entry fits
    assert not any(step["cached"] for step in json.loads(old.stdout)["steps"])
    assert _layer_compressors(tmp_path / "store", "hello:1.0") == {GZIP_STREAM}
    assert json.loads(lock_file.read_text())["compressor"]["layers"] == GZIP_STREAM
    assert digest_of(old) != new
    # the same files and config: diff names the compressors of each layer and nothing else
    shutil.copytree(tmp_path / "store", tmp_path / "old")
    lock_file.unlink()
    assert digest_of(build(spec, tmp_path / "store")) == new  # from the cache, with the new compressor
    diff = repro("diff", f"oci:{tmp_path}/old:hello:1.0", f"oci:{tmp_path}/store:hello:1.0", check=False)
    lines = diff.stdout.splitlines()
    assert diff.returncode == 1 and lines[0].startswith("manifest digest:")
    # only busybox's layer is larger than a block: the three small ones are the same bytes either way
    assert len(lines) == 2 and lines[1].startswith("layer 0 compression (same content): "), lines
    assert GZIP_STREAM + ")" in lines[1] and parallel_gzip.ID + ")" in lines[1]


def test_a_lock_naming_an_unknown_compressor_is_one_clear_line(tmp_path):
    spec = stage_hello(tmp_path)
    build(spec, tmp_path / "store")
    lock_file = spec.with_name("spec.lock")
    lock = json.loads(lock_file.read_text())
    lock["compressor"]["layers"] = "zlib-ng gzip level=9"
    lock_file.write_text(json.dumps(lock))
    proc = build(spec, tmp_path / "store", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "zlib-ng gzip level=9" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    lock_file.write_text("[]")
    proc = build(spec, tmp_path / "store", check=False)
    assert proc.returncode != 0 and "not a lock file" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
