"""`docker-daemon:NAME:TAG`: images in a Docker Engine (or Podman's Docker-compatible socket).

Talks to DOCKER_HOST (or the default socket) with docker-py. Reading streams `docker save` into a
temporary docker-archive that lives as long as the image (an archive must be read at random); writing
writes a docker-archive to a temporary file, then sends that file to `docker load`. For Podman, point
DOCKER_HOST at its socket, e.g. unix:///run/podman/podman.sock (root) or
unix://$XDG_RUNTIME_DIR/podman/podman.sock (rootless).
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
from repro.refs import Options, Reference, Transport, Written


def _where() -> str:
    return os.environ.get("DOCKER_HOST") or "the default socket"


def _client():
    import docker  # noqa: PLC0415 - docker-py is loaded only when an engine is used: it is an optional dependency
    from docker.errors import DockerException  # noqa: PLC0415 - the same optional dependency

    try:
        client = docker.from_env(timeout=600)
        client.ping()
        return client
    except DockerException as exc:
        raise ReproError(f"docker-daemon: cannot reach the Docker engine at {_where()} ({exc.__class__.__name__})",
                         "start dockerd or set DOCKER_HOST (Podman: its Docker-compatible socket)") from None


def _name(ref: Reference) -> str:
    if not ref.body:
        raise ReproError(f"{ref}: missing image name", "write it as docker-daemon:NAME:TAG")
    return docker_archive.familiar(ref.body)


def _check_exists(client, ref: Reference, name: str) -> None:
    """Ask the engine before exporting: Podman answers a save of some missing names only after writing
    an archive, and an error about that archive would name a file the user never saw."""
    from docker.errors import APIError, ImageNotFound  # noqa: PLC0415 - docker-py, optional: loaded when an engine is used

    try:
        client.api.inspect_image(name)
    except ImageNotFound:
        raise ReproError(f"{ref}: no such image in the engine at {_where()}",
                         "list its images with `docker images` or `podman images`") from None
    except APIError as exc:
        raise ReproError(f"{ref}: the engine at {_where()} cannot look it up ({exc.explanation})", "") from None


def read(ref: Reference, options: Options) -> Image:
    from docker.errors import APIError, ImageNotFound  # noqa: PLC0415 - docker-py, optional: loaded when an engine is used

    client = _client()
    name = _name(ref)
    _check_exists(client, ref, name)
    tmp = Path(tempfile.mkdtemp(prefix="repro-daemon-"))
    archive = tmp / "image.tar"
    try:
        with open(archive, "wb") as out:
            for chunk in client.api.get_image(name, chunk_size=1 << 20):
                out.write(chunk)
    except (ImageNotFound, APIError) as exc:  # removed since it was looked up
        shutil.rmtree(tmp, ignore_errors=True)
        status = getattr(getattr(exc, "response", None), "status_code", 0)
        if status == 404 or isinstance(exc, ImageNotFound):
            raise ReproError(f"{ref}: no such image in the engine at {_where()}",
                             "list its images with `docker images` or `podman images`") from None
        raise ReproError(f"{ref}: the engine at {_where()} refused to save it ({exc.explanation})", "") from None
    # The export holds the one image asked for, under the name the engine gave it (Podman's
    # `localhost/NAME:TAG` for a loaded image), so it is taken as the archive's only image, not by name.
    exported = Reference(docker_archive.TRANSPORT, str(archive))
    try:
        image = docker_archive.read(exported, options)
    except ReproError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ReproError(f"{ref}: the engine's export cannot be read: "
                         f"{exc.message.replace(f'{exported}: ', '').replace(str(archive), 'the export')}",
                         exc.hint) from None
    image.name = str(ref)
    if isinstance(image, docker_archive.DockerArchiveImage):  # later errors name the reference too
        image.blobs.name = image.files.what = str(ref)
    weakref.finalize(image, shutil.rmtree, tmp, True)
    return image


def write(image: Image, ref: Reference, options: Options, progress=None) -> Written:
    from docker.errors import APIError  # noqa: PLC0415 - docker-py, optional: loaded when an engine is used

    client = _client()
    name = _name(ref)
    with tempfile.TemporaryDirectory(prefix="repro-daemon-") as tmp:
        archive = Path(tmp) / "image.tar"
        docker_archive.write(image, Reference(docker_archive.TRANSPORT, f"{archive}:{name}"), options, progress)
        try:
            with open(archive, "rb") as f:
                messages = list(client.api.load_image(f))
        except APIError as exc:
            raise ReproError(f"{ref}: docker load failed ({exc.explanation})", "") from None
    errors = [m.get("error") or m.get("errorDetail", {}).get("message") for m in messages
              if isinstance(m, dict) and (m.get("error") or m.get("errorDetail"))]
    if errors:
        raise ReproError(f"{ref}: docker load failed ({errors[0]})", "")
    return Written(image.manifest.config.digest)


TRANSPORT = Transport("docker-daemon", read=read, write=write, naming="repository")
