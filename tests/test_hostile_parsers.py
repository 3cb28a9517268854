"""Hostile inputs to every parser: each ends in one error line and exit 2, quickly, never a hang,
a traceback or an internal error (exit 70); and `repro flatten SRC tar:OUT` never lets the input's
pax records put `..` or absolute names back into the tarball it writes."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from builders.spec import load
from repro.clock import rfc3339
from repro.errors import ReproError
from repro.image import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Descriptor, canonical_json
from repro.store import Layout
from tests.conftest import REPRO
from tests.imagekit import E, make_image, raw_blob_image

TIMEOUT = 60  # seconds; each case takes one or two when nothing loops


def run_repro(*args: str, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """The CLI with a timeout short enough to call a hang a failure (conftest's helper waits 600 s)."""
    start = time.monotonic()
    try:
        proc = subprocess.run([REPRO, *args], capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd)
    except subprocess.TimeoutExpired:
        pytest.fail(f"repro {' '.join(args)} did not finish in {TIMEOUT} s (a loop?)")
    return proc, time.monotonic() - start


def refused(*args: str, expect: str = "", cwd: Path | None = None) -> str:
    """Run repro, require exit 2 with one stderr line (containing `expect`); return that line."""
    proc, _ = run_repro(*args, cwd=cwd)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert len(lines) == 1 and "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    assert lines[0].startswith("repro: ") and expect in lines[0], lines[0]
    return lines[0]


# --- tar streams, byte by byte ----------------------------------------------------------------------


def base256(value: int, width: int = 12) -> bytes:
    """GNU's base-256 number form: 0x80 then the value, or 0xff then the two's complement if negative."""
    if value < 0:
        return b"\xff" + (256 ** (width - 1) + value).to_bytes(width - 1, "big")
    return b"\x80" + value.to_bytes(width - 1, "big")


def checksummed(block: bytearray) -> bytes:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def header(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, **numbers: bytes) -> bytes:
    """One ustar header; `numbers` replaces raw number fields (raw_size, uid, mtime, ...) after the fact."""
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode, info.mtime = kind, size, 0o644, 1700000000
    block = bytearray(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))
    assert len(block) == 512
    fields = {"mode": (100, 8), "uid": (108, 8), "gid": (116, 8), "raw_size": (124, 12), "mtime": (136, 12),
              "devmajor": (329, 8), "devminor": (337, 8)}
    for field, raw in numbers.items():
        start, width = fields[field]
        block[start : start + width] = raw
    return checksummed(block)


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def file_member(name: str, data: bytes) -> bytes:
    return header(name, size=len(data)) + padded(data)


def pax_member(records: dict[str, str] | bytes, kind: bytes = tarfile.XHDTYPE) -> bytes:
    data = records if isinstance(records, bytes) else b"".join(_record(k, v) for k, v in records.items())
    return header("././@PaxHeader", kind, len(data)) + padded(data)


def _record(keyword: str, value: str) -> bytes:
    body = f" {keyword}={value}\n".encode()
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


END = bytes(1024)
BEFORE = file_member("before", b"seen\n")
AFTER = file_member("after", b"must not be hidden\n")

