"""`docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`: an OCI distribution registry.

The protocol is the distribution spec's: blobs are checked with HEAD and skipped when present,
mounted across repositories of the same registry, uploaded monolithically (or in chunks with
--chunk-size), verified while streaming on pull; the manifest is pushed last, so nothing half-pushed
is ever tagged. Loopback registries speak plain HTTP; others need TLS unless --tls-verify=false.

What a registry may not make repro do: credentials (basic or bearer) go only to requests whose scheme, host
and port are the registry's own, so an upload `Location` or a redirect elsewhere (a storage backend) gets
none; a token is fetched only over HTTPS, or plain HTTP on this machine; the host in the reference is the one
connected to (no user information, nothing a URL parser reads differently); and every answer read whole
(manifest, index, token, referrers index, error) is read in chunks up to a cap, a blob up to its declared size.

oras-py is used where it serves: parsing WWW-Authenticate challenges and reading docker config.json
credentials. Requests are made here because oras's client retries a 401 by resending the same body
(a streamed upload cannot be resent), keeps one bearer token for all scopes, and has no mounts and
no streaming download to a reader.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import os
import re
import socket
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

import requests
import urllib3
from oras.auth import utils as oras_auth

from repro.blobs import MAX_DOCUMENT, BlobImage, IndexImage, read_index, select_manifest
from repro.digest import CHUNK, RawReader, sha256_bytes, validate
from repro.errors import DigestMismatch, ReproError
from repro.image import INDEX_TYPES, MANIFEST_TYPES, OCI_INDEX, Descriptor, Image, Index, canonical_json, parse_json
from repro.refs import BlobCounts, Options, Reference, Transport, Written
from repro.transfer import Blob, blob_progress, bytes_reader, image_blobs, with_progress

ACCEPT = ", ".join(sorted(MANIFEST_TYPES | INDEX_TYPES))
RETRIES = 5


class Transient(ReproError):
    """A failure that may pass: the registry is unreachable or answers 5xx."""

PARALLEL = 3
TIMEOUT = (10, 300)
ERROR_BODY = 64 << 10  # what of an answer that is not used (an error, an upload's reply) is read at most
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 10

# distribution-spec's grammar: a host is DNS labels or a bracketed IPv6 address, with an optional port;
# whatever else (user information, '\\', whitespace, '%', '#', '?') is refused before any connection
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{{1,5}}))?")
_REPOSITORY = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class RegistryRef:
    host: str
    repository: str
    tag: str
    digest: str

    @property
    def reference(self) -> str:
        return self.digest or self.tag

    def __str__(self) -> str:
        return f"docker://{self.host}/{self.repository}" + (f"@{self.digest}" if self.digest else f":{self.tag}")


def parse_ref(ref: Reference) -> RegistryRef:
    body = ref.body.removeprefix("//")
    host, _, rest = body.partition("/")
    _check_host(ref, host)
    if not rest or not (("." in host or ":" in host) or host.lower() == "localhost"):
        raise ReproError(f"{ref}: expected docker://HOST[:PORT]/REPO[:TAG|@DIGEST]",
                         "name the registry host (this machine reaches no default registry)")
    digest = ""
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        validate(digest, f"{ref}")
    repository, tag = rest, ""
    if ":" in rest.rsplit("/", 1)[-1]:
        repository, _, tag = rest.rpartition(":")
    if not _REPOSITORY.fullmatch(repository):
        raise ReproError(f"{ref}: {repository!r} is not a repository name",
                         "lower-case letters and digits, separated by '.', '_', '-' or '/'")
    if tag and not _TAG.fullmatch(tag):
        raise ReproError(f"{ref}: {tag!r} is not a tag", "letters, digits, '_', '.' and '-', at most 128")
    if not digest and not tag:
        tag = "latest"
    return RegistryRef(host, repository, tag, digest)


def _check_host(ref: Reference, host: str) -> None:
    """Refuse a host a URL parser could read as another: the loopback check and the connection must agree."""
    if "@" in host:
        raise ReproError(f"{ref}: the registry host {host!r} contains '@' (user information or another host)",
                         "name only HOST[:PORT]; give credentials with --creds, REPRO_REGISTRY_AUTH or docker login")
    match = _HOST.fullmatch(host)
    valid = match is not None and (match["port"] is None or 0 < int(match["port"]) < 65536)
    if valid and host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:host.index("]")])
        except ValueError:
            valid = False
    if not valid:
        raise ReproError(f"{ref}: {host!r} is not a valid registry host",
                         "expected docker://HOST[:PORT]/REPO[:TAG|@DIGEST], HOST a DNS name or an IP address")


def is_loopback(hostname: str | None) -> bool:
    """Whether `hostname`, as a URL parser gives it (no port, no brackets), is this machine."""
    if not hostname:
        return False
    if hostname.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of `url`; None for a URL with user information or an unreadable port, which
    is then nobody's origin and gets no credentials."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if "@" in parts.netloc or not parts.hostname or scheme not in ("http", "https"):
        return None
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80)


def _nobody_there(exc: BaseException) -> str:
    """Why a connection could not be made at all ("connection refused", "unknown host"), or "" for a
    failure that may pass (a reset, a timeout, a temporary DNS failure). Found along the chain of causes
    requests and urllib3 wrap it in."""
    pending: list[object] = [exc]
    seen: set[int] = set()
    while pending:
        item = pending.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ConnectionRefusedError):
            return "connection refused"
        if isinstance(item, socket.gaierror) and item.errno == socket.EAI_NONAME:
            return "unknown host"
        pending.extend([*item.args, getattr(item, "reason", None), item.__cause__, item.__context__])
    return ""


def _too_large(what: str, limit: int, hint: str = "") -> ReproError:
    return ReproError(f"{what} is larger than {limit} bytes",
                      hint or "the registry, or something between, sends more than it should")


def read_body(response: requests.Response, limit: int, what: str, hint: str = "") -> bytes:
    """The whole body of `response`, read in chunks and refused past `limit` bytes (an answer is never
    trusted to end); the response is closed."""
    try:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(what, limit, hint)
        parts, size = [], 0
        for chunk in response.iter_content(CHUNK):
            size += len(chunk)
            if size > limit:
                raise _too_large(what, limit, hint)
            parts.append(chunk)
        return b"".join(parts)
    except requests.RequestException as exc:
        raise Transient(f"{what}: the connection failed while reading ({exc.__class__.__name__})",
                        "try again later") from None
    finally:
        response.close()


def _drain(response: requests.Response, limit: int = ERROR_BODY) -> bytes:
    """At most `limit` bytes of a body that is not needed whole (an error to quote, an upload's reply);
    the response is closed, and its connection reused when the body ended within the limit."""
    parts, size = [], 0
    try:
        for chunk in response.iter_content(min(CHUNK, limit)):
            parts.append(chunk)
            size += len(chunk)
            if size >= limit:
                break
    except requests.RequestException:
        pass
    finally:
        response.close()
    return b"".join(parts)[:limit]


class _Bounded(RawReader):
    """A blob's body that may not run past its declared size: reading it whole stays bounded too."""

    def __init__(self, response: requests.Response, limit: int, what: str) -> None:
        self.response, self.limit, self.what, self.size = response, limit, what, 0
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            response.close()
            raise _too_large(what, limit, "the registry sends more than the descriptor declares")

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            parts = []
            while chunk := self.read(CHUNK):
                parts.append(chunk)
            return b"".join(parts)
        return self._take(self.response.raw.read, size)

    def read1(self, size: int = -1) -> bytes:
        """What one read of the socket gives (see HashingReader.read1), within the same bound."""
        return self._take(self.response.raw.read1, CHUNK if size is None or size < 0 else size)

    def _take(self, read, size: int) -> bytes:
        try:
            data = read(min(size, self.limit - self.size + 1))
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Transient(f"{self.what}: the connection failed while reading ({exc.__class__.__name__})",
                            "try again later") from None
        self.size += len(data)
        if self.size > self.limit:
            self.close()
            raise _too_large(self.what, self.limit, "the registry sends more than the descriptor declares")
        return data

    def close(self) -> None:
        self.response.close()
        super().close()


class Client:
    """One registry: a session, credentials, bearer tokens per scope, retries with backoff."""

    def __init__(self, host: str, options: Options) -> None:
        self.host = host
        # plain HTTP is decided on the host a URL parser, and so the connection, will use
        self.scheme = "http" if is_loopback(urllib.parse.urlsplit(f"//{host}").hostname) else "https"
        self.origin = _origin(f"{self.scheme}://{host}/")
        self.verify = options.tls_verify
        self.session = requests.Session()
        self.basic = self._credentials(options.creds)
        self.auth: dict[str, dict[str, str]] = {}  # scope -> Authorization header that worked
        self.basic_required = False
        # once the registry has answered, a refused connection is a restart to wait for; before, it is
        # a registry that is not there, said at once instead of after minutes of retries
        self.reached = False

    def _credentials(self, creds: str | None) -> str:
        creds = creds or os.environ.get("REPRO_REGISTRY_AUTH", "")
        if creds:
            if ":" not in creds:
                raise ReproError("credentials must be USER:PASSWORD", "give --creds USER:PASSWORD")
            return base64.b64encode(creds.encode()).decode()
        # docker login's file: $DOCKER_CONFIG/config.json, else ~/.docker/config.json
        extra = [os.path.join(os.environ["DOCKER_CONFIG"], "config.json")] if os.environ.get("DOCKER_CONFIG") else []
        config = oras_auth.load_configs([p for p in extra if os.path.exists(p)])
        entry = (config.get("auths") or {}).get(self.host) or (config.get("auths") or {}).get(f"https://{self.host}")
        return (entry or {}).get("auth", "")

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}/v2/{path}"

    def _authorize(self, response: requests.Response, scope_hint: str) -> dict[str, str]:
        """The Authorization header a 401 from the registry itself asks for (never another host's 401)."""
        challenge = response.headers.get("WWW-Authenticate", "")
        if challenge.lower().startswith("basic"):
            if not self.basic:
                raise ReproError(f"{self.host}: the registry asks for a user name and password",
                                 "give --creds USER:PASSWORD, REPRO_REGISTRY_AUTH, or docker login")
            self.basic_required = True
            return {"Authorization": f"Basic {self.basic}"}
        if challenge.lower().startswith("bearer"):
            header = oras_auth.parse_auth_header(challenge)
            realm = header.realm or ""
            self._check_realm(realm)
            scope = header.scope or scope_hint
            params = {k: v for k, v in (("service", header.service), ("scope", scope)) if v}
            url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(params) if params else realm
            credentials = {"Authorization": f"Basic {self.basic}"} if self.basic else {}
            token_response = self._send("GET", url, None, {}, credentials, _origin(realm))
            what = f"{self.host}: the answer of the token service {realm}"
            if token_response.status_code != 200:
                _drain(token_response)
                raise ReproError(f"{self.host}: authentication failed ({token_response.status_code})",
                                 "check the credentials")
            try:
                answer = json.loads(read_body(token_response, MAX_DOCUMENT, what))
                token = answer.get("token") or answer.get("access_token")
            except (ValueError, AttributeError):
                token = None
            if not isinstance(token, str) or not token or any(c.isspace() or ord(c) < 32 for c in token):
                raise ReproError(f"{what}: the answer holds no token", "the registry's token service misbehaves")
            self.auth[scope_hint] = {"Authorization": f"Bearer {token}"}
            return self.auth[scope_hint]
        raise ReproError(f"{self.host}: access denied ({response.status_code})", "check the credentials")

    def _check_realm(self, realm: str) -> None:
        """A token service gets the registry's credentials: only over HTTPS, or plain HTTP on this machine."""
        parts = urllib.parse.urlsplit(realm)
        scheme = parts.scheme.lower()
        safe = _origin(realm) is not None and (scheme == "https" or (scheme == "http" and is_loopback(parts.hostname)))
        if not safe:
            raise ReproError(f"{self.host}: refusing the token service {realm!r}: tokens and credentials go only "
                             "over https://, or plain http:// on this machine",
                             "configure the registry's token realm with an https:// URL")

    def request(self, method: str, path_or_url: str, scope: str, body=None, headers=None, stream=False,
                ok=(200,), allow_404=False) -> requests.Response:
        """One authorized request. Without a body it is retried on connection errors and 5xx; with one
        (a stream cannot be sent twice) the caller restarts the whole upload instead. With `stream` the
        caller reads the body (read_body or _Bounded, both capped); without, only the status and headers
        are returned, the body read no further than ERROR_BODY."""
        url = path_or_url if path_or_url.startswith("http") else self.url(path_or_url)
        delay = 0.5
        attempts = RETRIES if body is None else 1
        for attempt in range(attempts):
            auth = self.auth.get(scope) or ({"Authorization": f"Basic {self.basic}"} if self.basic_required else {})
            try:
                response = self._send(method, url, body, headers or {}, auth, self.origin)
                self.reached = True
                if response.status_code == 401 and _origin(response.url) != self.origin:
                    _drain(response)
                    raise ReproError(f"{self.host}: {urllib.parse.urlsplit(response.url).netloc}, where the registry "
                                     f"sent a {method}, asks for credentials",
                                     f"repro sends credentials only to {self.scheme}://{self.host}")
                if response.status_code == 401 and body is None:
                    _drain(response)
                    response = self._send(method, url, None, headers or {}, self._authorize(response, scope),
                                          self.origin)
                if response.status_code == 401:
                    _drain(response)
                    raise ReproError(f"{self.host}: authentication failed for {scope.split(':')[1]}",
                                     "check the credentials (--creds, REPRO_REGISTRY_AUTH or docker login)")
            except (requests.ConnectionError, requests.Timeout) as exc:
                why = "" if self.reached else _nobody_there(exc)
                if why:
                    raise ReproError(f"{self.host}: cannot connect ({why})",
                                     "check that the registry is running and the host and port are right") from None
                if attempt == attempts - 1:
                    raise Transient(f"{self.host}: cannot connect ({exc.__class__.__name__})",
                                    "check that the registry is running and reachable") from None
                time.sleep(delay)
                delay *= 2
                continue
            except requests.RequestException as exc:
                raise ReproError(f"{self.host}: {method} failed ({exc.__class__.__name__})", "") from None
            if response.status_code >= 500:
                _drain(response)
                if attempt == attempts - 1:
                    raise Transient(f"{self.host}: {method} failed with {response.status_code}", "try again later")
                time.sleep(delay)
                delay *= 2
                continue
            if response.status_code in ok or (allow_404 and response.status_code == 404):
                if not stream:
                    _drain(response)
                return response
            raise self._error(response, method, url)
        raise Transient(f"{self.host}: gave up after {attempts} attempts", "try again later")

    def _send(self, method: str, url: str, body, headers: dict, auth: dict[str, str],
              auth_origin: tuple[str, str, int] | None) -> requests.Response:
        """One request, its body unread. Redirects of a GET or HEAD are followed here, `auth` going only
        with a hop to `auth_origin`: a redirect to a storage backend gets no credentials."""
        for _ in range(MAX_REDIRECTS + 1):
            sent = {**headers, **auth} if auth_origin is not None and _origin(url) == auth_origin else headers
            response = self.session.request(method, url, data=body() if body else None, headers=sent, stream=True,
                                            timeout=TIMEOUT, verify=self.verify, allow_redirects=False)
            location = response.headers.get("Location")
            if response.status_code not in REDIRECTS or not location or body or method not in ("GET", "HEAD"):
                return response
            _drain(response)
            url = urllib.parse.urljoin(url, location)
            if urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
                raise ReproError(f"{self.host}: {method} redirected to {url!r}", "only http(s) redirects are followed")
        raise ReproError(f"{self.host}: more than {MAX_REDIRECTS} redirects for {method} "
                         f"{urllib.parse.urlsplit(url).path}", "the registry misbehaves")

    def _error(self, response: requests.Response, method: str, url: str) -> ReproError:
        data = _drain(response)
        try:
            errors = json.loads(data).get("errors") or []
            detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors if isinstance(e, dict))
        except (ValueError, AttributeError, TypeError):
            detail = data[:200].decode(errors="replace")
        detail = " ".join(detail.split())[:500]
        where = urllib.parse.urlparse(url).path
        if response.status_code == 404:
            return ReproError(f"{self.host}: not found: {where} ({detail or 'unknown'})",
                              "check the repository and tag")
        return ReproError(f"{self.host}: {method} {where} failed with {response.status_code} ({detail})", "")


