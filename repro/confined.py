"""The one confined resolver: every name inside a tree is looked up here, never with a plain path.

A tree is a root filesystem (an image being flattened, a build's working tree, a run's root) whose
content is hostile: any directory in it may be a symlink to `/etc` of the host. Names are resolved
component by component from a descriptor of the root with O_NOFOLLOW, `..` is clamped at the root,
and a symlink met on the way is resolved as if the root were `/` (like chroot), never followed out.
Where a caller asks for `follow=False`, a symlink on the way is an error instead: the clean-up pass
and whiteouts of an upper layer must not act through links at all.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from repro.errors import ReproError

MAX_SYMLINKS = 40
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def clean_path(name: str) -> str:
    """A name as a relative path inside the root: '.', '..' and '/' resolved lexically, never above
    the root ('../../etc/x' -> 'etc/x', '/etc/x' -> 'etc/x')."""
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


def resolve_listed(path: str, lookup: Callable[[str], tuple[str, str] | None]) -> str | None:
    """`path` with every symlink on the way resolved, itself included, by Tree.walk_dir's rules but in
    a listing of a tree instead of on disk (an image's records, a snapshot): an absolute target is
    relative to the root, `..` stops there, and a name the listing lacks is kept as it is.

    lookup(path) gives (kind, link target) or None; None comes back after MAX_SYMLINKS links (a
    loop) or where a name on the way is neither a directory nor a link (Tree: NotADirectoryError)."""
    todo = [p for p in clean_path(path).split("/") if p]
    done: list[str] = []
    followed = 0
    while todo:
        name = todo.pop(0)
        here = f"{'/'.join(done)}/{name}" if done else name
        found = lookup(here)
        if found is not None and found[0] == "symlink":
            followed += 1
            if followed > MAX_SYMLINKS:
                return None
            base = "" if found[1].startswith("/") else "/".join(done)
            todo = [p for p in clean_path(f"{base}/{found[1]}").split("/") if p] + todo
            done = []
            continue
        if found is not None and found[0] != "dir":
            return None
        done.append(name)
    return "/".join(done)


class SymlinkInPath(ReproError):
    """A symlink where `follow=False` allows none."""


def not_regular(what: str, name: str, st: os.stat_result | None, kind: str = "tree") -> ReproError:
    """The one refusal of a symlink or special file met where a regular file belongs."""
    shape = "is a symlink" if st is not None and stat.S_ISLNK(st.st_mode) else "is not a regular file"
    return ReproError(f"{what}: {name} {shape}",
                      f"the {kind} is damaged or hostile; repro reads only regular files in it")


class Tree:
    """A directory descriptor of a tree's root and lookups confined to it."""

    def __init__(self, root: Path | str, what: str = "", owner: int | None = None) -> None:
        self.root = Path(root)
        self.what = what or str(root)
        self.owner = owner  # uid and gid of directories made here (root inside a shifted tree)
        self.fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- lookups --------------------------------------------------------------------------
    def walk_dir(self, path: str, create: bool = False, follow: bool = True, mode: int = 0o755,
                 partial: bool = False) -> tuple[int, str]:
        """(descriptor, resolved clean path) of the directory `path`; the caller closes the descriptor.

        Missing directories are made with `mode` when `create`; FileNotFoundError otherwise, unless
        `partial`: then the descriptor is the deepest existing directory and the path is the resolved
        part followed by the missing rest."""
        todo = [p for p in clean_path(path).split("/") if p]
        done: list[str] = []
        fd = os.dup(self.fd)
        followed = 0
        try:
            while todo:
                name = todo.pop(0)
                try:
                    new = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if partial:
                        return fd, "/".join([*done, name, *todo])
                    if not create:
                        raise
                    os.mkdir(name, mode, dir_fd=fd)
                    if self.owner is not None:
                        os.chown(name, self.owner, self.owner, dir_fd=fd, follow_symlinks=False)
                    todo.insert(0, name)
                    continue
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    where = "/".join([*done, name])
                    if not stat.S_ISLNK(st.st_mode):
                        raise NotADirectoryError(errno.ENOTDIR, f"{where} is not a directory") from None
                    if not follow:
                        raise SymlinkInPath(f"{self.what}: {where} is a symlink",
                                            "it is damaged or hostile; repro follows no link in it") from None
                    followed += 1
                    if followed > MAX_SYMLINKS:
                        raise ReproError(f"{self.what}: too many symlinks resolving {path}",
                                         "the image has a symlink loop") from None
                    target = os.readlink(name, dir_fd=fd)
                    base = "" if target.startswith("/") else "/".join(done)
                    todo = [p for p in clean_path(f"{base}/{target}").split("/") if p] + todo
                    done = []
                    os.close(fd)
                    fd = os.dup(self.fd)
                    continue
                os.close(fd)
                fd = new
                done.append(name)
            return fd, "/".join(done)
        except BaseException:
            os.close(fd)
            raise

    def make_dirs(self, path: str, mode: int = 0o755) -> int:
        """A descriptor of directory `path`, made the way an entry placed in it needs: missing
        directories are made, and a non-directory on the way (a file, or a symlink, never followed) is
        replaced by one, as a later entry of a layer replaces an earlier one. Nothing is written through
        a link, inside the tree or out of it."""
        fd = os.dup(self.fd)
        try:
            for name in [p for p in clean_path(path).split("/") if p]:
                try:
                    new = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    new = -1
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    os.unlink(name, dir_fd=fd)  # not a directory (O_DIRECTORY and O_NOFOLLOW said so)
                    new = -1
                if new < 0:
                    os.mkdir(name, mode, dir_fd=fd)
                    if self.owner is not None:
                        os.chown(name, self.owner, self.owner, dir_fd=fd, follow_symlinks=False)
                    new = os.open(name, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = new
            return fd
        except BaseException:
            os.close(fd)
            raise

    def open_dir(self, path: str, create: bool = False, follow: bool = True) -> int:
        return self.walk_dir(path, create, follow)[0]

    def parent(self, path: str, create: bool = False, follow: bool = True) -> tuple[int, str]:
        """(descriptor of the parent directory, last name) of a clean path; the last name is not resolved."""
        head, _, name = clean_path(path).rpartition("/")
        if not name:
            raise ReproError(f"{self.what}: {path!r} names the root itself", "name a path inside it")
        return self.open_dir(head, create, follow), name

    def resolve_dir(self, path: str, create: bool = False) -> str:
        """The clean path, free of symlinks, of directory `path` inside the tree (made if `create`)."""
        fd, resolved = self.walk_dir(path, create)
        os.close(fd)
        return resolved

    def resolve_existing(self, path: str) -> str:
        """`path` with every symlink of its existing part resolved inside the tree (a link's missing
        target too) and the missing rest appended: where a mount point will be made in a view of this
        tree, such as an overlay on it."""
        fd, resolved = self.walk_dir(path, partial=True)
        os.close(fd)
        return resolved

    def lstat(self, path: str, follow: bool = True) -> os.stat_result | None:
        """The entry at `path` itself (not followed), or None when it is missing."""
        try:
            dir_fd, name = self.parent(path, follow=follow)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        finally:
            os.close(dir_fd)

    def open_file(self, path: str, follow: bool = True, kind: str = "tree") -> BinaryIO:
        """The regular file `path`, read-only; a symlink or anything else at the end is refused, and
        checked before it is opened (opening a device or a FIFO may do something). Missing: FileNotFoundError."""
        dir_fd, name = self.parent(path, follow=follow)
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise not_regular(self.what, path, st, kind)
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between the check and the open
            os.close(fd)
            raise not_regular(self.what, path, None, kind)
        return os.fdopen(fd, "rb")

    def is_regular(self, path: str, follow: bool = True, kind: str = "tree") -> bool:
        """Whether the regular file `path` is there; a symlink or special file there is an error."""
        st = self.lstat(path, follow)
        if st is None:
            return False
        if not stat.S_ISREG(st.st_mode):
            raise not_regular(self.what, path, st, kind)
        return True

    # --- changes --------------------------------------------------------------------------
    def remove(self, path: str, follow: bool = True) -> bool:
        """Remove what is at `path` (a whole directory tree too), never following a link; False if absent."""
        try:
            dir_fd, name = self.parent(path, follow=follow)
        except (FileNotFoundError, NotADirectoryError):
            return False
        try:
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return False
            remove_at(dir_fd, name, st)
            return True
        finally:
            os.close(dir_fd)

    def empty_dir(self, path: str, keep: frozenset[str] | set[str] = frozenset()) -> None:
        """Remove every child of directory `path` whose clean path is not in `keep` (an opaque whiteout)."""
        try:
            fd, resolved = self.walk_dir(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        try:
            for name in os.listdir(fd):
                child = f"{resolved}/{name}" if resolved else name
                if child not in keep:
                    remove_at(fd, name, os.stat(name, dir_fd=fd, follow_symlinks=False))
        finally:
            os.close(fd)

    def truncate(self, path: str) -> bool:
        """Empty the regular file `path` (not through a link); True if it had content."""
        try:
            dir_fd, name = self.parent(path, follow=False)
        except (FileNotFoundError, NotADirectoryError, SymlinkInPath):
            return False
        try:
            fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            return False
        finally:
            os.close(dir_fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or not st.st_size:
                return False
            os.ftruncate(fd, 0)
            return True
        finally:
            os.close(fd)

    def glob(self, pattern: str) -> list[str]:
        """Clean paths matching `pattern` (fnmatch per component), sorted; no symlink is followed,
        neither in the pattern's directories nor into matched directories."""
        parts = [p for p in clean_path(pattern).split("/") if p]
        found: list[str] = []

        def visit(fd: int, prefix: str, rest: list[str]) -> None:
            component, more = rest[0], rest[1:]
            names = sorted(os.listdir(fd)) if _is_pattern(component) else [component]
            for name in names:
                if not fnmatch.fnmatchcase(name, component) or name in (".", ".."):
                    continue
                path = f"{prefix}/{name}" if prefix else name
                if not more:
                    try:
                        os.stat(name, dir_fd=fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    found.append(path)
                    continue
                try:
                    sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue  # missing, not a directory, or a symlink: nothing to match below it
                try:
                    visit(sub, path, more)
                finally:
                    os.close(sub)

        if parts:
            visit(self.fd, "", parts)
        return sorted(found)


def _is_pattern(component: str) -> bool:
    return any(c in component for c in "*?[")


def remove_at(dir_fd: int, name: str, st: os.stat_result) -> None:
    """Remove `name` in `dir_fd`, a whole directory tree included, never following a symlink."""
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    if st.st_mode & 0o700 != 0o700:  # a mode-000 directory must still be emptied (st says it is no link)
        os.chmod(name, stat.S_IMODE(st.st_mode) | 0o700, dir_fd=dir_fd)
    sub = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        for entry in os.listdir(sub):
            remove_at(sub, entry, os.stat(entry, dir_fd=sub, follow_symlinks=False))
    finally:
        os.close(sub)
    os.rmdir(name, dir_fd=dir_fd)


def remove_tree(path: Path | str) -> None:
    """Remove a whole tree that the caller made (a run's root, a build's working tree), whatever modes
    and links the image left in it; nothing outside it is touched."""
    path = Path(path)
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return
    parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        remove_at(parent, path.name, st)
    finally:
        os.close(parent)
