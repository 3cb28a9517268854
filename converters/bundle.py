"""`bundle:DIR`: an OCI runtime bundle (runtime-spec), what `umoci unpack` writes: `DIR/rootfs` and
`DIR/config.json`, for runc or any OCI runtime a site already has.

The configuration is repro's own runc configuration (repro/run/executors/runc.py), so a bundle is as
confined as `repro run`. Differences from the config.json `umoci unpack` writes for the same image:
- a user namespace always: as root, container ids 0-65535 map to host ids 100000-165535 (the rootfs is
  written with its ids shifted to match) where umoci keeps host root as root; a plain user's own id
  is root inside, as with `umoci unpack --rootless`;
- a network namespace and a read-only sysfs (umoci's default config shares neither choice: it
  keeps runc's `spec` template, which also unshares the network);
- docker's default capability set where umoci's template gives only AUDIT_WRITE, KILL and
  NET_BIND_SERVICE (builds and package managers need CHOWN, DAC_OVERRIDE, FOWNER, SETUID, SETGID);
- no rlimits (the batch system's limits are inherited) where umoci's template sets RLIMIT_NOFILE 1024;
- no `terminal: true` and no `TERM=xterm` (batch jobs have no TTY), no annotations copied from the image.
"""

from __future__ import annotations

import json
import os

from converters.rootfs import new_directory
from repro.atomic import atomic_dir
from repro.confined import Tree
from repro.errors import ReproError
from repro.extract import Policy
from repro.flatten import extract
from repro.image import Image
from repro.refs import Options, Reference, Transport, Written
from repro.run import executors
from repro.run.container import Invocation, command_line, image_env
from repro.run.executors import runc
from repro.run.executors.command import Command

MAX_ACCOUNTS_FILE = 1 << 20


def write(image: Image, ref: Reference, options: Options, progress=None) -> Written:
    target = new_directory(ref, "unpack into a new directory")
    offset = runc.ID_BASE if os.geteuid() == 0 else 0
    with atomic_dir(target) as tmp:
        root = tmp / "rootfs"
        root.mkdir()
        if offset:
            os.chown(root, offset, offset)
        extract(image, root, Policy(id_offset=offset))
        with Tree(root, owner=offset or None) as tree:
            for mount_point in executors.MOUNT_POINTS:
                if tree.lstat(mount_point) is None:
                    tree.resolve_dir(mount_point, create=True)
            user = _user(tree, image.config.user, str(ref))
        config = image.config
        # No entrypoint or cmd: `sh`, as runc's template and umoci give; a runtime is told what to run.
        argv = command_line(image, Invocation()) if config.entrypoint or config.cmd else ["sh"]
        command = Command(argv, image_env(image), config.workdir or "/")
        document = runc.config("rootfs", command, user)
        (tmp / "config.json").write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return Written(image.digest)


def _user(tree: Tree, text: str, what: str) -> tuple[int, int]:
    """The image's `User` as numeric ids: numbers as they are, names looked up in its own
    /etc/passwd and /etc/group (read inside the tree)."""
    if not text:
        return 0, 0
    name, _, group = text.partition(":")
    uid, gid = _lookup(tree, "etc/passwd", name, what), 0
    if not name.isdigit():
        gid = _lookup(tree, "etc/passwd", name, what, field=3)
    if group:
        gid = _lookup(tree, "etc/group", group, what)
    return uid, gid


def _lookup(tree: Tree, path: str, name: str, what: str, field: int = 2) -> int:
    if name.isdigit():
        return int(name)
    try:
        with tree.open_file(path) as f:
            text = f.read(MAX_ACCOUNTS_FILE).decode(errors="replace")
    except (FileNotFoundError, NotADirectoryError, ReproError):
        text = ""
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) > field and fields[0] == name and fields[field].isdigit():
            return int(fields[field])
    raise ReproError(f"{what}: user {name!r} of the image's config is not in its /{path}",
                     "give numeric ids in the image's User")


TRANSPORT = Transport("bundle", write=write)
