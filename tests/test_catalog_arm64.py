"""The catalog on arm64, built by a plain user on this amd64 host, foreign steps under QEMU: hello (its
platform's own busybox-static per ${TARGETARCH}) and python-science (a Debian arm64 base bootstrapped
by mmdebstrap --arch=arm64), each an index with the amd64 image root builds, and python-science's
arm64 image computing exactly what the amd64 one does."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from repro.image import Platform
from repro.run import emulation
from tests.conftest import CATALOG, REPRO, repro, run
from tests.test_emulation import arm64_busybox

pytestmark = pytest.mark.skipif(Platform.host().architecture != "amd64", reason="the foreign platform is arm64")

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
BOTH = "linux/amd64,linux/arm64"
HELLO_AMD64 = "sha256:4754560224f127fca9d1fa40e93c795cbdcbecf51d5e8c80762a7c18f0543a39"  # as tests/test_build.py
ANSWER = "integral of exp(-x^2) over the real line = 1.7724538509"


def as_nobody(public: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """repro as uid 65534, its store and HOME in `public`."""
    env = {**os.environ, "HOME": str(public), "REPRO_STORE": str(public / "run-store")}
    return subprocess.run([*NOBODY, REPRO, *args], capture_output=True, text=True, env=env, timeout=timeout)


def needs_namespaced_binfmt() -> None:
    if not emulation.sandboxed():
        pytest.skip("a plain user's arm64 steps need a user namespace with its own binfmt_misc (Linux 6.7+)")


def _index(ref: str) -> dict:
    raw = subprocess.run(["skopeo", "inspect", "--raw", ref], capture_output=True, check=True).stdout
    return json.loads(raw)


def test_catalog_hello_for_amd64_and_arm64_as_a_plain_user(public_dir):
    """One index; its amd64 image is the one hello always was (same digest), its arm64 one runs arm64's
    busybox under QEMU; the spec's tests pass in both."""

    needs_namespaced_binfmt()
    target = public_dir / "hello"
    target.mkdir()
    for name in ("spec.yaml", "spec.lock", "Containerfile", "app.def"):  # the lock: its compressor, its digest
        (target / name).write_bytes((CATALOG / "hello" / name).read_bytes())
    (target / "busybox-amd64").write_bytes(Path("/bin/busybox").read_bytes())
    (target / "busybox-arm64").write_bytes(arm64_busybox(public_dir))
    subprocess.run(["chmod", "-R", "a+rwX", str(public_dir)], check=True)
    built = as_nobody(public_dir, "build", str(target / "spec.yaml"), "--platform", BOTH, "--store",
                      str(public_dir / "store"), "--json", "--test")
    assert built.returncode == 0, built.stderr
    result = json.loads(built.stdout)
    assert [(t["platform"], t["passed"]) for t in result["tests"]] == [
        ("linux/amd64", True), ("linux/amd64", True), ("linux/arm64", True), ("linux/arm64", True)]
    image = f"oci:{public_dir / 'store'}:hello:1.0"
    index = _index(image)
    assert [m["platform"] for m in index["manifests"]] == [{"architecture": "amd64", "os": "linux"},
                                                           {"architecture": "arm64", "os": "linux"}]
    assert index["manifests"][0]["digest"] == HELLO_AMD64
    assert result["digest"] == json.loads(repro("build", str(target / "spec.yaml"), "--platform", BOTH, "--store",
                                                str(public_dir / "root"), "--json").stdout)["digest"]
    for platform, machine in (("linux/arm64", "aarch64\n"), ("linux/amd64", "x86_64\n")):
        ran = as_nobody(public_dir, "run", "--platform", platform, "--entrypoint", "", image, "--", "uname", "-m")
        assert (ran.returncode, ran.stdout) == (0, machine), ran.stderr
    # through the image's own entrypoint (sh -c), as docker run would
    ran = as_nobody(public_dir, "run", "--platform", "linux/arm64", image, "--", "uname -m")
    assert (ran.returncode, ran.stdout) == (0, "aarch64\n"), ran.stderr
    arm64 = json.loads(subprocess.run(["skopeo", "inspect", "--override-arch", "arm64", "--config", image],
                                      capture_output=True, check=True).stdout)
    assert arm64["architecture"] == "arm64" and arm64["config"]["Entrypoint"] == ["/bin/sh", "-c"]


@pytest.mark.arm64
def test_python_science_on_arm64_as_a_plain_user(catalog_images, python_science_arm64):
    """A plain user builds python-science for amd64 and arm64 in one index (the arm64 Debian base by
    mmdebstrap --arch=arm64 in the user's namespace, qemu in its own binfmt_misc): the amd64 image is the
    one root builds; the arm64 image says aarch64, passes the spec's tests under QEMU and prints, byte
    for byte, what the amd64 image prints. (The build starts with the session: see conftest.)"""
    needs_namespaced_binfmt()
    started = python_science_arm64
    public_dir, spec = started.public, started.spec
    stdout, stderr = started.proc.communicate(timeout=3600)
    print(f"plain-user python-science build for {BOTH}: {time.monotonic() - started.started:.0f} s, "
          "beside the other slow tests")
    assert started.proc.returncode == 0, stderr[-3000:]
    result = json.loads(stdout)
    assert result["tests"] and all(t["passed"] for t in result["tests"]), result["tests"]
    assert {t["platform"] for t in result["tests"]} == {"linux/amd64", "linux/arm64"}
    image = f"oci:{public_dir / 'store'}:python-science:1.0"
    index = _index(image)
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
    root = catalog_images["python-science"]
    assert index["manifests"][0]["digest"] == root["digest"]  # the plain user's amd64 image is root's
    lock = json.loads(spec.with_name("spec.lock").read_text())
    arm64_packages = lock["platforms"]["linux/arm64"]["packages"]
    assert {"python3-numpy", "python3-scipy", "libc6"} <= {p["name"] for p in arm64_packages}
    assert {p["architecture"] for p in arm64_packages} <= {"arm64", "all"}

    machine = as_nobody(public_dir, "run", "--platform", "linux/arm64", "--entrypoint", "", image, "--", "uname", "-m")
    assert (machine.returncode, machine.stdout) == (0, "aarch64\n"), machine.stderr
    arm64 = as_nobody(public_dir, "run", "--platform", "linux/arm64", image, timeout=900)  # its entrypoint
    assert arm64.returncode == 0, arm64.stderr
    amd64 = run(REPRO, "run", "--store", str(public_dir / "root-run"), root["ref"])
    assert amd64.stdout.splitlines()[0] == ANSWER
    assert arm64.stdout == amd64.stdout