class RegistrySource:
    """BlobSource over a repository: blobs from /blobs/, manifests and indexes from /manifests/."""

    def __init__(self, client: Client, ref: RegistryRef) -> None:
        self.client = client
        self.ref = ref
        self.name = str(ref)
        self.scope = f"repository:{ref.repository}:pull"

    def open_blob(self, descriptor: Descriptor) -> BinaryIO:
        if descriptor.media_type in MANIFEST_TYPES | INDEX_TYPES:
            return io.BytesIO(self.manifest(descriptor.digest, descriptor.size)[0])
        response = self.client.request("GET", f"{self.ref.repository}/blobs/{descriptor.digest}", self.scope,
                                       stream=True)
        response.raw.decode_content = False
        return _Bounded(response, descriptor.size, f"{self.name}: blob {descriptor.digest}")

    def manifest(self, reference: str, size: int | None = None) -> tuple[bytes, str]:
        """A manifest or index by tag or digest, read up to its descriptor's size when known (else
        MAX_DOCUMENT) and checked against the digest it is asked by."""
        response = self.client.request("GET", f"{self.ref.repository}/manifests/{reference}", self.scope,
                                       headers={"Accept": ACCEPT}, stream=True)
        limit = MAX_DOCUMENT if size is None else min(size, MAX_DOCUMENT)
        hint = "the registry sends more than the descriptor declares" if size is not None and size <= limit else ""
        what = f"{self.name}: the manifest" if reference == self.ref.reference else f"{self.name}: manifest {reference}"
        raw = read_body(response, limit, what, hint)
        digest = sha256_bytes(raw)
        header = response.headers.get("Docker-Content-Digest")
        if (reference.startswith("sha256:") and digest != reference) or (header and header != digest):
            raise DigestMismatch(f"{self.name}: the registry sent a manifest with digest {digest}, "
                                 f"expected {reference if reference.startswith('sha256:') else header}",
                                 "the registry or something between is corrupting content")
        media_type = response.headers.get("Content-Type", "").split(";")[0]
        if media_type not in MANIFEST_TYPES | INDEX_TYPES:
            document = parse_json(raw, f"{self.name}: manifest")
            media_type = document.get("mediaType", "") if isinstance(document, dict) else ""
        return raw, media_type


