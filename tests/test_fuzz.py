"""Fuzzing the parsers of untrusted input: tar streams (layers, tar: inputs, archives), SIF headers and
descriptors, manifests, indexes, configs, and build specs.

Every input must end in success or in an exception the CLI turns into one line and exit 1 or 2
(repro.cli.main: ReproError gives its exit_code, OSError gives 2), never another exception type
(an "internal error", exit 70) and never a hang: each example runs under an alarm, and a tar reader
may not give more members than the stream has 512-byte blocks (a reader moving backwards would).
Bounded so the whole file runs in well under two minutes.
"""

from __future__ import annotations

import gzip
import io
import json
import signal
import struct
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builders.spec import load
from converters import sif_format
from repro.errors import ReproError
from repro.files import TarFiles
from repro.image import OCI_MANIFEST, ImageConfig, Index, Manifest, canonical_json
from repro.layers import TarWriter
from repro.tarstream import TarStream, copy_tar_stream

# What repro.cli.main maps to exit 1 or 2; anything else is exit 70.
HANDLED = (ReproError, OSError)
SECONDS = 10  # per example; each takes milliseconds
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.data_too_large])


class Hang(Exception):
    """An example ran past its alarm."""


@contextmanager
def alarm(seconds: int = SECONDS) -> Iterator[None]:
    def ring(signum: int, frame: object) -> None:
        raise Hang(f"no result after {seconds} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def ends_well(parse: Callable[[], object]) -> object:
    """Run a parser: its result, or None after an exception the CLI handles; fails on anything else."""
    with alarm():
        try:
            return parse()
        except HANDLED as exc:
            if isinstance(exc, ReproError):
                assert exc.exit_code in (1, 2) and "\n" not in exc.message, exc
            return None


# --- tar streams -----------------------------------------------------------------------------------

SHORT_NAMES = ["a", "dir/b", "ü/名", "../up", "/abs", "x/./y"]
NAMES = st.sampled_from([*SHORT_NAMES, "n" * 120, "d" * 80 + "/" + "e" * 80])
KINDS = st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE])
FORMATS = st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
# Where the numbers and names of a ustar header are: (offset, width).
FIELDS = [(0, 100), (100, 8), (108, 8), (116, 8), (124, 12), (136, 12), (156, 1), (157, 100), (329, 8), (337, 8),
          (345, 155)]


