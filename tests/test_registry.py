"""docker:// and docker-daemon: against a real registry (Debian's docker-registry) and a real dockerd."""

from __future__ import annotations

import base64
import http.server
import json
import os
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import repro as api
from converters import registry as registry_transport
from repro.image import Platform
from repro.refs import Options, parse
from tests.conftest import REPRO, Registry, repro, run
from tests.imagekit import E, add_index, make_image
from tests.test_build import stage_hello


def skopeo_digest(ref: str) -> str:
    return json.loads(run("skopeo", "inspect", "--tls-verify=false", ref).stdout)["Digest"]


def test_push_with_repro_pull_with_skopeo(busybox_layout, registry, tmp_path):
    ref = f"docker://{registry.host}/team/busybox:1"
    digest = json.loads(repro("convert", "--json", f"oci:{busybox_layout}:1", ref).stdout)["digest"]
    assert skopeo_digest(ref) == digest
    run("skopeo", "copy", "-q", "--src-tls-verify=false", ref, f"oci:{tmp_path}/skopeo:1")
    assert json.loads(repro("hash", "--json", f"oci:{tmp_path}/skopeo:1").stdout)["digest"] == digest


def test_push_with_skopeo_pull_with_repro(busybox_layout, registry, tmp_path):
    ref = f"docker://{registry.host}/from-skopeo/busybox:2"
    run("skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{busybox_layout}:1", ref)
    repro("convert", ref, f"oci:{tmp_path}/pulled:1")
    assert json.loads(repro("hash", "--json", f"oci:{tmp_path}/pulled:1").stdout)["digest"] == skopeo_digest(ref)
    by_digest = f"docker://{registry.host}/from-skopeo/busybox@{skopeo_digest(ref)}"
    assert json.loads(repro("inspect", "--json", by_digest).stdout)["digest"] == skopeo_digest(ref)
    repro("flatten", ref, f"rootfs:{tmp_path}/tree")
    assert (tmp_path / "tree" / "etc" / "motd").read_text() == "hello from repro\n"


def test_second_push_sends_no_blob_and_same_registry_mounts(busybox_layout, registry):
    image = api.open(f"oci:{busybox_layout}:1")
    ref = parse(f"docker://{registry.host}/twice/busybox:1")
    first = registry_transport.write(image, ref, Options()).blobs
    second = registry_transport.write(image, ref, Options()).blobs
    assert first.pushed == 3 and second.pushed == 0 and second.skipped == 3
    pulled = api.open(f"docker://{registry.host}/twice/busybox:1")
    elsewhere = parse(f"docker://{registry.host}/elsewhere/busybox:1")
    assert registry_transport.write(pulled, elsewhere, Options()).blobs.mounted == 3


def test_chunked_upload(tmp_path, registry):
    make_image(tmp_path / "big", "1", [[E("noise", os.urandom(3 << 20))]], compression="")
    ref = f"docker://{registry.host}/chunked/img:1"
    digest = json.loads(repro("convert", "--json", "--chunk-size", str(1 << 20), f"oci:{tmp_path}/big:1",
                              ref).stdout)["digest"]
    assert skopeo_digest(ref) == digest


def test_basic_auth(busybox_layout, auth_registry, tmp_path):
    ref = f"docker://{auth_registry.host}/private/busybox:1"
    proc = repro("convert", f"oci:{busybox_layout}:1", ref, check=False)
    assert proc.returncode == 2 and auth_registry.host in proc.stderr and "--creds" in proc.stderr
    wrong = repro("convert", "--creds", "scientist:wrong", f"oci:{busybox_layout}:1", ref, check=False)
    assert wrong.returncode == 2 and "authentication failed" in wrong.stderr and auth_registry.host in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
    repro("convert", "--creds", "scientist:s3cret", f"oci:{busybox_layout}:1", ref)
    env = {**os.environ, "REPRO_REGISTRY_AUTH": "scientist:s3cret"}
    repro("convert", ref, f"oci:{tmp_path}/a:1", env=env)
    config = tmp_path / "docker-config"
    config.mkdir()
    token = base64.b64encode(b"scientist:s3cret").decode()
    (config / "config.json").write_text(json.dumps({"auths": {auth_registry.host: {"auth": token}}}))
    repro("convert", ref, f"oci:{tmp_path}/b:1", env={**os.environ, "DOCKER_CONFIG": str(config)})


