"""`docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`: an OCI distribution registry.

The protocol is the distribution spec's: blobs are checked with HEAD and skipped when present,
mounted across repositories of the same registry, uploaded monolithically (or in chunks with
--chunk-size), verified while streaming on pull; the manifest is pushed last, so nothing half-pushed
is ever tagged. Loopback registries speak plain HTTP; others need TLS unless --tls-verify=false.

oras-py is used where it serves: parsing WWW-Authenticate challenges and reading docker config.json
credentials. Requests are made here because oras's client retries a 401 by resending the same body
(a streamed upload cannot be resent), keeps one bearer token for all scopes, and has no mounts and
no streaming download to a reader.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

import requests
from oras.auth import utils as oras_auth

from repro.blobs import BlobImage, IndexImage, read_index, select_manifest
from repro.digest import sha256_bytes
from repro.errors import DigestMismatch, ReproError
from repro.image import INDEX_TYPES, MANIFEST_TYPES, OCI_INDEX, Descriptor, Image, Index, canonical_json, parse_json
from repro.refs import Options, Reference
from repro.transfer import Blob, blob_progress, bytes_reader, image_blobs, with_progress

ACCEPT = ", ".join(sorted(MANIFEST_TYPES | INDEX_TYPES))
RETRIES = 5


class Transient(ReproError):
    """A failure that may pass: the registry is unreachable or answers 5xx."""

PARALLEL = 3
TIMEOUT = (10, 300)


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
    if not rest or not (("." in host or ":" in host) or host == "localhost"):
        raise ReproError(f"{ref}: expected docker://HOST[:PORT]/REPO[:TAG|@DIGEST]",
                         "name the registry host (this machine reaches no default registry)")
    digest = ""
    if "@" in rest:
        rest, _, digest = rest.partition("@")
    repository, tag = rest, ""
    if ":" in rest.rsplit("/", 1)[-1]:
        repository, _, tag = rest.rpartition(":")
    if not digest and not tag:
        tag = "latest"
    return RegistryRef(host, repository, tag, digest)


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0].strip("[]") if host.count(":") <= 1 or host.startswith("[") else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Client:
    """One registry: a session, credentials, bearer tokens per scope, retries with backoff."""

    def __init__(self, host: str, options: Options) -> None:
        self.host = host
        self.scheme = "http" if is_loopback(host) else "https"
        self.verify = options.extra.get("tls_verify", True)
        self.session = requests.Session()
        self.basic = self._credentials(options.extra.get("creds"))
        self.auth: dict[str, dict[str, str]] = {}  # scope -> Authorization header that worked
        self.basic_required = False

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
        challenge = response.headers.get("WWW-Authenticate", "")
        if challenge.lower().startswith("basic"):
            if not self.basic:
                raise ReproError(f"{self.host}: the registry asks for a user name and password",
                                 "give --creds USER:PASSWORD, REPRO_REGISTRY_AUTH, or docker login")
            self.basic_required = True
            return {"Authorization": f"Basic {self.basic}"}
        if challenge.lower().startswith("bearer"):
            header = oras_auth.parse_auth_header(challenge)
            scope = header.scope or scope_hint
            params = {k: v for k, v in (("service", header.service), ("scope", scope)) if v}
            headers = {"Authorization": f"Basic {self.basic}"} if self.basic else {}
            token_response = self.session.get(header.realm, params=params, headers=headers, timeout=TIMEOUT,
                                              verify=self.verify)
            if token_response.status_code != 200:
                raise ReproError(f"{self.host}: authentication failed ({token_response.status_code})",
                                 "check the credentials")
            token = token_response.json().get("token") or token_response.json().get("access_token")
            self.auth[scope_hint] = {"Authorization": f"Bearer {token}"}
            return self.auth[scope_hint]
        raise ReproError(f"{self.host}: access denied ({response.status_code})", "check the credentials")

    def request(self, method: str, path_or_url: str, scope: str, body=None, headers=None, stream=False,
                ok=(200,), allow_404=False) -> requests.Response:
        """One authorized request. Without a body it is retried on connection errors and 5xx; with one
        (a stream cannot be sent twice) the caller restarts the whole upload instead."""
        url = path_or_url if path_or_url.startswith("http") else self.url(path_or_url)
        delay = 0.5
        attempts = RETRIES if body is None else 1
        for attempt in range(attempts):
            auth = self.auth.get(scope) or ({"Authorization": f"Basic {self.basic}"} if self.basic_required else {})
            try:
                response = self._send(method, url, body, {**(headers or {}), **auth}, stream)
                if response.status_code == 401 and body is None:
                    response = self._send(method, url, None, {**(headers or {}), **self._authorize(response, scope)},
                                          stream)
                if response.status_code == 401:
                    raise ReproError(f"{self.host}: authentication failed for {scope.split(':')[1]}",
                                     "check the credentials (--creds, REPRO_REGISTRY_AUTH or docker login)")
            except requests.ConnectionError as exc:
                if attempt == attempts - 1:
                    raise Transient(f"{self.host}: cannot connect ({exc.__class__.__name__})",
                                    "check that the registry is running and reachable") from None
                time.sleep(delay)
                delay *= 2
                continue
            if response.status_code >= 500:
                if attempt == attempts - 1:
                    raise Transient(f"{self.host}: {method} failed with {response.status_code}", "try again later")
                time.sleep(delay)
                delay *= 2
                continue
            if response.status_code in ok or (allow_404 and response.status_code == 404):
                return response
            raise self._error(response, method, url)
        raise Transient(f"{self.host}: gave up after {attempts} attempts", "try again later")

    def _send(self, method: str, url: str, body, headers: dict, stream: bool) -> requests.Response:
        return self.session.request(method, url, data=body() if body else None, headers=headers, stream=stream,
                                    timeout=TIMEOUT, verify=self.verify, allow_redirects=True)

    def _error(self, response: requests.Response, method: str, url: str) -> ReproError:
        detail = ""
        try:
            errors = response.json().get("errors") or []
            detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
        except ValueError:
            detail = response.text[:200]
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
            import io

            return io.BytesIO(self.manifest(descriptor.digest)[0])
        response = self.client.request("GET", f"{self.ref.repository}/blobs/{descriptor.digest}", self.scope,
                                       stream=True)
        response.raw.decode_content = False
        return response.raw

    def manifest(self, reference: str) -> tuple[bytes, str]:
        response = self.client.request("GET", f"{self.ref.repository}/manifests/{reference}", self.scope,
                                       headers={"Accept": ACCEPT})
        raw = response.content
        digest = sha256_bytes(raw)
        header = response.headers.get("Docker-Content-Digest")
        if (reference.startswith("sha256:") and digest != reference) or (header and header != digest):
            raise DigestMismatch(f"{self.name}: the registry sent a manifest with digest {digest}, "
                                 f"expected {reference if reference.startswith('sha256:') else header}",
                                 "the registry or something between is corrupting content")
        media_type = response.headers.get("Content-Type", "").split(";")[0]
        if media_type not in MANIFEST_TYPES | INDEX_TYPES:
            media_type = parse_json(raw, f"{self.name}: manifest").get("mediaType", "")
        return raw, media_type


def read(ref: Reference, options: Options) -> Image:
    target = parse_ref(ref)
    client = Client(target.host, options)
    source = RegistrySource(client, target)
    raw, media_type = source.manifest(target.reference)
    top = Descriptor(media_type, sha256_bytes(raw), len(raw))
    if media_type in INDEX_TYPES and options.extra.get("all"):
        whole = read_index(source, top)
        for child in whole.children:  # type: ignore[union-attr]
            child.registry_ref = target  # type: ignore[attr-defined]
        return whole  # type: ignore[return-value]
    if media_type in INDEX_TYPES:
        descriptor, raw = select_manifest(source, top, options.platform)
        media_type = descriptor.media_type
    image = BlobImage(source, raw, media_type)
    image.registry_ref = target  # type: ignore[attr-defined] - lets a push to the same registry mount blobs
    return image


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
        location = mounted.headers["Location"]
    else:
        location = client.request("POST", f"{target.repository}/blobs/uploads/", scope, ok=(202,)).headers["Location"]
    location = urllib.parse.urljoin(client.url(""), location)
    size = blob.descriptor.size
    with blob.open() as stream:
        if chunk_size and size > chunk_size:
            offset = 0
            while offset < size:
                data = stream.read(min(chunk_size, size - offset))
                response = client.request("PATCH", location, scope, body=lambda d=data: d, ok=(202,), headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(data) - 1}", "Content-Length": str(len(data))})
                location = urllib.parse.urljoin(client.url(""), response.headers["Location"])
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


def write(image: Image | IndexImage, ref: Reference, options: Options, progress=None) -> str:
    if isinstance(image, IndexImage):
        target = parse_ref(ref)
        client = Client(target.host, options)
        for child in image.children:  # each child by digest, then the index under the tag
            _push_image_blobs(client, target, child, options, progress)
            _put_manifest(client, target, child.digest, child.raw_manifest, child.manifest.media_type)
        _put_manifest(client, target, target.tag, image.raw, image.media_type)
        return image.digest
    target = parse_ref(ref)
    if target.digest:
        raise ReproError(f"{ref}: push to a tag (a digest names what is pushed)", "write it as docker://HOST/REPO:TAG")
    client = Client(target.host, options)
    stats = _push_image_blobs(client, target, image, options, progress)
    _put_manifest(client, target, target.tag, image.raw_manifest, image.manifest.media_type)
    write.last_stats = stats  # type: ignore[attr-defined]
    return image.digest


def _push_image_blobs(client: Client, target: RegistryRef, image: Image, options: Options, progress) -> PushStats:
    """Config and layers, in parallel (bounded); only then may a manifest name them."""
    stats = PushStats()
    source_ref = getattr(image, "registry_ref", None)
    mount_from = source_ref.repository if source_ref is not None and source_ref.host == target.host else ""
    chunk_size = int(options.extra.get("chunk_size") or 0)
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        futures = [pool.submit(_push_blob, client, target, blob, stats, mount_from, chunk_size, progress)
                   for blob in image_blobs(image)]
        for future in futures:
            future.result()
    return stats



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
                              headers={"Accept": OCI_INDEX}, allow_404=True)
    if response.status_code == 200 and response.headers.get("Content-Type", "").startswith(OCI_INDEX):
        return list(Index.parse(response.content, f"{target}: referrers of {subject_digest}").manifests), source
    return _fallback_index(client, target, fallback_tag(subject_digest)), source
