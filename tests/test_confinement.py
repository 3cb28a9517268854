"""Confinement, tried as a hostile image, spec or cache would: nothing inside a tree reaches the host.

Every escape is aimed at sentinel files under the test's own temporary directory. A static probe
(tests/probe/escape.c) tries the chroot escape, /proc/1/root, mknod of the host's root disk and
open_by_handle_at; it is run unconfined once to show that it does detect an escape here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from repro.image import canonical_json
from repro.store import Layout
from tests.conftest import REPRO, busybox_layers, repro
from tests.imagekit import E, make_image

PROBE_SOURCE = Path(__file__).parent / "probe" / "escape.c"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
ATTEMPTS = ("chroot-escape", "proc-1-root", "mknod-host-disk", "open-by-handle")


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> dict:
    """The host side: a secret file, a sentinel path that must stay absent, the root disk's numbers."""
    base = Path(tempfile.mkdtemp(prefix="repro-host-", dir="/tmp"))
    os.chmod(base, 0o755)
    secret = base / "secret"
    secret.write_text("host secret 7f3a\n")
    dev = os.stat("/").st_dev
    yield {"base": base, "secret": secret, "sentinel": base / "sentinel",
           "args": [str(secret), str(base / "sentinel"), str(os.major(dev)), str(os.minor(dev))]}
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("probe") / "escape"
    subprocess.run(["gcc", "-static", "-O1", "-o", str(out), str(PROBE_SOURCE)], check=True)
    return out


@pytest.fixture(scope="module")
def probe_image(tmp_path_factory, probe) -> str:
    """busybox with the probe at /probe."""
    layout = tmp_path_factory.mktemp("probe-image") / "layout"
    make_image(layout, "1", [*busybox_layers(), [E("probe", probe.read_bytes(), mode=0o755)]],
               config={"Env": ["PATH=/bin"]})
    return f"oci:{layout}:1"


def assert_blocked(output: str, host: dict) -> None:
    for attempt in ATTEMPTS:
        assert f"{attempt}: blocked" in output, output
    assert "ESCAPED" not in output and "7f3a" not in output
    assert not host["sentinel"].exists()


def test_the_probe_detects_an_escape_when_unconfined(probe, host):
    """The control: as root on the host the chroot escape works, so a 'blocked' below means something."""
    proc = subprocess.run([str(probe), *host["args"]], capture_output=True, text=True)
    try:
        assert proc.returncode == 3 and "chroot-escape: ESCAPED" in proc.stdout, proc.stdout
    finally:
        host["sentinel"].unlink(missing_ok=True)