def test_unknown_tag_and_repository(registry, busybox_layout, tmp_path):
    repro("convert", f"oci:{busybox_layout}:1", f"docker://{registry.host}/known/busybox:1")
    for ref in (f"docker://{registry.host}/known/busybox:nope", f"docker://{registry.host}/unknown/repo:1"):
        proc = repro("convert", ref, f"oci:{tmp_path}/x:1", check=False)
        assert proc.returncode == 2 and "not found" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


class _Front(http.server.BaseHTTPRequestHandler):
    """A front for the registry: requires a bearer token (issued at /token for basic credentials),
    and can corrupt manifests on their way to the client."""

    upstream = ""
    corrupt = False
    token = "test-token-123"

    def log_message(self, *args) -> None:
        pass

    def _forward(self, method: str) -> None:
        if self.path.startswith("/token"):
            good = "Basic " + base64.b64encode(b"scientist:s3cret").decode()
            if self.headers.get("Authorization") != good:
                self.send_response(401)
                self.end_headers()
                return
            body = json.dumps({"token": self.token}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            self.send_response(401)
            host = self.headers["Host"]
            self.send_header("WWW-Authenticate", f'Bearer realm="http://{host}/token",service="test",'
                                                 f'scope="repository:x:pull"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else None
        request = urllib.request.Request(self.upstream + self.path, data=data, method=method,
                                         headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
        try:
            response = urllib.request.urlopen(request)
            status, headers, body = response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            status, headers, body = exc.code, exc.headers, exc.read()
        if self.corrupt and "/manifests/" in self.path and method == "GET":
            body = body + b" "
        self.send_response(status)
        for key, value in headers.items():
            if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        self._forward("GET")

    def do_HEAD(self):
        self._forward("HEAD")

    def do_PUT(self):
        self._forward("PUT")

    def do_POST(self):
        self._forward("POST")


@pytest.fixture
def front(registry):
    handler = type("Front", (_Front,), {"upstream": f"http://{registry.host}", "corrupt": False})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_bearer_token_flow(busybox_layout, registry, front, tmp_path):
    _, host = front
    repro("convert", f"oci:{busybox_layout}:1", f"docker://{registry.host}/bearer/busybox:1")
    anonymous = repro("convert", f"docker://{host}/bearer/busybox:1", f"oci:{tmp_path}/a:1", check=False)
    assert anonymous.returncode == 2 and "authentication failed" in anonymous.stderr
    repro("convert", "--creds", "scientist:s3cret", f"docker://{host}/bearer/busybox:1", f"oci:{tmp_path}/b:1")
    assert json.loads(repro("hash", "--json", f"oci:{tmp_path}/b:1").stdout)["digest"] == skopeo_digest(
        f"docker://{registry.host}/bearer/busybox:1")


def test_manifest_digest_mismatch_is_refused(busybox_layout, registry, front, tmp_path):
    handler, host = front
    handler.corrupt = True
    repro("convert", f"oci:{busybox_layout}:1", f"docker://{registry.host}/tamper/busybox:1")
    digest = skopeo_digest(f"docker://{registry.host}/tamper/busybox:1")
    for ref in (f"docker://{host}/tamper/busybox:1", f"docker://{host}/tamper/busybox@{digest}"):
        proc = repro("convert", "--creds", "scientist:s3cret", ref, f"oci:{tmp_path}/x:1", check=False)
        assert proc.returncode == 2 and "manifest with digest" in proc.stderr, proc.stderr
    assert not (tmp_path / "x").exists()


def test_registry_killed_mid_push_then_restarted(tmp_path, tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("flaky-registry"))
    try:
        make_image(tmp_path / "big", "1", [[E(f"noise{i}", os.urandom(48 << 20))] for i in range(3)],
                   compression="")
        ref = f"docker://{reg.host}/flaky/img:1"
        proc = subprocess.Popen([REPRO, "convert", f"oci:{tmp_path}/big:1", ref], stderr=subprocess.PIPE, text=True)
        uploads = reg.base / "data" / "docker" / "registry" / "v2" / "repositories" / "flaky" / "img" / "_uploads"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (uploads.exists() and any(uploads.iterdir())):
            time.sleep(0.02)
        reg.stop()
        time.sleep(1.5)
        reg.start()
        _, stderr = proc.communicate(timeout=300)
        if proc.returncode != 0:  # it may give up; then it says so in one line and a second run completes
            assert len(stderr.strip().splitlines()) == 1, stderr
            repro("convert", f"oci:{tmp_path}/big:1", ref)
        digest = json.loads(repro("hash", "--json", f"oci:{tmp_path}/big:1").stdout)["digest"]
        assert skopeo_digest(ref) == digest
    finally:
        reg.stop()


def test_docker_daemon_load_and_save(busybox_layout, registry, dockerd, tmp_path):
    env = {**os.environ, **dockerd}
    repro("convert", f"oci:{busybox_layout}:1", "docker-daemon:repro-test/daemon:1", env=env)
    out = run("docker", "run", "--rm", "--network", "none", "repro-test/daemon:1", env=dockerd).stdout
    assert out == "hello from repro\n"
    repro("convert", f"oci:{busybox_layout}:1", f"docker://{registry.host}/pulled-by-docker/busybox:1")
    run("docker", "pull", "-q", f"{registry.host}/pulled-by-docker/busybox:1", env=dockerd)
    repro("convert", f"docker-daemon:{registry.host}/pulled-by-docker/busybox:1", f"oci:{tmp_path}/back:1", env=env)
    ours = json.loads(repro("hash", "--json", f"oci:{busybox_layout}:1").stdout)
    back = json.loads(repro("hash", "--json", f"oci:{tmp_path}/back:1").stdout)
    assert back["config"] == ours["config"]
    assert [x["diff_id"] for x in back["layers"]] == [x["diff_id"] for x in ours["layers"]]
    missing = repro("convert", "docker-daemon:no/such:image", f"oci:{tmp_path}/none:1", check=False, env=env)
    assert missing.returncode == 2 and "no such image" in missing.stderr


def test_podman_and_docker_share_one_client(tmp_path):
    """The daemon transport only needs DOCKER_HOST: an unreachable one is one clear line."""
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/nothing.sock"}
    proc = repro("convert", "docker-daemon:x:1", f"oci:{tmp_path}/o:1", check=False, env=env)
    assert proc.returncode == 2 and "cannot reach the Docker engine" in proc.stderr
    assert Path(tmp_path / "o").exists() is False


def test_multi_platform_index_copied_whole(tmp_path, registry):
    layout = tmp_path / "multi"
    for arch in ("amd64", "arm64"):
        make_image(layout, arch, [[E("arch", arch.encode())]], platform=Platform("linux", arch))
    index_digest = add_index(layout, "multi", [("amd64", Platform("linux", "amd64")),
                                               ("arm64", Platform("linux", "arm64"))])
    ref = f"docker://{registry.host}/multi/img:1"
    assert json.loads(repro("convert", "--json", "--all", f"oci:{layout}:multi", ref).stdout)["digest"] == index_digest
    raw = run("skopeo", "inspect", "--raw", "--tls-verify=false", ref).stdout
    assert json.loads(raw)["mediaType"] == "application/vnd.oci.image.index.v1+json"
    arm = json.loads(repro("inspect", "--json", "--platform", "linux/arm64", ref).stdout)
    assert arm["platform"] == "linux/arm64"
    repro("convert", "--all", ref, f"oci:{tmp_path}/back:multi")
    index = json.loads((tmp_path / "back" / "index.json").read_bytes())
    assert index["manifests"][0]["digest"] == index_digest
    single = repro("convert", "--all", f"oci:{layout}:amd64", f"oci:{tmp_path}/x:1", check=False)
    assert single.returncode == 2 and "not a multi-platform index" in single.stderr


def test_build_cache_shared_through_a_registry(registry, tmp_path):
    """CI machine A publishes its build cache; machine B (an empty store) reuses every step."""

    spec = stage_hello(tmp_path)
    cache = f"docker://{registry.host}/cache/hello:buildcache"
    first = json.loads(repro("build", str(spec), "--store", str(tmp_path / "a"), "--json", "--cache-to", cache).stdout)
    second = json.loads(repro("build", str(spec), "--store", str(tmp_path / "b"), "--json", "--cache-from",
                              cache).stdout)
    assert second["digest"] == first["digest"]
    assert all(step["cached"] for step in second["steps"])
    missing = repro("build", str(spec), "--store", str(tmp_path / "c"), "--cache-from",
                    f"docker://{registry.host}/team/busybox:1", check=False)
    assert missing.returncode == 2 and "has no build cache" in missing.stderr


def test_referrers_attach_list_and_copy_with_the_tag_fallback(busybox_layout, registry, tmp_path):
    """Registry 2.8 has no referrers API: the `sha256-<hex>` tag carries the index, which skopeo reads too."""
    ref = f"docker://{registry.host}/refs/busybox:1"
    digest = json.loads(repro("convert", "--json", f"oci:{busybox_layout}:1", ref).stdout)["digest"]
    repro("sbom", "--attach", "--format", "cyclonedx-json", ref)
    repro("sbom", "--attach", "--format", "cyclonedx-json", ref)  # the same document again: listed once
    statement = tmp_path / "provenance.json"
    statement.write_text('{"_type": "https://in-toto.io/Statement/v1"}')
    attached = json.loads(repro("attach", "--json", "--artifact-type", "application/vnd.in-toto+json",
                                "--annotation", "org.example.step=build", ref, str(statement)).stdout)
    assert attached["subject"] == digest
    listed = json.loads(repro("inspect", "--referrers", "--json", ref).stdout)
    assert listed["subject"] == digest
    types = sorted(d["artifactType"] for d in listed["referrers"])
    assert types == ["application/vnd.cyclonedx+json", "application/vnd.in-toto+json"]
    only = json.loads(repro("inspect", "--referrers", "--json", "--artifact-type", "application/vnd.in-toto+json",
                            ref).stdout)["referrers"]
    assert [d["digest"] for d in only] == [attached["digest"]]
    assert only[0]["annotations"]["org.example.step"] == "build"

    fallback = f"docker://{registry.host}/refs/busybox:{digest.replace(':', '-')}"
    index = json.loads(run("skopeo", "inspect", "--raw", "--tls-verify=false", fallback).stdout)
    assert sorted(d["digest"] for d in index["manifests"]) == sorted(d["digest"] for d in listed["referrers"])
    by_digest = f"docker://{registry.host}/refs/busybox@{attached['digest']}"
    manifest = json.loads(run("skopeo", "inspect", "--raw", "--tls-verify=false", by_digest).stdout)
    assert manifest["subject"]["digest"] == digest and manifest["artifactType"] == "application/vnd.in-toto+json"

    # copied with the image, into a layout and from there into another repository
    summary = json.loads(repro("convert", "--json", "--referrers", ref, f"oci:{tmp_path}/copy:1").stdout)
    assert sorted(summary["referrers"]) == sorted(d["digest"] for d in listed["referrers"])
    in_layout = json.loads(repro("inspect", "--referrers", "--json", f"oci:{tmp_path}/copy:1").stdout)
    assert [d["digest"] for d in in_layout["referrers"]] == [d["digest"] for d in listed["referrers"]]
    copied = tmp_path / "copied-statement.json"
    repro("convert", "--referrers", f"oci:{tmp_path}/copy:1", f"docker://{registry.host}/refs/again:1")
    again = json.loads(repro("inspect", "--referrers", "--json", f"docker://{registry.host}/refs/again:1").stdout)
    assert [d["digest"] for d in again["referrers"]] == [d["digest"] for d in listed["referrers"]]
    layer = json.loads((tmp_path / "copy" / "blobs" / attached["digest"].replace(":", "/")).read_bytes())["layers"][0]
    copied.write_bytes((tmp_path / "copy" / "blobs" / layer["digest"].replace(":", "/")).read_bytes())
    assert copied.read_bytes() == statement.read_bytes()


def test_referrers_need_a_store_that_keeps_them(busybox_layout, tmp_path):
    repro("convert", f"oci:{busybox_layout}:1", f"oci-archive:{tmp_path}/a.tar")
    proc = repro("sbom", "--attach", f"oci-archive:{tmp_path}/a.tar", check=False)
    assert proc.returncode == 2 and "oci: layout or a docker:// registry" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
