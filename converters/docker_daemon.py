"""`docker-daemon:NAME:TAG`: images in a Docker Engine (or Podman's Docker-compatible socket).

Talks to DOCKER_HOST (or the default socket) with docker-py. Reading streams `docker save` into a
temporary docker-archive that lives as long as the image (an archive must be read at random); writing
streams a docker-archive into `docker load`. For Podman, point DOCKER_HOST at its socket, e.g.
unix:///run/podman/podman.sock (root) or unix://$XDG_RUNTIME_DIR/podman/podman.sock (rootless).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path

from converters import docker_archive
from repro.errors import ReproError
from repro.image import Image
from repro.refs import Options, Reference


def _client():
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=600)
        client.ping()
        return client
    except DockerException as exc:
        where = os.environ.get("DOCKER_HOST", "the default socket")
        raise ReproError(f"docker-daemon: cannot reach the Docker engine at {where} ({exc.__class__.__name__})",
                         "start dockerd or set DOCKER_HOST (Podman: its Docker-compatible socket)") from None


def _name(ref: Reference) -> str:
    if not ref.body:
        raise ReproError(f"{ref}: missing image name", "write it as docker-daemon:NAME:TAG")
    return docker_archive.familiar(ref.body)


def read(ref: Reference, options: Options) -> Image:
    from docker.errors import APIError, ImageNotFound

    client = _client()
    name = _name(ref)
    tmp = Path(tempfile.mkdtemp(prefix="repro-daemon-"))
    archive = tmp / "image.tar"
    try:
        with open(archive, "wb") as out:
            for chunk in client.api.get_image(name, chunk_size=1 << 20):
                out.write(chunk)
    except (ImageNotFound, APIError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        status = getattr(getattr(exc, "response", None), "status_code", 0)
        if status == 404 or isinstance(exc, ImageNotFound):
            raise ReproError(f"{ref}: no such image in the Docker engine", "check `docker images`") from None
        raise ReproError(f"{ref}: the Docker engine refused to save it ({exc.explanation})", "") from None
    image = docker_archive.read(Reference("docker-archive", f"{archive}:{name}"), options)
    image.name = str(ref)
    weakref.finalize(image, shutil.rmtree, tmp, True)
    return image


def write(image: Image, ref: Reference, options: Options, progress=None) -> str:
    from docker.errors import APIError

    client = _client()
    name = _name(ref)
    with tempfile.TemporaryDirectory(prefix="repro-daemon-") as tmp:
        archive = Path(tmp) / "image.tar"
        docker_archive.write(image, Reference("docker-archive", f"{archive}:{name}"), options, progress)
        try:
            with open(archive, "rb") as f:
                messages = list(client.api.load_image(f))
        except APIError as exc:
            raise ReproError(f"{ref}: docker load failed ({exc.explanation})", "") from None
    errors = [m.get("error") or m.get("errorDetail", {}).get("message") for m in messages
              if isinstance(m, dict) and (m.get("error") or m.get("errorDetail"))]
    if errors:
        raise ReproError(f"{ref}: docker load failed ({errors[0]})", "")
    return image.manifest.config.digest
