"""A plain user's root build steps with the user's subordinate ids (repro/run/executors/subids.py): a RUN that
gives files to other owners (as dpkg does for _apt, adm or _ssh) works as a plain user, sees the owners
earlier layers gave, and gives root's image; a stale owner never reaches through a link to the host.
Fast: busybox, no apt (the Debian defs and Containerfiles as a plain user run in make test-slow)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from repro.run import emulation
from tests.conftest import REPRO
from tests.test_emulation import arm64_busybox

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
CONTAINERFILE = """\
ARG SOURCE_DATE_EPOCH=1700000000
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY --chown=100:4 owned /var/owned
RUN mkdir -p /srv/app && echo data > /srv/app/f && chown -R 100:4 /srv/app && cp /bin/busybox /srv/tool \\
    && chgrp 50 /srv/tool && chmod 2755 /srv/tool && echo more >> /var/owned && stat -c '%u:%g' /var/owned > /seen
RUN chown 7:7 /srv/app/f && stat -c '%n %u:%g %a' /srv/tool /srv/app > /seen-later
"""


def _build(public: Path, who: str, containerfile: str = "Containerfile") -> subprocess.CompletedProcess:
    argv = [REPRO, "build", str(public / containerfile), "--store", str(public / who), "--json", "--no-cache"]
    if who != "root":
        argv = [*NOBODY, *argv]
    return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "HOME": str(public)},
                          timeout=600)


def _entries(store: Path, digest: str) -> dict[str, tuple[int, int, int]]:
    """path -> (uid, gid, mode) of the image's last entry for each path, over all its layers."""
    blobs = store / "blobs" / "sha256"
    manifest = json.loads((blobs / digest.split(":")[1]).read_text())
    out = {}
    for layer in manifest["layers"]:
        with tarfile.open(blobs / layer["digest"].split(":")[1]) as tar:
            for info in tar:
                out[info.name.rstrip("/")] = (info.uid, info.gid, info.mode)
    return out


def _content(store: Path, digest: str, name: str) -> str:
    blobs = store / "blobs" / "sha256"
    manifest = json.loads((blobs / digest.split(":")[1]).read_text())
    found = ""
    for layer in manifest["layers"]:
        with tarfile.open(blobs / layer["digest"].split(":")[1]) as tar:
            for info in tar:
                if info.name == name:
                    found = tar.extractfile(info).read().decode()  # type: ignore[union-attr]
    return found


def _context(public: Path, text: str) -> None:
    (public / "Containerfile").write_text(text)
    shutil.copy2("/bin/busybox", public / "busybox")
    (public / "owned").write_text("owned\n")
    subprocess.run(["chmod", "-R", "a+rwX", str(public)], check=True)


def test_a_run_step_gives_files_away_as_a_plain_user_with_subordinate_ids(public_dir, nobody_subids):
    _context(public_dir, CONTAINERFILE)
    as_root, as_user = _build(public_dir, "root"), _build(public_dir, "user")
    assert as_root.returncode == 0, as_root.stderr
    assert as_user.returncode == 0, as_user.stderr
    digest = json.loads(as_user.stdout)["digest"]
    assert digest == json.loads(as_root.stdout)["digest"]
    entries = _entries(public_dir / "user", digest)
    assert entries["srv/app"] == (100, 4, 0o755) and entries["srv/app/f"] == (7, 7, 0o644)
    assert entries["srv/tool"] == (0, 50, 0o2755)  # the setgid bit survives the owners' round trip
    assert entries["var/owned"] == (100, 4, 0o666)  # changed by root in a RUN: still its owner's (a+rw context)
    assert _content(public_dir / "user", digest, "seen") == "100:4\n"  # the RUN saw the COPY's owner
    # the next RUN saw what the one before left: owners and the setgid mode, put back for it
    assert _content(public_dir / "user", digest, "seen-later") == "/srv/tool 0:50 2755\n/srv/app 100:4 755\n"


def test_without_subordinate_ids_the_chown_fails_in_one_line(public_dir):
    """bwrap maps the user's one id: a chown to another fails, and the build says which step."""
    if any(Path(f).exists() and "nobody:" in Path(f).read_text() for f in ("/etc/subuid", "/etc/subgid")):
        raise AssertionError("nobody must have no subordinate ids here")
    _context(public_dir, CONTAINERFILE)
    as_user = _build(public_dir, "user")
    assert as_user.returncode != 0
    assert "chown" in as_user.stderr and "exited 1" in as_user.stderr and "Traceback" not in as_user.stderr


def test_a_stale_owner_behind_a_link_does_not_reach_the_host(public_dir, nobody_subids):
    """/d/f is another owner's; a COPY then puts a link to a host directory at /d. The next RUN gives the
    owners back before it runs: not through the link, so the host's file keeps its owner."""
    sentinel = public_dir / "sentinel"
    sentinel.mkdir()
    (sentinel / "f").write_text("host\n")
    over = public_dir / "over"
    over.mkdir()
    os.symlink(str(sentinel), over / "d")
    _context(public_dir, "ARG SOURCE_DATE_EPOCH=1700000000\nFROM scratch\nCOPY busybox /bin/busybox\n"
                         "COPY --chown=100:100 owned /d/f\nCOPY over/ /\nRUN [\"/bin/busybox\", \"true\"]\n")
    subprocess.run(["chown", "-R", "65534:65534", str(sentinel)], check=True)
    as_user = _build(public_dir, "user")
    assert as_user.returncode == 0, as_user.stderr
    st = (sentinel / "f").stat()
    assert (st.st_uid, st.st_gid, (sentinel / "f").read_text()) == (65534, 65534, "host\n")
    entries = _entries(public_dir / "user", json.loads(as_user.stdout)["digest"])
    assert entries["d"][:2] == (0, 0)


def test_a_foreign_run_step_gives_files_away_too(public_dir, nobody_subids):
    """An arm64 RUN under QEMU, qemu registered in the namespace of the user's subordinate ids (Linux 6.7
    and later): its chown works, it sees the COPY's owner, and the image is root's."""

    if not emulation.sandboxed():

        pytest.skip("a plain user's arm64 steps need a user namespace with its own binfmt_misc (Linux 6.7+)")
    (public_dir / "busybox-arm64").write_bytes(arm64_busybox(public_dir))
    (public_dir / "busybox-arm64").chmod(0o755)
    _context(public_dir, "ARG SOURCE_DATE_EPOCH=1700000000\nFROM --platform=linux/arm64 scratch\n"
                         "COPY busybox-arm64 /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n"
                         "COPY --chown=100:4 owned /var/owned\nRUN mkdir -p /srv && echo x > /srv/f && chown 100:4 "
                         "/srv/f && uname -m > /srv/m && stat -c %u:%g /var/owned > /srv/seen\n")
    as_root, as_user = _build(public_dir, "root"), _build(public_dir, "user")
    assert as_root.returncode == 0, as_root.stderr
    assert as_user.returncode == 0, as_user.stderr
    digest = json.loads(as_user.stdout)["digest"]
    assert digest == json.loads(as_root.stdout)["digest"]
    assert _entries(public_dir / "user", digest)["srv/f"] == (100, 4, 0o644)
    assert (_content(public_dir / "user", digest, "srv/m"), _content(public_dir / "user", digest, "srv/seen")) == (
        "aarch64\n", "100:4\n")