def test_repro_run_as_root_is_confined(probe_image, host):
    proc = repro("run", probe_image, "--", "/probe", *host["args"], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_blocked(proc.stdout, host)


def test_root_inside_is_nobody_outside(probe_image, tmp_path):
    """A file that root in the container creates belongs to an unprivileged id on the host."""
    data = tmp_path / "data"
    data.mkdir(mode=0o777)
    os.chmod(data, 0o777)
    proc = repro("run", "-v", f"{data}:/data", probe_image, "--", "/bin/sh", "-c",
                 "echo x > /data/made; cat /proc/self/uid_map", check=False)
    assert proc.returncode == 0, proc.stderr
    inside, outside, _ = proc.stdout.split()
    assert inside == "0" and int(outside) >= 65536
    assert (data / "made").stat().st_uid == int(outside)


def test_a_build_step_as_root_is_confined(probe_image, host, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"spec: 1\nname: probe\ntag: probe:1\nbase: {{image: '{probe_image}'}}\n"
                    f"steps:\n  - run: {json.dumps(['/probe', *host['args']])}\n")
    proc = repro("build", str(spec), "--store", str(tmp_path / "store"), "--no-cache", check=False)
    assert proc.returncode == 0, proc.stderr  # the step fails (exit 3) if any attempt gets through
    assert not host["sentinel"].exists()


def test_replay_as_root_is_confined(probe_image, host, tmp_path):
    package = tmp_path / "pkg"
    line = " ".join(["/probe", *host["args"]])
    repro("archive", probe_image, "-o", str(package), "--record", line)
    runs = json.loads((package / "data" / "runs.json").read_text())["runs"]
    assert runs[0]["exit_code"] == 0
    proc = repro("replay", "--json", str(package), check=False)
    assert proc.returncode == 0, proc.stderr
    assert [r["matches"] for r in json.loads(proc.stdout)["runs"]] == [True]
    assert not host["sentinel"].exists()


def test_bwrap_and_proot_are_refused_as_root(probe_image):
    for executor in ("bwrap", "proot", "chroot"):
        proc = repro("run", "--executor", executor, probe_image, "--", "/bin/true", check=False)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_plain_user_run_with_bwrap_is_confined(probe_image, host, tmp_path):
    public = Path(tempfile.mkdtemp(prefix="repro-user-", dir="/tmp"))
    try:
        os.chmod(public, 0o777)
        layout = public / "layout"
        repro("convert", probe_image, f"oci:{layout}:1")
        subprocess.run(["chmod", "-R", "a+rwX", str(public)], check=True)
        proc = subprocess.run([*NOBODY, REPRO, "run", "--executor", "bwrap", f"oci:{layout}:1", "--", "/probe",
                               *host["args"]], capture_output=True, text=True, env={**os.environ, "HOME": str(public)})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert_blocked(proc.stdout, host)
    finally:
        shutil.rmtree(public, ignore_errors=True)


# --- the five reproductions of the review -------------------------------------------------------

def test_a_whiteout_through_a_symlink_in_a_cached_layer_stays_in_the_tree(probe_image, tmp_path):
    """A cached layer (as --cache-from brings in) whiteouts evil/x, where evil is a link to a host dir."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "x").write_text("keep me\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"spec: 1\nname: wh\ntag: wh:1\nbase: {{image: '{probe_image}'}}\nsteps:\n"
                    f"  - run: ln -s {victim} /evil\n"
                    "  - file: {dst: /placeholder, content: \"x\\n\"}\n")
    store = tmp_path / "store"
    repro("build", str(spec), "--store", str(store))
    entries = {p: json.loads(p.read_text()) for p in (store / "cache").glob("*.json")}
    by_title = {e["history"]["created_by"]: p for p, e in entries.items()}
    run_key = next(p for t, p in by_title.items() if t.startswith("repro run ln"))
    file_key = next(p for t, p in by_title.items() if t.startswith("repro file"))
    # The hostile layer: a whiteout of evil/x, put where the file step's cache entry points.
    hostile = tmp_path / "hostile"
    make_image(hostile, "1", [[E("evil", kind="dir"), E("evil/.wh.x", b"")]])

    src = Layout.open_existing(hostile)
    manifest = json.loads((hostile / "blobs" / "sha256" / src.read_index().manifests[0].digest.split(":")[1])
                          .read_bytes())
    layer = manifest["layers"][0]
    config = json.loads((hostile / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1]).read_bytes())
    shutil.copy(hostile / "blobs" / "sha256" / layer["digest"].split(":")[1],
                store / "blobs" / "sha256" / layer["digest"].split(":")[1])
    entry = entries[file_key]
    entry["descriptor"], entry["diff_id"] = layer, config["rootfs"]["diff_ids"][0]
    file_key.write_text(json.dumps(entry))
    run_key.unlink()  # the run step runs again (the tree is made), then the cached layer is applied
    repro("build", str(spec), "--store", str(store), check=False)
    assert (victim / "x").read_text() == "keep me\n"


def test_a_spec_cannot_write_whiteouts(probe_image, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "x").write_text("keep me\n")
    for dst in ("/evil/.wh.x", "/evil/.wh..wh..opq", "/evil/.wh..."):
        spec = tmp_path / "spec.yaml"
        spec.write_text(f"spec: 1\nname: wh\ntag: wh:1\nbase: {{image: '{probe_image}'}}\nsteps:\n"
                        f"  - run: ln -s {victim} /evil\n  - file: {{dst: '{dst}', content: \"\"}}\n")
        proc = repro("build", str(spec), "--store", str(tmp_path / "store"), check=False)
        assert proc.returncode == 2 and "spec.yaml:" in proc.stderr, proc.stderr
        assert (victim / "x").read_text() == "keep me\n"


def test_the_clean_up_pass_does_not_follow_an_image_s_links(tmp_path):
    host = tmp_path / "host"
    for name in ("tmp", "log", "etc"):
        (host / name).mkdir(parents=True)
    (host / "tmp" / "keep").write_text("tmp\n")
    (host / "log" / "keep.log").write_text("log\n")
    (host / "etc" / "machine-id").write_text("0123456789abcdef\n")
    (host / "etc" / "passwd-").write_text("backup\n")
    layout = tmp_path / "base"
    make_image(layout, "1", [[
        *busybox_layers()[0][:-3],  # busybox without /etc and /tmp
        E("tmp", kind="symlink", target=str(host / "tmp")),
        E("etc", kind="symlink", target=str(host / "etc")),
        E("var", kind="dir"),
        E("var/log", kind="symlink", target=str(host / "log")),
    ]], config={"Env": ["PATH=/bin"]})
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"spec: 1\nname: h\ntag: h:1\nbase: {{image: 'oci:{layout}:1'}}\nsteps:\n  - run: 'true'\n")
    proc = repro("build", str(spec), "--store", str(tmp_path / "store"), check=False)
    assert proc.returncode == 0, proc.stderr
    assert (host / "tmp" / "keep").read_text() == "tmp\n"
    assert (host / "log" / "keep.log").read_text() == "log\n"
    assert (host / "etc" / "machine-id").read_text() == "0123456789abcdef\n"
    assert (host / "etc" / "passwd-").read_text() == "backup\n"


def test_cache_from_refuses_keys_that_are_not_keys(tmp_path):
    layout = tmp_path / "cache"
    make_image(layout, "1", [[E("a", b"a\n")]])
    store = Layout.open_existing(layout)
    descriptor = store.read_index().manifests[0]
    manifest = json.loads((layout / "blobs" / "sha256" / descriptor.digest.split(":")[1]).read_bytes())
    layer = manifest["layers"][0]
    target = tmp_path / "planted"
    entry = {"descriptor": layer, "diff_id": "sha256:" + "0" * 64, "history": {"created_by": "x"}}
    for bad_key in (f"../../../../../../../..{target}", str(target), "A" * 64):
        manifest["annotations"] = {"dev.repro.build-cache": json.dumps({bad_key: entry})}
        raw = canonical_json(manifest)
        (layout / "blobs" / "sha256" / _sha(raw)).write_bytes(raw)
        index = json.loads((layout / "index.json").read_text())
        index["manifests"][0].update(digest=f"sha256:{_sha(raw)}", size=len(raw))
        (layout / "index.json").write_text(json.dumps(index))
        spec = tmp_path / "spec.yaml"
        spec.write_text("spec: 1\nname: c\ntag: c:1\nbase: {scratch: true}\nsteps:\n"
                        "  - file: {dst: /x, content: \"x\\n\"}\n")
        proc = repro("build", str(spec), "--store", str(tmp_path / "store"), "--cache-from", f"oci:{layout}:1",
                     check=False)
        assert proc.returncode == 2 and "cache key" in proc.stderr, proc.stderr
        assert not list(tmp_path.glob("planted*"))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_run_volume_mount_point_stays_in_the_tree(tmp_path):
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    source = tmp_path / "source"
    source.mkdir()
    (source / "f").write_text("shared\n")
    layout = tmp_path / "img"
    make_image(layout, "1", [[*busybox_layers()[0], E("data", kind="symlink", target=str(host_dir))]],
               config={"Env": ["PATH=/bin"]})
    proc = repro("run", "-v", f"{source}:/data/x", f"oci:{layout}:1", "--", "/bin/cat", "/data/x/f", check=False)
    assert proc.returncode == 0 and proc.stdout == "shared\n", proc.stderr
    assert list(host_dir.iterdir()) == []


# --- what a host directory receives from an image ---------------------------------------------

def test_flatten_as_root_leaves_out_devices_and_setuid_unless_asked(tmp_path):
    layout = tmp_path / "img"
    make_image(layout, "1", [[
        E("dev", kind="dir"), E("dev/sda", kind="char", mode=0o666),
        E("bin", kind="dir"), E("bin/su", b"#!/bin/sh\n", mode=0o4755), E("bin/wall", b"x", mode=0o2755),
        E("var", kind="dir"), E("var/mail", kind="dir", mode=0o2775),
    ]])
    plain = tmp_path / "plain"
    proc = repro("flatten", f"oci:{layout}:1", f"rootfs:{plain}")
    assert not (plain / "dev" / "sda").exists()
    assert (plain / "bin" / "su").stat().st_mode & 0o7777 == 0o755
    assert (plain / "bin" / "wall").stat().st_mode & 0o7777 == 0o755
    assert (plain / "var" / "mail").stat().st_mode & 0o7777 == 0o2775  # a setgid directory grants nothing
    assert "1 device nodes" in proc.stderr and "2 files" in proc.stderr
    kept = tmp_path / "kept"
    repro("flatten", "--preserve-devices", "--preserve-setuid", f"oci:{layout}:1", f"rootfs:{kept}")
    assert (kept / "dev" / "sda").is_char_device()
    assert (kept / "bin" / "su").stat().st_mode & 0o7777 == 0o4755


def test_an_invalid_whiteout_is_refused(tmp_path):
    layout = tmp_path / "img"
    make_image(layout, "1", [[E("a", kind="dir"), E("a/b", b"b")], [E("a/.wh...", b"")]])
    proc = repro("flatten", f"oci:{layout}:1", f"rootfs:{tmp_path / 'out'}", check=False)
    assert proc.returncode == 2 and "whiteout" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_an_output_that_is_a_device_is_written_into_never_replaced(probe_image, tmp_path):
    """`-o /dev/null` as root: renaming a finished output over it would turn the host's /dev/null into a
    file. A device node made here stands in for it."""
    null = tmp_path / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    for args in (["sbom", probe_image, "-o", str(null)], ["convert", probe_image, f"tar:{null}"],
                 ["convert", probe_image, f"docker-archive:{null}"], ["convert", probe_image, f"oci-archive:{null}"],
                 ["convert", probe_image, f"sif:{null}"], ["flatten", probe_image, f"squashfs:{null}"]):
        repro(*args)
        assert stat.S_ISCHR(null.stat().st_mode) and os.major(null.stat().st_rdev) == 1, args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]
