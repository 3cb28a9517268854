"""SIF: siftool reads what repro writes, repro reads what siftool writes, round trips run the same."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import uuid
from pathlib import Path

import pytest

from converters import sif_format as fmt
from tests.conftest import busybox_layers, repro, run
from tests.imagekit import make_image
from tests.test_flatten import tree_of

TRICKY_ENV = ["PATH=/bin", 'QUOTES=say "hi" and \'bye\'', "DOLLAR=$HOME and ${X} and `cmd`",
              "BACKSLASH=a\\b\\\\c", "NEWLINE=line one\nline two", "EMPTY="]
CONFIG = {"Env": TRICKY_ENV, "Entrypoint": ["/bin/sh", "-c", 'echo "entry: $0 $*"; env | sort', "arg0"],
          "Cmd": ["it's", "$HOME"], "Labels": {"org.example.team": "science"}}


@pytest.fixture(scope="module")
def sif_image(tmp_path_factory, busybox_layout):
    """The busybox image with tricky Env, ENTRYPOINT and CMD, and its SIF."""
    base = tmp_path_factory.mktemp("sif")

    make_image(base / "layout", "tricky", busybox_layers(), config=CONFIG)
    repro("convert", f"oci:{base}/layout:tricky", f"sif:{base}/image.sif")
    return base


def test_siftool_reads_what_repro_writes(sif_image):
    sif = str(sif_image / "image.sif")
    header = run("siftool", "header", sif).stdout
    assert "Primary Architecture: amd64" in header and "Descriptors Total:    48\n" in header
    listing = run("siftool", "list", sif).stdout
    lines = [line for line in listing.splitlines() if line[:1].isdigit()]
    assert [line.split("|")[-1].strip() for line in lines] == [
        "Def.FILE", "JSON.Generic", "JSON.Generic", "FS (Squashfs/*System/amd64)"]
    assert "oci-config.json" in run("siftool", "info", "3", sif).stdout
    deffile = run("siftool", "dump", "1", sif).stdout
    assert deffile.startswith("bootstrap: docker-archive\nfrom: layout:tricky@sha256:")
    oci_config = json.loads(run("siftool", "dump", "3", sif).stdout)
    assert oci_config["Env"] == TRICKY_ENV
    partition = sif_image / "partition.sqfs"
    with open(partition, "wb") as out:
        subprocess.run(["siftool", "dump", "4", sif], stdout=out, check=True)
    run("unsquashfs", "-q", "-d", str(sif_image / "unsquashed"), str(partition))
    repro("flatten", f"oci:{sif_image}/layout:tricky", f"rootfs:{sif_image}/flat")
    sif_tree, flat = tree_of(sif_image / "unsquashed"), tree_of(sif_image / "flat")
    added = {path for path in sif_tree if path not in flat}
    assert all(flat[p] == sif_tree[p] for p in flat if not p.startswith(("etc/hosts", "etc/resolv.conf")))
    assert {".singularity.d/runscript", ".singularity.d/env/10-docker2singularity.sh", ".singularity.d/labels.json",
            ".singularity.d/actions/run", ".singularity.d/Singularity", "singularity", "environment", "etc/hosts",
            "etc/resolv.conf", "proc", "sys", "dev", "home", "root", "var/tmp"} <= added | set(flat)
    assert sif_tree["singularity"] == ("symlink", ".singularity.d/runscript", 0, 0, 0)
    assert sif_tree["etc/hosts"][1] == b""


def test_sif_is_reproducible(sif_image, tmp_path):
    repro("convert", f"oci:{sif_image}/layout:tricky", f"sif:{tmp_path}/again.sif")
    assert (tmp_path / "again.sif").read_bytes() == (sif_image / "image.sif").read_bytes()


def test_runscript_and_env_run_in_the_tree(sif_image, tmp_path):
    """The SIF's scripts, run by sh in the unpacked tree, behave as the image's ENTRYPOINT and Env."""
    root = tmp_path / "root"
    partition = tmp_path / "p.sqfs"
    with open(partition, "wb") as out:
        subprocess.run(["siftool", "dump", "4", str(sif_image / "image.sif")], stdout=out, check=True)
    run("unsquashfs", "-q", "-d", str(root), str(partition))
    env = {"PATH": "/bin", "HOME": "/root"}
    out = subprocess.run(["/usr/sbin/chroot", str(root), "/bin/sh", "/.singularity.d/actions/run"], capture_output=True,
                         text=True, env=env, check=True).stdout
    assert out.startswith("entry: arg0 it's $HOME\n")
    for item in TRICKY_ENV[1:]:
        if "\n" not in item:  # `env | sort` splits multi-line values; the exec check below covers them
            assert item in out.splitlines(), item
    out = subprocess.run(["/usr/sbin/chroot", str(root), "/bin/sh", "/.singularity.d/actions/run", "one", "two words"],
                         capture_output=True, text=True, env=env, check=True).stdout
    assert out.startswith("entry: arg0 one two words\n")
    out = subprocess.run(["/usr/sbin/chroot", str(root), "/bin/sh", "/.singularity.d/actions/exec", "/bin/sh", "-c",
                          'printf "%s|" "$NEWLINE" "$DOLLAR" "$EMPTY"'], capture_output=True, text=True, env=env,
                         check=True).stdout
    assert out == "line one\nline two|$HOME and ${X} and `cmd`||"


@pytest.mark.parametrize("drop_oci_config", [False, True])
def test_sif_to_oci_recovers_the_config(sif_image, tmp_path, drop_oci_config):
    sif = sif_image / "image.sif"
    if drop_oci_config:  # a SIF without the oci-config.json object: the scripts tell the config
        sif = tmp_path / "plain.sif"
        sif.write_bytes((sif_image / "image.sif").read_bytes())
        run("siftool", "del", "3", str(sif))
    repro("convert", f"sif:{sif}", f"oci:{tmp_path}/back:1")
    info = json.loads(repro("inspect", "--json", f"oci:{tmp_path}/back:1").stdout)
    assert info["env"] == TRICKY_ENV
    assert info["entrypoint"] == CONFIG["Entrypoint"] and info["cmd"] == CONFIG["Cmd"]
    assert info["labels"] == CONFIG["Labels"]


def test_round_trip_runs_the_same_in_docker(sif_image, tmp_path, dockerd):
    repro("convert", f"oci:{sif_image}/layout:tricky", f"docker-archive:{tmp_path}/orig.tar:sif-test/orig:1")
    repro("convert", f"sif:{sif_image}/image.sif", f"docker-archive:{tmp_path}/back.tar:sif-test/back:1")
    outputs = []
    for name, archive in (("orig", "orig.tar"), ("back", "back.tar")):
        run("docker", "load", "-i", str(tmp_path / archive), env=dockerd)
        outputs.append(run("docker", "run", "--rm", "--network", "none", "--hostname", "box", f"sif-test/{name}:1",
                           env=dockerd).stdout)
    assert outputs[0] == outputs[1]
    assert "QUOTES=say \"hi\" and 'bye'" in outputs[0]


def _siftool_sif(tmp_path: Path, objects: list[tuple[Path, list[str]]]) -> Path:
    sif = tmp_path / "made-by-siftool.sif"
    run("siftool", "new", str(sif))
    for path, flags in objects:
        run("siftool", "add", str(sif), str(path), *flags)
    return sif


def test_repro_reads_what_siftool_writes(tmp_path):
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "busybox").write_bytes(Path("/bin/busybox").read_bytes())
    (tree / "bin" / "busybox").chmod(0o755)
    (tree / "hello.txt").write_text("from mksquashfs\n")
    run("mksquashfs", str(tree), str(tmp_path / "fs.sqfs"), "-noappend", "-quiet", "-comp", "gzip", "-all-root")
    (tmp_path / "recipe.def").write_text("bootstrap: scratch\n")
    (tmp_path / "labels.json").write_text('{"a": "b"}')
    (tmp_path / "data.bin").write_bytes(b"\0" * 1000)
    sif = _siftool_sif(tmp_path, [
        (tmp_path / "recipe.def", ["--datatype", "1"]),
        (tmp_path / "labels.json", ["--datatype", "6", "--groupid", "2"]),
        (tmp_path / "data.bin", ["--datatype", "7", "--link", "1"]),
        (tmp_path / "fs.sqfs", ["--datatype", "4", "--parttype", "2", "--partfs", "1", "--partarch", "2"]),
    ])
    details = json.loads(repro("inspect", "--json", f"sif:{sif}").stdout)["sif"]
    assert [o["type"] for o in details["objects"]] == ["Def.FILE", "JSON.Generic", "Generic/Raw", "FS"]
    assert details["objects"][2]["link"] == 1 and details["objects"][1]["group"] == 2
    assert details["objects"][3]["partition"] == {"fstype": "Squashfs", "parttype": "*System", "arch": "amd64"}
    repro("flatten", f"sif:{sif}", f"rootfs:{tmp_path}/out")
    assert (tmp_path / "out" / "hello.txt").read_text() == "from mksquashfs\n"


def test_non_default_descriptor_count(tmp_path):
    """A SIF with 8 descriptors (not 48): siftool and repro agree on it."""
    sif = tmp_path / "small.sif"
    data = b"bootstrap: scratch\n"
    with open(sif, "wb") as out:
        fmt.write(out, [fmt.NewObject(fmt.DATA_DEFFILE, "", lambda f: f.write(data))], uuid.UUID(int=1), 0,
                  capacity=8)

    assert re.search(r"Descriptors Total:\s+8\n", run("siftool", "header", str(sif)).stdout)
    assert run("siftool", "dump", "1", str(sif)).stdout == data.decode()
    proc = repro("inspect", f"sif:{sif}", check=False)
    assert proc.returncode == 2 and "no primary system partition" in proc.stderr


def _corrupt(tmp: Path, good: Path, how: str) -> Path:
    data = bytearray(good.read_bytes())
    path = tmp / f"{how}.sif"
    if how == "not a sif":
        data = bytearray(b"hello world" * 100)
    elif how == "wrong magic":
        data[32:41] = b"NOT_MAGIC"
    elif how == "wrong version":
        data[42:44] = b"99"
    elif how == "truncated":
        data = data[: len(data) // 2]
    elif how == "descriptor past the end":
        offset = fmt.DESCRIPTORS_OFFSET + 3 * fmt.DESCRIPTOR.size + 17
        struct.pack_into("<q", data, offset, len(data) + 4096)
    elif how == "no primary partition":
        struct.pack_into("<i", data, fmt.DESCRIPTORS_OFFSET + 3 * fmt.DESCRIPTOR.size + 73 + 128 + 4, 3)
    elif how == "partition not squashfs":
        struct.pack_into("<i", data, fmt.DESCRIPTORS_OFFSET + 3 * fmt.DESCRIPTOR.size + 73 + 128, 4)
    elif how == "squashfs garbage":
        start = struct.unpack_from("<q", data, fmt.DESCRIPTORS_OFFSET + 3 * fmt.DESCRIPTOR.size + 17)[0]
        data[start + 4: start + 4000] = b"\xff" * 3996
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("how", ["not a sif", "wrong magic", "wrong version", "truncated", "descriptor past the end",
                                 "no primary partition", "partition not squashfs", "squashfs garbage"])
def test_bad_sif_input(sif_image, tmp_path, how):
    bad = _corrupt(tmp_path, sif_image / "image.sif", how)
    proc = repro("convert", f"sif:{bad}", f"oci:{tmp_path}/out:1", check=False)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_hostile_squashfs_stays_inside(tmp_path):
    """A squashfs whose tree holds a symlink to / and an absolute symlink chain: flattening the SIF
    writes nothing outside the destination."""
    tree = tmp_path / "tree"
    tree.mkdir()
    os.symlink("/", tree / "root-link")
    os.symlink("../../../../etc", tree / "up-link")
    (tree / "file").write_text("inside")
    run("mksquashfs", str(tree), str(tmp_path / "fs.sqfs"), "-noappend", "-quiet", "-all-root")
    sif = _siftool_sif(tmp_path, [(tmp_path / "fs.sqfs", ["--datatype", "4", "--parttype", "2", "--partfs", "1",
                                                           "--partarch", "2"])])
    before = sorted(p.name for p in tmp_path.iterdir())
    repro("flatten", f"sif:{sif}", f"rootfs:{tmp_path}/out")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "out"])
    assert os.readlink(tmp_path / "out" / "root-link") == "/"
    assert (tmp_path / "out" / "file").read_text() == "inside"