HOSTILE_TARS: dict[str, Callable[[], bytes]] = {
    # A negative size moves a reader backwards: onto its own header (a loop) or an earlier one.
    "negative size, back onto itself": lambda: BEFORE + header("neg", raw_size=base256(-512)) + AFTER + END,
    "negative size, back two members": lambda: BEFORE + header("neg", raw_size=base256(-1024)) + AFTER + END,
    "negative size of one byte": lambda: BEFORE + header("neg", raw_size=base256(-1)) + AFTER + END,
    "octal negative size": lambda: BEFORE + header("neg", raw_size=b"-0001000000\0") + AFTER + END,
    "negative GNU long-name size": lambda: BEFORE + header("././@LongLink", tarfile.GNUTYPE_LONGNAME,
                                                           raw_size=base256(-512)) + AFTER + END,
    "negative GNU long-link size": lambda: BEFORE + header("././@LongLink", tarfile.GNUTYPE_LONGLINK,
                                                           raw_size=base256(-512)) + AFTER + END,
    "GNU long name of 2 MiB": lambda: BEFORE + header("././@LongLink", tarfile.GNUTYPE_LONGNAME, 2 << 20)
    + padded(b"n" * (2 << 20)) + AFTER + END,
    "pax header of 2 MiB": lambda: BEFORE + pax_member({"comment": "c" * (2 << 20)}) + AFTER + END,
    "negative pax size record": lambda: BEFORE + pax_member({"size": "-512"}) + AFTER + END,
    "pax mtime NaN": lambda: BEFORE + pax_member({"mtime": "nan"}) + AFTER + END,
    "pax mtime infinite": lambda: BEFORE + pax_member({"mtime": "1e999"}) + AFTER + END,
    "pax mtime beyond 2262": lambda: BEFORE + pax_member({"mtime": str(2**40)}) + AFTER + END,
    "negative base-256 mtime of 2**80": lambda: BEFORE + header("old", mtime=base256(-(2**80))) + AFTER + END,
    "negative uid": lambda: BEFORE + header("who", uid=base256(-1, 8)) + AFTER + END,
    "uid beyond 32 bits": lambda: BEFORE + header("who", uid=base256(2**40, 8)) + AFTER + END,
    "negative pax gid": lambda: BEFORE + pax_member({"gid": "-5"}) + AFTER + END,
    "huge device number": lambda: BEFORE + header("dev", tarfile.CHRTYPE, devmajor=base256(2**40, 8))
    + AFTER + END,
    "negative mode": lambda: BEFORE + header("mode", mode=base256(-1, 8)) + AFTER + END,
    "NUL in a pax path": lambda: BEFORE + pax_member({"path": "etc/pass\0wd"}) + AFTER + END,
    "NUL in a pax linkpath": lambda: BEFORE + pax_member({"linkpath": "x\0y"})
    + header("link", tarfile.LNKTYPE) + AFTER + END,
    "a pax record length of 5000 digits": lambda: BEFORE + pax_member(b"9" * 5000 + b" path=x\n") + AFTER + END,
    "a pax record of length zero": lambda: BEFORE + pax_member(b"0 path=x\n") + AFTER + END,
    # tarfile's pattern scans to the next '=' for every record: quadratic in the header's size.
    "many pax records without '='": lambda: BEFORE + pax_member(b"5 ab\n" * 200000 + b"=") + AFTER + END,
    "a digit run before hdrcharset": lambda: BEFORE + pax_member(b"1" * 500000 + b" hdrcharset=BINARY\n")
    + AFTER + END,
    "3000 pax headers in a row": lambda: BEFORE + pax_member({"comment": "x"}) * 3000 + AFTER + END,
    "3000 GNU long names in a row": lambda: BEFORE + (header("././@LongLink", tarfile.GNUTYPE_LONGNAME, 4)
                                                      + padded(b"abc\0")) * 3000 + AFTER + END,
    "global pax records beyond the cap": lambda: BEFORE + b"".join(
        pax_member({f"comment{i}": "x"}, tarfile.XGLTYPE) + file_member(f"f{i}", b"") for i in range(300))
    + AFTER + END,
}


def layer_image(tmp: Path, data: bytes) -> str:
    """An oci: image whose one (uncompressed) layer is `data`, with matching digests."""
    diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
    raw_blob_image(tmp / "layout", "h", data, OCI_LAYER, diff_id)
    return f"oci:{tmp}/layout:h"


# `hash --files` reads layers as flatten does: both commands for the negative sizes, flatten for the rest.
LAYER_CASES = [(case, "flatten") for case in sorted(HOSTILE_TARS)] + [
    (case, "hash") for case in sorted(HOSTILE_TARS) if "negative" in case and "size" in case]


@pytest.mark.parametrize(("case", "command"), LAYER_CASES)
def test_hostile_layer_is_refused(case, command, tmp_path):
    ref = layer_image(tmp_path, HOSTILE_TARS[case]())
    args = ("flatten", ref, f"tar:{tmp_path}/out.tar") if command == "flatten" else ("hash", "--files", ref)
    line = refused(*args)
    assert "damaged tar stream" in line, line
    assert not (tmp_path / "out.tar").exists()


@pytest.mark.parametrize("case", ["negative size, back onto itself", "negative pax size record", "pax mtime NaN",
                                  "many pax records without '='", "3000 pax headers in a row"])
def test_hostile_tar_input_is_refused(case, tmp_path):
    """The same bytes as a `tar:` input (a foreign root file system), plain and gzip-compressed."""

    data = HOSTILE_TARS[case]()
    (tmp_path / "in.tar").write_bytes(data)
    (tmp_path / "in.tar.gz").write_bytes(gzip.compress(data, mtime=0))
    for name in ("in.tar", "in.tar.gz"):
        refused("convert", f"tar:{tmp_path}/{name}", f"oci:{tmp_path}/out-{name}:1", expect="not a readable tar")


