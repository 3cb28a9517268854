"""MPI jobs in the hybrid model (Apptainer's name for it): the host's launcher (Open MPI's mpirun, or
Slurm's srun --mpi=pmix) starts one `repro run` per rank, and the rank's process in the image joins the
job through the launcher's PMIx server, so the image's MPI library must speak to the host's.

`repro run` knows it is a rank by the environment every PMIx launcher gives its ranks, and then:
- passes the launcher's OMPI_*, OPAL_*, PMIX_* and PRTE_* variables through (the image's own values,
  such as OMPI_MCA_plm, give way to the job's);
- shares the host's network (the PMIx server and the other ranks listen on TCP, loopback included),
  PID and IPC namespaces and /dev/shm: Open MPI's shared-memory transport names its segments in
  /dev/shm and tells a peer's segment from its own by PID, which would be 1 or 2 in every rank's own
  PID namespace;
- binds the launcher's session directories (ORTE's top session directory, PMIx's server directory and
  shared-memory stores) at the same paths;
- runs the command as the invoking user's own uid and gid, in a user namespace: the PMIx server
  accepts a client whose credentials are the job's user, and the session directories are that user's
  alone (mode 0700).

What stays: a mount namespace with pivot_root into the image, a user namespace, no_new_privs. A process
in a user namespace of its own cannot ptrace, read the memory or /proc/PID/root of any process outside
it (so cross-memory attach between ranks is off, and OMPI_MCA_btl_vader_single_copy_mechanism defaults to
none); it sees the host's process list and can signal the user's own processes, as under Apptainer.

As root, an MPI job is refused: root in an image is host uid 100000, which cannot enter the 0700 session
directory (and PMIx stores) of a job started by root, and mapping it to the host's root would give the
image root's powers. MPI jobs run as a plain user, as on every HPC system.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass

from repro.errors import ReproError

PREFIXES = ("OMPI_", "OPAL_", "PMIX_", "PRTE_")
# Variables naming a directory of the launcher that a rank must reach at the same path.
DIRECTORY = re.compile(r"(SESSION_DIR|TMPDIR|BASE_PATH)$", re.IGNORECASE)
# Only where the image does not say otherwise: each rank has its own user namespace, so CMA cannot work.
DEFAULTS = {"OMPI_MCA_btl_vader_single_copy_mechanism": "none"}


def under_launcher(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is a rank started by an MPI launcher (PMIx's variables, or ORTE's)."""
    return bool(environ.get("PMIX_NAMESPACE") and environ.get("PMIX_RANK") is not None) or \
        "OMPI_COMM_WORLD_RANK" in environ


@dataclass(frozen=True)
class Job:
    env: tuple[tuple[str, str], ...]  # the launcher's variables, passed through
    binds: tuple[tuple[str, str], ...]  # its session directories, at the same paths inside


def job(environ: Mapping[str, str] = os.environ) -> Job:
    """What a rank of the job in `environ` needs: its variables and session directories."""
    if os.geteuid() == 0:
        raise ReproError("MPI jobs run as a plain user, not under mpirun --allow-run-as-root",
                         "root in an image is host uid 100000, which cannot reach a root job's session directory; "
                         "start mpirun as a user, or give --no-mpi to run the command outside the job")
    env = tuple(sorted((k, v) for k, v in environ.items() if k.startswith(PREFIXES)))
    return Job(env, tuple((path, path) for path in session_directories(environ)))


def session_directories(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The launcher's directories the variables name: only the caller's own and private ones (a shared
    /tmp is never bound), never $HOME or /, and a directory inside another one only once (through it)."""
    found: set[str] = set()
    home = os.path.realpath(environ.get("HOME", "/")) if environ.get("HOME") else None
    for key, value in environ.items():
        if not key.startswith(PREFIXES) or not DIRECTORY.search(key) or not value.startswith("/"):
            continue
        path = os.path.realpath(value)
        try:
            st = os.stat(path)
        except OSError:
            continue
        private = not st.st_mode & (stat.S_IWOTH | stat.S_ISVTX)  # not a shared /tmp, /var/tmp or /dev/shm
        if os.path.isdir(path) and st.st_uid == os.getuid() and private and path not in ("/", home):
            found.add(path)
    chosen: list[str] = []
    for path in sorted(found, key=len):
        if not any(path.startswith(parent.rstrip("/") + "/") for parent in chosen):
            chosen.append(path)
    return sorted(chosen)
