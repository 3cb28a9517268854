"""Foreign-architecture images under QEMU user emulation (issue 19), confined as native runs are.

The arm64 image is made here from Debian's arm64 busybox-static package (`apt-get download`, after
`make setup` added the arm64 architecture), next to the same image for the host, under one index.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from builders import debian
from repro.errors import ReproError
from repro.extract import Policy
from repro.flatten import extract
from repro.image import Platform
from repro.refs import open_image
from repro.run import emulation, executors
from tests.conftest import BUSYBOX, REPRO, public_directory, repro
from tests.imagekit import E, add_index, make_image

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
ARM64 = Platform.parse("linux/arm64")
APPLETS = ("sh", "uname", "sleep", "cat", "id", "ls")

pytestmark = pytest.mark.skipif(Platform.host().architecture != "amd64", reason="the foreign image is arm64")


def arm64_busybox(where: Path) -> bytes:
    proc = subprocess.run(["apt-get", "download", "busybox-static:arm64"], cwd=where, capture_output=True, text=True)
    assert proc.returncode == 0, f"apt-get download busybox-static:arm64 failed (make setup adds arm64):\n{proc.stderr}"
    [deb] = where.glob("busybox-static_*_arm64.deb")
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile("./bin/busybox")
        assert member is not None
        return member.read()


def layer(busybox: bytes) -> list[E]:
    return [E("bin", kind="dir"), E("bin/busybox", busybox, mode=0o755),
            *[E(f"bin/{a}", kind="symlink", target="busybox") for a in APPLETS], E("tmp", kind="dir", mode=0o1777)]


@pytest.fixture(scope="module")
def layout():
    """`multi`: an index of the host's busybox image and the arm64 one; `arm64`: the arm64 image alone."""
    with public_directory("repro-emulation-") as public:
        config = {"Env": ["PATH=/bin"], "Cmd": ["uname", "-m"]}
        path = public / "layout"
        make_image(path, "arm64", [layer(arm64_busybox(public))], platform=ARM64, config=config)
        make_image(path, "host", [layer(BUSYBOX.read_bytes())], config=config)
        add_index(path, "multi", [("host", Platform.host()), ("arm64", ARM64)])
        subprocess.run(["chmod", "-R", "a+rX", str(public)], check=True)
        yield path


def repro_entries() -> list[str]:
    return [e.name for e in emulation.entries() if e.name.startswith(emulation.PREFIX)]


def test_root_runs_the_arm64_image_of_an_index_and_a_foreign_image_alone(layout, tmp_path):
    store = ["--store", str(tmp_path / "store")]
    assert repro("run", *store, "--platform", "linux/arm64", f"oci:{layout}:multi", "--", "uname", "-m"
                 ).stdout == "aarch64\n"
    assert repro("run", *store, f"oci:{layout}:multi", "--", "uname", "-m").stdout == f"{os.uname().machine}\n"
    assert repro("run", "--fresh", f"oci:{layout}:arm64").stdout == "aarch64\n"  # the image's own cmd
    # still confined: root inside is an unprivileged id outside
    inside = repro("run", "--fresh", f"oci:{layout}:arm64", "--", "sh", "-c", "id -u; cat /proc/self/uid_map").stdout
    assert inside.split()[:3] == ["0", "0", str(executors.runc.ID_BASE)]
    assert not repro_entries()


def test_a_plain_user_runs_it_too(layout):
    with public_directory() as public:
        env = {**os.environ, "HOME": str(public), "REPRO_STORE": str(public / "store")}
        argv = [*NOBODY, REPRO, "run", "--platform", "linux/arm64", f"oci:{layout}:multi", "--", "uname", "-m"]
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
        if emulation.sandboxed():  # bwrap, qemu registered in the run's own user namespace
            assert (proc.returncode, proc.stdout, proc.stderr) == (0, "aarch64\n", "")
        else:
            assert proc.returncode == 2 and "--executor proot" in proc.stderr
        # proot -q only when asked for, and with a warning: it shows the host's / at /host-rootfs
        proot = subprocess.run([*argv[:6], "--executor", "proot", *argv[6:]], capture_output=True, text=True, env=env,
                               timeout=120)
        assert proot.stdout == "aarch64\n", proot.stderr
        assert proot.stderr.count("\n") == 1 and "/host-rootfs" in proot.stderr


