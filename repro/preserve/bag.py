"""BagIt 1.0 (RFC 8493): the container a preservation package is, written and checked.

Written here rather than with bagit-python's make_bag, which writes BagIt-Version 0.97 and today's date;
a package must say 1.0 and be byte-identical when made again. bagit-python validates what we write (in
tests). Checking works on any repro.files.Files: a directory, or a tar holding one read in place
(converters.archive.open_package).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from repro.digest import sha256_stream
from repro.errors import CheckFailed, ReproError
from repro.files import DirectoryFiles, Files

ALGORITHM = "sha256"
MANIFEST = f"manifest-{ALGORITHM}.txt"
TAG_MANIFEST = f"tagmanifest-{ALGORITHM}.txt"
BAGIT_TXT = b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"


def encode_path(name: str) -> str:
    """RFC 8493 2.1.3: percent-encode %, CR and LF in manifest paths."""
    return name.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def decode_path(name: str) -> str:
    return name.replace("%0A", "\n").replace("%0a", "\n").replace("%0D", "\r").replace("%0d", "\r").replace(
        "%25", "%")


def file_hash(stream: BinaryIO) -> tuple[str, int]:
    return sha256_stream(stream)


def _manifest_text(entries: Iterable[tuple[str, str]]) -> bytes:
    return "".join(f"{digest}  {encode_path(name)}\n" for name, digest in sorted(entries)).encode()


def make(root: Path, info: list[tuple[str, str]]) -> None:
    """Turn `root`, whose payload is already under `root/data`, into a bag: manifests and tag files."""
    files = DirectoryFiles(root, str(root), "package")
    payload, total = [], 0
    for name in files.names():
        if not name.startswith("data/"):
            raise ReproError(f"{root}: {name} is outside data/", "internal: payload goes under data/")
        with files.open(name) as stream:
            digest, size = file_hash(stream)
        payload.append((name, digest))
        total += size
    (root / MANIFEST).write_bytes(_manifest_text(payload))
    (root / "bagit.txt").write_bytes(BAGIT_TXT)
    fields = [*info, ("Payload-Oxum", f"{total}.{len(payload)}")]
    (root / "bag-info.txt").write_bytes("".join(f"{k}: {v}\n" for k, v in fields).encode())
    tags = []
    for name in ("bag-info.txt", "bagit.txt", MANIFEST):
        with open(root / name, "rb") as stream:
            tags.append((name, file_hash(stream)[0]))
    (root / TAG_MANIFEST).write_bytes(_manifest_text(tags))


def read_info(files: Files) -> dict[str, str]:
    """bag-info.txt as a dict (continuation lines joined)."""
    out: dict[str, str] = {}
    last = ""
    for line in files.read("bag-info.txt").decode("utf-8", "replace").splitlines():
        if line[:1] in (" ", "\t") and last:
            out[last] += " " + line.strip()
        elif ":" in line:
            last, _, value = line.partition(":")
            out[last.strip()] = value.strip()
    return out


def _parse_manifest(files: Files, name: str) -> dict[str, str]:
    entries = {}
    for number, line in enumerate(files.read(name).decode("utf-8", "replace").splitlines(), 1):
        digest, sep, path = line.partition(" ")
        if not sep or not path.strip():
            raise CheckFailed(f"{files.name}: {name} line {number} is malformed", "the package is damaged")
        entries[decode_path(path.lstrip(" *"))] = digest.lower()
    return entries


def check(files: Files) -> list[tuple[str, str]]:
    """Completeness and fixity; returns (check, detail) rows of what passed, raises CheckFailed at the first
    file that is wrong, naming it."""
    rows = []
    for required in ("bagit.txt", MANIFEST):
        if not files.exists(required):
            raise CheckFailed(f"{files.name}: {required} is missing", "not a BagIt bag, or a damaged one")
    version = files.read("bagit.txt").decode("utf-8", "replace")
    if "BagIt-Version:" not in version:
        raise CheckFailed(f"{files.name}: bagit.txt has no BagIt-Version", "the package is damaged")
    present = set(files.names())
    if files.exists(TAG_MANIFEST):
        for name, digest in sorted(_parse_manifest(files, TAG_MANIFEST).items()):
            if name not in present:
                raise CheckFailed(f"{files.name}: {name} is missing (listed in {TAG_MANIFEST})", "")
            with files.open(name) as stream:
                if file_hash(stream)[0] != digest:
                    raise CheckFailed(f"{files.name}: {name} does not match its {ALGORITHM} in {TAG_MANIFEST}",
                                      "the package's metadata was changed")
        rows.append(("tag files", f"{TAG_MANIFEST} matches"))
    manifest = _parse_manifest(files, MANIFEST)
    payload = sorted(n for n in present if n.startswith("data/"))
    extra = [n for n in payload if n not in manifest]
    if extra:
        raise CheckFailed(f"{files.name}: {extra[0]} is in the payload but not in {MANIFEST}",
                          "a file was added to the package")
    total = 0
    for name in sorted(manifest):
        if name not in present:
            raise CheckFailed(f"{files.name}: {name} is missing (listed in {MANIFEST})", "a file was deleted")
        with files.open(name) as stream:
            digest, size = file_hash(stream)
        if digest != manifest[name]:
            raise CheckFailed(f"{files.name}: {name} does not match its {ALGORITHM} in {MANIFEST}",
                              "the file was changed or damaged")
        total += size
    oxum = read_info(files).get("Payload-Oxum", "") if files.exists("bag-info.txt") else ""
    if oxum and oxum != f"{total}.{len(manifest)}":
        raise CheckFailed(f"{files.name}: Payload-Oxum {oxum} does not match the payload ({total}.{len(manifest)})",
                          "the package is damaged")
    rows.append(("payload", f"{len(manifest)} files, {total} bytes, every {ALGORITHM} matches"))
    return rows
