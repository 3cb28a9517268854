"""repro build --platform: one spec, an OCI image index with a manifest per platform, the same index
digest every time, a lock per platform, readable by skopeo."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from repro.image import Platform
from tests import oci_schema
from tests.conftest import BUSYBOX, REPRO, public_directory, repro
from tests.imagekit import add_index, make_image
from tests.test_emulation import ARM64, arm64_busybox, layer

SPEC = """\
spec: 1
name: multi
tag: multi:1
source_date_epoch: 1700000000
base: {scratch: true}
steps:
  - file: {dst: /etc/motd, content: "one spec, two platforms\\n"}
config:
  entrypoint: [/bin/sh]
"""


def _spec(where: Path) -> Path:
    (where / "spec.yaml").write_text(SPEC)
    return where / "spec.yaml"


def test_index_of_two_platforms(tmp_path):
    spec = _spec(tmp_path)
    built = json.loads(repro("build", str(spec), "--store", str(tmp_path / "store"), "--json",
                             "--platform", "linux/amd64,linux/arm64", "-o", f"oci:{tmp_path / 'out'}:multi").stdout)
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{tmp_path / 'out'}:multi"], capture_output=True,
                         check=True).stdout
    oci_schema.validate("index", raw)
    index = json.loads(raw)
    assert [m["platform"] for m in index["manifests"]] == [{"architecture": "amd64", "os": "linux"},
                                                           {"architecture": "arm64", "os": "linux"}]
    assert built["digest"] == "sha256:" + hashlib.sha256(raw).hexdigest()
    for platform in ("linux/amd64", "linux/arm64"):
        shown = json.loads(repro("inspect", "--json", "--platform", platform, f"oci:{tmp_path / 'out'}:multi").stdout)
        assert shown["platform"] == platform
    subprocess.run(["skopeo", "copy", "--all", "-q", f"oci:{tmp_path / 'out'}:multi", f"oci:{tmp_path / 'copy'}:m"],
                   check=True)
    lock = json.loads((tmp_path / "spec.lock").read_text())
    assert sorted(lock["platforms"]) == ["linux/amd64", "linux/arm64"]
    # --locked accepts the same platforms only; the host's manifest is the image a plain build makes
    refused = repro("build", str(spec), "--store", str(tmp_path / "store"), "--locked", check=False)
    assert refused.returncode != 0 and "the lock for linux/amd64, linux/arm64" in refused.stderr
    repro("build", str(spec), "--store", str(tmp_path / "store"), "--locked", "--platform", "linux/amd64,linux/arm64")
    plain = json.loads(repro("build", str(spec), "--store", str(tmp_path / "plain"), "--json",
                             "--platform", "linux/amd64").stdout)
    assert plain["digest"] == index["manifests"][0]["digest"]
    again = repro("build", "--check", str(spec), "--platform", "linux/amd64,linux/arm64")
    assert f"reproducible: {built['digest']}" in again.stdout


def test_an_index_cannot_go_to_a_single_image_format(tmp_path):
    spec = _spec(tmp_path)
    proc = repro("build", str(spec), "--store", str(tmp_path / "store"), "--platform", "linux/amd64,linux/arm64",
                 "-o", f"docker-archive:{tmp_path / 'x.tar'}", check=False)
    assert proc.returncode != 0 and "holds one platform" in proc.stderr
    assert not (tmp_path / "x.tar").exists()


def test_sbom_of_the_index_describes_every_platform(tmp_path):
    metadata = "Metadata-Version: 2.1\\nName: tool\\nVersion: 1.2\\n"
    (tmp_path / "spec.yaml").write_text(SPEC.replace("config:", "  - file: {dst: /usr/lib/python3/dist-packages/"
                                                     f'tool-1.2.dist-info/METADATA, content: "{metadata}"}}\nconfig:'))
    built = json.loads(repro("build", str(tmp_path / "spec.yaml"), "--store", str(tmp_path / "store"), "--json",
                             "--platform", "linux/amd64,linux/arm64").stdout)
    ref = f"oci:{tmp_path / 'store'}:multi:1"
    spdx = tmp_path / "index.spdx.json"
    repro("sbom", "--format", "spdx-json", ref, "-o", str(spdx))
    assert [m.validation_message for m in validate_full_spdx_document(parse_file(str(spdx)))] == []
    doc = json.loads(spdx.read_text())
    contains = {(r["spdxElementId"], r["relatedSpdxElement"]) for r in doc["relationships"]
                if r["relationshipType"] == "CONTAINS"}
    for platform in ("linux-amd64", "linux-arm64"):
        assert ("SPDXRef-Index", f"SPDXRef-Image-{platform}") in contains
        held = {b for a, b in contains if a == f"SPDXRef-Image-{platform}"}
        assert [p["name"] for p in doc["packages"] if p["SPDXID"] in held] == ["tool"]
    text = repro("sbom", "--format", "cyclonedx-json", ref).stdout
    assert not JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    bom = json.loads(text)
    assert bom["metadata"]["component"]["version"] == built["digest"]
    images = {c["properties"][0]["value"]: c for c in bom["components"]}
    assert sorted(images) == ["linux/amd64", "linux/arm64"]
    for image in images.values():
        assert [c["purl"] for c in image["components"]] == ["pkg:pypi/tool@1.2"]
    one = json.loads(repro("sbom", "--format", "cyclonedx-json", "--platform", "linux/arm64", ref).stdout)
    assert one["metadata"]["component"]["version"] == images["linux/arm64"]["version"]


EMULATED = """\
spec: 1
name: hello-everywhere
tag: hello-everywhere:1
source_date_epoch: 1700000000
base: {scratch: true}
steps:
  - copy: {src: "busybox-${TARGETARCH}", dst: /bin/busybox, mode: "0755"}
  - run: [/bin/busybox, --install, -s, /bin]
  - run: mkdir -p /etc && uname -m > /etc/arch