def test_the_builder_api_runs_a_foreign_tree(layout, public_dir):
    """What builders/build.py calls: choose(name, platform) remembers the platform, run() emulates."""
    name = executors.choose(None, ARM64)
    assert name == "runc" and name.platform == ARM64 and executors.id_offset(name) == executors.runc.ID_BASE
    assert executors.choose(None, Platform.host()).platform is None
    (public_dir / "work").mkdir()
    root = executors.new_root(public_dir / "work", name)
    extract(open_image(f"oci:{layout}:arm64"), root, Policy(id_offset=executors.id_offset(name)))
    result = executors.run(name, root, executors.Command(["uname", "-m"], {"PATH": "/bin"}))
    assert (result.exit_code, result.output) == (0, "aarch64\n")
    plain = executors.run("runc", root, executors.Command(["uname", "-m"], {"PATH": "/bin"}), platform=ARM64)
    assert plain.output == "aarch64\n"


def wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("mode", ["namespaced", "global"])
def test_no_binfmt_entry_is_left_even_after_sigkill(layout, mode):
    """Namespaced: qemu is never registered host-wide. Global (kernels before 6.7, forced here): repro's
    entry exists during the run only, and its reaper removes it when repro is killed."""
    if mode == "namespaced" and not emulation.sandboxed():
        pytest.skip("this kernel has no binfmt_misc per user namespace")
    env = {**os.environ, "REPRO_BINFMT": "global" if mode == "global" else ""}
    done = repro("run", "--fresh", f"oci:{layout}:arm64", "--", "uname", "-m", env=env)
    assert done.stdout == "aarch64\n" and not repro_entries()
    proc = subprocess.Popen([REPRO, "run", "--fresh", f"oci:{layout}:arm64", "--", "sh", "-c", "echo up; sleep 60"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        assert bool(repro_entries()) == (mode == "global")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert wait_for(lambda: not repro_entries()), repro_entries()
    assert wait_for(lambda: subprocess.run(["pgrep", "-f", "qemu-binfmt/aarch64"]).returncode != 0)


def test_a_conflicting_handler_is_refused_in_one_line(layout):
    """A host handler for arm64 binaries without F (its interpreter would be looked up in the container)."""
    name = "test-repro-conflict"
    emulation._mounted(emulation.BINFMT_DIR)
    header = emulation._bytes(emulation.MAGIC["aarch64"][0])
    if any(e.handles(header) and not e.name.startswith(emulation.PREFIX) for e in emulation.entries()):
        pytest.skip("this host has a handler of its own for arm64 binaries")
    magic, mask = emulation.MAGIC["aarch64"]
    (emulation.BINFMT_DIR / "register").write_text(f":{name}:M::{magic}:{mask}:/usr/bin/qemu-aarch64-static:")
    try:
        env = {**os.environ, "REPRO_BINFMT": "global"}
        proc = repro("run", "--fresh", f"oci:{layout}:arm64", "--", "uname", "-m", env=env, check=False)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1
        assert f"already runs linux/arm64 binaries with {name}" in proc.stderr and "flag F" in proc.stderr
    finally:
        (emulation.BINFMT_DIR / name).write_text("-1")
    assert not repro_entries()


def fake_entry(directory: Path, name: str, flags: str, arch: str = "aarch64", state: str = "enabled") -> None:
    magic, mask = (emulation._bytes(x).hex() for x in emulation.MAGIC[arch])
    (directory / name).write_text(f"{state}\ninterpreter /usr/bin/qemu-{arch}\nflags: {flags}\noffset 0\n"
                                  f"magic {magic}\nmask {mask}\n")


def test_which_host_handlers_conflict(tmp_path):
    emu = emulation.Emulator("linux/arm64", "aarch64", "/usr/bin/qemu-aarch64-static", "/q", "F")
    (tmp_path / "register").write_text("")
    (tmp_path / "status").write_text("enabled\n")
    fake_entry(tmp_path, "qemu-arm", "", arch="arm")  # other binaries
    fake_entry(tmp_path, "repro-aarch64-1234", "PF")  # repro's own
    fake_entry(tmp_path, "off", "", state="disabled")
    assert emulation.host_handler(emu, tmp_path) is None
    fake_entry(tmp_path, "qemu-aarch64", "OCF")  # the host's own with F: used as it is
    assert emulation.host_handler(emu, tmp_path).name == "qemu-aarch64"
    fake_entry(tmp_path, "zz-qemu-aarch64", "OC")  # and one without F, whichever the kernel tries first
    with pytest.raises(ReproError, match=r"zz-qemu-aarch64 .* lacks the F flag"):
        emulation.host_handler(emu, tmp_path)
    (tmp_path / "zz-qemu-aarch64").unlink()
    fake_entry(tmp_path, "qemu-aarch64", "OC")
    with pytest.raises(ReproError, match=r"qemu-aarch64 .* lacks the F flag"):
        emulation.host_handler(emu, tmp_path)


def test_a_missing_qemu_is_one_line(layout, tmp_path):
    """Every command of the host but the qemu ones, as on a host without qemu-user-static."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in ("/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        for entry in Path(directory).iterdir() if Path(directory).is_dir() else ():
            if not entry.name.startswith("qemu-") and not (bin_dir / entry.name).exists():
                (bin_dir / entry.name).symlink_to(entry)
    env = {**os.environ, "PATH": str(bin_dir)}
    for ref in (f"oci:{layout}:arm64", "--platform=linux/arm64", ):
        args = ["run", "--fresh", ref, f"oci:{layout}:multi"] if ref.startswith("--") else ["run", "--fresh", ref]
        proc = repro(*args, "--", "uname", "-m", env=env, check=False)
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr == ("repro: running linux/arm64 binaries needs qemu-aarch64-static, which is not installed "
                               "(apt-get install qemu-user-static)\n")


def test_a_foreign_debian_bootstrap_registers_qemu_for_mmdebstrap_only(monkeypatch):
    """builders/debian.py with options["arch"]: mmdebstrap --arch, qemu registered host-wide while it
    runs as root (it chroots on the host), removed after. (A real arm64 bootstrap takes minutes.)"""

    seen = []
    real_run = subprocess.run

    def fake_mmdebstrap(command, **kwargs):
        if command[0] != "mmdebstrap":
            return real_run(command, **kwargs)
        seen.append((command, repro_entries()))
        return subprocess.CompletedProcess(command, 1, "", "E: stop here\n")

    monkeypatch.setattr(debian.subprocess, "run", fake_mmdebstrap)
    monkeypatch.setattr(debian, "host_architecture", lambda: "amd64")
    with pytest.raises(ReproError, match="mmdebstrap failed: E: stop here"):
        debian.bootstrap({"suite": "bookworm", "arch": "arm64"}, 0, None, "spec")  # type: ignore[arg-type]
    [(command, during)] = seen
    assert "--arch=arm64" in command and "--mode=root" in command
    assert [n.rsplit("-", 1)[0] for n in during] == ["repro-aarch64"] and not repro_entries()
    seen.clear()
    with pytest.raises(ReproError, match="mmdebstrap failed"):
        debian.bootstrap({"suite": "bookworm", "arch": "amd64"}, 0, None, "spec")  # type: ignore[arg-type]
    assert "--arch=amd64" in seen[0][0] and seen[0][1] == []


def test_a_plain_users_foreign_debian_bootstrap_runs_in_a_namespace_with_qemu(monkeypatch):
    """As a plain user on Linux 6.7+: mmdebstrap --mode=root inside `unshare --map-auto` (the user's
    subordinate ids, as mmdebstrap's unshare mode) that registered qemu in its own binfmt_misc."""

    if not emulation.sandboxed():
        pytest.skip("this kernel has no binfmt_misc per user namespace")
    seen = []
    real_run = subprocess.run

    def fake_unshare(command, **kwargs):
        if not command[0].endswith("unshare"):
            return real_run(command, **kwargs)
        seen.append(command)
        return subprocess.CompletedProcess(command, 1, "", "unshare: no line matching user \"u\" in /etc/subuid\n")

    monkeypatch.setattr(debian.subprocess, "run", fake_unshare)
    monkeypatch.setattr(debian, "host_architecture", lambda: "amd64")
    monkeypatch.setattr(debian.os, "geteuid", lambda: 1000)
    with pytest.raises(ReproError, match="as a plain user needs subordinate ids"):
        debian.bootstrap({"suite": "bookworm", "arch": "arm64"}, 0, None, "spec")  # type: ignore[arg-type]
    [command] = seen
    assert command[1:3] == ["--map-auto", "--map-root-user"] and "--mode=root" in command
    assert command[command.index("mmdebstrap") - 1].startswith(":repro-aarch64:M::")