def read(ref: Reference, options: Options) -> Image | IndexImage:
    target = parse_ref(ref)
    client = Client(target.host, options)
    source = RegistrySource(client, target)
    raw, media_type = source.manifest(target.reference)
    top = Descriptor(media_type, sha256_bytes(raw), len(raw))
    if media_type in INDEX_TYPES and options.all_platforms:
        return read_index(source, top)  # type: ignore[return-value] - an index type names an index
    if media_type in INDEX_TYPES:
        descriptor, raw = select_manifest(source, top, options.platform)
        media_type = descriptor.media_type
    return BlobImage(source, raw, media_type)


@dataclass
class PushStats:
    pushed: int = 0
    skipped: int = 0
    mounted: int = 0


class _Sized:
    """A body for requests with a known length, read from a stream."""

    def __init__(self, stream: BinaryIO, size: int) -> None:
        self.stream, self.size = stream, size

    def __len__(self) -> int:
        return self.size

    def read(self, n: int = -1) -> bytes:
        return self.stream.read(n)

    def __iter__(self):
        while chunk := self.stream.read(1 << 20):
            yield chunk


def _push_blob(client: Client, target: RegistryRef, blob, stats: PushStats, mount_from: str,
               chunk_size: int, progress) -> None:
    """Upload one blob; an interrupted upload is restarted from the beginning with a new session."""
    delay = 1.0
    for attempt in range(RETRIES):
        try:
            _push_blob_once(client, target, blob, stats, mount_from, chunk_size, progress)
            return
        except Transient:
            if attempt == RETRIES - 1:
                raise
            time.sleep(delay)
            delay *= 2