"""


def test_foreign_steps_run_emulated_alike_as_root_and_as_a_plain_user(public_dir):
    """busybox-${TARGETARCH} is the platform's own binary; the arm64 steps run under QEMU, and a plain
    user builds the same index as root."""

    (public_dir / "busybox-arm64").write_bytes(arm64_busybox(public_dir))
    (public_dir / "busybox-amd64").write_bytes(Path("/bin/busybox").read_bytes())
    (public_dir / "spec.yaml").write_text(EMULATED)
    subprocess.run(["chmod", "-R", "a+rwX", str(public_dir)], check=True)
    args = ["build", str(public_dir / "spec.yaml"), "--json", "--platform", "linux/amd64,linux/arm64", "--store"]
    as_root = json.loads(repro(*args, str(public_dir / "root")).stdout)
    user = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", REPRO, *args,
                           str(public_dir / "user")], capture_output=True, text=True,
                          env={**os.environ, "HOME": str(public_dir)})
    assert user.returncode == 0, user.stderr
    assert json.loads(user.stdout)["digest"] == as_root["digest"]
    image = f"oci:{public_dir / 'root'}:hello-everywhere:1"
    assert repro("run", "--platform", "linux/arm64", image, "--", "cat", "/etc/arch").stdout == "aarch64\n"
    assert repro("run", "--platform", "linux/amd64", image, "--", "cat", "/etc/arch").stdout == "x86_64\n"


# --- front ends: a Containerfile's FROM --platform and platform ARGs, a def file's arch labels ---------------


@pytest.fixture(scope="module")
def busyboxes():
    """oci:LAYOUT:multi, an index of the host's busybox image and Debian's arm64 one (sh, uname, cat, ...)."""

    if Platform.host().architecture != "amd64":
        pytest.skip("the foreign image is arm64")
    with public_directory("repro-platforms-") as public:
        config = {"Env": ["PATH=/bin"]}
        path = public / "layout"
        make_image(path, "arm64", [layer(arm64_busybox(public))], platform=ARM64, config=config)
        make_image(path, "host", [layer(BUSYBOX.read_bytes())], config=config)
        add_index(path, "multi", [("host", Platform.host()), ("arm64", ARM64)])
        yield f"oci:{path}:multi"


def _image_files(ref: str, platform: str, where: Path) -> dict[str, bytes]:
    """name -> content of the regular files of the flattened image for `platform`."""
    flat = where / f"flat-{platform.replace('/', '-')}.tar"
    repro("flatten", "--platform", platform, ref, f"tar:{flat}")
    with tarfile.open(flat) as tar:
        return {info.name.removeprefix("./"): tar.extractfile(info).read() for info in tar if info.isreg()}


def _architecture(ref: str, platform: str | None = None) -> str:
    shown = json.loads(repro("inspect", "--json", *(["--platform", platform] if platform else []), ref).stdout)
    return shown["platform"]


def test_containerfile_from_platform_builds_that_stage_emulated(busyboxes, tmp_path):
    (tmp_path / "Containerfile").write_text(
        "FROM --platform=linux/arm64 " + busyboxes + "\n"
        "ARG TARGETARCH\n"
        "RUN uname -m > /arch && echo \"$TARGETARCH\" > /target\n")
    out = f"oci:{tmp_path / 'out'}:arm"
    repro("build", str(tmp_path / "Containerfile"), "--store", str(tmp_path / "store"), "-o", out)
    assert _architecture(out) == "linux/arm64"  # the last stage's platform is the image's
    files = _image_files(out, "linux/arm64", tmp_path)
    assert files["arch"] == b"aarch64\n"
    assert files["target"] == b"amd64\n"  # TARGETARCH is the platform built (this machine's), as BuildKit's


def test_copy_from_an_image_reads_the_stage_s_platform(busyboxes, tmp_path):
    """COPY --from=<image> in an arm64 stage takes the image's arm64 files, as BuildKit does."""
    (tmp_path / "Containerfile").write_text(
        "FROM --platform=linux/arm64 " + busyboxes + "\nCOPY --from=" + busyboxes + " /bin/busybox /copied\n")
    out = f"oci:{tmp_path / 'out'}:arm"
    repro("build", str(tmp_path / "Containerfile"), "--store", str(tmp_path / "store"), "-o", out)
    copied = _image_files(out, "linux/arm64", tmp_path)["copied"]
    assert int.from_bytes(copied[18:20], "little") == 183  # ELF e_machine: EM_AARCH64


