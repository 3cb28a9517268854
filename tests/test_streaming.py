"""Big images: memory stays flat, and a killed convert leaves nothing half-written."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from repro.clock import rfc3339
from repro.image import Platform
from repro.layers import TarWriter
from repro.mutate import commit, new_config, write_layer
from repro.store import Layout
from repro.transfer import manifest_descriptor
from tests.conftest import REPRO, repro
from tests.imagekit import E, make_image

BIG = 384 << 20  # uncompressed bytes of file content in the big image


class Noise:
    """Deterministic incompressible bytes, generated as they are read."""

    def __init__(self, size: int, seed: bytes) -> None:
        self.remaining = size
        self.block = hashlib.sha512(seed).digest() * 2048  # 128 KiB
        self.counter = 0

    def read(self, n: int = -1) -> bytes:
        n = self.remaining if n < 0 else min(n, self.remaining)
        out = bytearray()
        while len(out) < n:
            self.counter += 1
            out += hashlib.sha512(self.counter.to_bytes(8, "little")).digest() + self.block[: 128 << 10]
        self.remaining -= n
        return bytes(out[:n])


@pytest.fixture(scope="module")
def big_layout(tmp_path_factory) -> Path:
    """Two uncompressed layers of incompressible files, ~400 MB in all."""
    path = tmp_path_factory.mktemp("big") / "layout"
    path.mkdir()
    layout = Layout.initialize(path)
    layers = []
    for number in range(2):
        def produce(tar: TarWriter, number=number) -> None:
            for i in range(4):
                info = tarfile.TarInfo(f"data/layer{number}-file{i}.bin")
                info.size = BIG // 8
                tar.add(info, Noise(info.size, f"{number}-{i}".encode()))

        layers.append(write_layer(layout, produce, compression=""))
    config = new_config(Platform.host(), rfc3339(0), [x.diff_id for x in layers], [])
    image = commit(layout, config, layers)

    layout.add_manifest(manifest_descriptor(image, {"org.opencontainers.image.ref.name": "big"}), "big")
    return path


def peak_rss_mb(*args: str) -> float:
    """Peak RSS of a repro run, measured by /usr/bin/time: a child forked straight from this (large)
    test process would report this process's size, which the kernel carries across exec."""
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", REPRO, *args], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stderr.strip().splitlines()[-1]) / 1024


def test_memory_does_not_grow_with_image_size(big_layout, tmp_path):
    small = tmp_path / "small"

    make_image(small, "s", [[E("x", b"tiny")]])
    baseline = peak_rss_mb("convert", f"oci:{small}:s", f"docker-archive:{tmp_path}/small.tar")
    steps = [
        ("convert", f"oci:{big_layout}:big", f"docker-archive:{tmp_path}/big.tar"),
        ("convert", f"docker-archive:{tmp_path}/big.tar", f"oci-archive:{tmp_path}/big-oci.tar"),
        ("convert", f"oci-archive:{tmp_path}/big-oci.tar", f"oci:{tmp_path}/back:big"),
        ("hash", "--files", f"oci:{tmp_path}/back:big"),
    ]
    for step in steps:
        peak = peak_rss_mb(*step)
        # A 400 MB image must not cost more than a few MB over a tiny one.
        assert peak < baseline + 40, f"{step}: peak RSS {peak:.0f} MB vs {baseline:.0f} MB for a tiny image"
        assert peak < 200
    assert (tmp_path / "big.tar").stat().st_size > BIG


def _kill_when(proc: subprocess.Popen, ready) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.01)
    raise AssertionError("the convert finished (or failed) before it could be killed part way")


def _partial_temp(directory: Path, pattern: str) -> bool:
    return any(p.stat().st_size > (16 << 20) for p in directory.glob(pattern) if p.is_file())


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_killed_convert_leaves_no_archive(big_layout, tmp_path, fmt):
    dst = tmp_path / "out.tar"
    proc = subprocess.Popen([REPRO, "convert", f"oci:{big_layout}:big", f"{fmt}:{dst}"])
    _kill_when(proc, lambda: _partial_temp(tmp_path, ".out.tar.repro-tmp-*"))
    assert not dst.exists()


def test_killed_convert_into_new_layout_leaves_it_absent(big_layout, tmp_path):
    repro("convert", f"oci:{big_layout}:big", f"docker-archive:{tmp_path}/big.tar")
    dst = tmp_path / "new"
    proc = subprocess.Popen([REPRO, "convert", f"docker-archive:{tmp_path}/big.tar", f"oci:{dst}:1"])
    _kill_when(proc, lambda: any(_partial_temp(p / "blobs" / "sha256", ".tmp-*") for p in tmp_path.glob(".new.*")))
    assert not dst.exists()


def test_killed_convert_into_existing_layout_keeps_it_valid(big_layout, tmp_path):
    repro("convert", f"oci:{big_layout}:big", f"docker-archive:{tmp_path}/big.tar")
    dst = tmp_path / "existing"

    make_image(dst, "keep", [[E("hello", b"world")]])
    index_before = (dst / "index.json").read_bytes()
    proc = subprocess.Popen([REPRO, "convert", f"docker-archive:{tmp_path}/big.tar", f"oci:{dst}:new"])
    _kill_when(proc, lambda: _partial_temp(dst / "blobs" / "sha256", ".tmp-*"))
    assert (dst / "index.json").read_bytes() == index_before
    for blob in (dst / "blobs" / "sha256").iterdir():
        if blob.name.startswith("."):
            continue  # a temporary: never a name that claims a digest
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    assert json.loads(repro("inspect", "--json", f"oci:{dst}:keep").stdout)["layers"]
    # And the next run completes normally.
    repro("convert", f"docker-archive:{tmp_path}/big.tar", f"oci:{dst}:new")
    assert json.loads(repro("hash", "--json", f"oci:{dst}:new").stdout)["layers"]
