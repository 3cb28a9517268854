"""repro.tarstream against tarfile's stream mode: the same members, fields and content, the same
end of archive, and ReproErrors where tarfile raises."""

from __future__ import annotations

import io
import re
import tarfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from repro.errors import ReproError
from repro.tarstream import TarStream

FIELDS = ("name", "type", "mode", "uid", "gid", "uname", "gname", "size", "mtime", "linkname", "devmajor",
          "devminor", "chksum", "pax_headers")


class Dribble(io.RawIOBase):
    """A source that gives a few bytes per read, so headers and content straddle chunks."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        n = min(self._step, size if size >= 0 else self._step)
        out = self._data[self._pos : self._pos + n].tobytes()
        self._pos += len(out)
        return out


def fields(info: tarfile.TarInfo) -> tuple:
    return tuple(getattr(info, f) for f in FIELDS)


def with_tarfile(data: bytes) -> list:
    out: list = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|", encoding="utf-8", errors="surrogateescape") as tar:
            for info in tar:
                out.append((fields(info), tar.extractfile(info).read() if info.isreg() else None))
    except tarfile.TarError as exc:
        out.append(("error", str(exc)))
    return out


def with_tarstream(data: bytes, step: int = 0) -> list:
    out: list = []
    source = Dribble(data, step) if step else io.BytesIO(data)
    try:
        stream = TarStream(source, "layer")
        for info in stream:
            out.append((fields(info), stream.content().read() if info.isreg() else None))
    except ReproError as exc:
        out.append(("error", re.fullmatch(r"layer: [a-z ]+ \((.*)\)", exc.message).group(1)))
    return out


def same_as_tarfile(data: bytes) -> list:
    expected = with_tarfile(data)
    assert with_tarstream(data) == expected
    assert with_tarstream(data, step=7) == expected
    assert with_tarstream(data, step=509) == expected
    return expected


def make_tar(entries: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def member(name: str, data: bytes | None = b"", kind: bytes = tarfile.REGTYPE, **attrs) -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    if data is not None:
        info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def with_checksum(block: bytearray) -> bytearray:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return block


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_common_members(fmt):
    entries = [
        member("dir", None, tarfile.DIRTYPE, mode=0o755),
        member("dir/file", b"hello\n" * 100, mode=0o644, uid=1000, gid=1000, uname="me", gname="us", mtime=1700000000),
        member("dir/empty", b""),
        member("dir/link", None, tarfile.SYMTYPE, linkname="file"),
        member("dir/hard", None, tarfile.LNKTYPE, linkname="dir/file"),
        member("dev/null", None, tarfile.CHRTYPE, devmajor=1, devminor=3),
        member("dev/sda", None, tarfile.BLKTYPE, devmajor=8, devminor=0),
        member("fifo", None, tarfile.FIFOTYPE),
        member("exact", b"x" * 512),
        member("big", bytes(range(256)) * 5000),
    ]
    found = same_as_tarfile(make_tar(entries, fmt))
    assert [f[0][0] for f in found] == ["dir", "dir/file", "dir/empty", "dir/link", "dir/hard", "dev/null",
                                        "dev/sda", "fifo", "exact", "big"]


def test_pax_long_names_and_xattrs():
    long_dir = "d" * 90 + "/" + "e" * 90
    entries = [
        member(long_dir + "/" + "f" * 150, b"content"),
        member("l", None, tarfile.SYMTYPE, linkname="t" * 300),
        member("x", b"data", pax_headers={"SCHILY.xattr.user.comment": "hi", "SCHILY.xattr.security.capability":
                                          "\x01\x00\x00\x02"}),
        member("ünïcödé/名前", b"u", uname="üser"),
    ]
    found = same_as_tarfile(make_tar(entries))
    assert found[0][0][0] == long_dir + "/" + "f" * 150
    assert found[2][0][-1]["SCHILY.xattr.user.comment"] == "hi"


def test_gnu_long_names_and_links():
    entries = [member("n" * 200, b"long"), member("h" * 150, None, tarfile.LNKTYPE, linkname="n" * 200),
               member("s", None, tarfile.SYMTYPE, linkname="z" * 180), member("D" * 120 + "/", None, tarfile.DIRTYPE)]
    found = same_as_tarfile(make_tar(entries, tarfile.GNU_FORMAT))
    assert found[1][0][0] == "h" * 150 and found[1][0][9] == "n" * 200


def test_ustar_prefix():
    name = "p" * 120 + "/" + "n" * 90
    found = same_as_tarfile(make_tar([member(name, b"x")], tarfile.USTAR_FORMAT))
    assert found[0][0][0] == name


def test_base256_numbers():
    entries = [member("f", b"abc", uid=8**8 + 5, gid=2**31, mtime=-100)]
    data = bytearray(make_tar(entries, tarfile.GNU_FORMAT))
    # A small size in base-256 form, as some writers emit it.
    data[124:136] = b"\x80" + (3).to_bytes(11, "big")
    with_checksum(memoryview(data)[:512])
    found = same_as_tarfile(bytes(data))
    assert found[0][0][3:5] == (8**8 + 5, 2**31) and found[0][0][7:9] == (3, -100)


def test_non_utf8_names():
    raw = b"caf\xe9/na\xefve"
    name = raw.decode("utf-8", "surrogateescape")
    entries = [member(name, b"x"), member(name + "-link", None, tarfile.SYMTYPE, linkname=name)]
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        found = same_as_tarfile(make_tar(entries, fmt))
        assert found[0][0][0] == name and found[1][0][9] == name


def test_global_pax_header_applies_to_later_members():
    records = b"29 SCHILY.xattr.user.all=yes\n"
    header = bytearray(make_tar([member("pax_global_header", records, tarfile.XGLTYPE)], tarfile.USTAR_FORMAT)[:1024])
    data = bytes(header) + make_tar([member("a", b"1"), member("b", b"2", pax_headers={"comment": "c"})])
    found = same_as_tarfile(data)
    assert all(f[0][-1].get("SCHILY.xattr.user.all") == "yes" for f in found)


def test_pax_size_overrides_header():
    data = make_tar([member("big", b"z" * 3000, pax_headers={"size": "3000"}), member("after", b"a")])
    assert [f[1] for f in same_as_tarfile(data)] == [b"z" * 3000, b"a"]


def test_v7_directory_and_unknown_type():
    entries = [member("olddir/", b"", tarfile.AREGTYPE), member("volume", b"label data", b"V"), member("f", b"f")]
    found = same_as_tarfile(make_tar(entries, tarfile.USTAR_FORMAT))
    assert found[0][0][:2] == ("olddir", tarfile.DIRTYPE)
    assert found[2][1] == b"f"


def test_bad_checksum():
    data = bytearray(make_tar([member("a", b"1"), member("b", b"2")], tarfile.USTAR_FORMAT))
    first = bytes(data)
    data[1024 + 10] ^= 0x55  # the second member's header: tarfile ends the archive there, silently
    assert len(same_as_tarfile(bytes(data))) == 1
    broken = bytearray(first)
    broken[5] ^= 0x55
    assert same_as_tarfile(bytes(broken)) == [("error", "bad checksum")]


def test_truncated_streams():
    data = make_tar([member("a", b"1" * 2000), member("b", b"2" * 100)], tarfile.USTAR_FORMAT)
    assert same_as_tarfile(b"") == [("error", "empty file")]
    assert same_as_tarfile(data[:300]) == [("error", "truncated header")]
    assert same_as_tarfile(data[:512 + 1536])[-1] == ("error", "unexpected end of data")  # while skipping
    with pytest.raises(ReproError, match="damaged tar stream \\(unexpected end of data\\)"):
        stream = TarStream(io.BytesIO(data[:1000]), "layer")
        next(stream)
        stream.content().read()
    assert len(same_as_tarfile(data[: 512 + 2048 + 100])) == 1  # a partial header ends the archive


def test_sparse_files_are_refused():
    info, _ = member("sparse", b"")
    info.type = tarfile.GNUTYPE_SPARSE
    data = make_tar([(info, b"")], tarfile.GNU_FORMAT)
    with pytest.raises(ReproError, match="sparse"):
        list(TarStream(io.BytesIO(data), "layer"))
    pax = make_tar([member("s", b"", pax_headers={"GNU.sparse.map": "0,0"})])
    with pytest.raises(ReproError, match="sparse"):
        list(TarStream(io.BytesIO(pax), "layer"))


def test_content_is_gone_once_the_stream_moves_on():
    stream = TarStream(io.BytesIO(make_tar([member("a", b"abc"), member("b", b"def")])), "layer")
    next(stream)
    first = stream.content()
    assert first.read(2) == b"ab"
    next(stream)
    with pytest.raises(ValueError):
        first.read()
    second = stream.content()
    view = second.readview(100)
    assert isinstance(view, memoryview) and bytes(view) == b"def" and second.read() == b""


def test_read_gives_exactly_what_was_asked_across_chunks():
    payload = bytes(range(256)) * 40
    stream = TarStream(Dribble(make_tar([member("a", payload)]), 100), "layer")
    next(stream)
    content = stream.content()
    assert content.read(1000) == payload[:1000]
    buffer = bytearray(50)
    assert content.readinto(buffer) == 50 and bytes(buffer) == payload[1000:1050]
    assert content.read() == payload[1050:]


NAMES = st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=160)


@st.composite
def entries(draw) -> tuple:
    kind = draw(st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                                 tarfile.CHRTYPE, tarfile.FIFOTYPE]))
    attrs = {"mode": draw(st.integers(0, 0o7777)), "uid": draw(st.integers(0, 2**21)),
             "gid": draw(st.integers(0, 2**21)), "mtime": draw(st.integers(0, 2**33)),
             "uname": draw(st.sampled_from(["", "root", "ü"])), "linkname": draw(NAMES) if kind in (
                 tarfile.SYMTYPE, tarfile.LNKTYPE) else ""}
    if kind == tarfile.CHRTYPE:
        attrs.update(devmajor=draw(st.integers(0, 4095)), devminor=draw(st.integers(0, 4095)))
    if draw(st.booleans()):
        attrs["pax_headers"] = {"SCHILY.xattr.user." + draw(st.text("abc", min_size=1)): draw(NAMES)}
    data = draw(st.binary(max_size=3000)) if kind == tarfile.REGTYPE else None
    return member(draw(NAMES), data, kind, **attrs)


@given(st.lists(entries(), max_size=12), st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]),
       st.integers(0, 3000), st.booleans())
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_agrees_with_tarfile(members, fmt, cut, truncate):
    if fmt == tarfile.GNU_FORMAT:  # GNU format has no pax records
        for info, _ in members:
            info.pax_headers = {}
    data = make_tar(members, fmt)
    if truncate:
        data = data[: max(0, len(data) - cut)]
    same_as_tarfile(data)