@st.composite
def tar_bytes(draw) -> bytes:
    buffer = io.BytesIO()
    fmt = draw(FORMATS)
    with tarfile.open(fileobj=buffer, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape") as tar:
        names = st.sampled_from(SHORT_NAMES) if fmt == tarfile.USTAR_FORMAT else NAMES  # ustar: 100 bytes
        for _ in range(draw(st.integers(0, 4))):
            info = tarfile.TarInfo(draw(names))
            info.type = draw(KINDS)
            info.linkname = draw(names) if info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            data = draw(st.binary(max_size=1200)) if info.type == tarfile.REGTYPE else b""
            info.size = len(data)
            if fmt == tarfile.PAX_FORMAT and draw(st.booleans()):
                info.pax_headers = {"SCHILY.xattr.user.k": "v", "comment": draw(st.text(max_size=20))}
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _checksummed(data: bytearray, start: int) -> None:
    block = data[start : start + 512]
    if len(block) == 512:
        block[148:156] = b" " * 8
        data[start + 148 : start + 156] = b"%06o\0 " % sum(block)


def _number(draw, width: int) -> bytes:
    kind = draw(st.sampled_from(["base256", "octal", "raw"]))
    if kind == "base256":
        value = draw(st.integers(-(256 ** (width - 1)) + 1, 256 ** (width - 1) - 1))
        if value < 0:
            return b"\xff" + (256 ** (width - 1) + value).to_bytes(width - 1, "big")
        return b"\x80" + value.to_bytes(width - 1, "big")
    if kind == "octal":
        text = draw(st.sampled_from(["-1", "7" * (width - 1), "0", "1000", " 12 ", "-777"]))
        return text.encode().ljust(width, b"\0")[:width]
    return draw(st.binary(min_size=width, max_size=width))


def _extension(draw) -> bytes:
    """A GNU long name/link or pax header with a drawn size field and drawn content."""
    kind = draw(st.sampled_from([tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                                 tarfile.XGLTYPE]))
    if kind in (tarfile.XHDTYPE, tarfile.XGLTYPE):
        records = draw(st.lists(st.sampled_from([
            b"9 path=x\n", b"16 path=../../x\n", b"12 size=-512\n", b"12 mtime=nan\n", b"11 uid=-1\n",
            b"0 path=x\n", b"99999 path=x\n", b"5 ab\n", b"21 hdrcharset=BINARY\n", b"13 linkpath=\0\n",
            b"20 GNU.sparse.map=0\n", b"9" * 30 + b" x=y\n"]), max_size=5))
        payload = b"".join(records) + draw(st.binary(max_size=30))
    else:
        payload = draw(st.binary(max_size=300))
    info = tarfile.TarInfo("././@LongLink")
    info.type, info.size = kind, len(payload)
    header = bytearray(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
    if draw(st.booleans()):
        header[124:136] = _number(draw, 12)
    _checksummed(header, 0)
    return bytes(header) + payload + bytes(-len(payload) % 512)


@st.composite
def hostile_tars(draw) -> bytes:
    data = bytearray(draw(tar_bytes()))
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["field", "byte", "extension", "truncate"]))
        blocks = max(1, len(data) // 512)
        start = draw(st.integers(0, blocks - 1)) * 512
        if action == "field" and len(data) >= start + 512:
            offset, width = draw(st.sampled_from(FIELDS))
            data[start + offset : start + offset + width] = (
                _number(draw, width) if width in (8, 12) else draw(st.binary(min_size=width, max_size=width)))
            if draw(st.integers(0, 9)):  # usually a header that is accepted, so the damage gets read
                _checksummed(data, start)
        elif action == "byte" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif action == "extension":
            data[start:start] = _extension(draw) * draw(st.sampled_from([1, 2, 40]))
        elif action == "truncate":
            del data[draw(st.integers(0, len(data))):]
    return bytes(data)


def read_all(stream: TarStream, size: int) -> int:
    members = 0
    for info in stream:
        members += 1
        assert members <= size // 512 + 1, "more members than blocks: the reader went backwards"
        if info.isreg():
            content = stream.content()
            while content.read(4096):
                pass
    return members


@given(hostile_tars())
@FUZZ
def test_tar_stream(data):
    ends_well(lambda: read_all(TarStream(io.BytesIO(data), "layer"), len(data)))


@given(hostile_tars(), st.sampled_from(["", "gzip"]))
@FUZZ
def test_tar_input_copied_into_a_layer(data, compression):
    """`tar:` inputs, mmdebstrap's and sqfs2tar's output: read and written again by TarWriter."""

    source = gzip.compress(data, mtime=0) if compression else data
    out = io.BytesIO()
    ends_well(lambda: copy_tar_stream(io.BytesIO(source), TarWriter(out), "tar:x", 1700000000))


@given(hostile_tars())
@FUZZ
def test_tar_archive_members(data):
    """oci-archive: and docker-archive: files: their member headers, listed by seeking."""
    with tempfile.NamedTemporaryFile(suffix=".tar") as f:
        f.write(data)
        f.flush()

        def listing() -> int:
            files = TarFiles(f.name, "oci-archive:x")
            assert len(files.members) <= len(data) // 512 + 1
            for name in list(files.members)[:3]:
                if files.exists(name) and files.size(name) < 4096:
                    files.read(name)
            return len(files.members)

        ends_well(listing)


# --- SIF ---------------------------------------------------------------------------------------------


def _sif() -> bytes:
    def content(data: bytes) -> Callable[[io.BytesIO], int]:
        return lambda out: out.write(data)

    objects = [
        sif_format.NewObject(sif_format.DATA_DEFFILE, "deffile", content(b"bootstrap: scratch\n")),
        sif_format.NewObject(sif_format.DATA_GENERIC_JSON, "oci-config.json", content(b"{}")),
        sif_format.NewObject(sif_format.DATA_PARTITION, "rootfs", content(b"hsqs" + bytes(60)),
                             sif_format.partition_extra(sif_format.FS_SQUASHFS, sif_format.PART_PRIMARY, "amd64"),
                             alignment=sif_format.PARTITION_ALIGNMENT),
    ]
    out = io.BytesIO()
    sif_format.write(out, objects, uuid.UUID(int=1), 1700000000, capacity=4)
    return out.getvalue()


SIF = _sif()
# The fields of the global header and of the first descriptors: (offset, struct format).
HEADER_FIELDS = [(32, "10s"), (42, "3s"), (45, "3s")] + [(64 + 8 * i, "<q") for i in range(8)]
DESCRIPTOR_FIELDS = [(0, "<i"), (4, "B"), (5, "<I"), (9, "<I"), (13, "<I")] + [(17 + 8 * i, "<q") for i in range(7)] + [
    (73, "128s"), (201, "<i"), (205, "<i"), (209, "3s")]


@st.composite
def hostile_sifs(draw) -> tuple[bytes, int]:
    data = bytearray(SIF)
    for _ in range(draw(st.integers(1, 5))):
        if draw(st.booleans()):
            offset, fmt = draw(st.sampled_from(HEADER_FIELDS))
        else:
            field, fmt = draw(st.sampled_from(DESCRIPTOR_FIELDS))
            offset = sif_format.DESCRIPTORS_OFFSET + draw(st.integers(0, 3)) * sif_format.DESCRIPTOR.size + field
        size = struct.calcsize(fmt)
        if fmt.endswith("s"):
            value = draw(st.binary(min_size=size, max_size=size))
        else:
            bits = size * 8
            signed = fmt[-1].islower() and fmt[-1] != "b"
            low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
            edges = [v for v in (low, high, 0, -1, len(data), 4096) if low <= v <= high]
            value = struct.pack(fmt, draw(st.one_of(st.integers(low, high), st.sampled_from(edges))))
        data[offset : offset + size] = value
    cut = draw(st.sampled_from([len(data), len(data), 100, 5000, len(data) - 1]))
    return bytes(data[:cut]), draw(st.sampled_from([cut, cut, cut + 4096, max(0, cut - 10)]))


@given(hostile_sifs())
@FUZZ
def test_sif_headers_and_descriptors(case):
    data, file_size = case

    def parse() -> object:
        _header, descriptors = sif_format.read(io.BytesIO(data), file_size, "sif:x")
        for descriptor in descriptors:
            descriptor.partition  # noqa: B018 - the property parses the extra bytes
        return sif_format.primary_partition(descriptors, "sif:x")

    ends_well(parse)


# --- manifests, indexes, configs ---------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
DIGEST = "sha256:" + "a" * 64
DESCRIPTOR = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": DIGEST, "size": 2}
DOCUMENTS = {
    "manifest": (Manifest.parse, {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": DESCRIPTOR,
                                  "layers": [dict(DESCRIPTOR, platform={"os": "linux"})],
                                  "annotations": {"a": "b"}, "subject": DESCRIPTOR}),
    "index": (Index.parse, {"schemaVersion": 2, "manifests": [dict(DESCRIPTOR, urls=["http://x"])],
                            "annotations": {"a": "b"}}),
    "config": (ImageConfig.parse, {"os": "linux", "architecture": "amd64", "created": "2024-01-01T00:00:00Z",
                                   "rootfs": {"type": "layers", "diff_ids": [DIGEST]},
                                   "config": {"Env": ["A=b"], "Cmd": ["sh"], "Entrypoint": None, "Labels": {"l": "v"},
                                              "WorkingDir": "/", "User": "0"},
                                   "history": [{"created_by": "x"}]}),
}


def _paths(obj: object, prefix: tuple = ()) -> Iterator[tuple]:
    yield prefix
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _paths(value, (*prefix, i))


def _replace(obj: object, path: tuple, value: object) -> object:
    if not path:
        return value
    copy = dict(obj) if isinstance(obj, dict) else list(obj)  # type: ignore[call-overload]
    copy[path[0]] = _replace(copy[path[0]], path[1:], value)
    return copy


@st.composite
def hostile_documents(draw) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(sorted(DOCUMENTS)))
    doc = DOCUMENTS[kind][1]
    shape = draw(st.sampled_from(["replace", "replace", "bytes", "deep", "constant"]))
    if shape == "replace":
        for _ in range(draw(st.integers(1, 3))):
            doc = _replace(doc, draw(st.sampled_from(list(_paths(doc)))), draw(JSON))  # type: ignore[assignment]
        raw = json.dumps(doc, allow_nan=True).encode()
    elif shape == "bytes":
        raw = draw(st.binary(max_size=200))
    elif shape == "deep":
        depth = draw(st.sampled_from([63, 64, 65, 999, 1000, 5000, 200000]))
        raw = json.dumps(doc).encode()[:-1] + b', "deep": ' + b"[" * depth + b"]" * depth + b"}"
    else:
        raw = json.dumps(doc).encode()[:-1] + b', "x": ' + draw(st.sampled_from(
            [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"9" * 5000, b'"\\ud800"'])) + b"}"
    return kind, raw