@pytest.mark.parametrize("case", ["negative size, back onto itself", "negative GNU long-name size",
                                  "many pax records without '='"])
def test_hostile_member_headers_in_an_oci_archive(case, tmp_path):
    """An oci-archive whose own member headers are hostile: refused while listing its members."""
    refused("inspect", f"oci-archive:{_archive(tmp_path, HOSTILE_TARS[case]())}", expect="not a readable tar")


def _archive(tmp: Path, data: bytes) -> Path:
    path = tmp / "archive.tar"
    path.write_bytes(data)
    return path


# --- pax records of the input never reach the tarball flatten writes ------------------------------------


def pax_tar(global_records: dict[str, str] | None, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT, pax_headers=global_records) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, **pax: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode, info.pax_headers = kind, size, 0o644, dict(pax)
    if kind == tarfile.LNKTYPE:
        info.linkname = "x"
    return info


PAX_LAYERS = {
    "pax path and linkpath": lambda: pax_tar(None, [
        (_info("x", size=4, path="../../x"), b"evil"),
        (_info("h", tarfile.LNKTYPE, linkpath="../../etc/passwd"), None),
        (_info("abs", size=1, path="/etc/cron.d/evil"), b"!"),
    ]),
    "global pax linkpath": lambda: pax_tar({"linkpath": "../../etc/passwd"}, [
        (_info("x", size=4), b"data"),
        (_info("h", tarfile.LNKTYPE), None),
    ]),
    "global pax path": lambda: pax_tar({"path": "../../../g"}, [(_info("x", size=4), b"data")]),
    "pax size, uid and uname": lambda: pax_tar(None, [
        (_info("x", size=4, uid="7", uname="mallory", gname="evil", mtime="12345.5"), b"data"),
        (_info("y", size=2), b"ok"),
    ]),
}


@pytest.mark.parametrize("case", sorted(PAX_LAYERS))
def test_flattened_tarball_has_only_clean_names(case, tmp_path):
    ref = layer_image(tmp_path, PAX_LAYERS[case]())
    out = tmp_path / "flat.tar"
    proc, _ = run_repro("flatten", ref, f"tar:{out}")
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(out) as tar:  # the independent reader
        members = tar.getmembers()
    assert members
    for info in members:
        for name in (info.name, info.linkname if info.islnk() else ""):
            assert not name.startswith("/") and ".." not in name.split("/"), (info.name, info.linkname)
        assert set(info.pax_headers) <= {"mtime", "uid", "gid", "size"} | {
            k for k in info.pax_headers if k.startswith("SCHILY.xattr.")}, info.pax_headers
        assert info.uname == info.gname == ""


def test_flattened_tarball_keeps_xattrs(tmp_path):
    data = pax_tar(None, [(_info("x", size=4, **{"SCHILY.xattr.user.note": "kept", "path": "../x"}), b"data")])
    out = tmp_path / "flat.tar"
    proc, _ = run_repro("flatten", layer_image(tmp_path, data), f"tar:{out}")
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(out) as tar:
        (info,) = tar.getmembers()
    assert info.name == "x" and info.pax_headers == {"SCHILY.xattr.user.note": "kept"}


# --- build specs -------------------------------------------------------------------------------------


def _bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\nspec: 1\nbase: {scratch: true}\n"