def _push_blob_once(client: Client, target: RegistryRef, blob, stats: PushStats, mount_from: str,
                    chunk_size: int, progress) -> None:
    scope = f"repository:{target.repository}:pull,push"
    digest = blob.descriptor.digest
    progress = blob_progress(progress, blob.descriptor)
    head = client.request("HEAD", f"{target.repository}/blobs/{digest}", scope, ok=(200,), allow_404=True)
    if head.status_code == 200:
        stats.skipped += 1
        if progress:
            progress(blob.descriptor.size)
        return
    if mount_from and mount_from != target.repository:
        mounted = client.request("POST", f"{target.repository}/blobs/uploads/?mount={digest}&from={mount_from}",
                                 scope, ok=(201, 202))
        if mounted.status_code == 201:
            stats.mounted += 1
            if progress:
                progress(blob.descriptor.size)
            return
        location = _location(client, mounted)
    else:
        location = _location(client, client.request("POST", f"{target.repository}/blobs/uploads/", scope, ok=(202,)))
    size = blob.descriptor.size
    with blob.open() as stream:
        if chunk_size and size > chunk_size:
            offset = 0
            while offset < size:
                data = stream.read(min(chunk_size, size - offset))
                response = client.request("PATCH", location, scope, body=lambda d=data: d, ok=(202,), headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(data) - 1}", "Content-Length": str(len(data))})
                location = _location(client, response)
                offset += len(data)
                if progress:
                    progress(len(data))
            stream.finish()  # type: ignore[attr-defined]
            final = client.request("PUT", _with_digest(location, digest), scope, ok=(201,),
                                   headers={"Content-Length": "0"})
        else:
            counting = with_progress(stream, progress)
            final = client.request("PUT", _with_digest(location, digest), scope, body=lambda: _Sized(counting, size),
                                   ok=(201,), headers={"Content-Type": "application/octet-stream"})
            stream.finish()  # type: ignore[attr-defined]
    echoed = final.headers.get("Docker-Content-Digest")
    if echoed and echoed != digest:
        raise DigestMismatch(f"{target}: the registry stored blob {digest} as {echoed}", "")
    stats.pushed += 1