@given(hostile_documents())
@FUZZ
def test_manifest_index_and_config_parsers(case):
    kind, raw = case

    def parse() -> object:
        parsed = DOCUMENTS[kind][0](raw, kind)
        if hasattr(parsed, "to_json"):
            canonical_json(parsed.to_json())
        return parsed

    ends_well(parse)


# --- build specs -------------------------------------------------------------------------------------

VALID_SPEC = """spec: 1
name: fuzz
base: {scratch: true}
source_date_epoch: 1700000000
steps:
  - copy: {src: f, dst: /srv/, mode: "0644", owner: "1:1"}
  - file: {dst: /etc/motd, content: hello}
  - run: [sh, -c, "true"]
    network: false
config:
  env: {A: b}
  cmd: [sh]
  workdir: /srv
  labels: {l: v}
annotations: {a: b}
tests:
  - {run: "true", exit: 0, output: ""}
"""
YAML_PIECES = st.sampled_from(["&a ", "*a", "!!python/object:os.system ", "? ", "- ", ": ", "[", "]", "{", "}",
                               "\n", "  ", "..", "/../", "\\0", '"', "'", "#", "!!binary ", "<<: ", "%YAML 1.1\n",
                               "---\n", "2024-13-45", "1e999", ".nan", "9" * 50, "\t", "|\n", ">-\n", "\x00"])


