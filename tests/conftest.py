"""Shared fixtures: the repro command, a busybox image made locally, and a real Docker engine."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.imagekit import E, make_image

BIN = Path(sys.executable).parent
REPRO = str(BIN / "repro")
BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "cat", "echo", "env", "ls")


def repro(*args: str, check: bool = True, env: dict | None = None, cwd: Path | None = None):
    """Run the repro CLI; returns the CompletedProcess (text)."""
    proc = subprocess.run([REPRO, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"repro {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def run(*cmd: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=600, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def busybox_layers() -> list[list[E]]:
    """Two layers: busybox with a few applets, then config files, an overwrite and a whiteout."""
    base = [
        E("bin", kind="dir"),
        E("bin/busybox", BUSYBOX.read_bytes(), mode=0o755),
        *[E(f"bin/{a}", kind="symlink", target="busybox") for a in APPLETS],
        E("etc", kind="dir"),
        E("etc/motd", b"old motd\n"),
        E("etc/gone", b"deleted in layer 2\n"),
        E("tmp", kind="dir", mode=0o1777),
    ]
    top = [
        E("etc", kind="dir"),
        E("etc/.wh.gone", b""),
        E("etc/motd", b"hello from repro\n"),
        E("etc/motd.link", kind="hardlink", target="etc/motd"),
        E("srv", kind="dir"),
        E("srv/data.txt", b"1 2 3\n", uid=1000, gid=1000),
    ]
    return [base, top]


BUSYBOX_CONFIG = {
    "Env": ["PATH=/bin", "GREETING=hi there"],
    "Entrypoint": ["/bin/sh", "-c"],
    "Cmd": ["cat /etc/motd"],
    "WorkingDir": "/srv",
    "Labels": {"org.opencontainers.image.title": "busybox-test"},
}


@pytest.fixture(scope="session")
def busybox_layout(tmp_path_factory) -> Path:
    """An OCI layout holding the two-layer busybox image as `oci:PATH:1`."""
    path = tmp_path_factory.mktemp("busybox") / "layout"
    make_image(path, "1", busybox_layers(), config=BUSYBOX_CONFIG)
    return path


@pytest.fixture
def layout_copy(busybox_layout, tmp_path) -> Path:
    """A private copy of the busybox layout that a test may damage."""
    dst = tmp_path / "copy"
    shutil.copytree(busybox_layout, dst)
    return dst


@contextlib.contextmanager
def public_directory(prefix: str = "repro-public-"):
    """A directory under /tmp that a plain user can use too (pytest's temporary root is private to root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(path, 0o777)
    try:
        yield path
    finally:
        subprocess.run(["chmod", "-R", "u+rwX", str(path)], check=False)
        shutil.rmtree(path, ignore_errors=True)


def _rewrite(path: Path, text: str | None) -> None:
    """Replace `path` at once (a temporary file renamed over it), or remove it when `text` is None."""
    if text is None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


SUBORDINATE_ID_FILES = (Path("/etc/subuid"), Path("/etc/subgid"))


def _saved_copy(path: Path) -> Path:
    """Where the fixture keeps `path` as it was, until it has put it back: a run killed in between
    leaves this copy, and the next session restores from it when it starts."""
    return path.with_name(f".{path.name}.repro-tests-before")


def put_back_subordinate_ids(files=SUBORDINATE_ID_FILES) -> None:
    """Put `files` back as subordinate_ids_for_nobody found them (at a session's start: what a killed
    run left)."""
    for f in files:
        saved = _saved_copy(f)
        if saved.exists():
            _rewrite(f, json.loads(saved.read_text())["text"])
            saved.unlink()


@contextlib.contextmanager
def subordinate_ids_for_nobody():
    """uid 65534 gets a range of subordinate ids in /etc/subuid and /etc/subgid, after every range already
    there, as `adduser` gives a new user on Debian (mmdebstrap's unshare mode, repro's plain-user bootstrap
    and a plain user's root build steps map them); the files are put back as they were afterwards
    (removed if there were none), and at the next session's start if this one was killed first."""
    changed = []
    for f in SUBORDINATE_ID_FILES:
        text = f.read_text() if f.exists() else None
        lines = [line.split(":") for line in (text or "").splitlines() if line.count(":") == 2]
        if any(owner in ("nobody", "65534") for owner, _, _ in lines):
            continue  # already there (an enclosing use of this fixture): that one puts the file back
        start = max([1_000_000, *(int(first) + int(count) for _, first, count in lines)])
        _rewrite(_saved_copy(f), json.dumps({"text": text}))
        changed.append(f)
        _rewrite(f, (text or "") + ("" if not text or text.endswith("\n") else "\n") + f"nobody:{start}:65536\n")
    try:
        yield
    finally:
        put_back_subordinate_ids(changed)


@pytest.fixture
def nobody_subids():
    with subordinate_ids_for_nobody():
        yield


@pytest.fixture
def public_dir():
    with public_directory() as path:
        yield path


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a service started in its own session: SIGTERM to its group, SIGKILL after 30 s."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


@pytest.fixture(scope="session")
def dockerd():
    """A private Docker engine (its own data-root, exec-root and socket), stopped afterwards.

    Yields the environment to give the docker CLI."""
    if os.geteuid() != 0 or not shutil.which("dockerd"):
        pytest.fail("the Docker engine tests need root and dockerd (make setup installs docker.io)")
    base = Path(tempfile.mkdtemp(prefix="rd-", dir="/tmp"))
    sock = base / "docker.sock"
    log = open(base / "dockerd.log", "wb")  # noqa: SIM115 - kept open for the daemon's lifetime
    proc = subprocess.Popen(
        ["dockerd", "--data-root", str(base / "data"), "--exec-root", str(base / "exec"),
         "-H", f"unix://{sock}", "--pidfile", str(base / "docker.pid"), "--bridge=none",
         "--iptables=false", "--ip6tables=false", "--containerd-namespace", f"repro{os.getpid()}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}"}
    try:
        _wait_for(lambda: subprocess.run(["docker", "version"], env=env, capture_output=True).returncode == 0
                  or proc.poll() is not None, 60, "dockerd")
        if proc.poll() is not None:
            raise RuntimeError((base / "dockerd.log").read_text()[-2000:])
        yield env
    finally:
        stop_group(proc)
        log.close()
        subprocess.run(["umount", "-R", str(base / "exec")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """Debian's docker-registry on 127.0.0.1, with its own storage; can be stopped and restarted."""

    def __init__(self, base: Path, htpasswd: str = "") -> None:
        self.base = base
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        auth = f"auth: {{htpasswd: {{realm: repro-test, path: {htpasswd}}}}}\n" if htpasswd else ""
        (base / "config.yml").write_text(
            "version: 0.1\nlog: {level: error}\n"
            f"storage: {{filesystem: {{rootdirectory: {base / 'data'}}}, delete: {{enabled: true}}}}\n"
            f"http: {{addr: '{self.host}'}}\n{auth}")
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(["docker-registry", "serve", str(self.base / "config.yml")],
                                     stdout=subprocess.DEVNULL, stderr=open(self.base / "log", "ab"))  # noqa: SIM115

        def ready() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        _wait_for(ready, 30, "docker-registry")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    if not shutil.which("docker-registry"):
        pytest.fail("docker-registry is missing (make setup installs it)")
    reg = Registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory):
    base = tmp_path_factory.mktemp("auth-registry")
    htpasswd = base / "htpasswd"
    out = subprocess.run(["htpasswd", "-Bbn", "scientist", "s3cret"], capture_output=True, text=True, check=True)
    htpasswd.write_text(out.stdout)
    reg = Registry(base, str(htpasswd))
    yield reg
    reg.stop()


class Podman:
    """A private Podman: its own storage, state, events log and configuration, all under `base`.

    `env` is the environment for the podman CLI; the host's containers.conf, storage.conf and
    registries.conf are not read, its podman storage not touched."""

    def __init__(self, base: Path) -> None:
        self.base = base
        # runc cannot raise the open files and processes limits to Podman's defaults on this kind of machine
        (base / "containers.conf").write_text(
            '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
            f'[engine]\ntmp_dir = "{base}/tmp"\nvolume_path = "{base}/volumes"\n'
            f'events_logger = "file"\nevents_logfile_path = "{base}/events.log"\n'
            f'[network]\nnetwork_config_dir = "{base}/networks"\n')
        (base / "registries.conf").write_text("unqualified-search-registries = []\n")
        self.env = {**os.environ, "CONTAINERS_CONF": str(base / "containers.conf"),
                    "CONTAINERS_STORAGE_CONF": str(base / "storage.conf"),
                    "CONTAINERS_REGISTRIES_CONF": str(base / "registries.conf")}
        for key in ("DOCKER_HOST", "CONTAINER_HOST", "XDG_CONFIG_HOME"):
            self.env.pop(key, None)
        self.driver = ""
        for driver in ("overlay", "vfs"):  # overlay is refused on some file systems (an overlay itself)
            (base / "storage.conf").write_text(f'[storage]\ndriver = "{driver}"\ngraphroot = "{base}/root"\n'
                                               f'runroot = "{base}/run"\n')
            info = subprocess.run(["podman", "info", "--format", "{{.Store.GraphDriverName}}"], env=self.env,
                                  capture_output=True, text=True)
            if info.returncode == 0 and info.stdout.strip() == driver:
                self.driver = driver
                break
            self._unmount()
            shutil.rmtree(base / "root", ignore_errors=True)
            shutil.rmtree(base / "run", ignore_errors=True)
        if not self.driver:
            raise RuntimeError(f"podman works with neither overlay nor vfs storage:\n{info.stderr}")

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run("podman", *args, check=check, env=self.env)

    def _unmount(self) -> None:
        """Podman's storage bind-mounts its driver's directory (and a container's root while it runs)."""
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        for point in sorted((p for p in points if p.startswith(f"{self.base}/")), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)

    def close(self) -> None:
        self._unmount()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def podman():
    """Podman (Debian's 4.3) as root, with private storage under a temporary directory."""
    if os.geteuid() != 0 or not shutil.which("podman"):
        pytest.fail("the Podman tests need root and podman (make setup installs it)")
    pod = Podman(Path(tempfile.mkdtemp(prefix="rp-", dir="/tmp")))
    try:
        yield pod
    finally:
        pod.close()


@pytest.fixture(scope="session")
def podman_socket(podman):
    """Podman's Docker-compatible API on a private socket (`podman system service`), stopped afterwards.

    Yields the environment that points repro's docker-daemon: transport at it (DOCKER_HOST)."""
    sock = podman.base / "podman.sock"
    log = open(podman.base / "service.log", "wb")  # noqa: SIM115 - kept open for the service's lifetime
    proc = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"], env=podman.env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}"}
    try:
        def ready() -> bool:
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(sock))
                    s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                    return s.recv(64).startswith(b"HTTP/1.") or proc.poll() is not None
                except OSError:
                    return proc.poll() is not None

        _wait_for(ready, 60, "podman system service")
        if proc.poll() is not None:
            raise RuntimeError((podman.base / "service.log").read_text()[-2000:])
        yield env
    finally:
        stop_group(proc)
        log.close()


CATALOG = Path(__file__).resolve().parents[1] / "catalog"
DEBIAN_SPECS = ["python-science", "openmpi", "r-stats"]


def staged(name: str, where: Path) -> Path:
    """A copy of catalog/NAME without its lock (a build writes one beside the spec)."""
    target = where / name
    shutil.copytree(CATALOG / name, target, ignore=shutil.ignore_patterns("*.lock"))
    return target / "spec.yaml"


@pytest.fixture(scope="session")
def catalog_images(tmp_path_factory) -> dict[str, dict]:
    """The catalog's Debian images, built once per session into one store, the three at once (their time
    is downloads and dpkg, which overlap well), each with its tests and as a docker-archive. Other tests
    that need a real Debian image (bookworm, merged /usr, 100+ packages) take python-science from here."""
    store = tmp_path_factory.mktemp("catalog-store")
    started = {}
    for name in DEBIAN_SPECS:
        spec = staged(name, tmp_path_factory.mktemp(name))
        archive = store / f"{name}.tar"
        started[name] = (spec, archive, subprocess.Popen(
            [REPRO, "build", str(spec), "--store", str(store / "store"), "--json", "--test",
             "-o", f"docker-archive:{archive}:repro-catalog/{name}:1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = {}
    for name, (spec, archive, proc) in started.items():
        stdout, stderr = proc.communicate(timeout=3600)
        assert proc.returncode == 0, f"catalog/{name}: {stderr[-3000:]}"
        out[name] = {**json.loads(stdout), "spec": spec, "archive": archive, "store": store / "store",
                     "ref": f"oci:{store / 'store'}:{name}:1.0"}
    return out


@dataclass
class Started:
    """A build started in the background: its process, where it works, and when it started."""

    proc: subprocess.Popen
    public: Path
    spec: Path
    started: float


@pytest.fixture(scope="session")
def python_science_arm64():
    """python-science built for linux/amd64 and linux/arm64 by nobody (with subordinate ids, for the
    arm64 bootstrap by mmdebstrap in the user's namespace), started once and left to run: its QEMU steps
    take a quarter of an hour of one core, which the other slow tests overlap (see _arm64_early)."""
    with public_directory("repro-arm64-") as public, subordinate_ids_for_nobody():
        spec = staged("python-science", public)
        subprocess.run(["chmod", "-R", "a+rwX", str(public)], check=True)
        env = {**os.environ, "HOME": str(public), "REPRO_STORE": str(public / "run-store")}
        proc = subprocess.Popen(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", REPRO, "build", str(spec), "--platform",
             "linux/amd64,linux/arm64", "--store", str(public / "store"), "--json", "--test"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            yield Started(proc, public, spec, time.monotonic())
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


@pytest.fixture(scope="session", autouse=True)
def _arm64_early(request):
    """Starts the arm64 build with the session when a test that needs it is selected (make test-slow)."""
    if any(item.get_closest_marker("arm64") for item in request.session.items):
        request.getfixturevalue("python_science_arm64")
    yield


# Tests that build or read real Debian images (mmdebstrap and apt downloads: minutes each) run in
# `make test-slow`, which CI runs after `make test`; everything else stays in `make test`.
SLOW_FIXTURES = {"catalog_images", "debian", "debian_base", "debian_defs"}


# repro's default store is under $HOME, and `repro run` unpacks each image there once (a gigabyte for each
# Debian image). The session gets a HOME of its own, removed at its end: the tests leave nothing in the
# store of whoever runs them (they once filled this machine's disk, run after run).
_SESSION_HOME = Path(tempfile.gettempdir()) / f"repro-test-home-{os.getpid()}"


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slow: builds or reads real Debian images (make test-slow)")
    config.addinivalue_line("markers", "arm64: a Debian image built for arm64 under QEMU (make test-arm64)")
    _SESSION_HOME.mkdir(mode=0o755)
    if os.geteuid() == 0:
        put_back_subordinate_ids()
    os.environ["HOME"] = str(_SESSION_HOME)
    os.environ.pop("REPRO_STORE", None)


def pytest_unconfigure(config) -> None:
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
