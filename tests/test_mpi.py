"""MPI jobs in the hybrid model (issue 16): the host's Open MPI launcher starts one `repro run` per rank,
each rank runs in the openmpi catalog image (Debian's Open MPI 4.1, as on the host), and the ranks find
each other; the job's exit status is the launcher's verdict. As a plain user, as HPC users run jobs
(bwrap, and proot); as root an MPI job is refused in one line. See repro/run/mpi.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from repro.errors import ReproError
from repro.run import mpi
from tests.conftest import REPRO, busybox_layers, public_directory, repro
from tests.imagekit import make_image

ROOT = Path(__file__).resolve().parents[1]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
HELLO = "/opt/mpi/hello"


@pytest.fixture(scope="module")
def public():
    with public_directory("repro-mpi-") as path:
        yield path


@pytest.fixture(scope="module")
def mpirun() -> str:
    path = shutil.which("mpirun")
    if path is None:
        pytest.fail("the MPI tests need the host's Open MPI (make setup installs openmpi-bin)")
    return path


def user_repro(public: Path) -> str:
    """A repro command that mpirun, started by a plain user, can start. Where the venv's interpreter
    lies under a directory that user cannot enter (here: /root, mode 700), a wrapper runs the system's
    Python of the same version on the checkout and the venv's packages."""
    if subprocess.run([*NOBODY, "/bin/sh", "-c", f'exec "{REPRO}" --version'], capture_output=True).returncode == 0:
        return REPRO
    paths = os.pathsep.join([str(ROOT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    wrapper = public / "bin" / "repro"
    wrapper.parent.mkdir(exist_ok=True)
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH='{paths}' exec /usr/bin/python3 -c "
                       "'import sys; from repro.cli import main; sys.exit(main())' \"$@\"\n")
    wrapper.chmod(0o755)
    assert subprocess.run([*NOBODY, "/bin/sh", "-c", f"exec {wrapper} --version"]).returncode == 0
    return str(wrapper)


@pytest.fixture(scope="module")
def openmpi(catalog_images, public) -> str:
    """The openmpi catalog image (its ENTRYPOINT is mpirun: a rank leaves it out), readable by a plain user."""
    ref = f"oci:{public / 'openmpi'}:1"
    repro("convert", catalog_images["openmpi"]["ref"], ref)
    subprocess.run(["chmod", "-R", "a+rX", str(public / "openmpi")], check=True)
    return ref


def as_plain_user(public: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(public), "REPRO_STORE": str(public / "user-store")}
    return subprocess.run([*NOBODY, *argv], capture_output=True, text=True, env=env, cwd=public, timeout=900)


@pytest.mark.parametrize("executor", ["bwrap", "proot"])
def test_two_ranks_of_the_host_s_mpirun_find_each_other_as_a_plain_user(openmpi, public, mpirun, executor):
    run = user_repro(public)
    job = as_plain_user(public, mpirun, "-n", "2", run, "run", "--executor", executor, openmpi, "--", HELLO)
    assert job.returncode == 0, job.stdout + job.stderr
    lines = sorted(job.stdout.splitlines())
    assert lines == ["hello from rank 0 of 2", "hello from rank 1 of 2", "sum of ranks = 1"], job.stdout + job.stderr
    assert "WARNING" not in job.stderr and "ERROR" not in job.stderr, job.stderr


def test_a_rank_runs_confined_as_the_user_and_sees_the_job(openmpi, public, mpirun):
    """The rank is the user (not root: the PMIx server checks), in a user and mount namespace of its
    own, with the launcher's variables and session directory; the image's files, not the host's."""
    script = ('echo "uid=$(id -u) rank=$OMPI_COMM_WORLD_RANK"; cat /proc/self/uid_map; '
              'test -d "$OMPI_MCA_orte_top_session_dir" && echo session-dir; '
              '. /etc/os-release; echo "$VERSION_CODENAME"; test -e /opt/mpi/hello && echo image')
    job = as_plain_user(public, mpirun, "-n", "1", user_repro(public), "run", openmpi, "--", "/bin/sh", "-c", script)
    assert job.returncode == 0, job.stderr
    lines = job.stdout.split("\n")
    inside, _, size = lines[1].split()
    assert lines[0] == "uid=65534 rank=0" and (inside, size) == ("65534", "1"), job.stdout
    assert lines[2:5] == ["session-dir", "bookworm", "image"], job.stdout


def test_a_rank_that_fails_fails_the_job(openmpi, public, mpirun):
    script = f'{HELLO} || exit 1; [ "$OMPI_COMM_WORLD_RANK" = 1 ] && exit 3; exit 0'
    job = as_plain_user(public, mpirun, "-n", "2", user_repro(public), "run", openmpi, "--", "/bin/sh", "-c", script)
    assert job.returncode == 3, job.stdout + job.stderr
    assert "hello from rank 1 of 2" in job.stdout


def test_an_mpi_job_as_root_is_refused_in_one_line(openmpi, public, mpirun):
    job = subprocess.run([mpirun, "--allow-run-as-root", "-n", "2", REPRO, "run", openmpi, "--", HELLO],
                         capture_output=True, text=True, cwd=public, timeout=300,
                         env={**os.environ, "REPRO_STORE": str(public / "root-store")})
    assert job.returncode != 0 and "hello from" not in job.stdout
    ours = {line for line in job.stderr.splitlines() if line.startswith("repro:")}
    assert ours == {"repro: MPI jobs run as a plain user, not under mpirun --allow-run-as-root (root in an image "
                    "is host uid 100000, which cannot reach a root job's session directory; start mpirun as a "
                    "user, or give --no-mpi to run the command outside the job)"}, job.stderr


def test_repro_knows_a_rank_by_its_environment():
    assert mpi.under_launcher({"PMIX_NAMESPACE": "1234", "PMIX_RANK": "0"})  # mpirun, srun --mpi=pmix
    assert mpi.under_launcher({"OMPI_COMM_WORLD_RANK": "3"})
    assert not mpi.under_launcher({"PMIX_RANK": "0"}) and not mpi.under_launcher({"HOME": "/root"})


def test_only_the_user_s_own_session_directories_are_bound_each_once(tmp_path):
    top = tmp_path / "ompi.host.0"
    (top / "pid.42" / "pmix_dstor_ds21_42").mkdir(parents=True)
    (tmp_path / "srv").mkdir()
    os.chown(tmp_path / "srv", 65534, 65534)
    environ = {"OMPI_MCA_orte_top_session_dir": str(top), "PMIX_SERVER_TMPDIR": str(top / "pid.42"),
               "PMIX_DSTORE_21_BASE_PATH": str(top / "pid.42" / "pmix_dstor_ds21_42"),
               "PMIX_SYSTEM_TMPDIR": "/tmp", "OMPI_MCA_orte_tmpdir_base": "/tmp", "HOME": str(tmp_path),
               "PRTE_MCA_prte_session_dir": str(tmp_path), "PMIX_OTHER_TMPDIR": str(tmp_path / "srv"),
               "PMIX_GONE_TMPDIR": str(tmp_path / "missing"), "SOME_TMPDIR": str(top)}
    assert mpi.session_directories(environ) == [str(top)]


def test_as_root_the_job_s_environment_is_refused():
    with pytest.raises(ReproError, match="MPI jobs run as a plain user"):
        mpi.job({"PMIX_NAMESPACE": "1", "PMIX_RANK": "0"})


def test_mpi_outside_a_launcher_and_mpi_with_docker_are_refused(public):
    layout = public / "busybox"
    make_image(layout, "1", busybox_layers(), config={"Env": ["PATH=/bin"]})
    alone = repro("run", "--mpi", f"oci:{layout}:1", "--", "/bin/sh", "-c", "true", check=False)
    assert alone.returncode == 2 and alone.stderr.startswith("repro: --mpi: no MPI launcher started repro")
    env = {**os.environ, "PMIX_NAMESPACE": "1", "PMIX_RANK": "0"}
    docker = repro("run", "--executor", "docker", f"oci:{layout}:1", "--", "true", check=False, env=env)
    assert docker.returncode == 2 and "an MPI rank runs with bwrap or proot" in docker.stderr


@pytest.mark.parametrize("who", ["root", "user"])
def test_network_host_shares_the_host_s_network_and_none_is_the_default(public, who):
    """Beside MPI: --network host shows the host's interfaces; by default a namespace with loopback only."""
    layout = public / "busybox-net"
    if not layout.exists():
        make_image(layout, "1", busybox_layers(), config={"Env": ["PATH=/bin"]})
        subprocess.run(["chmod", "-R", "a+rX", str(layout)], check=True)
    host = sorted(line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:])
    seen = {}
    for network in ("none", "host"):
        argv = [REPRO, "run", "--network", network, f"oci:{layout}:1", "--", "/bin/cat", "/proc/net/dev"]
        if who == "user":
            proc = as_plain_user(public, *argv)
        else:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                                  env={**os.environ, "REPRO_STORE": str(public / "root-store")})
        assert proc.returncode == 0, proc.stderr
        seen[network] = sorted(line.split(":")[0].strip() for line in proc.stdout.splitlines()[2:])
    assert seen["none"] == ["lo"] and seen["host"] == host
