"""The one careful unpacker: every write of an image's entries into a root filesystem goes through here.

Names are resolved inside the root by repro.confined, and an entry is never written through a symlink:
a file or symlink where its parent directory belongs is replaced by a directory, as a later entry of
a layer wins (repro.flatten gives the same tree as a stream). Rootless quirks (no chown, no device
nodes, directories that must stay writable), the id shift of a tree that a user namespace runs in,
and what a host directory may receive (device nodes, setuid bits) are decided here and nowhere else.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from repro.confined import Tree, clean_path, remove_at
from repro.digest import CHUNK
from repro.errors import ReproError

XATTR_PREFIX = "SCHILY.xattr."
SETID_BITS = stat.S_ISUID | stat.S_ISGID
MAX_ID = 4294967294  # (uid_t)-1 means "no change" to chown


@dataclass
class ExtractStats:
    files: int = 0
    skipped_devices: int = 0
    dropped_setid: int = 0
    skipped_xattrs: int = 0
    unresolved_links: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Policy:
    """What a tree may receive. `id_offset` shifts every uid and gid (a tree that runs in a user
    namespace mapping 0 to `id_offset`); devices and setuid/setgid bits reach a host directory only
    when asked for, since as root they would be real device nodes and setuid-root programs there."""

    id_offset: int = 0
    devices: bool = False
    setid: bool = True


class Extractor:
    """Writes tar entries under `root`, which must be an existing directory."""

    def __init__(self, root: Path, what: str, policy: Policy = Policy(), fresh: bool = False,
                 owners: dict[str, tuple[int, int]] | None = None, whiteouts: bool = True,
                 hashes: dict[str, str] | None = None) -> None:
        """`fresh`: `root` starts empty and only this extractor writes in it. Then, unless the root's
        own mode or ACL would pass anything on (setgid, a default ACL), a file is created with its
        final owner and mode where it can be, saving a chown and a chmod per file.

        `owners`: the table of a plain user's tree, which cannot take other owners than the user:
        each entry's ids are kept there instead (path -> uid, gid; root's are not listed).

        `whiteouts`: whether the entries are a layer applied over the ones below, whose opaque whiteouts
        keep what the layer wrote (so every path written is remembered); not for the merged view, which
        has none, and whose paths would take memory that grows with the image's file count.

        `hashes`: filled with the sha256 of each regular file written, by path, for a build's first
        snapshot of the tree (builders/tree.py), which then need not read every file again."""
        self.owners = owners
        self.hashes = hashes
        self.root = Path(root)
        self.what = what
        self.policy = policy
        self.privileged = os.geteuid() == 0
        self.tree = Tree(self.root, what, policy.id_offset if policy.id_offset else None)
        self._plain = fresh and _plain_dir(self.tree.fd)
        self._umask = _umask()
        self._creator = (os.geteuid(), os.getegid())
        self.stats = ExtractStats()
        self._dir_meta: dict[str, tarfile.TarInfo] = {}
        self._dirs: dict[str, int] = {}
        self._pending_links: list[tuple[str, str]] = []
        self.added: set[str] | None = set() if whiteouts else None  # paths this layer wrote (see opaque)

    def close(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()
        self.tree.close()

    # --- resolving names inside the root --------------------------------------------------
    def _open_dir(self, path: str, create: bool) -> int:
        """A descriptor of the directory `path` inside the root (see repro.confined), never through a
        symlink: with `create`, for an entry placed in it, whatever is on the way that is not a
        directory is replaced by one (a later entry wins); without, a link on the way is an error.

        Resolved directories are remembered (entries of a layer mostly share their parents); what
        is removed or replaced is forgotten, so a cached descriptor never outlives its meaning."""
        cached = self._dirs.get(path)
        if cached is not None:
            return os.dup(cached)
        try:
            fd = self.tree.make_dirs(path) if create else self.tree.open_dir(path, follow=False)
        except NotADirectoryError:
            raise ReproError(f"{self.what}: {path!r} is not a directory", "the image is malformed") from None
        if len(self._dirs) >= 512:
            os.close(self._dirs.pop(next(iter(self._dirs))))
        self._dirs[path] = os.dup(fd)
        return fd

    def _forget(self, path: str) -> None:
        prefix = path + "/"
        for key in [k for k in self._dirs if k == path or k.startswith(prefix)]:
            os.close(self._dirs.pop(key))

    def _parent(self, path: str, create: bool = True) -> tuple[int, str]:
        head, _, name = path.rpartition("/")
        return self._open_dir(head, create=create), name

    def _borrowed_parent(self, path: str) -> tuple[int, str]:
        """The descriptor of `path`'s parent (made as for an entry placed in it), owned by the cache:
        valid until the cache changes (the caller resolves nothing else meanwhile)."""
        head, _, name = path.rpartition("/")
        cached = self._dirs.get(head)
        if cached is None:
            os.close(self._open_dir(head, create=True))
            cached = self._dirs[head]
        return cached, name

    # --- whiteouts (applying a layer onto a tree that holds the layers below it) ----------
    def whiteout(self, path: str) -> None:
        """Delete `path` of a lower layer; its parents are resolved inside the root, the entry itself
        is never followed."""
        self._forget(path)
        self._dirs.clear()  # a removed directory may be cached under another name (through a link)
        self.tree.remove(path)
        self._disown(path, lambda p: True)

    def _disown(self, directory: str, gone) -> None:
        """Drop from the owners table `directory` and what it held, where `gone(path)`."""
        if self.owners:
            inside = directory + "/"
            for path in [p for p in self.owners if (p == directory or p.startswith(inside)) and gone(p)]:
                del self.owners[path]

    def opaque(self, directory: str) -> None:
        """Hide every lower child of `directory`: what this layer already wrote there stays."""
        added = self.added
        if added is None:
            raise ReproError(f"{self.what}: an opaque whiteout where none was expected", "report this fault in repro")
        self._dirs.clear()
        self.tree.empty_dir(directory, keep=added)
        self._disown(directory, lambda p: p != directory and p not in added)

    # --- writing entries ------------------------------------------------------------------
    def _clear(self, dir_fd: int, name: str, keep_dir: bool, path: str = "") -> None:
        """Remove what is at `name` so an entry can take its place (a later duplicate wins)."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if path and not (keep_dir and stat.S_ISDIR(st.st_mode)):
            self._forget(path)
        if stat.S_ISDIR(st.st_mode) and keep_dir:
            return
        if stat.S_ISDIR(st.st_mode) and path:  # a tree goes: so do the directories of it still to finish
            prefix = path + "/"
            for key in [k for k in self._dir_meta if k.startswith(prefix)]:
                del self._dir_meta[key]
        remove_at(dir_fd, name, st)

    def add(self, path: str, info: tarfile.TarInfo, content: BinaryIO | None) -> None:
        """Write one entry; `path` is clean and relative (see confined.clean_path)."""
        if not path:
            return
        dir_fd, name = self._borrowed_parent(path)
        if self.added is not None:
            self.added.add(path)
        if self.owners is not None:
            if info.uid or info.gid:
                self.owners[path] = (info.uid, info.gid)
            else:
                self.owners.pop(path, None)
        self._add(dir_fd, name, path, info, content)

    def _create(self, dir_fd: int, name: str, path: str, make) -> None:
        """make() a new entry at `name`; what is there already is removed first (a later duplicate
        wins). Tried first as if nothing were there: one system call in a tree being filled."""
        try:
            make()
        except FileExistsError:
            self._clear(dir_fd, name, keep_dir=False, path=path)
            make()

    def _add(self, dir_fd: int, name: str, path: str, info: tarfile.TarInfo, content: BinaryIO | None) -> None:
        if info.isdir():
            self._clear(dir_fd, name, keep_dir=True, path=path)
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=dir_fd)
            self._dir_meta[path] = info
            return
        self._dir_meta.pop(path, None)  # a later entry of the same name replaces a directory
        if info.islnk():
            # The file the target names now, as tar links: a target replaced later keeps this link on
            # the earlier file. A target not there yet (a lower layer's, when layers are read top down)
            # is linked at the end.
            target = clean_path(info.linkname)
            if not self._link(path, target):
                self._pending_links.append((path, target))
            return
        if (info.ischr() or info.isblk()) and not (self.privileged and self.policy.devices):
            self.stats.skipped_devices += 1
            return
        if info.isreg():
            self._regular(dir_fd, name, path, info, content)
        elif info.issym():
            self._create(dir_fd, name, path, lambda: os.symlink(info.linkname, name, dir_fd=dir_fd))
            if self.privileged:
                os.chown(name, *self._ids(info), dir_fd=dir_fd, follow_symlinks=False)
            with contextlib.suppress(OSError):
                os.utime(name, (info.mtime, info.mtime), dir_fd=dir_fd, follow_symlinks=False)
        elif info.ischr() or info.isblk():
            kind = stat.S_IFCHR if info.ischr() else stat.S_IFBLK
            device = os.makedev(info.devmajor, info.devminor)
            self._create(dir_fd, name, path, lambda: os.mknod(name, kind | 0o600, device, dir_fd=dir_fd))
            self._set_meta_at(dir_fd, name, info)
        elif info.isfifo():
            self._create(dir_fd, name, path, lambda: os.mkfifo(name, 0o600, dir_fd=dir_fd))
            self._set_meta_at(dir_fd, name, info)
        else:
            self._clear(dir_fd, name, keep_dir=False, path=path)

    def _regular(self, dir_fd: int, name: str, path: str, info: tarfile.TarInfo, content: BinaryIO | None) -> None:
        """A regular file: created, written in whole chunks, its metadata set on the descriptor. In a
        fresh tree (see __init__), a file whose mode the umask leaves alone is created with it and one
        whose owner is the creator's is not chowned: what remains is open, write, utimensat, close."""
        mode = self._mode(info)
        ids = self._ids(info) if self.privileged else None
        plain = self._plain and not mode & ~0o777 & 0o7777 and not mode & self._umask
        created = mode if plain else 0o600
        holder: list[int] = []
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self._create(dir_fd, name, path, lambda: holder.append(os.open(name, flags, created, dir_fd=dir_fd)))
        fd = holder[-1]
        hashed = hashlib.sha256() if self.hashes is not None else None
        try:
            if content is not None:
                readview = getattr(content, "readview", None)
                while chunk := (readview(CHUNK) if readview is not None else content.read(CHUNK)):
                    if hashed is not None:
                        hashed.update(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
            if hashed is not None:
                self.hashes[path] = hashed.hexdigest()  # type: ignore[index]
            if ids is not None and not (plain and ids == self._creator):
                os.fchown(fd, *ids)
            if not plain:
                os.fchmod(fd, mode)
            self._set_xattrs(fd, info)
            os.utime(fd, (info.mtime, info.mtime))  # last: a write after it would set the times again
        finally:
            os.close(fd)
        self.stats.files += 1

    def _ids(self, info: tarfile.TarInfo) -> tuple[int, int]:
        ids = info.uid + self.policy.id_offset, info.gid + self.policy.id_offset
        if max(ids) > MAX_ID:
            raise ReproError(f"{self.what}: {info.name}: uid/gid {info.uid}:{info.gid} does not fit this tree's "
                             f"ids (shifted by {self.policy.id_offset})", "the image is damaged or hostile")
        return ids

    def _mode(self, info: tarfile.TarInfo) -> int:
        mode = info.mode & 0o7777
        if mode & SETID_BITS and not self.policy.setid and not info.isdir():
            # A setgid directory only passes its group on; setuid/setgid programs are what is dropped.
            mode &= ~SETID_BITS
            self.stats.dropped_setid += 1
        if not self.privileged:
            mode |= 0o700 if info.isdir() else 0o600  # the owner must still be able to read and write
        return mode

    def _set_meta(self, fd: int, info: tarfile.TarInfo) -> None:
        if self.privileged:
            os.fchown(fd, *self._ids(info))
        os.fchmod(fd, self._mode(info))
        self._set_xattrs(fd, info)
        os.utime(fd, (info.mtime, info.mtime))

    def _set_meta_at(self, dir_fd: int, name: str, info: tarfile.TarInfo) -> None:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_PATH", 0), dir_fd=dir_fd)
        try:
            if self.privileged:
                os.chown(name, *self._ids(info), dir_fd=dir_fd, follow_symlinks=False)
            os.chmod(f"/proc/self/fd/{fd}", self._mode(info))
            os.utime(f"/proc/self/fd/{fd}", (info.mtime, info.mtime))
        finally:
            os.close(fd)

    def _set_xattrs(self, fd: int, info: tarfile.TarInfo) -> None:
        for key, value in info.pax_headers.items():
            if not key.startswith(XATTR_PREFIX):
                continue
            try:
                os.setxattr(fd, key[len(XATTR_PREFIX):], value.encode("utf-8", "surrogateescape"))
            except OSError:
                self.stats.skipped_xattrs += 1

    # --- finishing ------------------------------------------------------------------------
    def finish(self) -> ExtractStats:
        """Create hardlinks (their targets may come from lower layers) and set directory metadata
        last, deepest first, so that a read-only or mode-000 directory did not stop the writes."""
        for path, target in self._pending_links:
            if not self._link(path, target):
                self.stats.unresolved_links.append(path)
        for path in sorted(self._dir_meta, key=lambda p: p.count("/"), reverse=True):
            info = self._dir_meta[path]
            try:
                dir_fd, name = self._parent(path, create=False)
            except (FileNotFoundError, ReproError):  # removed later in its layer (a whiteout after it, as
                continue                             # docker applies one: in the tar's order)
            try:
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
                except FileNotFoundError:
                    continue
                try:
                    self._set_meta(fd, info)
                finally:
                    os.close(fd)
            finally:
                os.close(dir_fd)
        return self.stats

    def _link(self, path: str, target: str) -> bool:
        """Make `path` a hardlink to the file at `target`; False if there is none: nothing there, a
        directory, or something reached only through a symlink (which is never followed)."""
        try:
            src_fd, src_name = self._parent(target, create=False)
        except (FileNotFoundError, ReproError):
            return False
        try:
            st = os.stat(src_name, dir_fd=src_fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                return False
            dst_fd, dst_name = self._parent(path)
            try:
                self._clear(dst_fd, dst_name, keep_dir=False, path=path)
                os.link(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
            finally:
                os.close(dst_fd)
            return True
        except FileNotFoundError:
            return False
        finally:
            os.close(src_fd)


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would, for every thread)."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("Umask:")).split()[1], 8)
    return 0o7777  # unknown: no mode is taken as given by open


def _plain_dir(fd: int) -> bool:
    """Whether what is made in the directory gets the creator's group and its mode less the umask:
    no setgid bit, no default ACL."""
    if os.fstat(fd).st_mode & stat.S_ISGID:
        return False
    try:
        os.getxattr(fd, "system.posix_acl_default")
    except OSError:
        return True
    return False


def open_inside(root: Path, path: str) -> BinaryIO:
    """Open the regular file `path` under `root`, resolving symlinks of its parents inside the root and
    refusing a symlink at the end: a command run in the root may have left links that point out of it."""
    try:
        with Tree(root) as tree:
            return tree.open_file(path)
    except OSError as exc:
        raise ReproError(f"{path}: cannot be read in the container ({exc.strerror})",
                         "name a regular file the command writes") from None
    except ReproError:
        raise ReproError(f"{path}: is not a regular file", "name a regular file the command writes") from None
