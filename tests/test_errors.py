"""Bad input: one line on stderr naming the problem, exit status 2, and nothing left behind."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import REPRO, repro
from tests.imagekit import E, make_image, raw_blob_image


def blob_path(layout: Path, digest: str) -> Path:
    return layout / "blobs" / digest.replace(":", "/")


def layer_digests(layout: Path, tag: str = "1") -> list[str]:
    index = json.loads((layout / "index.json").read_bytes())
    entry = next(d for d in index["manifests"] if d["annotations"]["org.opencontainers.image.ref.name"] == tag)
    manifest = json.loads(blob_path(layout, entry["digest"]).read_bytes())
    return [layer["digest"] for layer in manifest["layers"]]


def tar_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _missing_blob(layout: Path, tmp: Path) -> str:
    blob_path(layout, layer_digests(layout)[0]).unlink()
    return f"oci:{layout}:1"


def _flipped_byte(layout: Path, tmp: Path) -> str:
    path = blob_path(layout, layer_digests(layout)[1])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return f"oci:{layout}:1"


def _longer_blob(layout: Path, tmp: Path) -> str:
    path = blob_path(layout, layer_digests(layout)[1])
    path.write_bytes(path.read_bytes() + b"extra")
    return f"oci:{layout}:1"


def _truncated_gzip(layout: Path, tmp: Path) -> str:
    noise = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(4000))
    layer = tar_bytes({"file": noise})
    compressed = gzip.compress(layer)
    broken = compressed[: len(compressed) // 2]
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    raw_blob_image(tmp / "gz", "1", broken, "application/vnd.oci.image.layer.v1.tar+gzip", diff_id)
    return f"oci:{tmp}/gz:1"


def _wrong_diff_id(layout: Path, tmp: Path) -> str:
    layer = tar_bytes({"file": b"content"})
    raw_blob_image(tmp / "diff", "1", gzip.compress(layer), "application/vnd.oci.image.layer.v1.tar+gzip",
                   "sha256:" + "0" * 64)
    return f"oci:{tmp}/diff:1"


def _unsupported_media_type(layout: Path, tmp: Path) -> str:
    layer = tar_bytes({"file": b"content"})
    raw_blob_image(tmp / "mt", "1", layer, "application/x-made-up", "sha256:" + hashlib.sha256(layer).hexdigest())
    return f"oci:{tmp}/mt:1"


def _invalid_json(layout: Path, tmp: Path) -> str:
    (layout / "index.json").write_text("{not json")
    return f"oci:{layout}:1"


def _no_manifest_json(layout: Path, tmp: Path) -> str:
    (tmp / "bad.tar").write_bytes(tar_bytes({"hello.txt": b"hi"}))
    return f"docker-archive:{tmp}/bad.tar"


def _not_a_tar(layout: Path, tmp: Path) -> str:
    (tmp / "junk.tar").write_bytes(b"this is not a tar file at all" * 100)
    return f"oci-archive:{tmp}/junk.tar"


CASES = {
    "missing path": (lambda layout, tmp: f"oci:{tmp}/does-not-exist:1", "does not exist"),
    "unknown transport": (lambda layout, tmp: "floppy:/dev/fd0", "unknown transport"),
    "no transport": (lambda layout, tmp: "just-a-path", "unknown transport"),
    "tag not in index": (lambda layout, tmp: f"oci:{layout}:nope", "tag 'nope' is not in index.json"),
    "blob missing": (_missing_blob, "is missing"),
    "blob digest mismatch": (_flipped_byte, "expected sha256:"),
    "blob size mismatch": (_longer_blob, "larger than the declared size"),
    "truncated gzip": (_truncated_gzip, "corrupt or truncated gzip stream"),
    "diff_id mismatch": (_wrong_diff_id, "uncompressed"),
    "invalid json": (_invalid_json, "invalid JSON"),
    "unsupported media type": (_unsupported_media_type, "unsupported media type"),
    "docker-archive without manifest.json": (_no_manifest_json, "has no manifest.json"),
    "not a tar": (_not_a_tar, "not a readable tar archive"),
}


# The blob matches its digest but not what it should decompress to: a copy that keeps the compressed bytes
# passes it on as skopeo does (the manifest digest pins every byte); whatever reads the contents refuses it.
CONTENT_CASES = {"truncated gzip", "diff_id mismatch"}
PAIRS = [(case, dst) for case in sorted(CASES) for dst in ("docker-archive", "oci", "oci-archive")
         if case not in CONTENT_CASES or dst == "docker-archive"]


@pytest.mark.parametrize(("case", "dst_kind"), PAIRS)
def test_bad_input_is_one_line_and_exit_2(case, dst_kind, layout_copy, tmp_path):
    make_source, message = CASES[case]
    src = make_source(layout_copy, tmp_path)
    dst_path = tmp_path / "out"
    proc = repro("convert", src, f"{dst_kind}:{dst_path}", check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("repro: ") and message in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    assert not dst_path.exists()
    assert not list(tmp_path.glob(".out.repro-tmp-*")), "a temporary output was left behind"


def test_usage_errors_exit_2():
    for args in (["convert"], ["inspect"], ["frobnicate"], ["inspect", "--platform", "amd64", "oci:x"]):
        proc = repro(*args, check=False)
        assert proc.returncode == 2, args
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_debug_shows_the_traceback(tmp_path):
    proc = repro("--debug", "inspect", f"oci:{tmp_path}/nothing", check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_existing_layout_is_untouched_by_a_failed_write(busybox_layout, layout_copy, tmp_path):
    _flipped_byte(layout_copy, tmp_path)
    dst = tmp_path / "dst"
    make_image(dst, "keep", [[E("other", b"another image")]])
    before = {p: p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    proc = repro("convert", f"oci:{layout_copy}:1", f"oci:{dst}:new", check=False)
    assert proc.returncode == 2
    after = {p: p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    assert after == before


@pytest.mark.parametrize("case", sorted(CONTENT_CASES))
def test_damaged_layer_contents_are_refused_where_they_are_read(case, layout_copy, tmp_path):
    make_source, message = CASES[case]
    src = make_source(layout_copy, tmp_path)
    repro("convert", src, f"oci:{tmp_path}/copy:1")
    assert repro("verify", f"oci:{tmp_path}/copy:1").returncode == 0  # digests and sizes are right
    deep = repro("verify", "--deep", f"oci:{tmp_path}/copy:1", check=False)
    assert deep.returncode == 1 and message in deep.stderr and len(deep.stderr.strip().splitlines()) == 1
    for command in (["flatten", f"oci:{tmp_path}/copy:1", f"rootfs:{tmp_path}/tree"],
                    ["hash", "--files", f"oci:{tmp_path}/copy:1"]):
        proc = repro(*command, check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "tree").exists()


@pytest.mark.parametrize("output", ["oci:{full}/layout:1", "docker-archive:{full}/image.tar", "rootfs:{full}/tree",
                                    "tar:{full}/rootfs.tar"])
def test_a_full_disk_says_where_and_leaves_nothing(output, tmp_path):
    """The output's file system (a 1 MiB tmpfs, in a mount namespace of its own) fills up half-way."""
    make_image(tmp_path / "src", "1", [[E("noise", random.Random(7).randbytes(3 << 20))]])
    full = tmp_path / "full"
    full.mkdir()
    command = ["convert" if output.startswith(("oci:", "docker")) else "flatten", f"oci:{tmp_path}/src:1",
               output.format(full=full)]
    script = f'mount -t tmpfs -o size=1m tmpfs "$1" && shift && "$@"; echo "exit $?" >&2; find "{full}" -mindepth 1'
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(full), REPRO, *command],
                          capture_output=True, text=True, timeout=120)
    line, status = proc.stderr.strip().splitlines()
    assert status == "exit 2" and proc.stdout == ""  # nothing left in the full file system
    assert line.startswith("repro: no space left on device (free: ") and f"at {full}/" in line, line
    assert line.endswith("or give --store (or REPRO_STORE) and TMPDIR on a larger disk, and run again"), line