def _location(client: Client, response: requests.Response) -> str:
    """Where an upload goes on; another host is fine, it just gets no credentials (Client._send)."""
    location = response.headers.get("Location")
    if not location:
        raise ReproError(f"{client.host}: the registry's upload answer has no Location", "the registry misbehaves")
    url = urllib.parse.urljoin(client.url(""), location)
    if urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
        raise ReproError(f"{client.host}: the registry sends an upload to {url!r}", "the registry misbehaves")
    return url


def _with_digest(location: str, digest: str) -> str:
    return location + ("&" if "?" in location else "?") + urllib.parse.urlencode({"digest": digest})


def _put_manifest(client: Client, target: RegistryRef, reference: str, raw: bytes,
                  media_type: str) -> requests.Response:
    scope = f"repository:{target.repository}:pull,push"
    response = client.request("PUT", f"{target.repository}/manifests/{reference}", scope, body=lambda: raw,
                              ok=(201,), headers={"Content-Type": media_type})
    echoed = response.headers.get("Docker-Content-Digest")
    if echoed and echoed != sha256_bytes(raw):
        raise DigestMismatch(f"{target}: the registry stored the manifest as {echoed}, expected {sha256_bytes(raw)}",
                             "")
    return response


def write(image: Image | IndexImage, ref: Reference, options: Options, progress=None) -> Written:
    """Push the blobs, then the manifest (an index: each image's by digest, then the index under the tag)."""
    if isinstance(image, IndexImage):
        target = parse_ref(ref)
        client = Client(target.host, options)
        for child in image.children:  # each child by digest, then the index under the tag
            _push_image_blobs(client, target, child, options, progress)
            _put_manifest(client, target, child.digest, child.raw_manifest, child.manifest.media_type)
        _put_manifest(client, target, target.tag, image.raw, image.media_type)
        return Written(image.digest)
    target = parse_ref(ref)
    if target.digest:
        raise ReproError(f"{ref}: push to a tag (a digest names what is pushed)", "write it as docker://HOST/REPO:TAG")
    client = Client(target.host, options)
    stats = _push_image_blobs(client, target, image, options, progress)
    _put_manifest(client, target, target.tag, image.raw_manifest, image.manifest.media_type)
    return Written(image.digest, BlobCounts(stats.pushed, stats.skipped, stats.mounted))