BASE = "spec: 1\nbase: {scratch: true}\n"
BAD_SPECS = {
    "alias bomb": (_bomb(), ":1: YAML anchors and aliases"),
    "recursive alias": ("spec: 1\nbase: &b {scratch: [*b]}\n", ":2: YAML anchors and aliases"),
    "copy dst with ..": (BASE + "steps:\n  - copy: {src: f, dst: /../../x}\n", ":4: steps[0].copy.dst:"),
    "file dst with ..": (BASE + "steps:\n  - file: {dst: /etc/../../x, content: y}\n", ":4: steps[0].file.dst:"),
    "file dst with NUL": (BASE + 'steps:\n  - file: {dst: "/x\\0y", content: y}\n', ":4: steps[0].file.dst:"),
    "file dst with //": (BASE + "steps:\n  - file: {dst: //x, content: y}\n", ":4: steps[0].file.dst:"),
    "file dst of a directory": (BASE + "steps:\n  - file: {dst: /x/, content: y}\n", ":4: steps[0].file.dst:"),
    "copy dst with .": (BASE + "steps:\n  - copy: {src: f, dst: /./x}\n", ":4: steps[0].copy.dst:"),
    "copy src with NUL": (BASE + 'steps:\n  - copy: {src: "f\\0", dst: /x}\n', ":4: steps[0].copy.src:"),
    "step without an action": (BASE + "steps:\n  - network: true\n", ":4: steps[0]: give exactly one"),
    "step with two actions": (BASE + "steps:\n  - {run: ls, file: {dst: /x, content: y}}\n",
                              ":4: steps[0]: give exactly one"),
    "a list as a key": ("? [spec]\n: 1\nbase: {scratch: true}\n", ":1: spec: a key must be a plain name"),
    "python tag": ("spec: !!python/object/apply:os.system [true]\nbase: {scratch: true}\n", ":1: YAML tags"),
    "impossible date": (BASE + "source_date_epoch: 2024-13-45\n", ":3: source_date_epoch: cannot read"),
    "integer of 5000 digits": (BASE + "source_date_epoch: " + "9" * 5000 + "\n", ":3: source_date_epoch:"),
    "float epoch": (BASE + "source_date_epoch: 1.0\n", ":3: source_date_epoch: expected integer"),
    "epoch beyond 2262": (BASE + "source_date_epoch: 99999999999\n", ":3: source_date_epoch:"),
    "uid beyond 32 bits": (BASE + 'steps:\n  - file: {dst: /x, content: y, owner: "4294967296:0"}\n',
                           ":4: steps[0].file.owner:"),
    "uid of 5000 digits": (BASE + 'steps:\n  - file: {dst: /x, content: y, owner: "0:' + "9" * 5000 + '"}\n',
                           ":4: steps[0].file.owner:"),
    "duplicate key": (BASE + "spec: 1\n", ":3: spec: duplicate key"),
    "deep nesting": (BASE + "tests: " + "[" * 5000 + "]" * 5000 + "\n", ":3: nested more than"),
    "not UTF-8": (BASE + "name: caf\xe9\n", ":3: the spec is not UTF-8"),
    "larger than 1 MiB": (BASE + "# " + "x" * (1 << 20) + "\n", ":1: the spec is larger than"),
}


def _write_spec(tmp: Path, case: str) -> Path:
    text = BAD_SPECS[case][0]
    spec = tmp / "spec.yaml"
    spec.write_bytes(text.encode("latin-1") if case == "not UTF-8" else text.encode())
    (tmp / "f").write_text("a file to copy\n")
    return spec


# Through the CLI (importing jsonschema costs seconds, so the rest of the table calls the loader).
CLI_SPECS = ["alias bomb", "recursive alias", "copy dst with ..", "step without an action", "deep nesting"]


