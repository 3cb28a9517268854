"""Resource bounds on hostile input: decompression bombs and layers with a million entries."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import zlib

import pytest

from tests.conftest import repro
from tests.imagekit import E, make_image, raw_blob_image
from tests.test_streaming import peak_rss_mb


class Zeros:
    def __init__(self, size: int) -> None:
        self.remaining = size

    def read(self, n: int = -1) -> bytes:
        n = self.remaining if n < 0 else min(n, self.remaining)
        self.remaining -= n
        return bytes(n)


def bomb_layer(size: int) -> tuple[bytes, str]:
    """A gzip layer holding one file of `size` zero bytes: (compressed bytes, diff_id)."""
    header = tarfile.TarInfo("zeros")
    header.size = size
    head = header.tobuf(tarfile.PAX_FORMAT)
    tail = bytes((-size) % 512) + bytes(1024)
    diff = hashlib.sha256(head)
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(head)
        chunk = bytes(1 << 20)
        for _ in range(size >> 20):
            gz.write(chunk)
            diff.update(chunk)
        gz.write(tail)
        diff.update(tail)
    return out.getvalue(), "sha256:" + diff.hexdigest()


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    path = tmp_path_factory.mktemp("bomb") / "layout"
    data, diff_id = bomb_layer(256 << 20)  # 256 MiB of zeros in about 250 KiB
    raw_blob_image(path, "bomb", data, "application/vnd.oci.image.layer.v1.tar+gzip", diff_id)
    return path


@pytest.mark.parametrize("dst", ["tar", "docker-archive", "verify --deep"])
def test_decompression_bomb_is_refused(bomb, tmp_path, dst):
    """Refused wherever it would be expanded. A copy to oci: moves the 250 KiB as they are (nothing
    expands), so the copy is then the input that is refused."""
    if dst == "verify --deep":
        repro("convert", f"oci:{bomb}:bomb", f"oci:{tmp_path}/copy:bomb")
        env = {**os.environ, "REPRO_MAX_EXPANSION": "100"}
        proc = repro("verify", "--deep", f"oci:{tmp_path}/copy:bomb", check=False, env=env)
        assert proc.returncode == 1 and "decompression bomb" in proc.stderr
        return
    env = {**os.environ, "REPRO_MAX_EXPANSION": "100"}
    command = "flatten" if dst == "tar" else "convert"
    proc = repro(command, f"oci:{bomb}:bomb", f"{dst}:{tmp_path}/out", check=False, env=env)
    assert proc.returncode == 2
    assert "decompression bomb" in proc.stderr and "REPRO_MAX_EXPANSION" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_the_limit_can_be_raised(bomb, tmp_path):
    env = {**os.environ, "REPRO_MAX_EXPANSION": "0"}
    repro("flatten", f"oci:{bomb}:bomb", f"tar:{tmp_path}/out.tar", env=env)
    assert (tmp_path / "out.tar").stat().st_size > 256 << 20


def test_default_limit_allows_ordinary_layers(busybox_layout, tmp_path):
    repro("flatten", f"oci:{busybox_layout}:1", f"tar:{tmp_path}/out.tar")


@pytest.mark.slow  # three minutes of making and reading a million entries
def test_a_million_entries_in_bounded_memory(tmp_path):
    """One layer of 1,000,000 empty files flattens to a tar without memory growing per entry."""
    count = 1_000_000
    layer = tmp_path / "layer.tar.gz"
    diff = hashlib.sha256()
    with open(layer, "wb") as f:
        compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        batch = bytearray()
        for i in range(count):
            info = tarfile.TarInfo(f"d{i % 1000:03d}/f{i:07d}")
            batch += info.tobuf(tarfile.USTAR_FORMAT)
            if len(batch) > 1 << 20:
                diff.update(batch)
                f.write(compressor.compress(bytes(batch)))
                batch.clear()
        batch += bytes(1024)
        diff.update(batch)
        f.write(compressor.compress(bytes(batch)))
        f.write(compressor.flush())
    raw_blob_image(tmp_path / "layout", "many", layer.read_bytes(), "application/vnd.oci.image.layer.v1.tar+gzip",
                   "sha256:" + diff.hexdigest())

    peak = peak_rss_mb("flatten", f"oci:{tmp_path}/layout:many", f"tar:{tmp_path}/flat.tar")
    assert peak < 100, f"peak RSS {peak:.0f} MB"
    with tarfile.open(tmp_path / "flat.tar") as tar:
        assert sum(1 for _ in tar) == count


def test_zstd_layers(tmp_path):
    make_image(tmp_path / "z", "z", [[E("a", b"zstd layer")], [E("b", b"second")]], compression="zstd")
    repro("convert", f"oci:{tmp_path}/z:z", f"docker-archive:{tmp_path}/z.tar")
    repro("convert", f"oci:{tmp_path}/z:z", f"oci:{tmp_path}/copy:z")
    repro("flatten", f"oci:{tmp_path}/copy:z", f"rootfs:{tmp_path}/tree")
    assert (tmp_path / "tree" / "a").read_bytes() == b"zstd layer"
