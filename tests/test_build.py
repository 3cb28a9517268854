"""repro build: reproducible digests as root and as a plain user, cache, lock, errors, and the
images run in docker and match what buildah builds from the equivalent Containerfile."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPRO, repro, run
from tests.test_crosscheck import tree_from_inventory

CATALOG = Path(__file__).resolve().parents[1] / "catalog"


def stage_hello(where: Path) -> Path:
    """A copy of catalog/hello with busybox beside it (as `make catalog` stages it)."""
    spec_dir = where / "hello"
    shutil.copytree(CATALOG / "hello", spec_dir, ignore=shutil.ignore_patterns("busybox*", "*.lock"))
    for name in ("busybox", "busybox-amd64"):  # the Containerfile's source, and spec.yaml's for linux/amd64
        shutil.copy2("/bin/busybox", spec_dir / name)
    return spec_dir / "spec.yaml"


def build(spec: Path, store: Path, *args: str, check: bool = True, **kwargs):
    return repro("build", str(spec), "--store", str(store), "--json", *args, check=check, **kwargs)


def digest_of(proc) -> str:
    return json.loads(proc.stdout)["digest"]


def test_hello_is_reproducible_as_root_and_as_a_user(public_dir):
    spec = stage_hello(public_dir)
    subprocess.run(["chmod", "-R", "a+rwX", str(public_dir)], check=True)
    as_root = digest_of(build(spec, public_dir / "store-root", "--executor", "runc", "--no-cache"))
    user = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", REPRO, "build", str(spec),
                           "--store", str(public_dir / "store-user"), "--executor", "proot", "--json"],
                          capture_output=True, text=True, env={**os.environ, "HOME": str(public_dir)})
    assert user.returncode == 0, user.stderr
    assert digest_of(user) == as_root
    again = digest_of(build(spec, public_dir / "store-other", "--no-cache"))
    assert again == as_root


def test_cached_rebuild_and_check(tmp_path):
    spec = stage_hello(tmp_path)
    first = json.loads(build(spec, tmp_path / "store").stdout)
    second = json.loads(build(spec, tmp_path / "store").stdout)
    assert second["digest"] == first["digest"]
    assert all(step["cached"] for step in second["steps"]) and not any(s["cached"] for s in first["steps"])
    changed = spec.parent / "spec.yaml"
    changed.write_text(changed.read_text().replace("hello from a reproducible image", "changed motd"))
    third = json.loads(build(spec, tmp_path / "store").stdout)
    assert [s["cached"] for s in third["steps"]] == [True, True, True, False]
    assert third["digest"] != first["digest"]
    check = repro("build", "--check", str(spec))
    assert "reproducible: sha256:" in check.stdout


def test_build_writes_outputs_and_passes_its_tests(tmp_path, dockerd):
    spec = stage_hello(tmp_path)
    result = json.loads(build(spec, tmp_path / "store", "--test", "-o", f"docker-archive:{tmp_path}/hello.tar:hello:1",
                              "-o", f"sif:{tmp_path}/hello.sif").stdout)
    assert all(t["passed"] for t in result["tests"]) and len(result["tests"]) == 2
    run("docker", "load", "-i", str(tmp_path / "hello.tar"), env=dockerd)
    out = run("docker", "run", "--rm", "--network", "none", "hello:1", env=dockerd).stdout
    assert out == "hello from a reproducible image\n"
    assert json.loads(repro("inspect", "--json", f"sif:{tmp_path}/hello.sif").stdout)["sif"]["objects"]
    history = json.loads(repro("inspect", "--json", f"oci:{tmp_path}/store:hello:1.0").stdout)["history"]
    assert [h["created"] for h in history] == ["2023-11-14T22:13:20Z"] * 4


def test_lock_file_and_locked(tmp_path):
    spec = stage_hello(tmp_path)
    build(spec, tmp_path / "store")
    lock_file = spec.with_name("spec.lock")
    lock = json.loads(lock_file.read_text())
    assert lock["base"] == {"scratch": True} and "zlib" in lock["compressor"]["versions"]
    build(spec, tmp_path / "store", "--locked")
    lock["base"] = {"image": "oci:elsewhere:1", "digest": "sha256:" + "1" * 64}
    lock_file.write_text(json.dumps(lock))
    proc = build(spec, tmp_path / "store", "--locked", check=False)
    assert proc.returncode == 2 and "the lock says" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_matches_buildah(tmp_path):
    spec = stage_hello(tmp_path)
    build(spec, tmp_path / "store")
    ctx = spec.parent
    (ctx / "motd").write_text("hello from a reproducible image\n")
    (ctx / "Containerfile").write_text(
        "FROM scratch\nCOPY --chmod=0755 busybox /bin/busybox\n"
        'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
        "RUN mkdir -p /etc /tmp && chmod 1777 /tmp\nCOPY motd /etc/motd\n")
    store = ["--root", str(tmp_path / "broot"), "--runroot", str(tmp_path / "brun"), "--storage-driver", "vfs"]
    try:
        run("buildah", *store, "bud", "-q", "--isolation", "chroot", "-t", "hello-buildah:1", str(ctx))
        run("buildah", *store, "push", "-q", "hello-buildah:1", f"oci:{tmp_path}/buildah:1")
    finally:
        run("buildah", *store, "rm", "--all", check=False)
        run("umount", "-R", str(tmp_path / "broot"), check=False)
    ours = tree_from_inventory(json.loads(repro("hash", "--files", "--json", f"oci:{tmp_path}/store:hello:1.0")
                                          .stdout)["files"])
    theirs = tree_from_inventory(json.loads(repro("hash", "--files", "--json", f"oci:{tmp_path}/buildah:1")
                                            .stdout)["files"])
    # buildah leaves mount points and its own marker files behind; repro's hygiene leaves none.
    extra = {p for p in theirs if p not in ours}
    assert extra <= {"dev", "proc", "sys", "run", "etc/hosts", "etc/resolv.conf", "etc/hostname", "run/.containerenv"}
    assert {p: v for p, v in theirs.items() if p in ours} == ours


def _errors(tmp_path: Path, text: str) -> str:
    spec = stage_hello(tmp_path)
    spec.write_text(text)
    proc = build(spec, tmp_path / "store", check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


BAD_SPECS = {
    "unknown key": ("spec: 1\nbase: {scratch: true}\nflavour: vanilla\n", ":3: flavour: unknown key"),
    "wrong type": ("spec: 1\nbase: {scratch: true}\nsteps:\n  - run: 42\n", ":4: steps[0].run:"),
    "mode not octal": ('spec: 1\nbase: {scratch: true}\nsteps:\n  - file: {dst: /x, content: a, mode: "rw"}\n',
                       ':4: steps[0].file.mode: expected an octal string like "0644"'),
    "missing copy source": ("spec: 1\nbase: {scratch: true}\nsteps:\n  - copy: {src: nothing, dst: /x}\n",
                            ":4: steps[0].copy.src: 'nothing' does not exist"),
    "copy source escapes": ("spec: 1\nbase: {scratch: true}\nsteps:\n  - copy: {src: ../../etc/passwd, dst: /x}\n",
                            "is outside the context (the spec's directory)"),
    "two bases": ("spec: 1\nbase: {scratch: true, image: 'oci:x:1'}\n", ":2: base: give exactly one of"),
    "unreadable base": ("spec: 1\nbase: {image: 'oci:/nonexistent/layout:1'}\n", ":2: base.image: cannot read"),
    "not yaml": ("spec: 1\nbase: [unclosed\n", "not valid YAML"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_specs(tmp_path, case):
    text, expected = BAD_SPECS[case]
    line = _errors(tmp_path, text)
    assert expected in line and "spec.yaml" in line, line


def test_failing_run_step(tmp_path):
    spec = stage_hello(tmp_path)
    spec.write_text(spec.read_text().replace("chmod 1777 /tmp", "chmod 1777 /tmp && echo oh no && exit 3"))
    proc = repro("build", str(spec), "--store", str(tmp_path / "store"), "-o", f"oci-archive:{tmp_path}/out.tar",
                 check=False)
    assert proc.returncode == 1
    assert "exited 3" in proc.stderr and "oh no" in proc.stderr and "spec.yaml:15" in proc.stderr
    assert not (tmp_path / "out.tar").exists()


def test_unknown_debian_package(tmp_path):
    line = _errors(tmp_path, "spec: 1\nbase:\n  debian: {suite: bookworm, packages: [no-such-package-repro]}\n")
    assert "unknown Debian package 'no-such-package-repro'" in line