CROSS = """\
ARG BASE
FROM --platform=$BUILDPLATFORM ${BASE} AS build
ARG TARGETPLATFORM TARGETOS TARGETARCH TARGETVARIANT BUILDPLATFORM BUILDARCH
RUN echo "$TARGETOS $TARGETARCH [$TARGETVARIANT] $TARGETPLATFORM on $BUILDPLATFORM $BUILDARCH" > /for \\
    && uname -m > /built-on
FROM ${BASE}
COPY --from=build /for /built-on /
RUN uname -m > /runs-on
"""


def test_cross_compile_pattern_builds_an_index(busyboxes, tmp_path):
    (tmp_path / "Containerfile").write_text(CROSS)
    out = f"oci:{tmp_path / 'out'}:cross"
    args = ["build", str(tmp_path / "Containerfile"), "--build-arg", f"BASE={busyboxes}",
            "--platform", "linux/amd64,linux/arm64", "--json"]
    built = json.loads(repro(*args, "--store", str(tmp_path / "store"), "-o", out).stdout)
    index = json.loads(subprocess.run(["skopeo", "inspect", "--raw", out], capture_output=True, check=True).stdout)
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
    amd64 = _image_files(out, "linux/amd64", tmp_path)
    arm64 = _image_files(out, "linux/arm64", tmp_path)
    assert amd64["for"] == b"linux amd64 [] linux/amd64 on linux/amd64 amd64\n"
    assert arm64["for"] == b"linux arm64 [] linux/arm64 on linux/amd64 amd64\n"
    assert amd64["built-on"] == arm64["built-on"] == b"x86_64\n"  # the build stage ran natively for both
    assert (amd64["runs-on"], arm64["runs-on"]) == (b"x86_64\n", b"aarch64\n")
    for platform in ("linux/amd64", "linux/arm64"):
        assert _architecture(out, platform) == platform
    # the same index again, from an empty store
    again = json.loads(repro(*args, "--store", str(tmp_path / "again")).stdout)
    assert again["digest"] == built["digest"]


def test_containerfile_platform_refusals(tmp_path):
    cases = [
        ("FROM --platform=windows/amd64 scratch\n", 1, "repro builds Linux images only"),
        ("FROM --platform=linux scratch\n", 1, "expected os/arch[/variant]"),
        ("FROM --platform=linux/arm64 scratch AS a\nFROM --platform=linux/amd64 a\n", 2, "the stage a is built for "
         "linux/arm64"),
        ("FROM --platform=linux/arm64 scratch\nCOPY Containerfile /\n", 1, "is for linux/arm64 (its own platform), "
         "not linux/amd64"),
    ]
    for text, line, message in cases:
        (tmp_path / "Containerfile").write_text(text)
        proc = repro("build", str(tmp_path / "Containerfile"), "--store", str(tmp_path / "store"), "--platform",
                     "linux/amd64", check=False)
        assert proc.returncode == 2, (text, proc.stderr)
        assert proc.stderr.startswith(f"repro: {tmp_path / 'Containerfile'}:{line}: "), proc.stderr
        assert message in proc.stderr.splitlines()[0], proc.stderr


def test_def_file_labels_name_the_platform_built(tmp_path):
    (tmp_path / "app.def").write_text("Bootstrap: scratch\n%labels\n  app one\n")
    out = f"oci:{tmp_path / 'out'}:app"
    repro("build", str(tmp_path / "app.def"), "--store", str(tmp_path / "store"), "-o", out,
          "--platform", "linux/amd64,linux/arm64")
    for platform in ("linux/amd64", "linux/arm64"):
        arch = platform.split("/")[1]
        labels = json.loads(_image_files(out, platform, tmp_path)[".singularity.d/labels.json"])
        assert labels["org.opencontainers.image.architecture"] == labels["org.label-schema.build-arch"] == arch
        assert labels["app"] == "one"
        shown = json.loads(repro("inspect", "--json", "--platform", platform, out).stdout)
        assert shown["platform"] == platform
    single = f"oci:{tmp_path / 'single'}:app"
    repro("build", str(tmp_path / "app.def"), "--store", str(tmp_path / "store"), "-o", single,
          "--platform", "linux/arm64")
    assert _architecture(single) == "linux/arm64"
    labels = json.loads(_image_files(single, "linux/arm64", tmp_path)[".singularity.d/labels.json"])
    assert labels["org.label-schema.build-arch"] == "arm64"
