"""Preservation packages: archive, verify, replay, run, and the `archive:` reference, against bagit-python,
docker, proot as a plain user, udocker, and the package's own README followed literally."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import udocker as UDOCKER_PACKAGE
from rocrate.rocrate import ROCrate

from tests.conftest import REPRO, public_directory, repro, run
from tests.test_build import stage_hello

BAGIT = str(Path(REPRO).parent / "bagit.py")
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
# No directory listing in the records: udocker always runs proot with `-k` (kernel emulation), and Debian's
# proot then fails getdents on this machine's kernel (EINVAL), which would fail the udocker replay for a
# reason that is neither repro's nor the image's.
RECORDS = ["--record", "cat /etc/motd", "--record", "echo $GREETING; wc -c /bin/busybox > /tmp/count.txt",
           "--output-file", "/tmp/count.txt"]


@pytest.fixture(scope="module")
def public():
    """A directory a plain user can read and write (pytest's temporary root is private to root)."""
    with public_directory("repro-archive-") as path:
        yield path


@pytest.fixture(scope="module")
def hello(public) -> dict:
    """catalog/hello built by repro, archived as a .tar and as a directory (rootfs rendition included)."""
    spec = stage_hello(public / "src")
    store = public / "store"
    built = json.loads(repro("build", str(spec), "--store", str(store), "--json").stdout)
    ref = f"oci:{store}:hello:1.0"
    package = public / "hello.tar"
    repro("archive", ref, "-o", str(package), "--spec", str(spec), "--with", "rootfs", *RECORDS)
    directory = public / "hello-package"
    repro("archive", ref, "-o", str(directory), "--spec", str(spec), "--with", "rootfs", *RECORDS)
    subprocess.run(["chmod", "-R", "a+rX", str(public)], check=True)
    return {"spec": spec, "ref": ref, "digest": built["digest"], "tar": package, "dir": directory}


def runs_of(package: Path) -> list[dict]:
    return json.loads((package / "data" / "runs.json").read_text())["runs"]


def test_package_is_a_bagit_bag_that_bagit_python_accepts(hello, tmp_path):
    proc = run(BAGIT, "--validate", str(hello["dir"]))
    assert proc.returncode == 0
    with tarfile.open(hello["tar"]) as tar:
        tar.extractall(tmp_path, filter="data")
    (top,) = tmp_path.iterdir()
    run(BAGIT, "--validate", str(top))
    assert (top / "bagit.txt").read_text() == "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"
    info = dict(line.split(": ", 1) for line in (top / "bag-info.txt").read_text().splitlines())
    assert info["External-Identifier"] == hello["digest"]
    assert info["Bagging-Date"] == "2023-11-14"  # the spec's source_date_epoch, not today
    files = [p for p in (top / "data").rglob("*") if p.is_file()]
    assert info["Payload-Oxum"] == f"{sum(p.stat().st_size for p in files)}.{len(files)}"
    assert info["Source-Reference"] == hello["ref"]


def test_package_contents(hello):
    data = hello["dir"] / "data"
    listed = json.loads(repro("inspect", "--referrers", "--json", f"oci:{data / 'image'}:image").stdout)
    assert listed["subject"] == hello["digest"]
    assert sorted(d["artifactType"] for d in listed["referrers"]) == [
        "application/spdx+json", "application/vnd.cyclonedx+json", "application/vnd.in-toto+json"]
    statement = json.loads((data / "provenance.json").read_text())
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert statement["subject"][0]["digest"]["sha256"] == hello["digest"].split(":")[1]
    definition = statement["predicate"]["buildDefinition"]
    assert definition["internalParameters"] == {"SOURCE_DATE_EPOCH": 1700000000}
    assert definition["externalParameters"]["spec"]["sha256"] == hashlib.sha256(hello["spec"].read_bytes()).hexdigest()

    loaded = ROCrate(str(data))  # the library reads back what it helped write
    assert loaded.root_dataset["identifier"] == hello["digest"] and loaded.dereference("sbom/spdx.json") is not None
    crate = json.loads((data / "ro-crate-metadata.json").read_text())
    graph = {entity["@id"]: entity for entity in crate["@graph"]}
    assert graph["ro-crate-metadata.json"]["conformsTo"]["@id"] == "https://w3id.org/ro/crate/1.1"
    assert graph["./"]["identifier"] == hello["digest"]
    assert {"image/", "sbom/spdx.json", "provenance.json", "runs.json", "README.txt", "rootfs.tar"} <= set(graph)
    runs = runs_of(hello["dir"])
    motd = b"hello from a reproducible image\n"
    assert runs[0]["stdout_sha256"] == hashlib.sha256(motd).hexdigest() and runs[0]["exit_code"] == 0
    count = runs[1]["outputs"][0]
    assert count["path"] == "/tmp/count.txt" and len(count["sha256"]) == 64
    assert runs[0]["environment"]["executor"] in ("runc", "bwrap", "proot")


def test_same_inputs_give_the_same_package_bytes(hello, tmp_path):
    again = tmp_path / hello["tar"].name  # the bag's top directory is named after the file
    repro("archive", hello["ref"], "-o", str(again), "--spec", str(hello["spec"]), "--with", "rootfs", *RECORDS)
    assert again.read_bytes() == hello["tar"].read_bytes()


def test_verify_passes_for_a_good_package(hello):
    for package in (hello["tar"], hello["dir"]):
        proc = repro("verify", "--json", str(package))
        report = json.loads(proc.stdout)
        assert report["ok"] and {"payload", "OCI blobs", "OCI structure", "image", "SBOMs", "referrers",
                                 "provenance", "recorded runs"} <= {row["check"] for row in report["checked"]}
    deep = repro("verify", "--deep", str(hello["tar"])).stdout
    assert "decompress to their diff_ids" in deep


def _rehash(package: Path) -> None:
    """What a careful forger does: make the bag's manifests agree with the edited payload."""
    lines = []
    for line in (package / "manifest-sha256.txt").read_text().splitlines():
        _, name = line.split("  ", 1)
        lines.append(f"{hashlib.sha256((package / name).read_bytes()).hexdigest()}  {name}")
    (package / "manifest-sha256.txt").write_text("\n".join(lines) + "\n")
    files = [p for p in (package / "data").rglob("*") if p.is_file()]
    info = re.sub(r"Payload-Oxum: .*", f"Payload-Oxum: {sum(p.stat().st_size for p in files)}.{len(files)}",
                  (package / "bag-info.txt").read_text())
    (package / "bag-info.txt").write_text(info)
    tags = []
    for line in (package / "tagmanifest-sha256.txt").read_text().splitlines():
        _, name = line.split("  ", 1)
        tags.append(f"{hashlib.sha256((package / name).read_bytes()).hexdigest()}  {name}")
    (package / "tagmanifest-sha256.txt").write_text("\n".join(tags) + "\n")


def _flip_layer_byte(package: Path) -> str:
    index = json.loads((package / "data/image/index.json").read_text())
    image = next(d for d in index["manifests"] if d.get("annotations", {}).get("org.opencontainers.image.ref.name"))
    manifest = json.loads((package / "data/image/blobs/sha256" / image["digest"][7:]).read_text())
    layer = package / "data/image/blobs/sha256" / manifest["layers"][0]["digest"][7:]
    data = bytearray(layer.read_bytes())
    data[len(data) // 2] ^= 0xFF
    layer.write_bytes(bytes(data))
    return f"data/image/blobs/sha256/{layer.name}"


def _delete_file(package: Path) -> str:
    (package / "data/sbom/cyclonedx.json").unlink()
    return "data/sbom/cyclonedx.json"


def _add_file(package: Path) -> str:
    (package / "data/image/blobs/sha256/extra").write_bytes(b"not listed")
    return "data/image/blobs/sha256/extra"


def _edit_index(package: Path) -> str:
    """Point the image's tag at the SPDX referrer instead, and re-hash the bag: only OCI checks can tell."""
    path = package / "data/image/index.json"
    index = json.loads(path.read_text())
    tagged = next(d for d in index["manifests"] if d.get("annotations", {}).get("org.opencontainers.image.ref.name"))
    spdx = next(d for d in index["manifests"] if d.get("artifactType") == "application/spdx+json")
    tagged["digest"] = spdx["digest"]
    path.write_text(json.dumps(index))
    _rehash(package)
    return "index.json"


def _edit_index_size(package: Path) -> str:
    path = package / "data/image/index.json"
    index = json.loads(path.read_text())
    index["manifests"][0]["size"] += 1
    path.write_text(json.dumps(index))
    _rehash(package)
    return "index.json"


@pytest.mark.parametrize("damage", [_flip_layer_byte, _delete_file, _add_file, _edit_index, _edit_index_size],
                         ids=lambda f: f.__name__.strip("_"))
def test_verify_names_the_damaged_file(hello, tmp_path, damage):
    package = tmp_path / "package"
    shutil.copytree(hello["dir"], package)
    named = damage(package)
    proc = repro("verify", str(package), check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], proc.stderr
    if damage in (_edit_index, _edit_index_size):
        assert run(BAGIT, "--validate", str(package)).returncode == 0  # the bag alone cannot tell


def test_replay_matches_with_docker_and_with_proot_as_a_plain_user(hello, dockerd, public):
    proc = repro("replay", "--json", "--executor", "docker", str(hello["tar"]), env=dockerd)
    report = json.loads(proc.stdout)
    assert report["executor"] == "docker" and [r["matches"] for r in report["runs"]] == [True, True]
    user = subprocess.run([*NOBODY, REPRO, "replay", "--json", "--executor", "proot", str(hello["tar"])],
                          capture_output=True, text=True, env={**os.environ, "HOME": str(public)})
    assert user.returncode == 0, user.stderr
    report = json.loads(user.stdout)
    assert report["executor"] == "proot" and [r["matches"] for r in report["runs"]] == [True, True]


def test_replay_reports_an_altered_record(hello, tmp_path):
    package = tmp_path / "package"
    shutil.copytree(hello["dir"], package)
    runs = json.loads((package / "data/runs.json").read_text())
    runs["runs"][1]["outputs"][0]["sha256"] = "0" * 64
    (package / "data/runs.json").write_text(json.dumps(runs))
    proc = repro("replay", "--executor", "runc", str(package), check=False)
    assert proc.returncode == 1
    assert "MISMATCH" in proc.stdout and "/tmp/count.txt" in proc.stdout and "1 of 2 recorded runs match" in proc.stdout
    assert "recorded runs differ" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def _readme_commands(package: Path, section: str) -> list[str]:
    text = (package / "data" / "README.txt").read_text()
    body = text.split(f"\n{section}. ", 1)[1].split("\n\n\n", 1)[0]
    return [line[len("    $ "):] for line in body.splitlines() if line.startswith("    $ ")]


def test_readme_instructions_work_for_docker_and_a_bare_chroot(hello, dockerd, tmp_path):
    package = tmp_path / "package"
    shutil.copytree(hello["dir"], package)
    recorded = runs_of(package)[0]["stdout_sha256"]
    docker = [c for c in _readme_commands(package, "2") if not c.startswith("podman")]  # no podman here
    assert docker[0].startswith("skopeo copy oci:data/image:image docker-archive:")
    outputs = [subprocess.run(["bash", "-c", command], cwd=package, env=dockerd, capture_output=True)
               for command in docker]
    assert all(p.returncode == 0 for p in outputs), [p.stderr for p in outputs]
    assert hashlib.sha256(outputs[-1].stdout).hexdigest() == recorded
    chroot = _readme_commands(package, "5")[:2]
    assert "rootfs.tar" in chroot[0] and "chroot" in chroot[1]
    outputs = [subprocess.run(["bash", "-c", command], cwd=package, capture_output=True) for command in chroot]
    assert all(p.returncode == 0 for p in outputs), [p.stderr for p in outputs]
    assert hashlib.sha256(outputs[-1].stdout).hexdigest() == recorded
    layers = _readme_commands(package, "5")[2:]
    assert layers[0] == "mkdir rootfs" and all(re.match(r"tar -xzpf data/image/blobs/sha256/\w+ -C rootfs", c)
                                                 for c in layers[1:])


def test_archive_reference_restores_and_runs_the_image(hello, dockerd, tmp_path):
    repro("convert", f"archive:{hello['tar']}", "docker-daemon:restored/hello:1", env=dockerd)
    shown = run("docker", "run", "--rm", "--network", "none", "restored/hello:1", env=dockerd).stdout
    assert shown == "hello from a reproducible image\n"
    assert json.loads(repro("inspect", "--json", f"archive:{hello['dir']}").stdout)["digest"] == hello["digest"]
    host = tmp_path / "shared"
    host.mkdir()
    (host / "in.txt").write_text("from the host\n")
    readonly = repro("run", f"archive:{hello['tar']}", "-v", f"{host}:/data", "--", "touch /data/x", check=False)
    assert readonly.returncode == 1 and "cannot write" in readonly.stderr  # root inside is uid 100000 outside
    os.chown(host, 100000, 100000)  # what the warning says to do
    proc = repro("run", f"archive:{hello['tar']}", "-v", f"{host}:/data", "-e", "EXTRA=1", "--",
                 "cat /data/in.txt; echo $GREETING $EXTRA; pwd > /data/out.txt")
    assert proc.stdout == "from the host\nhello 1\n"
    assert (host / "out.txt").read_text() == "/\n" and (host / "out.txt").stat().st_uid == 100000
    exit_code = repro("run", f"archive:{hello['tar']}", "--", "exit 3", check=False)
    assert exit_code.returncode == 3
    default = repro("run", "--executor", "docker", f"archive:{hello['tar']}", env=dockerd)
    assert default.stdout == "hello from a reproducible image\n"


def test_udocker_as_a_plain_user_loads_the_image_and_replays(hello, public):
    """udocker refuses root and fetches its tools from the internet: a plain user, with a local tools
    tarball made from Debian's proot (design.md section 6)."""
    tools = public / "udocker-tools"
    (tools / "udocker_dir" / "bin").mkdir(parents=True)
    (tools / "udocker_dir" / "lib").mkdir()
    shutil.copy2(shutil.which("proot"), tools / "udocker_dir" / "bin" / "proot-x86_64")
    (tools / "udocker_dir" / "lib" / "VERSION").write_text("1.2.11\n")
    tarball = public / "udocker-tools.tar.gz"
    run("tar", "-czf", str(tarball), "-C", str(tools), "udocker_dir")
    home = public / "udocker-home"
    home.mkdir()
    os.chown(home, 65534, 65534)
    os.chmod(tarball, 0o644)
    # udocker for the plain user, as the user would install it: its package on the system Python. (This
    # machine's venv interpreter lives under /root, mode 700, which a plain user's child processes cannot run.)
    user_bin, user_lib = public / "user-bin", public / "user-lib"
    user_bin.mkdir()
    shutil.copytree(Path(UDOCKER_PACKAGE.__file__).parent, user_lib / "udocker")
    wrapper = user_bin / "udocker"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={user_lib} exec /usr/bin/python3 -c "
                       "'import sys; from udocker.maincmd import main; sys.exit(main())' \"$@\"\n")
    wrapper.chmod(0o755)
    subprocess.run(["chmod", "-R", "a+rX", str(user_lib)], check=True)
    env = {**os.environ, "HOME": str(home), "UDOCKER_TARBALL": str(tarball),
           "PATH": f"{user_bin}:/usr/sbin:/usr/bin:/sbin:/bin"}
    installed = subprocess.run([*NOBODY, str(wrapper), "install"], capture_output=True, text=True, env=env)
    assert installed.returncode == 0, installed.stderr
    proc = subprocess.run([*NOBODY, REPRO, "replay", "--json", "--executor", "udocker", str(hello["tar"])],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    report = json.loads(proc.stdout)
    assert report["executor"] == "udocker" and [r["matches"] for r in report["runs"]] == [True, True]
    as_root = repro("replay", "--executor", "udocker", str(hello["tar"]), check=False)
    assert as_root.returncode == 2 and "refuses to run as root" in as_root.stderr


def test_bad_archive_input_is_one_line(hello, tmp_path):
    cases = [
        (["archive", hello["ref"], "-o", str(hello["tar"])], "already exists"),
        (["archive", hello["ref"], "-o", str(tmp_path / "x"), "--with", "floppy"], "unknown rendition"),
        (["archive", hello["ref"], "-o", str(tmp_path / "x"), "--record", "true", "--output-file", "/nowhere"],
         "/nowhere: cannot be read in the container"),
        (["archive", hello["ref"], "-o", str(tmp_path / "x"), "--output-file", "/tmp/a"], "--output-file names"),
        (["verify", str(tmp_path / "nothing")], "does not exist"),
        (["replay", str(tmp_path / "nothing")], "does not exist"),
        (["convert", hello["ref"], f"archive:{tmp_path}/y"], "repro archive"),
    ]
    for args, message in cases:
        proc = repro(*args, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, (args, proc.stderr)
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.repro-tmp-*"))


def test_an_image_built_by_repro_brings_its_provenance_without_spec(hello, tmp_path):
    """`repro build` attaches the provenance to what it builds; the package takes it from there."""
    package = tmp_path / "package"
    repro("archive", hello["ref"], "-o", str(package))
    assert (package / "data/provenance.json").read_bytes() == (hello["dir"] / "data/provenance.json").read_bytes()
    assert runs_of(package) == []
    repro("verify", str(package))
