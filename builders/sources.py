"""What a copy step copies: files of the build context (globs, ignore patterns) or of another image.

Docker's rules, which users of COPY expect: a source may be a glob (`*`, `?`, `[...]`, matched one path
component at a time, dot files included), several sources or a glob need a destination ending in `/`, a
directory copies its contents, and the context's ignore patterns (`.dockerignore` form: `**`, and `!`
exceptions, the last matching pattern wins, a pattern that matches a directory matches all below it)
leave files out. Context files must stay inside the context; image files are read from the image's
flattened stream, never from a tree on the host.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import BinaryIO

from repro.confined import clean_path
from repro.flatten import flat_entries
from repro.image import Image
from repro.mutate import directory_entries

GLOB_CHARS = re.compile(r"[*?\[]")


def is_glob(pattern: str) -> bool:
    return bool(GLOB_CHARS.search(pattern))


@cache
def _pattern_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as a regex over '/'-separated relative paths."""
    out = []
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:.*/)?")
            continue
        text = fnmatch.translate(part)[4:-3]  # (?s:...)\Z around the translation
        text = text.replace(".*", "[^/]*").replace("(?s:.)", "[^/]")
        out.append(text + ("" if last else "/"))
    return re.compile("".join(out) + r"\Z", re.S)


@dataclass(frozen=True)
class Ignore:
    """Ignore patterns in the order given: the last one that matches a path or one of its parents decides."""

    patterns: tuple[tuple[bool, str], ...]  # (exception, cleaned pattern)

    @classmethod
    def parse(cls, lines: list[str]) -> Ignore:
        patterns = []
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            exception = line.startswith("!")
            pattern = clean_path(posixpath.normpath(line[1:].strip() if exception else line))
            if pattern:
                patterns.append((exception, pattern))
        return cls(tuple(patterns))

    def excludes(self, path: str) -> bool:
        candidates = [path]
        while "/" in candidates[-1]:
            candidates.append(candidates[-1].rpartition("/")[0])
        excluded = False
        for exception, pattern in self.patterns:
            regex = _pattern_regex(pattern)
            if any(regex.match(c) for c in candidates):
                excluded = not exception
        return excluded


def _expand(context: Path, pattern: str) -> list[str]:
    """Context paths (relative, clean) that a source names; globs match one component at a time."""
    parts = [p for p in clean_path(pattern).split("/") if p]
    found = [""]
    for part in parts:
        nxt = []
        for base in found:
            if is_glob(part):
                directory = context / base if base else context
                if directory.is_dir() and not directory.is_symlink():
                    names = sorted(e.name for e in directory.iterdir())
                    nxt += [f"{base}/{n}" if base else n for n in names if fnmatch.fnmatchcase(n, part)]
            else:
                nxt.append(f"{base}/{part}" if base else part)
        found = nxt
    return found


@dataclass(frozen=True)
class ContextSource:
    path: Path  # resolved, inside the context
    name: str  # relative to the context


def context_sources(context: Path, sources: list[str], ignore: Ignore, error) -> list[ContextSource]:
    """The files and directories `sources` name in `context`; `error(message, hint)` makes the exception."""
    root = context.resolve()
    out = []
    for source in sources:
        normal = posixpath.normpath("/" + source) if source.startswith("/") else posixpath.normpath(source)
        if normal == ".." or normal.startswith("../"):
            raise error(f"{source!r} is outside the context (the spec's directory)", "copy only files beside it")
        names = _expand(root, source)
        if is_glob(source) and not names:
            raise error(f"{source!r} matches no file of the context", f"looked in {root}")
        for name in names:
            candidate = (root / name).resolve() if name else root
            if not candidate.is_relative_to(root):
                raise error(f"{source!r} is outside the context (the spec's directory)", "copy only files beside it")
            if not candidate.exists():
                raise error(f"{source!r} does not exist", f"looked for {root / name}")
            if name and ignore.excludes(name):
                if is_glob(source):
                    continue
                raise error(f"{source!r} is excluded by the ignore file", "remove it from .dockerignore")
            out.append(ContextSource(candidate, name))
    return out


def context_entries(source: ContextSource, ignore: Ignore, epoch: int
                    ) -> Iterator[tuple[tarfile.TarInfo, Path]]:
    """Tar entries of one context source, named relative to it ('' prefix for a directory's contents);
    a file source yields one entry named by its base name."""
    if source.path.is_dir():
        for info, path in directory_entries(source.path, epoch):
            relative = f"{source.name}/{info.name}" if source.name else info.name
            if not ignore.excludes(relative):
                yield info, path
        return
    st = source.path.stat()
    info = tarfile.TarInfo(source.path.name)
    info.size, info.mode, info.mtime = st.st_size, st.st_mode & 0o7777, min(int(st.st_mtime), epoch)
    yield info, source.path


def image_entries(image: Image, sources: list[str], error
                  ) -> Iterator[tuple[str, str, bool, tarfile.TarInfo, BinaryIO | None]]:
    """(source, name relative to it, whether it is the source itself, entry, content) of the image's files
    under each source, read from the flattened stream in one pass. A directory source yields its contents
    (relative names), a file source itself (its base name); globs match one component at a time."""
    cleaned = [(s, clean_path(s)) for s in sources]
    seen: set[str] = set()
    for info, content in flat_entries(image):
        path = info.name
        for source, pattern in cleaned:
            root = _matching_root(path, pattern)
            if root is None:
                continue
            seen.add(source)
            if path == root:
                if info.isdir():
                    break  # the directory itself: its contents follow
                yield source, posixpath.basename(path), True, info, content
            else:
                yield source, path[len(root) + 1:] if root else path, False, info, content
            break
    missing = [s for s, _ in cleaned if s not in seen]
    if missing:
        raise error(f"{missing[0]!r} is not in {image.name}", "check the path in that image")


def _matching_root(path: str, pattern: str) -> str | None:
    """The prefix of `path` that `pattern` matches component for component, if any."""
    if not pattern:
        return ""
    want = pattern.split("/")
    have = path.split("/")
    if len(have) < len(want):
        return None
    for w, h in zip(want, have[: len(want)], strict=True):
        if not (fnmatch.fnmatchcase(h, w) if is_glob(w) else w == h):
            return None
    return "/".join(have[: len(want)])