def _push_image_blobs(client: Client, target: RegistryRef, image: Image, options: Options, progress) -> PushStats:
    """Config and layers, in parallel (bounded); only then may a manifest name them."""
    stats = PushStats()
    mount_from = _mount_source(image, target)
    chunk_size = options.chunk_size
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        futures = [pool.submit(_push_blob, client, target, blob, stats, mount_from, chunk_size, progress)
                   for blob in image_blobs(image)]
        for future in futures:
            future.result()
    return stats



def _mount_source(image: Image, target: RegistryRef) -> str:
    """The repository of the same registry an image was read from, whose blobs a push may mount."""
    source = image.source if isinstance(image, BlobImage) else None
    if isinstance(source, RegistrySource) and source.ref.host == target.host:
        return source.ref.repository
    return ""


def fallback_tag(digest: str) -> str:
    """distribution-spec's referrers tag schema: `<alg>-<hex>`, cut to the 128 characters a tag may have."""
    return digest.replace(":", "-")[:128]


def attach_referrer(ref: Reference, options: Options, artifact, subject_digest: str) -> None:
    """Push an artifact by digest. A registry with the referrers API says so with an `OCI-Subject` header;
    for one without it (Debian's registry 2.8), the index under the fallback tag is updated too."""
    target = parse_ref(ref)
    client = Client(target.host, options)
    stats = PushStats()
    for descriptor, data in artifact.blobs:
        blob = Blob(descriptor, lambda d=descriptor, b=data: bytes_reader(b, d))
        _push_blob(client, target, blob, stats, "", 0, None)
    response = _put_manifest(client, target, artifact.descriptor.digest, artifact.raw, artifact.descriptor.media_type)
    if response.headers.get("OCI-Subject") == subject_digest:
        return
    tag = fallback_tag(subject_digest)
    listed = [d for d in _fallback_index(client, target, tag) if d.digest != artifact.descriptor.digest]
    index = Index((*listed, artifact.descriptor))
    _put_manifest(client, target, tag, canonical_json(index.to_json()), OCI_INDEX)


