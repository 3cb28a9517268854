"""What a preservation package says about itself: README.txt for people, ro-crate-metadata.json for
research repositories. Both are pure functions of the image and the records (no clock, no host)."""

from __future__ import annotations

import json
import shlex

from repro import __version__
from repro.image import Descriptor, Image
from repro.preserve.records import Record

BLOB_CHECK = 'cd data/image/blobs/sha256 && for f in *; do echo "$f  $f"; done | sha256sum -c; cd -'


def _commands(lines: list[str]) -> str:
    return "".join(f"    $ {line}\n" for line in lines)


def readme(image: Image, name: str, runs: list[Record], renditions: tuple[str, ...], has_provenance: bool,
           layers: list[Descriptor]) -> bytes:
    config = image.config
    entry = [*(config.entrypoint or []), *(config.cmd or [])]
    workdir = config.workdir or "/"
    env = list(config.env)
    example = runs[0].command if runs else (shlex.join(entry) if entry else "/bin/sh")
    sections = [f"""PRESERVATION PACKAGE OF A CONTAINER IMAGE
{"=" * 41}

This directory is a BagIt bag (RFC 8493, version 1.0). It holds a Linux container image and everything
needed to check it and to run it again, with or without the tool that made it (repro {__version__}).

Image manifest digest : {image.digest}
Image config digest   : {image.manifest.config.digest}
Platform              : {config.platform}
Created               : {config.created or "(not recorded)"}
Name used below       : {name}
Entrypoint + command  : {json.dumps(entry)}
Working directory     : {workdir}
Environment           : {json.dumps(env)}


WHAT IS HERE
------------
bagit.txt, bag-info.txt          the bag's declaration and description
manifest-sha256.txt              the SHA-256 of every file under data/
tagmanifest-sha256.txt           the SHA-256 of the files above
data/image/                      the image as an OCI image layout (github.com/opencontainers/image-spec):
                                 index.json -> manifest -> config and layers, all in blobs/sha256/, each
                                 file named by the SHA-256 of its content. SBOMs and provenance are stored
                                 there too, as OCI referrers of the image.
data/sbom/spdx.json              the software bill of materials, SPDX 2.3 JSON
data/sbom/cyclonedx.json         the same in CycloneDX 1.6 JSON
data/runs.json                   the recorded runs: command, exit status, SHA-256 of stdout, stderr, outputs
data/ro-crate-metadata.json      RO-Crate 1.1 metadata for research repositories
data/README.txt                  this file
"""]
    if has_provenance:
        sections[0] += "data/provenance.json             how the image was built (in-toto Statement, SLSA v1)\n"
    for rendition, path, text in (("sif", "data/image.sif", "the image as a Singularity/Apptainer SIF file"),
                                  ("rootfs", "data/rootfs.tar", "the image's files merged into one tree (tar)"),
                                  ("docker-archive", "data/image.docker.tar", "the image as a `docker save` archive")):
        if rendition in renditions:
            sections[0] += f"{path:<33}{text}\n"
    sections.append(f"""

1. CHECK THAT NOTHING CHANGED
----------------------------
With any SHA-256 tool, from this directory (the one holding bagit.txt):
{_commands(["sha256sum -c manifest-sha256.txt"])}
Every line must say OK. The image's own files are named by their SHA-256, so they can be checked too:
{_commands([BLOB_CHECK])}""")
    docker_steps = []
    if "docker-archive" in renditions:
        docker_steps.append("docker load -i data/image.docker.tar")
    else:
        docker_steps.append(f"skopeo copy oci:data/image:image docker-archive:image.docker.tar:{name}")
        docker_steps.append("docker load -i image.docker.tar")
    shell = f"--entrypoint /bin/sh {name} -c {shlex.quote(example)}" if runs else name
    docker_steps.append(f"docker run --rm --network none {shell}")
    podman = "podman run --rm --network none " + (
        f"--entrypoint /bin/sh oci:data/image:image -c {shlex.quote(example)}" if runs else "oci:data/image:image")
    sections.append(f"""

2. RUN IT WITH DOCKER OR PODMAN
-------------------------------
{_commands(docker_steps)}
Podman takes the same commands (podman load, podman run); it also reads the layout directly:
{_commands([podman])}""")
    apptainer = (["apptainer exec data/image.sif /bin/sh -c " + shlex.quote(example)] if "sif" in renditions else
                 ["apptainer build image.sif oci:data/image:image",
                  "apptainer exec image.sif /bin/sh -c " + shlex.quote(example)])
    sections.append(f"""

3. RUN IT WITH APPTAINER OR SINGULARITY (HPC, no root)
-------------------------------------------------------
{_commands(apptainer)}""")
    sections.append(f"""

4. RUN IT WITH UDOCKER (no root, no daemon)
-------------------------------------------
udocker reads docker archives (make one as in section 2 if data/image.docker.tar is not here):
{_commands(["udocker load -i " + ("data/image.docker.tar" if "docker-archive" in renditions else "image.docker.tar"),
            f"udocker create --name=archived {name}",
            f"udocker run --workdir={workdir} --entrypoint=/bin/sh archived -c {shlex.quote(example)}"])}
If udocker says "invalid host volume path", the image has no /etc/passwd or /etc/group: add --hostauth.""")
    env_words = " ".join(shlex.quote(e) for e in env) or "PATH=/usr/sbin:/usr/bin:/sbin:/bin"
    layer_lines = []
    for number, layer in enumerate(layers):
        option = "-xzpf" if layer.media_type.endswith("gzip") else (
            "--zstd -xpf" if layer.media_type.endswith("zstd") else "-xpf")
        layer_lines.append(f"tar {option} data/image/blobs/sha256/{layer.digest[7:]} -C rootfs   # layer {number}")
    sections.append("""

5. RUN IT IN A BARE CHROOT (root, no container tool at all)
------------------------------------------------------------
""" + ("From the merged tree:\n" + _commands([
        "mkdir rootfs && tar -xpf data/rootfs.tar -C rootfs",
        f"env -i {env_words} \"$(command -v chroot)\" rootfs /bin/sh -c {shlex.quote(f'cd {workdir} && {example}')}"])
        if "rootfs" in renditions else "")
        + f"""Or by hand from the layers, bottom first (a file named .wh.NAME deletes NAME of the layers below and is
then removed itself; .wh..wh..opq empties its directory of what the layers below put there):
{_commands(["mkdir rootfs", *layer_lines])}
The environment to set is listed at the top; run commands from the working directory {workdir}.""")
    if runs:
        lines = []
        for number, run in enumerate(runs, 1):
            lines.append(f"Run {number}: {run.command}")
            lines.append(f"  exit status      {run.outcome.exit_code}")
            lines.append(f"  sha256 of stdout {run.outcome.stdout_sha256}")
            lines.append(f"  sha256 of stderr {run.outcome.stderr_sha256}")
            for path in run.outputs:
                lines.append(f"  sha256 of {path}  {run.outcome.outputs.get(path, '')}")
            env = run.environment
            lines.append(f"  recorded on      {env.get('arch', '?')}, {env.get('kernel', '?')}, "
                         f"executor {env.get('executor', '?')}")
        sections.append(f"""

6. THE RECORDED RUNS, AND HOW TO COMPARE
-----------------------------------------
Run a command as above with its output piped into `sha256sum` and compare with the hashes here
(e.g. docker run --rm --network none --entrypoint /bin/sh {name} -c '...' | sha256sum). With repro,
`repro replay PACKAGE` does all of it.

""" + "\n".join(lines) + "\n")
    return "".join(sections).encode()


