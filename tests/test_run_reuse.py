"""`repro run` unpacks an image once into the store and starts every later run from that tree, which no
run changes: writes land in a throw-away overlay. Concurrent first runs give one good tree; `repro prune`
removes trees nobody used for a while, and unpacks that were killed half-way."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPRO, busybox_layers, repro
from tests.imagekit import make_image

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def public(public_dir):
    return public_dir


@pytest.fixture
def image(public) -> str:
    layout = public / "layout"
    make_image(layout, "1", busybox_layers(), config={"Env": ["PATH=/bin"]})
    subprocess.run(["chmod", "-R", "a+rX", str(layout)], check=True)
    return f"oci:{layout}:1"


def trees(store: Path) -> list[Path]:
    return sorted((store / "unpacked").iterdir()) if (store / "unpacked").is_dir() else []


def snapshot(root: Path) -> dict[str, tuple]:
    return {str(p.relative_to(root)): (p.lstat().st_mode, p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in root.rglob("*")}


def test_the_second_run_starts_from_the_unpacked_tree_which_no_run_changes(image, public):
    store = public / "store"
    env = {**os.environ, "REPRO_STORE": str(store)}
    first = repro("run", image, "--", "/bin/sh", "-c", "echo changed > /etc/motd; echo new > /srv/new; cat /etc/motd",
                  env=env)
    assert first.stdout == "changed\n"
    [unpacked] = trees(store)
    before = snapshot(unpacked / "rootfs")
    second = repro("run", image, "--", "/bin/sh", "-c", "cat /etc/motd; ls /srv", env=env)
    assert second.stdout == "hello from repro\ndata.txt\n"
    assert trees(store) == [unpacked] and snapshot(unpacked / "rootfs") == before
    fresh = repro("run", "--fresh", image, "--", "/bin/cat", "/etc/motd", env=env)
    assert fresh.stdout == "hello from repro\n"


def test_concurrent_first_runs_give_one_tree(image, public):
    store = public / "store"
    env = {**os.environ, "REPRO_STORE": str(store)}
    procs = [subprocess.Popen([REPRO, "run", image, "--", "/bin/cat", "/etc/motd"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert all(out == "hello from repro\n" for out, _ in outputs)
    assert [p.name for p in trees(store) if not p.name.startswith(".")] and all(
        not p.name.startswith(".unpacking-") for p in trees(store))
    assert len(trees(store)) == 1


def test_prune_removes_unused_trees_and_killed_unpacks(image, public):
    store = public / "store"
    env = {**os.environ, "REPRO_STORE": str(store)}
    repro("run", image, "--", "/bin/sh", "-c", "true", env=env)
    [tree] = trees(store)
    killed = store / "unpacked" / ".unpacking-killed"
    (killed / "rootfs" / "etc").mkdir(parents=True)
    old = time.time() - 2 * 3600
    os.utime(killed, (old, old))
    kept = repro("prune", "--days", "30", env=env)
    assert "1 unpacked images removed" in kept.stdout and trees(store) == [tree]
    month_ago = time.time() - 31 * 86400
    os.utime(tree / "last-used", (month_ago, month_ago))
    repro("prune", "--days", "30", env=env)
    assert trees(store) == []


def test_a_plain_user_reuses_the_tree_through_bwrap(image, public):
    store = public / "user-store"
    env = {**os.environ, "REPRO_STORE": str(store), "HOME": str(public)}
    for command, expected in (("echo x > /etc/motd; cat /etc/motd", "x\n"), ("cat /etc/motd", "hello from repro\n")):
        proc = subprocess.run([*NOBODY, REPRO, "run", "--executor", "bwrap", image, "--", "/bin/sh", "-c", command],
                              capture_output=True, text=True, env=env)
        assert proc.returncode == 0 and proc.stdout == expected, proc.stderr
    [tree] = trees(store)
    assert tree.name.endswith("-uid65534") and (tree / "rootfs" / "etc" / "motd").stat().st_uid == 65534


def test_sif_and_squashfs_images_run_from_the_store(image, public):
    store = public / "store"
    env = {**os.environ, "REPRO_STORE": str(store)}
    for ref in (f"sif:{public / 'img.sif'}", f"squashfs:{public / 'img.sqfs'}"):
        repro("convert", image, ref)
        for _ in range(2):
            assert repro("run", ref, "--", "/bin/cat", "/etc/motd", env=env).stdout == "hello from repro\n"
    assert len(trees(store)) == 2