@pytest.mark.parametrize("case", CLI_SPECS)
def test_bad_spec_is_one_line_and_exit_2(case, tmp_path):
    spec = _write_spec(tmp_path, case)
    proc, seconds = run_repro("build", str(spec), "--store", str(tmp_path / "store"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "spec.yaml" + BAD_SPECS[case][1] in lines[0], lines[0]
    assert seconds < 30, f"took {seconds:.1f} s"
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("case", sorted(set(BAD_SPECS) - {"alias bomb", "recursive alias"}))
def test_bad_spec_is_one_error(case, tmp_path):
    spec = _write_spec(tmp_path, case)
    with pytest.raises(ReproError) as caught:
        load(spec)
    assert caught.value.exit_code == 2 and "\n" not in str(caught.value)
    assert "spec.yaml" + BAD_SPECS[case][1] in caught.value.message, caught.value.message


# --- manifests, indexes, configs ---------------------------------------------------------------------


def json_image(tmp: Path, config: bytes | None = None, manifest: Callable[[dict], bytes] | None = None,
               index: Callable[[dict], bytes] | None = None) -> str:
    """A valid one-layer image whose config, manifest or index.json is replaced by hostile bytes."""
    layout_dir = tmp / "layout"
    make_image(layout_dir, "ok", [[E("f", b"x")]])
    layout = Layout.open_existing(layout_dir)
    good = json.loads((layout_dir / "index.json").read_bytes())["manifests"][0]
    good_manifest = json.loads((layout_dir / "blobs" / good["digest"].replace(":", "/")).read_bytes())
    if config is not None:
        good_manifest["config"] = layout.put_bytes(config, OCI_CONFIG).to_json()
    raw = manifest(good_manifest) if manifest is not None else canonical_json(good_manifest)
    descriptor = layout.put_bytes(raw, OCI_MANIFEST)
    named = Descriptor(OCI_MANIFEST, descriptor.digest, descriptor.size, {"org.opencontainers.image.ref.name": "h"})
    layout.add_manifest(named, "h")
    if index is not None:
        (layout_dir / "index.json").write_bytes(index(json.loads((layout_dir / "index.json").read_bytes())))
    return f"oci:{layout_dir}:h"


def config_with(**changes) -> bytes:
    obj = {"architecture": "amd64", "os": "linux", "created": rfc3339(0),
           "rootfs": {"type": "layers", "diff_ids": []}, "config": {}}
    for key, value in changes.items():
        if key in ("Labels", "Env", "Entrypoint", "Cmd", "User", "WorkingDir"):
            obj["config"][key] = value
        else:
            obj[key] = value
    return json.dumps(obj).encode()


def manifest_with(**changes) -> Callable[[dict], bytes]:
    def change(manifest: dict) -> bytes:
        for key, value in changes.items():
            if key.startswith("config."):
                manifest["config"][key[len("config."):]] = value
            elif key.startswith("layer."):
                manifest["layers"][0][key[len("layer."):]] = value
            else:
                manifest[key] = value
        return canonical_json(manifest)
    return change


DEEP = b'{"rootfs": {"type": "layers", "diff_ids": []}, "deep": ' + b"[" * 100000 + b"]" * 100000 + b"}"
BAD_JSON = {
    "config nested 100000 deep": ({"config": DEEP}, "nested more than"),
    "config nested 500 deep": ({"config": DEEP.replace(b"[" * 100000, b"[" * 500).replace(b"]" * 100000,
                                                                                        b"]" * 500)},
                               "nested more than"),
    "NaN in the config": ({"config": config_with().replace(b'"os"', b'"mtime": NaN, "os"')}, "invalid JSON"),
    "Infinity in the config": ({"config": config_with().replace(b'"os"', b'"mtime": -Infinity, "os"')},
                               "invalid JSON"),
    "1e999 in the config": ({"config": config_with().replace(b'"os"', b'"mtime": 1e999, "os"')}, "invalid JSON"),
    "Labels as a list": ({"config": config_with(Labels=["a=b"])}, "'Labels' must be an object"),
    "a label that is a number": ({"config": config_with(Labels={"a": 1})}, "must be a string"),
    "Env as a string": ({"config": config_with(Env="PATH=/bin")}, "'Env' must be an array"),
    "Cmd of numbers": ({"config": config_with(Cmd=[1, 2])}, "Cmd[0] must be a string"),
    "config as a list": ({"config": config_with(config=["x"])}, "'config' must be an object"),
    "os as a list": ({"config": config_with(os=["linux"])}, "'os' must be a string"),
    "history as a string": ({"config": config_with(history="made")}, "'history' must be an array"),
    "annotations as a string": ({"manifest": manifest_with(annotations="x")}, "'annotations' must be an object"),
    "layers as an object": ({"manifest": manifest_with(layers={})}, "'layers' must be an array"),
    "size as a boolean": ({"manifest": manifest_with(**{"config.size": True})}, "'size' must be an integer"),
    "size as a float": ({"manifest": manifest_with(**{"layer.size": 2.0})}, "'size' must be an integer"),
    "digest as a number": ({"manifest": manifest_with(**{"config.digest": 5})}, "'digest' must be a string"),
    "mediaType as a list": ({"manifest": manifest_with(mediaType=[OCI_MANIFEST])}, "'mediaType' must be a string"),
    "urls as a string": ({"manifest": manifest_with(**{"layer.urls": "http://x"})}, "'urls' must be an array"),
    "platform as a string": ({"manifest": manifest_with(**{"layer.platform": "linux"})},
                             "'platform' must be an object"),
    "subject as a list": ({"manifest": manifest_with(subject=[])}, "descriptor must be a JSON object"),
    "index annotations as a string": ({"index": lambda obj: json.dumps({**obj, "annotations": "x"}).encode()},
                                      "'annotations' must be an object"),
    "index nested deep": ({"index": lambda obj: json.dumps({**obj, "x": json.loads("[" * 900 + "]" * 900)})
                           .encode()}, "nested more than"),
}


@pytest.mark.parametrize("case", sorted(BAD_JSON))
def test_bad_json_is_one_line(case, tmp_path):
    parts, expected = BAD_JSON[case]
    ref = json_image(tmp_path, parts.get("config"), parts.get("manifest"), parts.get("index"))
    refused("inspect", ref, expect=expected)