def ro_crate(image: Image, name: str, runs: list[Record], renditions: tuple[str, ...], has_provenance: bool,
             created: str) -> bytes:
    """RO-Crate 1.1 metadata (with the rocrate library), its graph in a fixed order, no random ids."""
    from rocrate.rocrate import ROCrate  # noqa: PLC0415 - lazy: rocrate takes 0.2 s to import

    crate = ROCrate(gen_preview=False, version="1.1")
    crate.name = f"Container image {name}"
    crate.description = (f"The container image {image.digest} as an OCI image layout, with its software bills of "
                         "materials" + (", provenance" if has_provenance else "") + " and recorded runs.")
    crate.root_dataset["datePublished"] = created
    crate.root_dataset["identifier"] = image.digest
    crate.add_dataset(dest_path="image/", properties={
        "name": "OCI image layout", "encodingFormat": "application/vnd.oci.image.layout.v1+json",
        "identifier": image.digest, "conformsTo": {"@id": "https://github.com/opencontainers/image-spec"}})
    crate.add_file(dest_path="sbom/spdx.json", properties={
        "name": "SBOM (SPDX 2.3)", "encodingFormat": "application/spdx+json", "about": {"@id": "image/"}})
    crate.add_file(dest_path="sbom/cyclonedx.json", properties={
        "name": "SBOM (CycloneDX 1.6)", "encodingFormat": "application/vnd.cyclonedx+json",
        "about": {"@id": "image/"}})
    if has_provenance:
        crate.add_file(dest_path="provenance.json", properties={
            "name": "Build provenance (in-toto Statement v1, SLSA provenance v1)",
            "encodingFormat": "application/vnd.in-toto+json", "about": {"@id": "image/"}})
    crate.add_file(dest_path="runs.json", properties={"name": "Recorded runs", "encodingFormat": "application/json"})
    crate.add_file(dest_path="README.txt", properties={"name": "How to check and run this package",
                                                       "encodingFormat": "text/plain"})
    for rendition, (path, title, media) in {
        "sif": ("image.sif", "SIF (Singularity/Apptainer)", "application/vnd.sylabs.sif.layer.v1.sif"),
        "rootfs": ("rootfs.tar", "Flattened root filesystem", "application/x-tar"),
        "docker-archive": ("image.docker.tar", "Docker archive (docker save)", "application/x-tar"),
    }.items():
        if rendition in renditions:
            crate.add_file(dest_path=path, properties={"name": title, "encodingFormat": media,
                                                       "about": {"@id": "image/"}})
    for number, run in enumerate(runs, 1):
        crate.add_action(instrument=crate.dereference("image/"), identifier=f"#run-{number}", properties={
            "@type": "CreateAction", "name": run.command, "description": f"exit status {run.outcome.exit_code}",
            "result": {"@id": "runs.json"}})
    document = crate.metadata.generate()
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()