def _fallback_index(client: Client, target: RegistryRef, tag: str) -> list[Descriptor]:
    source = RegistrySource(client, target)
    response = client.request("HEAD", f"{target.repository}/manifests/{tag}", source.scope,
                              headers={"Accept": ACCEPT}, allow_404=True)
    if response.status_code == 404:
        return []
    raw, media_type = source.manifest(tag)
    if media_type not in INDEX_TYPES:
        raise ReproError(f"{target}: the tag {tag} holds a {media_type or 'manifest'}, not a referrers index",
                         "the tag schema reserves that tag for referrers; remove what is there")
    return list(Index.parse(raw, f"{target}: {tag}").manifests)


def referrers(ref: Reference, options: Options, subject_digest: str) -> tuple[list[Descriptor], RegistrySource]:
    """The referrers API where the registry has it (200 with an index), else the fallback tag's index."""
    target = parse_ref(ref)
    client = Client(target.host, options)
    source = RegistrySource(client, target)
    response = client.request("GET", f"{target.repository}/referrers/{subject_digest}", source.scope,
                              headers={"Accept": OCI_INDEX}, allow_404=True, stream=True)
    if response.status_code == 200 and response.headers.get("Content-Type", "").startswith(OCI_INDEX):
        where = f"{target}: referrers of {subject_digest}"
        return list(Index.parse(read_body(response, MAX_DOCUMENT, where), where).manifests), source
    _drain(response)
    return _fallback_index(client, target, fallback_tag(subject_digest)), source


TRANSPORT = Transport("docker", read=read, write=write, index=True, naming="repository",
                      attach_referrer=attach_referrer, list_referrers=referrers)
