"""What a registry (or whatever answers in its name) cannot make repro do: send credentials to another
host, fetch a token over plain HTTP from elsewhere, connect where the reference does not say, or read
a document without end. Fake registries here are http.server threads on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from converters.registry import Client, parse_ref
from repro.image import OCI_INDEX, Platform
from repro.refs import Options, parse
from tests.conftest import REPRO, repro
from tests.imagekit import E, add_index, make_image

USER, PASSWORD = "scientist", "s3cret"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
TOKEN = "fake-token-42"
MIB4 = 4 << 20
ADDRESS_SPACE = 2 << 30  # for each repro run here


@dataclass
class State:
    """How one fake server behaves, and what it saw."""

    layout: Path | None = None  # the OCI layout it serves (tags from index.json)
    auth: str = ""  # "", "basic" or "bearer"
    realm: str = ""  # the bearer realm; default this server's /token
    upload_to: str = ""  # where upload Locations point (another server's base URL)
    blob_redirect: str = ""  # blob GETs are redirected there
    endless: str = ""  # which answer never ends: manifest, manifest-length, config, token, referrers, 404
    challenge: bool = False  # answer everything with a Basic challenge (a host fishing for credentials)
    seen: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, Authorization)

    @property
    def authorizations(self) -> list[str]:
        return [auth for _, _, auth in self.seen if auth]


class Handler(http.server.BaseHTTPRequestHandler):
    state: State

    def log_message(self, *args) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _endless(self, status: int, content_type: str, length: str = "") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length:
            self.send_header("Content-Length", length)
        self.end_headers()
        chunk = b" " * (64 << 10)
        try:
            while True:
                self.wfile.write(chunk)
        except OSError:  # the client hung up
            pass

    def _blob(self, digest: str) -> bytes | None:
        path = self.state.layout / "blobs" / digest.replace(":", "/") if self.state.layout else None
        return path.read_bytes() if path is not None and path.exists() else None

    def _manifest(self, reference: str) -> tuple[bytes, str] | None:
        if self.state.layout is None:
            return None
        for d in json.loads((self.state.layout / "index.json").read_text())["manifests"]:
            if reference in (d["digest"], d.get("annotations", {}).get("org.opencontainers.image.ref.name")):
                return self._blob(d["digest"]), d["mediaType"]
        return None

    def _handle(self) -> None:
        state, method = self.state, self.command
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        auth = self.headers.get("Authorization", "")
        state.seen.append((method, self.path, auth))
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.split("/")
        if url.path == "/token":
            if state.endless == "token":
                return self._endless(200, "application/json")
            return self._reply(200, json.dumps({"token": TOKEN}).encode())
        if state.challenge:
            return self._reply(401, headers={"WWW-Authenticate": 'Basic realm="fishing"'})
        if state.auth == "basic" and auth != BASIC:
            return self._reply(401, headers={"WWW-Authenticate": 'Basic realm="fake"'})
        if state.auth == "bearer" and auth != f"Bearer {TOKEN}":
            realm = state.realm or f"http://{self.headers['Host']}/token"
            return self._reply(401, headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="fake"'})
        if url.path == "/v2/":
            return self._reply(200, b"{}")
        if "manifests" in parts:
            reference = parts[-1]
            if method == "PUT":
                return self._reply(201, headers={"Docker-Content-Digest": "sha256:" + hashlib.sha256(body).hexdigest()})
            if state.endless == "manifest":
                return self._endless(200, "application/vnd.oci.image.manifest.v1+json")
            if state.endless == "manifest-length":
                return self._endless(200, "application/vnd.oci.image.manifest.v1+json", str(1 << 40))
            if state.endless == "404":
                return self._endless(404, "application/json")
            found = self._manifest(reference)
            if found is None:
                return self._reply(404, b'{"errors": [{"code": "MANIFEST_UNKNOWN", "message": "unknown"}]}')
            raw, media_type = found
            return self._reply(200, raw, {"Content-Type": media_type,
                                          "Docker-Content-Digest": "sha256:" + hashlib.sha256(raw).hexdigest()})
        if "referrers" in parts:
            if state.endless == "referrers":
                return self._endless(200, OCI_INDEX)
            return self._reply(404)
        if "uploads" in parts:
            base = state.upload_to or f"http://{self.headers['Host']}"
            if method == "POST":
                repository = url.path.removeprefix("/v2/").split("/blobs/")[0]
                location = f"{base}/v2/{repository}/blobs/uploads/{uuid.uuid4()}"
                return self._reply(202, headers={"Location": location, "Range": "0-0"})
            if method == "PATCH":
                return self._reply(202, headers={"Location": f"{base}{url.path}"})
            digest = urllib.parse.parse_qs(url.query).get("digest", [""])[0]
            return self._reply(201, headers={"Docker-Content-Digest": digest})
        if "blobs" in parts:
            if method == "HEAD":
                return self._reply(404)
            if state.blob_redirect:
                return self._reply(307, headers={"Location": state.blob_redirect + self.path})
            if state.endless == "config":
                return self._endless(200, "application/octet-stream")
            data = self._blob(parts[-1])
            return self._reply(200, data) if data is not None else self._reply(404)
        return self._reply(404)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _handle


class Proxy(http.server.BaseHTTPRequestHandler):
    """An HTTP proxy that forwards nothing: it only records that repro tried to reach a host."""

    seen: list[str]

    def log_message(self, *args) -> None:
        pass

    def _refuse(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        self.send_response(502)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = do_POST = do_PUT = do_CONNECT = _refuse


def _serve(handler: type) -> tuple[http.server.ThreadingHTTPServer, str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def fake():
    """Makes fake registries: fake(State(...)) -> host:port."""
    servers = []

    def make(state: State) -> str:
        server, host = _serve(type("Fake", (Handler,), {"state": state}))
        servers.append(server)
        return host

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy_env():
    """An environment whose HTTP(S) proxy records every request repro sends to a host other than 127.0.0.1:
    whatever it lists is a connection repro attempted."""
    seen: list[str] = []
    server, host = _serve(type("Recorder", (Proxy,), {"seen": seen}))
    env = {**os.environ, "http_proxy": f"http://{host}", "https_proxy": f"http://{host}",
           "HTTP_PROXY": f"http://{host}", "HTTPS_PROXY": f"http://{host}",
           "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost"}
    env.pop("REPRO_REGISTRY_AUTH", None)
    yield env, seen
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def small_layout(tmp_path_factory) -> Path:
    """A small two-layer image: big enough for chunked uploads of 1 KiB, small enough to serve from a thread."""
    path = tmp_path_factory.mktemp("small") / "layout"
    make_image(path, "1", [[E("a.bin", os.urandom(6000))], [E("b.txt", b"second layer\n")]], compression="",
               config={"Env": ["PATH=/bin"]})
    return path


def _run(*args: str, env: dict | None = None, timeout: float = 60) -> tuple[int, str, float, int]:
    """Run repro: exit status, stderr, seconds taken and its peak RSS in KiB. A run still going after
    `timeout` is killed and the test fails; its address space is limited so that a run that does hold an
    endless body fails in it rather than in the machine.

    The peak is measured by GNU time, not by waiting for repro here: a child of this (large) test
    process starts with its memory counted in its peak, on fork and again on exec."""
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak"
        start = time.monotonic()
        proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", str(peak_file), "prlimit",
                                 f"--as={ADDRESS_SPACE}", REPRO, *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=env)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"repro {' '.join(args)} still running after {timeout} s")
        seconds = time.monotonic() - start
        lines = peak_file.read_text().split()
        code = proc.returncode
        return code, err.decode(), seconds, int(lines[-1]) if lines else 0


def _config_size(layout: Path) -> int:
    top = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    return json.loads((layout / "blobs" / top.replace(":", "/")).read_text())["config"]["size"]


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


# 1. credentials go only to the registry's own scheme, host and port


@pytest.mark.parametrize("auth", ["basic", "bearer"])
@pytest.mark.parametrize("chunked", [False, True], ids=["monolithic", "chunked"])
def test_upload_location_on_another_host_gets_no_credentials(fake, small_layout, auth, chunked):
    elsewhere = State()
    other = fake(elsewhere)
    registry = State(auth=auth, upload_to=f"http://{other}")
    host = fake(registry)
    chunk = ["--chunk-size", "1024"] if chunked else []
    repro("convert", "--creds", f"{USER}:{PASSWORD}", *chunk, f"oci:{small_layout}:1", f"docker://{host}/team/img:1")
    uploads = [(method, path) for method, path, _ in elsewhere.seen]
    assert sum(method == "PUT" for method, _ in uploads) == 3, uploads  # config and two layers went there
    assert not chunked or any(method == "PATCH" for method, _ in uploads)
    assert elsewhere.authorizations == []
    expected = BASIC if auth == "basic" else f"Bearer {TOKEN}"
    sent = {a for _, path, a in registry.seen if a and not path.startswith("/token")}
    assert sent == {expected}


@pytest.mark.parametrize("chunked", [False, True], ids=["monolithic", "chunked"])
def test_upload_host_asking_for_credentials_gets_none(fake, small_layout, chunked):
    """Another host that answers the upload with a Basic challenge is refused, not given the password."""
    elsewhere = State(challenge=True)
    other = fake(elsewhere)
    host = fake(State(auth="basic", upload_to=f"http://{other}"))
    chunk = ["--chunk-size", "1024"] if chunked else []
    status, stderr, _, _ = _run("convert", "--creds", f"{USER}:{PASSWORD}", *chunk, f"oci:{small_layout}:1",
                                f"docker://{host}/team/img:1")
    assert status == 2, stderr
    line = _one_line(stderr)
    assert other in line and "credentials" in line
    assert elsewhere.seen and elsewhere.authorizations == []


@pytest.mark.parametrize("auth", ["basic", "bearer"])
def test_blob_redirect_to_storage_gets_no_credentials(fake, small_layout, auth, tmp_path):
    storage = State(layout=small_layout)
    other = fake(storage)
    registry = State(layout=small_layout, auth=auth, blob_redirect=f"http://{other}")
    host = fake(registry)
    repro("convert", "--creds", f"{USER}:{PASSWORD}", f"docker://{host}/team/img:1", f"oci:{tmp_path}/pulled:1")
    pulled = json.loads(repro("hash", "--json", f"oci:{tmp_path}/pulled:1").stdout)["digest"]
    assert pulled == json.loads(repro("hash", "--json", f"oci:{small_layout}:1").stdout)["digest"]
    assert sum(method == "GET" for method, _, _ in storage.seen) >= 3
    assert storage.authorizations == []
    assert registry.authorizations


# 2. a token realm is reached over HTTPS, or over plain HTTP on this machine only


@pytest.mark.parametrize("realm", [
    "http://realm.invalid/token",
    "http://realm.invalid:80/token",
    "http://127.0.0.1@realm.invalid/token",
    "http://127.0.0.1.realm.invalid/token",
    "http://localhost.realm.invalid/token",
])
def test_plain_http_realm_elsewhere_is_refused(fake, proxy_env, small_layout, realm):
    env, attempted = proxy_env
    host = fake(State(layout=small_layout, auth="bearer", realm=realm))
    status, stderr, _, _ = _run("inspect", "--creds", f"{USER}:{PASSWORD}", f"docker://{host}/team/img:1",
                                env=env)
    assert status == 2, stderr
    line = _one_line(stderr)
    assert realm in line and "https" in line.lower(), line
    assert attempted == []  # no connection to the realm was even tried


def test_loopback_realm_over_plain_http_is_used(fake, proxy_env, small_layout):
    env, attempted = proxy_env
    token_service = State()
    realm_host = fake(token_service)
    host = fake(State(layout=small_layout, auth="bearer", realm=f"http://localhost:{realm_host.split(':')[1]}/token"))
    status, stderr, _, _ = _run("inspect", "--creds", f"{USER}:{PASSWORD}", f"docker://{host}/team/img:1", env=env)
    assert status == 0, stderr
    assert token_service.authorizations == [BASIC] and attempted == []


# 3. the reference names exactly the host connected to


@pytest.mark.parametrize("ref", [
    "docker://127.0.0.1:5000@other.host/repo",
    "docker://user:secret@127.0.0.1:5000/repo",
    "docker://127.0.0.1:5000\\@other.host/repo",
    "docker://127.0.0.1\\other.host/repo",
    "docker://127.0.0.1:5000#.other.host/repo",
    "docker://127.0.0.1:5000?.other.host/repo",
    "docker://127.0.0.1 :5000/repo",
    "docker:// other.host/repo",
    "docker://other.host\t/repo",
    "docker://other%2ehost:5000/repo",
    "docker:///repo",
    "docker://127.0.0.1:99999/repo",
    "docker://127.0.0.1:/repo",
    "docker://[::1/repo",
])
def test_odd_registry_host_is_refused(proxy_env, ref):
    env, attempted = proxy_env
    status, stderr, seconds, _ = _run("inspect", ref, env=env)
    assert status == 2, stderr
    line = _one_line(stderr)
    assert "registry host" in line, line
    if "@" in ref.split("/")[2]:
        assert "'@'" in line and "--creds" in line
    assert attempted == [] and seconds < 20


@pytest.mark.parametrize("ref", [
    "docker://127.0.0.1:5000/repo with space:1",
    "docker://127.0.0.1:5000/repo?x=1",
    "docker://127.0.0.1:5000/repo#x",
    "docker://127.0.0.1:5000/../v2/token",
    "docker://127.0.0.1:5000/Repo:1",
    "docker://127.0.0.1:5000/repo:bad/tag",
    "docker://127.0.0.1:5000/repo@sha256:nothex",
])
def test_odd_repository_or_tag_is_refused(ref):
    status, stderr, seconds, _ = _run("inspect", ref)
    assert status == 2, stderr
    line = _one_line(stderr)
    assert "docker://" in line and "cannot connect" not in line, line
    assert seconds < 20


@pytest.mark.parametrize(("host", "scheme"), [
    ("127.0.0.1:5000", "http"), ("127.9.8.7", "http"), ("localhost:5000", "http"), ("[::1]:5000", "http"),
    ("LOCALHOST:5000", "http"), ("127.0.0.1.nip.io:5000", "https"), ("localhost.example.com", "https"),
    ("10.0.0.1:5000", "https"), ("[::2]:5000", "https"), ("registry.example.org", "https"),
])
def test_plain_http_only_for_a_loopback_host(host, scheme):
    target = parse_ref(parse(f"docker://{host}/repo:1"))
    client = Client(target.host, Options())
    assert client.scheme == scheme
    assert urllib.parse.urlsplit(client.url("")).netloc.lower() == host.lower()


# 4. every document is read with a cap


@pytest.mark.parametrize(("endless", "args", "expected"), [
    ("manifest", ["inspect"], f"larger than {MIB4} bytes"),
    ("manifest-length", ["inspect"], f"larger than {MIB4} bytes"),
    ("config", ["inspect"], "larger than {config_size} bytes"),
    ("token", ["inspect"], f"larger than {MIB4} bytes"),
    ("referrers", ["inspect", "--referrers"], f"larger than {MIB4} bytes"),
    ("404", ["inspect"], "not found"),
])
def test_endless_document_ends_the_run(fake, small_layout, endless, args, expected):
    host = fake(State(layout=small_layout, endless=endless, auth="bearer" if endless == "token" else ""))
    status, stderr, seconds, max_rss = _run(*args, f"docker://{host}/team/img:1", timeout=60)
    assert status == 2, stderr
    line = _one_line(stderr)
    assert expected.format(config_size=_config_size(small_layout)) in line, line
    assert seconds < 30
    assert max_rss < 128 << 10, f"peak RSS {max_rss} KiB"  # about 40 MiB here; the cap is 4 MiB


def test_manifest_by_digest_longer_than_its_descriptor_is_refused(fake, small_layout, tmp_path):
    """A manifest named in an index by digest and size is read up to that size, then checked."""

    layout = tmp_path / "multi"
    make_image(layout, "amd64", [[E("arch", b"amd64")]], platform=Platform("linux", "amd64"))
    add_index(layout, "multi", [("amd64", Platform("linux", "amd64"))])
    index = json.loads((layout / "index.json").read_text())
    child = next(d for d in index["manifests"] if d["annotations"]["org.opencontainers.image.ref.name"] == "amd64")
    path = layout / "blobs" / child["digest"].replace(":", "/")
    path.write_bytes(path.read_bytes() + b" " * 100)  # the registry now serves a longer document
    host = fake(State(layout=layout))
    status, stderr, _, _ = _run("inspect", "--platform", "linux/amd64", f"docker://{host}/team/img:multi")
    assert status == 2 and f"larger than {child['size']} bytes" in _one_line(stderr), stderr
