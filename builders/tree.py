"""A working root filesystem during a build: snapshots, and the layer a step made.

A step's layer holds exactly what the step changed, found by comparing snapshots of the tree taken
before and after it. Regular files are compared by content hash (a file whose mtime changed but
whose bytes did not is not in the layer); hashes are reused between snapshots for files whose stat
did not change, so each file is hashed once unless a step rewrites it.
"""

from __future__ import annotations

import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

from repro.confined import Tree
from repro.digest import sha256_stream
from repro.flatten import WHITEOUT_PREFIX
from repro.layers import TarWriter


@dataclass(frozen=True, slots=True)
class Node:
    kind: str  # file, dir, symlink, char, block, fifo
    mode: int
    uid: int
    gid: int
    size: int
    link: str
    sha256: str
    stat_key: tuple
    ino: int
    nlink: int
    rdev: int

    def same_content(self, other: Node) -> bool:
        return (self.kind, self.mode, self.uid, self.gid, self.size, self.link, self.sha256, self.rdev) == (
            other.kind, other.mode, other.uid, other.gid, other.size, other.link, other.sha256, other.rdev)


KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFCHR: "char",
         stat.S_IFBLK: "block", stat.S_IFIFO: "fifo"}


def _sha256(dir_fd: int, name: bytes) -> str:
    with open(os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd), "rb") as f:
        return sha256_stream(f)[0]


def snapshot(root: Path, previous: dict[str, Node] | None = None, id_offset: int = 0,
             own: tuple[int, int] | None = None, known: dict[str, str] | None = None) -> dict[str, Node]:
    """Every path under root (relative, '/'-separated) with its metadata and content hash.

    Ids are the image's: a tree run in a user namespace is stored shifted by `id_offset` on the host;
    a plain user's tree is the user's (`own`: uid, gid), which reads as root's (the caller knows
    the other owners). The walk never follows a symlink (os.fwalk), and files are opened relative
    to their directory. `known`: sha256 by path of files nothing changed since they were written (an
    extraction's, see repro.extract.Extractor), taken instead of reading them."""
    known = known or {}
    previous = previous or {}
    out: dict[str, Node] = {}
    base = os.fsencode(root)
    own_uid, own_gid = own if own is not None else (-1, -1)

    def image_id(host_id: int) -> int:
        return host_id - id_offset if id_offset <= host_id < id_offset + 65536 else host_id

    skip = len(base.rstrip(b"/")) + 1
    for dirpath, dirnames, filenames, dir_fd in os.fwalk(base):
        # the path relative to root by slicing (fwalk joins names to `base` with one '/'): posixpath.relpath
        # took a third of a walk's CPU on a Debian tree
        prefix = dirpath[skip:] + b"/" if len(dirpath) > len(base) else b""
        for name in dirnames + filenames:
            rel = os.fsdecode(prefix + name)
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            kind = KINDS.get(stat.S_IFMT(st.st_mode), "other")
            key = (st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_size)
            sha = link = ""
            if kind == "file":
                old = previous.get(rel)
                sha = (old.sha256 if old is not None and old.stat_key == key
                       else known.get(rel) or _sha256(dir_fd, name))
            elif kind == "symlink":
                link = os.fsdecode(os.readlink(name, dir_fd=dir_fd))
            out[rel] = Node(kind, stat.S_IMODE(st.st_mode), 0 if st.st_uid == own_uid else image_id(st.st_uid),
                            0 if st.st_gid == own_gid else image_id(st.st_gid),
                            st.st_size if kind == "file" else 0, link, sha, key, st.st_ino, st.st_nlink,
                            st.st_rdev if kind in ("char", "block") else 0)
    return out


def _sort_key(path: str, whiteout: bool) -> bytes:
    parent, _, name = path.rpartition("/")
    # Byte order of path, but a whiteout before its siblings.
    return (parent + "/" if parent else "").encode("utf-8", "surrogateescape") + (
        b"\0" if whiteout else b"\1") + name.encode("utf-8", "surrogateescape")


def changes(before: dict[str, Node], after: dict[str, Node]) -> tuple[list[str], list[str]]:
    """(changed or added paths, deleted paths needing a whiteout)."""
    changed = [p for p, node in after.items() if p not in before or not before[p].same_content(node)]
    deleted = []
    for path in before:
        if path in after:
            continue
        parent = path.rpartition("/")[0]
        if parent and (parent not in after or after[parent].kind != "dir"):
            continue  # the parent went too (or became a file): its removal covers this
        deleted.append(path)
    return changed, deleted


def write_changes(tar: TarWriter, root: Path, after: dict[str, Node], changed: list[str], deleted: list[str],
                  mtime_limit: int) -> int:
    """Write the layer for a step: changed entries with their parent directories, and whiteouts."""
    wanted = set(changed)
    for path in changed:
        parent = path.rpartition("/")[0]
        while parent:
            wanted.add(parent)
            parent = parent.rpartition("/")[0]
    entries = [(p, False) for p in wanted] + [(p, True) for p in deleted]
    entries.sort(key=lambda e: _sort_key(*e))
    first_of_inode: dict[int, str] = {}
    count = 0
    with Tree(root) as tree:
        for path, is_whiteout in entries:
            count += _write_entry(tar, tree, path, is_whiteout, after, first_of_inode, mtime_limit)
    return count


def _write_entry(tar: TarWriter, tree: Tree, path: str, is_whiteout: bool, after: dict[str, Node],
                 first_of_inode: dict[int, str], mtime_limit: int) -> int:
    """One entry of a step's layer; returns how many were written (0 for kinds a layer cannot hold)."""
    if is_whiteout:
        parent, _, name = path.rpartition("/")
        info = tarfile.TarInfo(f"{parent}/{WHITEOUT_PREFIX}{name}" if parent else f"{WHITEOUT_PREFIX}{name}")
        info.mtime = mtime_limit
        tar.add(info, None)
        return 1
    node = after[path]
    info = tarfile.TarInfo(path)
    info.mode, info.uid, info.gid = node.mode, node.uid, node.gid
    info.mtime = min(node.stat_key[0] // 1_000_000_000, mtime_limit)
    content = None
    if node.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif node.kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, node.link
    elif node.kind == "file":
        if node.nlink > 1 and node.ino in first_of_inode:
            info.type, info.linkname = tarfile.LNKTYPE, first_of_inode[node.ino]
        else:
            if node.nlink > 1:
                first_of_inode[node.ino] = path
            info.size = node.size
            content = tree.open_file(path, follow=False)
    elif node.kind in ("char", "block"):
        info.type = tarfile.CHRTYPE if node.kind == "char" else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(node.rdev), os.minor(node.rdev)
    elif node.kind == "fifo":
        info.type = tarfile.FIFOTYPE
    else:
        return 0
    try:
        tar.add(info, content)
    finally:
        if content is not None:
            content.close()
    return 1
