"""The catalog: every spec builds from Debian, passes its own tests through repro's executors and in a
real Docker engine, and a Debian-based spec built twice in separate empty stores gives one digest."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from packageurl import PackageURL

from tests.conftest import DEBIAN_SPECS, REPRO, repro, run, staged


@pytest.fixture(scope="module")
def built(catalog_images) -> dict[str, dict]:
    return catalog_images


@pytest.fixture(scope="module")
def catalog_store(catalog_images) -> Path:
    return next(iter(catalog_images.values()))["store"].parent


@pytest.mark.parametrize("name", DEBIAN_SPECS)
def test_catalog_spec_passes_its_tests(built, name):
    result = built[name]
    assert result["tests"] and all(t["passed"] for t in result["tests"]), result["tests"]
    lock = json.loads(result["spec"].with_name("spec.lock").read_text())
    assert lock["base"]["debian"]["suite"] == "bookworm"
    names = {p["name"] for p in lock["packages"]}
    assert {"dpkg", "libc6"} <= names
    assert all(p["version"] and p["architecture"] for p in lock["packages"])


@pytest.mark.parametrize("name", DEBIAN_SPECS)
def test_catalog_image_runs_in_docker(built, dockerd, name):
    result = built[name]
    run("docker", "load", "-i", str(result["archive"]), env=dockerd)
    spec = yaml.safe_load(result["spec"].read_text())
    for test in spec["tests"]:
        proc = run("docker", "run", "--rm", "--network", "none", "--entrypoint", "/bin/sh",
                   f"repro-catalog/{name}:1", "-c", test["run"], env=dockerd, check=False)
        assert proc.returncode == test.get("exit", 0), proc.stderr
        assert test.get("output", "") in proc.stdout


def test_debian_build_is_reproducible(built, tmp_path):
    """A second build of python-science in a separate, empty store gives the same digest."""
    spec = staged("python-science", tmp_path)
    again = json.loads(repro("build", str(spec), "--store", str(tmp_path / "store"), "--json").stdout)
    assert again["digest"] == built["python-science"]["digest"]


@pytest.mark.parametrize("name", DEBIAN_SPECS)
def test_sbom_matches_dpkg_in_the_running_image(built, dockerd, catalog_store, name):
    """Ground truth: the SBOM's Debian packages are exactly what dpkg-query lists inside the container."""
    run("docker", "load", "-i", str(built[name]["archive"]), env=dockerd)
    listed = run("docker", "run", "--rm", "--network", "none", "--entrypoint", "dpkg-query",
                 f"repro-catalog/{name}:1", "-W", "-f", "${Package} ${Version} ${Architecture}\\n", env=dockerd).stdout
    truth = set(listed.split("\n")) - {""}
    doc = json.loads(repro("sbom", "--format", "cyclonedx-json", f"docker-archive:{built[name]['archive']}").stdout)

    ours = set()
    for component in doc["components"]:
        purl = PackageURL.from_string(component["purl"])
        if purl.type == "deb":
            ours.add(f"{purl.name} {purl.version} {purl.qualifiers['arch']}")
    assert ours == truth
    if name == "python-science":
        pypi = {c["name"]: c for c in doc["components"] if c["purl"].startswith("pkg:pypi/")}
        assert "numpy" in pypi and "scipy" in pypi
        assert any(p["name"] == "repro:part-of" and p["value"].startswith("pkg:deb/debian/python3-numpy")
                   for p in pypi["numpy"]["properties"])


def test_a_packages_step_gives_one_digest_as_root_and_as_a_plain_user(built, catalog_store):
    """runc as root and bwrap as a plain user (each the default there) install a package alike."""


    public = Path(tempfile.mkdtemp(prefix="repro-packages-", dir="/tmp"))
    try:
        repro("convert", f"oci:{catalog_store / 'store'}:python-science:1.0", f"oci:{public / 'base'}:1")
        spec = public / "spec.yaml"
        spec.write_text(f"spec: 1\nname: pkg\ntag: pkg:1\nsource_date_epoch: 1700000000\n"
                        f"base: {{image: 'oci:{public / 'base'}:1'}}\nsteps:\n  - packages: [hello]\n")
        subprocess.run(["chmod", "-R", "a+rwX", str(public)], check=True)
        as_root = json.loads(repro("build", str(spec), "--store", str(public / "root"), "--json").stdout)
        user = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", REPRO, "build",
                               str(spec), "--store", str(public / "user"), "--json"], capture_output=True, text=True,
                              env={**os.environ, "HOME": str(public)}, timeout=900)
        assert user.returncode == 0, user.stderr
        assert json.loads(user.stdout)["digest"] == as_root["digest"]
    finally:
        subprocess.run(["chmod", "-R", "u+rwX", str(public)], check=False)
        shutil.rmtree(public, ignore_errors=True)