@st.composite
def hostile_specs(draw) -> str:
    shape = draw(st.sampled_from(["splice", "value", "text"]))
    if shape == "splice":
        text = VALID_SPEC
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(text)))
            cut = draw(st.integers(0, 5))
            text = text[:at] + draw(YAML_PIECES) + text[at + cut:]
        return text
    if shape == "value":
        spec = yaml.safe_load(VALID_SPEC)
        for _ in range(draw(st.integers(1, 3))):
            path = draw(st.sampled_from(list(_paths(spec))))
            spec = _replace(spec, path, draw(JSON))
        return yaml.safe_dump(spec) if isinstance(spec, dict) else json.dumps(spec)
    return draw(st.text(st.sampled_from("ab:-[]{}&*!?|>#\"' \n\t/.0"), max_size=120))


@given(hostile_specs())
@FUZZ
def test_spec_loader(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        (Path(tmp) / "f").write_text("file\n")

        def parse() -> object:
            spec = load(path)
            return (spec.name, spec.tag, spec.base, spec.steps, spec.config, spec.annotations, spec.tests)

        ends_well(parse)


@pytest.mark.parametrize("shape", ["alias bomb", "recursive alias"])
def test_spec_aliases_end_quickly(shape, tmp_path):
    levels = [f'a{i}: &a{i} [' + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 12)]
    text = ('a0: &a0 ["lol"]\n' + "\n".join(levels) + "\n") if shape == "alias bomb" else "spec: &s [*s]\n"
    (tmp_path / "spec.yaml").write_text(text)
    assert ends_well(lambda: load(tmp_path / "spec.yaml")) is None
