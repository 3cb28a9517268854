"""Containerfiles and Dockerfiles: parsed with Docker's rules and translated into one build spec.

`load(path, ...)` reads the file, keeps only the stages the target needs and returns the `Spec` that
`builders.spec.from_dict` makes of the translation; `translate(...)` gives the spec dict itself.

Parsing follows BuildKit's Dockerfile frontend:
- parser directives (`# escape=` with a backslash or a backtick, `# syntax=`, `# check=`) at the very top;
- comments (`#` as a line's first non-blank character), line continuations (the escape character at
  the end of a line; comment and empty lines inside an instruction are skipped);
- heredocs (`<<EOF`, `<<-EOF` strips leading tabs, `<<"EOF"`/`<<'EOF'` leave the body unexpanded) for
  RUN, COPY and ADD;
- `--flag[=value]` words before the arguments; JSON exec form (`["a", "b"]`) or shell form;
- variable expansion (`$V`, `${V}`, `${V:-w}`, `${V-w}`, `${V:+w}`, `${V+w}`, `${V:?w}`, `${V?w}`), quotes
  and escapes, in ADD COPY ENV EXPOSE FROM LABEL STOPSIGNAL USER VOLUME WORKDIR (and ARG defaults and the
  values of flags), never in RUN CMD ENTRYPOINT SHELL, which the shell expands;
- ARG scoping: ARGs before the first FROM are global and only seen by FROM lines unless a stage declares
  them again (`ARG NAME`); `--build-arg` wins over defaults; ENV wins over ARG; the proxy ARGs
  (HTTP_PROXY, ...) reach RUN without a declaration; TARGETPLATFORM/BUILDPLATFORM etc. are predefined.

The translation is one spec dict: the target stage at the top level and the stages it needs (through
`FROM stage` and `COPY --from=stage`) under `stages`. Each RUN, COPY, ADD and WORKDIR is a step with a
`history` line in buildah's form (see `_copy_history` and `_run_history`); every other instruction
folds into the stage's `config`. Anything repro cannot honour is one `FILE:LINE: ...` error (exit 2).
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import gzip
import hashlib
import json
import logging
import lzma
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from builders import spec as _spec
from repro.clock import rfc3339
from repro.digest import sha256_stream
from repro.errors import ReproError
from repro.image import Platform, parse_json
from repro.mutate import commit, new_config, write_layer
from repro.refs import Options, is_reference, open_image
from repro.store import Layout
from repro.transfer import manifest_descriptor

log = logging.getLogger("repro")

MAX_FILE_BYTES = 1 << 20
MAX_WORD = 1 << 20  # an expansion longer than this is refused ($A$A$A... doubles at every ENV)
MAX_NESTING = 64  # ${a:-${b:-...}} deeper than this is refused
MAX_ADD_BYTES = 2 << 30  # a URL added with --checksum is downloaded up to this size
MAX_TRIGGERS = 100
DEFAULT_SHELL = ["/bin/sh", "-c"]
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_REGISTRY = "docker.io"
ONBUILD_LABEL = "dev.repro.onbuild"  # the ONBUILD triggers of an image, a JSON list (OCI configs have no field)
PROXY_ARGS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
              "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")
INSTRUCTIONS = ("ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
                "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR")
FLAGS = {
    "FROM": {"platform"},
    "RUN": {"mount", "network", "security", "device"},
    "COPY": {"from", "chown", "chmod", "link", "exclude", "parents"},
    "ADD": {"chown", "chmod", "link", "checksum", "exclude", "keep-git-dir", "unpack"},
    "HEALTHCHECK": {"interval", "timeout", "start-period", "start-interval", "retries"},
}
REPEATABLE = {"mount", "exclude"}
CONTAINERFILE_NAMES = ("containerfile", "dockerfile")


def is_containerfile(path: str | Path) -> bool:
    """Containerfile, Dockerfile, NAME.Dockerfile, Dockerfile.NAME, NAME.containerfile (any case)."""
    name = Path(path).name.lower()
    return (name in CONTAINERFILE_NAMES or name.endswith((".dockerfile", ".containerfile"))
            or name.startswith(("dockerfile.", "containerfile.")))


# --- errors ---------------------------------------------------------------------------------------------


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class _Failure(Exception):
    """A problem found where the file and line are not at hand; turned into FILE:LINE by the caller."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


def _error(path: Path | str, line: int, message: str, hint: str = "") -> ReproError:
    text = _printable(f"{path}:{line}: {message}")
    return ReproError(text if len(text) <= 1000 else text[:997] + "...", hint)


# --- the lexer: Docker's word processing ------------------------------------------------------------------

Lookup = Callable[[str], "str | None"]


class _Lexer:
    """BuildKit's shell-word rules: quotes, the escape character, and $ expansion (no command
    substitution, no globbing). `words` splits on unquoted blanks, also inside expanded values."""

    def __init__(self, escape: str = "\\") -> None:
        self.escape = escape

    def word(self, text: str, lookup: Lookup) -> str:
        return "".join(self._run(text, lookup, split=False)[0])

    def words(self, text: str, lookup: Lookup) -> list[str]:
        return self._run(text, lookup, split=True)[1]

    def _run(self, text: str, lookup: Lookup, split: bool) -> tuple[list[str], list[str]]:
        self.text, self.pos, self.lookup, self.depth = text, 0, lookup, 0
        self.size = 0
        return self._until(None, split)

    def _grow(self, n: int) -> None:
        self.size += n
        if self.size > MAX_WORD:
            raise _Failure(f"a value expands to more than {MAX_WORD} characters", "expand variables less often")

    def _until(self, stop: str | None, split: bool = False) -> tuple[list[str], list[str]]:
        """Characters up to `stop` (consumed) or the end: (the whole result, the words)."""
        result: list[str] = []
        words: list[str] = []
        current: list[str] = []
        in_word = False
        found = False
        text = self.text
        while self.pos < len(text):
            ch = text[self.pos]
            if stop is not None and ch == stop:
                self.pos += 1
                found = True
                break
            if ch in "$'\"":
                value = self._dollar() if ch == "$" else self._single() if ch == "'" else self._double()
                result.append(value)
                # an unquoted expansion splits into words, as in the shell; a quoted string is one piece
                pieces, splits = (list(value), split) if ch == "$" else ([value], False)
            else:
                self.pos += 1
                if ch == self.escape:
                    if self.pos >= len(text):
                        break
                    ch = text[self.pos]
                    self.pos += 1
                    pieces, splits = [ch], False
                else:
                    pieces, splits = [ch], split
                result.append(ch)
            for piece in pieces:
                if splits and piece.isspace():
                    if in_word:
                        words.append("".join(current))
                    current, in_word = [], False
                else:
                    current.append(piece)
                    in_word = True
        if stop is not None and not found:
            raise _Failure("syntax error: missing '}'", "close every ${")
        if in_word:
            words.append("".join(current))
        return result, words

    def _single(self) -> str:
        end = self.text.find("'", self.pos + 1)
        if end < 0:
            raise _Failure("unexpected end of statement while looking for matching single-quote",
                           "close the quote")
        value = self.text[self.pos + 1:end]
        self.pos = end + 1
        return value

    def _double(self) -> str:
        self.pos += 1
        out: list[str] = []
        text = self.text
        while True:
            if self.pos >= len(text):
                raise _Failure("unexpected end of statement while looking for matching double-quote",
                               "close the quote")
            ch = text[self.pos]
            if ch == '"':
                self.pos += 1
                return "".join(out)
            if ch == "$":
                out.append(self._dollar())
                continue
            self.pos += 1
            if ch == self.escape:
                if self.pos >= len(text):
                    continue
                if text[self.pos] in ('"', "$", self.escape):
                    ch = text[self.pos]
                    self.pos += 1
            out.append(ch)

    def _name(self) -> str:
        text, start = self.text, self.pos
        if start < len(text) and text[start].isdigit():
            while self.pos < len(text) and text[self.pos].isdigit():
                self.pos += 1
            return text[start:self.pos]
        if start < len(text) and text[start] in "@*#?-$!":
            self.pos += 1
            return text[start]
        while self.pos < len(text) and (text[self.pos].isalnum() or text[self.pos] == "_"):
            self.pos += 1
        return text[start:self.pos]

    def _dollar(self) -> str:
        self.pos += 1  # the $
        text = self.text
        if self.pos >= len(text) or text[self.pos] != "{":
            name = self._name()
            if not name:
                return "$"
            value = self.lookup(name) or ""
            self._grow(len(value))
            return value
        self.pos += 1
        if self.pos >= len(text):
            raise _Failure("syntax error: missing '}'", "close every ${")
        if text[self.pos] in "{}:":
            raise _Failure("syntax error: bad substitution", "write ${NAME}, ${NAME:-default} or ${NAME:+alternative}")
        name = self._name()
        if self.pos >= len(text):
            raise _Failure("syntax error: missing '}'", "close every ${")
        ch = text[self.pos]
        self.pos += 1
        if ch == "}":
            value = self.lookup(name) or ""
            self._grow(len(value))
            return value
        colon = ch == ":"
        if colon:
            if self.pos >= len(text):
                raise _Failure("syntax error: missing '}'", "close every ${")
            ch = text[self.pos]
            self.pos += 1
        if ch not in "-+?":
            raise _Failure(f"unsupported modifier ({ch}) in substitution ${{{name}...}}",
                           "repro expands ${V}, ${V:-w}, ${V-w}, ${V:+w}, ${V+w}, ${V:?w} and ${V?w}")
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise _Failure(f"substitutions nested more than {MAX_NESTING} deep", "simplify the expression")
        word = "".join(self._until("}")[0])
        self.depth -= 1
        value = self.lookup(name)
        present = value is not None and (value != "" or not colon)
        if ch == "-":
            return value if present else word  # type: ignore[return-value]
        if ch == "+":
            return word if present else ""
        if not present:
            raise _Failure(f"{name}: {word or 'is not allowed to be unset'}", "give it a value with --build-arg")
        return value  # type: ignore[return-value]


def _expand_heredoc(text: str, lookup: Lookup) -> str:
    """An unquoted heredoc body as a shell expands one: $V and ${V...} expanded; \\$, \\`, \\\\ and
    backslash-newline are escapes; quotes are plain characters."""
    out: list[str] = []
    lexer = _Lexer()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in "$`\\\n":
            if text[i + 1] != "\n":
                out.append(text[i + 1])
            i += 2
            continue
        if ch == "$":
            lexer.text, lexer.pos, lexer.lookup, lexer.depth, lexer.size = text, i, lookup, 0, 0
            out.append(lexer._dollar())
            i = lexer.pos
            continue
        out.append(ch)
        i += 1
    result = "".join(out)
    if len(result) > MAX_WORD:
        raise _Failure(f"a heredoc expands to more than {MAX_WORD} characters", "expand variables less often")
    return result


def _split_blanks(text: str) -> list[str]:
    return text.split()


# --- parsing ----------------------------------------------------------------------------------------------


@dataclass
class Heredoc:
    name: str
    body: str  # as written, each line ending in a newline
    expand: bool  # False when the name was quoted
    chomp: bool  # <<-: leading tabs are stripped

    @property
    def content(self) -> str:
        if not self.chomp:
            return self.body
        return "".join(line.lstrip("\t") for line in self.body.splitlines(keepends=True))


@dataclass
class Instruction:
    keyword: str  # upper case
    written: str  # the keyword as written
    rest: str  # everything after the keyword, continuation lines joined
    line: int  # the first line
    heredocs: list[Heredoc] = field(default_factory=list)

    @property
    def original(self) -> str:
        return f"{self.written} {self.rest}".rstrip()


@dataclass
class Parsed:
    escape: str
    instructions: list[Instruction]


_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_HEREDOC_WORD = re.compile(r"^(\d*)<<(-?)([^<]*)$")


def _continues(line: str, escape: str) -> tuple[str, bool]:
    """The line without a trailing escape character (and blanks after it); True if it continues."""
    stripped = line.rstrip(" \t")
    if stripped.endswith(escape):
        return stripped[:-1], True
    return line, False


def _raw_words(text: str) -> list[str]:
    """Blank-separated words, quotes and backslash escapes kept as written (for heredoc markers)."""
    words, current, quote, i, in_word = [], [], "", 0, False
    while i < len(text):
        ch = text[i]
        if quote:
            current.append(ch)
            if ch == "\\" and quote == '"' and i + 1 < len(text):
                current.append(text[i + 1])
                i += 1
            elif ch == quote:
                quote = ""
        elif ch.isspace():
            if in_word:
                words.append("".join(current))
            current, in_word = [], False
        else:
            in_word = True
            current.append(ch)
            if ch in "'\"":
                quote = ch
            elif ch == "\\" and i + 1 < len(text):
                current.append(text[i + 1])
                i += 1
        i += 1
    if in_word:
        words.append("".join(current))
    return words


def heredoc_marker(word: str) -> tuple[str, bool, bool] | None:
    """(name, expand, chomp) when `word` (as written) opens a heredoc: <<NAME, <<-NAME, <<"NAME"."""
    match = _HEREDOC_WORD.match(word)
    if not match or not match.group(3):
        return None
    raw = match.group(3)
    try:
        name = _Lexer("\\").word(raw, lambda _name: None)
    except _Failure:
        return None
    if not name or any(c.isspace() for c in name):
        return None
    quoted = any(c in raw for c in "'\"\\")
    return name, not quoted, match.group(2) == "-"


def parse(text: str, path: str | Path = "Containerfile") -> Parsed:
    """Parser directives, then instructions with their continuation lines and heredocs joined."""
    lines = text.split("\n")
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    escape = "\\"
    seen: set[str] = set()
    i = 0
    while i < len(lines):  # directives: only at the very top, before any comment, blank line or instruction
        match = _DIRECTIVE.match(lines[i])
        if not match:
            break
        key, value = match.group(1).lower(), match.group(2)
        if key not in ("escape", "syntax", "check"):
            break  # an unknown directive is a comment, and ends the directives
        if key in seen:
            raise _error(path, i + 1, f"the parser directive {key!r} is given twice", "give it once")
        seen.add(key)
        if key == "escape":
            if value not in ("\\", "`"):
                raise _error(path, i + 1, f"invalid escape character {value!r}", "use \\ or `")
            escape = value
        i += 1
    out: list[Instruction] = []
    while i < len(lines):
        line = lines[i]
        start = i
        i += 1
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        joined, more = _continues(stripped, escape)
        while more and i < len(lines):
            nxt = lines[i]
            i += 1
            if nxt.lstrip().startswith("#") or not nxt.strip():
                continue  # comments and blank lines inside an instruction are left out
            part, more = _continues(nxt, escape)
            joined += part
        keyword_written, *tail = joined.strip().split(None, 1)
        rest = tail[0].strip() if tail else ""
        instruction = Instruction(keyword_written.upper(), keyword_written, rest, start + 1)
        if instruction.keyword in ("RUN", "COPY", "ADD"):
            for word in _raw_words(instruction.rest):
                marker = heredoc_marker(word)
                if marker is None:
                    continue
                name, expand, chomp = marker
                body: list[str] = []
                while True:
                    if i >= len(lines):
                        raise _error(path, start + 1, f"{instruction.keyword}: the heredoc <<{name} is never "
                                     f"terminated", f"end it with a line holding only {name}")
                    candidate = lines[i]
                    i += 1
                    if (candidate.lstrip("\t") if chomp else candidate) == name:
                        break
                    body.append(candidate + "\n")
                instruction.heredocs.append(Heredoc(name, "".join(body), expand, chomp))
        out.append(instruction)
    return Parsed(escape, out)


def split_flags(rest: str) -> tuple[list[tuple[str, str | None]], str]:
    """The leading --name[=value] words (quotes removed) and what follows them."""
    flags: list[tuple[str, str | None]] = []
    pos = 0
    while True:
        while pos < len(rest) and rest[pos].isspace():
            pos += 1
        if not rest.startswith("--", pos):
            return flags, rest[pos:]
        word: list[str] = []
        quote = ""
        while pos < len(rest):
            ch = rest[pos]
            if not quote and ch.isspace():
                break
            pos += 1
            if quote:
                if ch == quote:
                    quote = ""
                    continue
            elif ch in "'\"":
                quote = ch
                continue
            if ch == "\\" and pos < len(rest):
                ch = rest[pos]
                pos += 1
            word.append(ch)
        text = "".join(word)
        if text == "--":
            return flags, rest[pos:].lstrip()
        name, eq, value = text[2:].partition("=")
        flags.append((name.lower(), value if eq else None))


def _json_form(text: str) -> list[str] | None:
    text = text.strip()
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _name_values(text: str, escape: str) -> list[str]:
    """BuildKit's parseWords: blank-separated words, quotes and escapes kept for the value's expansion."""
    words: list[str] = []
    word: list[str] = []
    quote = ""
    blank_ok = False
    i = 0
    in_word = False
    while i < len(text):
        ch = text[i]
        if not in_word and not quote:
            if ch.isspace():
                i += 1
                continue
            in_word = True
        if quote and ch == quote:
            quote = ""
        elif not quote and ch.isspace():
            if blank_ok or word:
                words.append("".join(word))
            word, blank_ok, in_word = [], False, False
            i += 1
            continue
        elif not quote and ch in "'\"":
            quote, blank_ok = ch, True
        elif ch == escape and quote != "'":  # in single quotes the escape is a character like others
            if i + 1 >= len(text):
                i += 1
                continue
            word.append(ch)
            i += 1
            ch = text[i]
        word.append(ch)
        i += 1
    if in_word and (blank_ok or word):
        words.append("".join(word))
    return words


def key_values(text: str, escape: str, keyword: str) -> list[tuple[str, str]]:
    """ENV/LABEL arguments: `k=v k2="v 2"` pairs or the legacy `key value` form (values unexpanded)."""
    words = _name_values(text, escape)
    if not words:
        raise _Failure(f"{keyword} needs at least one key=value", f"for example {keyword} KEY=value")
    if "=" not in words[0]:
        parts = text.strip().split(None, 1)
        if len(parts) < 2:
            raise _Failure(f"{keyword} needs two arguments (KEY VALUE) or KEY=VALUE pairs",
                           f"for example {keyword} KEY=value")
        return [(parts[0], parts[1])]
    out = []
    for word in words:
        if "=" not in word:
            raise _Failure(f"{keyword}: can't find = in {word!r}: write name=value", "quote values that hold blanks")
        key, _, value = word.partition("=")
        out.append((key, value))
    return out


# --- .dockerignore and globs --------------------------------------------------------------------------------


def _glob_body(pattern: str, ignore_file: bool) -> str:
    """A glob as a regular expression (unanchored): * and ? stay within a path element, [..] classes,
    \\ escapes. `ignore_file`: moby/patternmatcher's dialect of .dockerignore (** crosses elements,
    [!..] negates too, a [ without its ] is a character); else Go's filepath.Match (that is an error)."""
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*" and ignore_file and pattern.startswith("**", i):
            i += 2
            if i < len(pattern) and pattern[i] == "/":
                i += 1
            out.append(".*" if i >= len(pattern) else "(.*/)?")
            continue
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            negations = ("^", "!") if ignore_file else ("^",)
            end = pattern.find("]", i + 2 if pattern[i + 1:i + 2] in negations else i + 1)
            if end < 0 and not ignore_file:
                raise _Failure(f"{pattern!r}: a [ without its ]", "close the character class")
            if end < 0:
                out.append(re.escape(ch))
            else:
                body = pattern[i + 1:end]
                if ignore_file and body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


def _pattern_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern (moby/patternmatcher) as a regular expression of the whole path."""
    return re.compile("^" + _glob_body(pattern, ignore_file=True) + "$", re.DOTALL)


@dataclass
class Ignore:
    """The patterns of a .dockerignore/.containerignore, `!` exceptions included; last match wins."""

    patterns: list[str] = field(default_factory=list)
    source: str = ""

    def __post_init__(self) -> None:
        self._compiled: list[tuple[bool, re.Pattern]] = []
        for p in self.patterns:
            exception = p.startswith("!")
            body = p[1:] if exception else p
            self._compiled.append((exception, _pattern_regex(body)))

    def excluded(self, rel: str) -> bool:
        """Whether a path relative to the context (no leading /) is left out; a match of a parent counts."""
        if not self._compiled or rel in ("", "."):
            return False
        parents = rel.split("/")[:-1]
        matched = False
        for exception, regex in self._compiled:
            if exception != matched:
                continue
            hit = regex.match(rel) is not None
            if not hit:
                for n in range(1, len(parents) + 1):
                    if regex.match("/".join(parents[:n])):
                        hit = True
                        break
            if hit:
                matched = not exception
        return matched


def read_ignore(file: Path, context: Path) -> Ignore:
    """<file>.containerignore or <file>.dockerignore beside the Containerfile, else the context's
    .containerignore or .dockerignore: the first that exists."""
    for candidate in (file.with_name(file.name + ".containerignore"), file.with_name(file.name + ".dockerignore"),
                      context / ".containerignore", context / ".dockerignore"):
        if candidate.is_file():
            data = candidate.read_bytes()[:MAX_FILE_BYTES].decode("utf-8", "replace")
            return Ignore(ignore_patterns(data), str(candidate))
    return Ignore()


def ignore_patterns(text: str) -> list[str]:
    out = []
    for line in text.removeprefix("\ufeff").splitlines():
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        exception = pattern.startswith("!")
        if exception:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = posixpath.normpath(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern.lstrip("/")
        out.append(("!" if exception else "") + pattern)
    return out


def _has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _glob_regex(pattern: str) -> re.Pattern:
    """Go's filepath.Match for one path element: * and ? never match /, [^...] negates, \\ escapes."""
    return re.compile(_glob_body(pattern, ignore_file=False) + r"\Z", re.DOTALL)


def glob_context(context: Path, pattern: str, ignore: Ignore) -> list[str]:
    """Paths relative to the context that match `pattern` (element by element, sorted), ignored ones left out."""
    matches = [""]
    for element in pattern.split("/"):
        if not element:
            continue
        found = []
        for parent in matches:
            directory = context / parent if parent else context
            if not directory.is_dir() or directory.is_symlink():
                continue
            if _has_glob(element):
                regex = _glob_regex(element)
                names = sorted(n for n in os.listdir(directory) if regex.match(n))
            else:
                names = [element] if os.path.lexists(directory / element) else []
            found += [f"{parent}/{n}" if parent else n for n in names]
        matches = found
    return [m for m in matches if m and not ignore.excluded(m)]


def _summary(context: Path, rels: list[str], ignore: Ignore) -> str:
    """buildah's content summary of what a COPY takes from the context: file:SHA, dir:SHA or multi:SHA.
    file: the sha256 of the content; dir: of its sorted listing (path, type, mode, content sha256 or
    link target) after the ignore file; multi: of the parts' summaries, in order."""
    parts = []
    for rel in rels:
        path = context / rel
        st = path.lstat()
        if stat.S_ISDIR(st.st_mode):
            listing = hashlib.sha256()
            for sub, entry in _walk(path):
                relative = sub if rel == "." else f"{rel}/{sub}"
                if ignore.excluded(relative):
                    continue
                listing.update(f"{sub}\0{_describe(entry)}\n".encode("utf-8", "surrogateescape"))
            parts.append(f"dir:{listing.hexdigest()}")
        else:
            parts.append(f"file:{_file_digest(path, st)}")
    if len(parts) == 1:
        return parts[0]
    return "multi:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _walk(root: Path) -> Iterator[tuple[str, Path]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = Path(dirpath) / name
            yield str(full.relative_to(root)), full


def _describe(path: Path) -> str:
    st = path.lstat()
    mode = f"{stat.S_IMODE(st.st_mode):o}"
    if stat.S_ISLNK(st.st_mode):
        return f"symlink\0{mode}\0{os.readlink(path)}"
    if stat.S_ISDIR(st.st_mode):
        return f"dir\0{mode}\0"
    return f"file\0{mode}\0{_file_digest(path, st)}"


def _file_digest(path: Path, st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode):
        return hashlib.sha256(os.readlink(path).encode("utf-8", "surrogateescape")).hexdigest()
    with open(path, "rb") as f:
        return sha256_stream(f)[0]


# --- base images ---------------------------------------------------------------------------------------------

def resolve_reference(text: str, registry: str | None) -> str:
    """A repro reference as given (docker://, oci:, docker-archive:, ...); a plain NAME[:TAG][@DIGEST] as
    docker://REGISTRY/NAME:TAG (Docker's convention: library/ for one-element names on docker.io, whose
    registry answers at registry-1.docker.io; a first element with a dot or port, or localhost, is a host)."""
    if is_reference(text):
        return text
    first, sep, _ = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        host, path = first, text[len(first) + 1:]
    else:
        host, path = registry or DEFAULT_REGISTRY, text
    if host in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        host = "registry-1.docker.io"
        if "/" not in path:
            path = "library/" + path
    if "@" not in path and ":" not in path.rsplit("/", 1)[-1]:
        path += ":latest"
    return f"docker://{host}/{path}"


@dataclass
class BaseInfo:
    """What a stage inherits from its base: the config fields the translation reads."""

    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str = ""
    shell: list[str] = field(default_factory=lambda: list(DEFAULT_SHELL))
    triggers: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)


def _env_dict(items) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        if isinstance(item, str):
            key, _, value = item.partition("=")
            out[key] = value
    return out


def read_base(reference: str, platform: str | None = None) -> BaseInfo:
    """The config of a base image (only the manifest and config are read); of an index, the image for
    `platform` (os/arch[/variant]; this machine's by default)."""
    image = open_image(reference, Options(platform=Platform.parse(platform) if platform else None))
    raw = parse_json(image.raw_config, f"{reference}: config")
    config = raw.get("config") if isinstance(raw, dict) else None
    config = config if isinstance(config, dict) else {}
    labels = config.get("Labels") if isinstance(config.get("Labels"), dict) else {}
    labels = {str(k): str(v) for k, v in labels.items()}
    triggers = [t for t in config.get("OnBuild") or [] if isinstance(t, str)]
    if labels.get(ONBUILD_LABEL):
        try:
            stored = json.loads(labels[ONBUILD_LABEL])
        except ValueError:
            stored = []
        triggers += [t for t in stored if isinstance(t, str)] if isinstance(stored, list) else []
    shell = config.get("Shell")
    workdir, user = config.get("WorkingDir"), config.get("User")
    return BaseInfo(
        env=_env_dict(config.get("Env")),
        workdir=workdir if isinstance(workdir, str) and workdir.startswith("/") else "/",
        user=user if isinstance(user, str) else "",
        shell=list(shell) if isinstance(shell, list) and shell and all(isinstance(s, str) for s in shell)
        else list(DEFAULT_SHELL),
        triggers=triggers[:MAX_TRIGGERS],
        labels=labels,
    )


# --- stages ----------------------------------------------------------------------------------------------------


@dataclass
class Stage:
    index: int
    name: str  # as given after AS (lower case), or its index
    named: bool
    line: int
    image: str  # FROM's argument, expanded
    platform: str | None
    instructions: list[Instruction]
    base_stage: int | None = None
    deps: set[int] = field(default_factory=set)


@dataclass
class StageResult:
    spec: dict  # base, steps, config
    lines: dict[str, int]
    info: BaseInfo  # what a stage built FROM this one inherits


def _platform_args(target=None) -> dict[str, str]:
    """BuildKit's automatic platform ARGs: TARGET* name the platform being built (--platform, or this
    machine's), BUILD* this machine's, in every stage whatever its FROM --platform."""
    host = Platform.host()
    out = {}
    for prefix, platform in (("TARGET", target or host), ("BUILD", host)):
        out[f"{prefix}PLATFORM"] = str(platform)
        out[f"{prefix}OS"] = platform.os
        out[f"{prefix}ARCH"] = platform.architecture
        out[f"{prefix}VARIANT"] = platform.variant
    return out


_STAGE_NAME = re.compile(r"^[a-z][a-z0-9-_.]*$")
_ACCOUNT = re.compile(r"([0-9]+|[a-z_][a-z0-9_.-]*)(:([0-9]+|[a-z_][a-z0-9_.-]*))?")  # what the builder looks up


class Translator:
    def __init__(self, path: Path, text: str, context: Path, build_args: dict[str, str], target: str | None,
                 registry: str | None, base_reader: Callable[..., BaseInfo] = read_base, platform=None) -> None:
        self.path = path
        self.platform = platform  # the platform being built (--platform), None for this machine's
        self.context = context
        self.build_args = dict(build_args)
        self.target = target
        self.registry = registry
        self.read_base = base_reader
        self.parsed = parse(text, path)
        self.lexer = _Lexer(self.parsed.escape)
        self.used_args: set[str] = set()
        self.auto = _platform_args(platform)
        self.meta: dict[str, str | None] = {}
        self.stages: list[Stage] = []
        self._ignore: Ignore | None = None
        self._bases: dict[tuple[str, str | None], BaseInfo] = {}
        self.results: dict[int, StageResult] = {}

    # --- helpers ---
    def fail(self, line: int, message: str, hint: str = "") -> ReproError:
        return _error(self.path, line, message, hint)

    @property
    def ignore(self) -> Ignore:
        if self._ignore is None:
            self._ignore = read_ignore(self.path, self.context)
        return self._ignore

    def _meta_lookup(self, name: str) -> str | None:
        if name in self.meta:
            return self.meta[name]
        return self.auto.get(name)

    def _word(self, text: str, lookup: Lookup, line: int, keyword: str) -> str:
        try:
            return self.lexer.word(text, lookup)
        except _Failure as exc:
            raise self.fail(line, f"{keyword}: {exc.message}", exc.hint) from None

    def _words(self, text: str, lookup: Lookup, line: int, keyword: str) -> list[str]:
        try:
            return self.lexer.words(text, lookup)
        except _Failure as exc:
            raise self.fail(line, f"{keyword}: {exc.message}", exc.hint) from None

    def _flags(self, ins: Instruction) -> tuple[dict[str, list[str | None]], str]:
        flags, remainder = split_flags(ins.rest)
        allowed = FLAGS.get(ins.keyword, set())
        out: dict[str, list[str | None]] = {}
        for name, value in flags:
            if name not in allowed:
                known = ", ".join(f"--{f}" for f in sorted(allowed)) or "none"
                raise self.fail(ins.line, f"{ins.keyword}: unknown flag --{name}", f"{ins.keyword} takes: {known}")
            if name in out and name not in REPEATABLE:
                raise self.fail(ins.line, f"{ins.keyword}: --{name} is given twice", "give it once")
            out.setdefault(name, []).append(value)
        return out, remainder

    # --- the whole file ---
    def translate(self) -> tuple[dict, dict[str, int]]:
        instructions = self.parsed.instructions
        first_from = next((i for i, ins in enumerate(instructions) if ins.keyword == "FROM"), None)
        for ins in instructions:
            self._check(ins)
        if first_from is None:
            line = instructions[-1].line if instructions else 1
            raise self.fail(line, "no FROM instruction", "a Containerfile starts with FROM IMAGE (or FROM scratch)")
        for ins in instructions[:first_from]:
            if ins.keyword != "ARG":
                raise self.fail(ins.line, f"{ins.keyword} before the first FROM (only ARG may come before it)",
                                "move it after FROM")
            for name, default in self._arg_pairs(ins, self._meta_lookup):
                self.meta[name] = self._arg_value(name, default)
        current: Stage | None = None
        for ins in instructions[first_from:]:
            if ins.keyword == "FROM":
                current = self._stage(ins, len(self.stages))
                self.stages.append(current)
            else:
                assert current is not None
                current.instructions.append(ins)
        for stage in self.stages:
            self._dependencies(stage)
        target = self._target()
        needed = self._needed(target)
        for stage in self.stages:
            if stage.index in needed:
                self.results[stage.index] = self._translate_stage(stage)
        raw: dict = {"spec": 1}
        lines: dict[str, int] = {}
        epoch = self.build_args.get("SOURCE_DATE_EPOCH", self.meta.get("SOURCE_DATE_EPOCH"))
        if epoch is not None:  # BuildKit's build argument; a global ARG's default too (repro's addition)
            if not epoch.isdigit() or int(epoch) > 9223372036:
                raise ReproError(f"{self.path}: SOURCE_DATE_EPOCH={epoch!r}: expected seconds since 1970",
                                 "for example --build-arg SOURCE_DATE_EPOCH=1700000000")
            raw["source_date_epoch"] = int(epoch)
            self.used_args.add("SOURCE_DATE_EPOCH")
        top = self.results[target.index]
        raw.update(top.spec)
        lines.update(top.lines)
        stages = [s for s in self.stages if s.index in needed and s.index != target.index]
        if stages:
            raw["stages"] = []
            for n, stage in enumerate(stages):
                result = self.results[stage.index]
                raw["stages"].append({"name": stage.name, **result.spec})
                lines[f"stages[{n}]"] = stage.line
                lines.update({f"stages[{n}].{k}": v for k, v in result.lines.items()})
        unused = sorted(set(self.build_args) - self.used_args - set(PROXY_ARGS))
        if unused:
            log.warning("%s: build arguments not declared by any ARG of the stages built: %s", self.path,
                        ", ".join(unused))
        return raw, lines

    def _check(self, ins: Instruction) -> None:
        """What can be refused without building: unknown instructions and flags, malformed forms."""
        if ins.keyword not in INSTRUCTIONS:
            raise self.fail(ins.line, f"unknown instruction {ins.written}",
                            "repro reads the Dockerfile instructions listed in README.md (Containerfiles)")
        flags, rest = self._flags(ins)
        if not rest.strip() and not ins.heredocs:
            raise self.fail(ins.line, f"{ins.keyword} needs an argument", "see README.md (Containerfiles)")
        if ins.keyword == "RUN":
            for value in flags.get("mount", []):
                self._mount(ins, value)
            network = (flags.get("network") or [None])[0]
            if network is not None and network not in ("none", "default"):
                raise self.fail(ins.line, f"RUN --network={network} is not supported",
                                "use --network=default (the default) or --network=none")
            for name in ("security", "device"):
                if name in flags:
                    raise self.fail(ins.line, f"RUN --{name} is not supported", "repro runs steps confined, without "
                                    "extra devices or privileges")
        if ins.keyword in ("COPY", "ADD"):
            for name in ("parents", "keep-git-dir", "unpack"):
                if name in flags:
                    raise self.fail(ins.line, f"{ins.keyword} --{name} is not supported", "leave it out")
        if ins.keyword == "SHELL" and not _json_form(rest):
            raise self.fail(ins.line, "SHELL needs the JSON form", 'for example SHELL ["/bin/bash", "-c"]')
        if ins.keyword == "ONBUILD":
            inner = self._trigger(rest, ins)
            self._check(inner)
        if ins.keyword == "HEALTHCHECK":
            kind = rest.split(None, 1)[0].upper()
            if kind not in ("CMD", "NONE"):
                raise self.fail(ins.line, f"HEALTHCHECK {kind}: expected CMD or NONE", "HEALTHCHECK CMD command")

    def _trigger(self, text: str, ins: Instruction) -> Instruction:
        keyword_written, _, rest = text.strip().partition(" ")
        inner = Instruction(keyword_written.upper(), keyword_written, rest.strip(), ins.line)
        if inner.keyword in ("ONBUILD", "FROM", "MAINTAINER"):
            raise self.fail(ins.line, f"ONBUILD {inner.keyword} is not allowed", "Docker refuses it too")
        if inner.keyword in ("RUN", "COPY", "ADD") and any(heredoc_marker(w) for w in _raw_words(inner.rest)):
            raise self.fail(ins.line, "ONBUILD with a heredoc is not supported", "write the trigger on one line")
        return inner

    # --- ARG ---
    def _arg_pairs(self, ins: Instruction, lookup: Lookup) -> list[tuple[str, str | None]]:
        out: list[tuple[str, str | None]] = []
        for word in _name_values(ins.rest, self.parsed.escape):
            name, eq, value = word.partition("=")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise self.fail(ins.line, f"ARG {name!r}: not a variable name", "letters, digits and _")
            out.append((name, self._word(value, lookup, ins.line, "ARG") if eq else None))
        return out

    def _arg_value(self, name: str, default: str | None) -> str | None:
        if name in self.build_args:
            self.used_args.add(name)
            return self.build_args[name]
        return default

    # --- stages and what they need ---
    def _stage(self, ins: Instruction, index: int) -> Stage:
        flags, rest = self._flags(ins)
        words = rest.split()
        if len(words) == 3 and words[1].lower() == "as":
            name = words[2].lower()
            if not _STAGE_NAME.match(name):
                raise self.fail(ins.line, f"FROM ... AS {words[2]}: not a valid stage name",
                                "a letter, then letters, digits, '-', '_' or '.'")
            if any(s.named and s.name == name for s in self.stages):
                raise self.fail(ins.line, f"the stage name {name!r} is used twice", "give each stage its own name")
        elif len(words) == 1:
            name = ""
        else:
            raise self.fail(ins.line, "FROM takes an image and optionally AS NAME", "FROM IMAGE [AS NAME]")
        image = self._word(words[0], self._meta_lookup, ins.line, "FROM")
        if not image:
            raise self.fail(ins.line, f"FROM {words[0]}: the base name is empty", "give it with --build-arg or ARG")
        platform = None
        if flags.get("platform"):
            platform = self._word(flags["platform"][0] or "", self._meta_lookup, ins.line, "FROM --platform")
            try:
                wanted = Platform.parse(platform)
            except ReproError:
                raise self.fail(ins.line, f"FROM --platform={platform}: expected os/arch[/variant]",
                                "for example --platform=linux/amd64 or --platform=$BUILDPLATFORM") from None
            if wanted.os != "linux" or not re.fullmatch(r"[a-z0-9_]+", wanted.architecture) or not re.fullmatch(
                    r"[a-z0-9]*", wanted.variant):
                raise self.fail(ins.line, f"FROM --platform={platform}: repro builds Linux images only "
                                "(os/arch[/variant] in lower case)", "for example --platform=linux/arm64")
            platform = str(wanted)  # built for it, its RUN steps emulated if it is not this machine's
        stage = Stage(index, name or str(index), bool(name), ins.line, image, platform, [])
        base = next((s for s in self.stages if s.named and s.name == image.lower()), None)
        if base is not None:
            stage.base_stage = base.index
            stage.deps.add(base.index)
            inherited = base.platform  # a stage's image is for the platform it was built for (None: the one built)
            if platform is not None and inherited != platform:
                raise self.fail(ins.line, f"FROM --platform={platform} {image}: the stage {base.name} is built for "
                                f"{inherited or 'the platform being built'}",
                                f"drop --platform here, or give it on the FROM of {base.name}")
            stage.platform = inherited
        return stage

    def _stage_ref(self, value: str, current: Stage) -> Stage | None:
        """The earlier stage named (or numbered) by --from, or None for an image."""
        if value.isdigit():
            index = int(value)
            if index >= current.index:
                raise _Failure(f"--from={value}: stage {index} is not defined before this one",
                               "refer to an earlier stage")
            return self.stages[index]
        for stage in self.stages:
            if stage.named and stage.name == value.lower():
                if stage.index >= current.index:
                    raise _Failure(f"--from={value}: the stage is not defined before this one",
                                   "refer to an earlier stage")
                return stage
        return None

    def _dependencies(self, stage: Stage) -> None:
        for ins in stage.instructions:
            if ins.keyword not in ("COPY",):
                continue
            flags, _ = self._flags(ins)
            if flags.get("from"):
                value = self._word(flags["from"][0] or "", self._meta_lookup, ins.line, "COPY --from")
                try:
                    ref = self._stage_ref(value, stage)
                except _Failure as exc:
                    raise self.fail(ins.line, f"COPY {exc.message}", exc.hint) from None
                if ref is not None:
                    stage.deps.add(ref.index)

    def _target(self) -> Stage:
        if self.target is None:
            return self.stages[-1]
        for stage in self.stages:
            if stage.named and stage.name == self.target.lower():
                return stage
        names = ", ".join(s.name for s in self.stages if s.named) or "none"
        raise ReproError(f"{self.path}: --target {self.target}: no stage of that name (named stages: {names})",
                         "name a stage given with FROM ... AS NAME")

    def _needed(self, target: Stage) -> set[int]:
        needed: set[int] = set()
        todo = [target.index]
        while todo:
            index = todo.pop()
            if index in needed:
                continue
            needed.add(index)
            todo.extend(self.stages[index].deps)
        return needed

    # --- one stage ---
    def _base_info(self, stage: Stage) -> tuple[dict, BaseInfo]:
        if stage.base_stage is not None:
            parent = self.results[stage.base_stage].info
            return {"stage": self.stages[stage.base_stage].name}, BaseInfo(
                dict(parent.env), parent.workdir, parent.user, list(parent.shell), list(parent.triggers),
                dict(parent.labels))
        if stage.image.lower() == "scratch":
            return {"scratch": True}, BaseInfo()
        reference = resolve_reference(stage.image, self.registry)
        platform = stage.platform or (str(self.platform) if self.platform is not None else None)
        if (reference, platform) not in self._bases:
            try:  # the config of the base's image for the stage's platform (an index has one per platform)
                self._bases[reference, platform] = (self.read_base(reference) if platform is None
                                                    else self.read_base(reference, platform))
            except ReproError as exc:
                raise self.fail(stage.line, f"FROM {stage.image}: cannot read {reference}"
                                f"{f' for {platform}' if platform else ''}: {exc.message}",
                                exc.hint or "check the reference") from None
        info = self._bases[reference, platform]
        return {"image": reference}, BaseInfo(dict(info.env), info.workdir, info.user, list(info.shell),
                                               list(info.triggers), dict(info.labels))

    def _translate_stage(self, stage: Stage) -> StageResult:
        base, info = self._base_info(stage)
        state = _StageState(self, stage, info)
        lines: dict[str, int] = {"base": stage.line}
        inherited = list(info.triggers)
        info.triggers = []
        for text in inherited:  # the base's ONBUILD triggers run first, as if written after FROM
            outer = Instruction("ONBUILD", "ONBUILD", text, stage.line)
            trigger = self._trigger(text, outer)
            self._check(trigger)
            state.dispatch(trigger)
        for ins in stage.instructions:
            state.dispatch(ins)
        spec: dict = {"base": base, "steps": state.steps}
        if stage.platform is not None:  # FROM --platform: built for it whatever the build's platform
            spec["platform"] = stage.platform
            lines["platform"] = stage.line
        if state.onbuild:
            state.config.setdefault("labels", {})[ONBUILD_LABEL] = json.dumps(state.onbuild)
            state.lines["config.labels"] = state.onbuild_line
        elif inherited or info.labels.get(ONBUILD_LABEL):
            state.config.setdefault("labels", {})[ONBUILD_LABEL] = "[]"  # consumed: a child does not run them again
        if state.config:
            spec["config"] = state.config
        for i, line in enumerate(state.step_lines):
            lines[f"steps[{i}]"] = line
        lines.update(state.lines)
        labels = {**info.labels, **state.config.get("labels", {})}
        result_info = BaseInfo(dict(state.env), state.workdir, state.user, list(state.shell), list(state.onbuild),
                               labels)
        return StageResult(spec, lines, result_info)

    # --- RUN --mount ---
    def _mount(self, ins: Instruction, value: str | None) -> dict[str, str]:
        try:
            fields = next(csv.reader([value or ""]))
        except (csv.Error, StopIteration):
            fields = []
        options: dict[str, str] = {}
        for item in fields:
            key, eq, val = item.partition("=")
            key = key.strip().lower()
            options[key] = val if eq else "true"
        kind = options.get("type", "bind")
        if kind != "cache":
            raise self.fail(ins.line, f"RUN --mount=type={kind} is not supported (only type=cache)",
                            "copy what the step needs with COPY, or use --mount=type=cache,target=DIR")
        target = options.get("target") or options.get("dst") or options.get("destination")
        if not target:
            raise self.fail(ins.line, "RUN --mount=type=cache needs target=DIR",
                            "--mount=type=cache,target=/root/.cache")
        for key in options:
            if key not in ("type", "target", "dst", "destination", "id", "sharing"):
                raise self.fail(ins.line, f"RUN --mount=type=cache: the option {key} is not supported",
                                "repro takes type, target, id and sharing (its caches are kept per target)")
        return {"target": target}


@dataclass
class _StageState:
    """The running state of one stage while its instructions are dispatched."""

    tr: Translator
    stage: Stage
    base: BaseInfo
    env: dict[str, str] = field(init=False)
    args: dict[str, str | None] = field(default_factory=dict)
    steps: list[dict] = field(default_factory=list)
    step_lines: list[int] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    onbuild: list[str] = field(default_factory=list)
    onbuild_line: int = 0

    workdir: str = field(init=False)
    user: str = field(init=False)
    shell: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.env = dict(self.base.env)
        self.workdir = self.base.workdir or "/"
        self.user = self.base.user
        self.shell = list(self.base.shell)

    # lookups
    def lookup(self, name: str) -> str | None:
        if name in self.env:
            return self.env[name]
        return self.args.get(name)

    def fail(self, ins: Instruction, message: str, hint: str = "") -> ReproError:
        return self.tr.fail(ins.line, message, hint)

    def word(self, ins: Instruction, text: str) -> str:
        return self.tr._word(text, self.lookup, ins.line, ins.keyword)

    def set_config(self, ins: Instruction, key: str, value) -> None:
        self.config[key] = value
        self.lines[f"config.{key}"] = ins.line

    def add_step(self, ins: Instruction, step: dict) -> None:
        self.steps.append(step)
        self.step_lines.append(ins.line)

    def dispatch(self, ins: Instruction) -> None:
        handler = getattr(self, "do_" + ins.keyword.lower())
        try:
            handler(ins)
        except _Failure as exc:
            raise self.fail(ins, f"{ins.keyword}: {exc.message}", exc.hint) from None

    # instructions
    def do_from(self, ins: Instruction) -> None:  # pragma: no cover - stages are split on FROM
        raise self.fail(ins, "FROM inside a stage", "")

    def do_arg(self, ins: Instruction) -> None:
        for name, default in self.tr._arg_pairs(ins, self.lookup):
            if default is None and name not in self.tr.build_args:
                default = self.tr.meta.get(name) if name in self.tr.meta else self.tr.auto.get(name)
            self.args[name] = self.tr._arg_value(name, default)

    def do_env(self, ins: Instruction) -> None:
        pairs = self._pairs(ins)
        for key, value in pairs:
            self.env[key] = value
            self.config.setdefault("env", {})[key] = value
        self.lines["config.env"] = ins.line

    def do_label(self, ins: Instruction) -> None:
        for key, value in self._pairs(ins):
            self.config.setdefault("labels", {})[key] = value
        self.lines["config.labels"] = ins.line

    def _pairs(self, ins: Instruction) -> list[tuple[str, str]]:
        out = []
        for key, value in key_values(ins.rest, self.tr.parsed.escape, ins.keyword):
            key = self.word(ins, key)
            if not key:
                raise self.fail(ins, f"{ins.keyword} names can not be blank", "KEY=value")
            out.append((key, self.word(ins, value)))
        return out

    def do_maintainer(self, ins: Instruction) -> None:
        log.warning("%s:%d: MAINTAINER is deprecated; kept as the label maintainer", self.tr.path, ins.line)
        self.config.setdefault("labels", {})["maintainer"] = ins.rest
        self.lines["config.labels"] = ins.line

    def do_workdir(self, ins: Instruction) -> None:
        value = self.word(ins, ins.rest)
        path = posixpath.normpath(posixpath.join(self.workdir, value))
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
        self.workdir = path
        self.set_config(ins, "workdir", path)
        if path != "/":  # made for the current USER, as buildah and BuildKit make it
            owner = self.user or "0:0"
            if not _ACCOUNT.fullmatch(owner):
                raise self.fail(ins, f"WORKDIR as USER {owner}: repro takes uid[:gid] or lower-case user and group "
                                "names of the image", "give USER as numbers, e.g. USER 1000:1000")
            self.add_step(ins, {"directory": {"dst": path, "mode": "0755", "owner": owner},
                                "history": f"/bin/sh -c #(nop) {ins.original}"})

    def do_user(self, ins: Instruction) -> None:
        self.user = self.word(ins, ins.rest)
        self.set_config(ins, "user", self.user)

    def do_stopsignal(self, ins: Instruction) -> None:
        value = self.word(ins, ins.rest)
        if not re.fullmatch(r"(SIG)?[A-Z0-9]+([+-][0-9]+)?|[0-9]+", value):
            raise self.fail(ins, f"STOPSIGNAL {value!r}: not a signal", "for example STOPSIGNAL SIGTERM")
        self.set_config(ins, "stop_signal", value)

    def do_expose(self, ins: Instruction) -> None:
        ports = self.config.get("exposed_ports", [])
        for word in _split_blanks(ins.rest):
            value = self.word(ins, word)
            match = re.fullmatch(r"(\d+)(?:-(\d+))?(?:/([A-Za-z]+))?", value)
            proto = (match.group(3) or "tcp").lower() if match else ""
            if not match or proto not in ("tcp", "udp", "sctp"):
                raise self.fail(ins, f"EXPOSE {value!r}: expected PORT[/tcp|udp|sctp] or FIRST-LAST[/PROTO]",
                                "for example EXPOSE 8080/tcp")
            first, last = int(match.group(1)), int(match.group(2) or match.group(1))
            if not 0 < first <= last <= 65535 or last - first > 1024:
                raise self.fail(ins, f"EXPOSE {value!r}: ports go from 1 to 65535 (at most 1025 in a range)",
                                "give a smaller range")
            for port in range(first, last + 1):
                item = f"{port}/{proto}"
                if item not in ports:
                    ports.append(item)
        self.set_config(ins, "exposed_ports", ports)

    def do_volume(self, ins: Instruction) -> None:
        form = _json_form(ins.rest)
        values = [self.word(ins, v) for v in (form if form is not None else _split_blanks(ins.rest))]
        volumes = self.config.get("volumes", [])
        for value in values:
            if not value.startswith("/"):
                raise self.fail(ins, f"VOLUME {value!r}: not an absolute path", "for example VOLUME /data")
            if value not in volumes:
                volumes.append(value)
        self.set_config(ins, "volumes", volumes)

    def do_shell(self, ins: Instruction) -> None:
        form = _json_form(ins.rest)
        if not form:
            raise self.fail(ins, "SHELL needs a non-empty JSON list", 'for example SHELL ["/bin/bash", "-c"]')
        self.shell = form

    def _command(self, ins: Instruction) -> list[str]:
        form = _json_form(ins.rest)
        return form if form is not None else [*self.shell, ins.rest]

    def do_cmd(self, ins: Instruction) -> None:
        self.set_config(ins, "cmd", self._command(ins))

    def do_entrypoint(self, ins: Instruction) -> None:
        self.set_config(ins, "entrypoint", self._command(ins))

    def do_healthcheck(self, ins: Instruction) -> None:
        if ins.rest.strip().upper() != "NONE":
            log.warning("%s:%d: HEALTHCHECK is left out: the OCI image config has no field for it (buildah "
                        "drops it from OCI images too)", self.tr.path, ins.line)

    def do_onbuild(self, ins: Instruction) -> None:
        self.tr._trigger(ins.rest, ins)
        self.onbuild.append(ins.rest.strip())
        self.onbuild_line = ins.line

    # --- RUN ---
    def run_env(self) -> dict[str, str]:
        env = dict(self.env)
        for name, value in self.args.items():
            if value is not None and name not in env:
                env[name] = value
        for name in PROXY_ARGS:
            if name in self.tr.build_args and name not in env:
                env[name] = self.tr.build_args[name]
        env.setdefault("PATH", DEFAULT_PATH)
        return env

    def history_args(self) -> str:
        """buildah's `|N K=V ...` prefix: the stage's ARGs that have values (an ENV of the same name wins), sorted."""
        pairs = sorted(f"{k}={self.env.get(k, v)}" for k, v in self.args.items() if v is not None)
        return f"|{len(pairs)} {' '.join(pairs)} " if pairs else ""

    def do_run(self, ins: Instruction) -> None:
        flags, rest = self.tr._flags(ins)
        caches = []
        for value in flags.get("mount", []):
            expanded = self.tr._word(value or "", self.lookup, ins.line, "RUN --mount")
            target = self.tr._mount(ins, expanded)["target"]
            cache = posixpath.normpath(posixpath.join(self.workdir, target))
            if cache.strip("/") == "":
                raise self.fail(ins, f"RUN --mount=type=cache,target={target}: a cache cannot be the root",
                                "mount it on a directory such as /root/.cache")
            caches.append("/" + cache.lstrip("/"))
        network = (flags.get("network") or ["default"])[0] != "none"
        form = _json_form(rest)
        history = ins.rest
        if form is not None:
            if not form:
                raise self.fail(ins, "RUN [] runs nothing", "give a command")
            argv = form
        elif ins.heredocs:
            words = _raw_words(rest)
            if len(words) == 1 and len(ins.heredocs) == 1:
                doc = ins.heredocs[0]
                argv = self._heredoc_script(doc)
            else:
                full = rest + "".join(f"\n{doc.body}{doc.name}" for doc in ins.heredocs)
                argv = [*self.shell, full]
            history = ins.rest + "".join(f"\n{doc.body}{doc.name}" for doc in ins.heredocs)
        else:
            argv = [*self.shell, rest]
        step: dict = {"run": argv, "network": network, "env": self.run_env(), "workdir": self.workdir}
        if self.user and not _ACCOUNT.fullmatch(self.user):
            raise self.fail(ins, f"RUN as USER {self.user}: repro runs steps as uid[:gid] or as lower-case user "
                            "and group names of the image", "give USER as numbers, e.g. USER 1000:1000")
        if self.user:
            step["user"] = self.user
        if caches:
            step["cache"] = caches
        shell_words = " ".join(self.shell) if self.shell != DEFAULT_SHELL else "/bin/sh -c"
        step["history"] = f"{self.history_args()}{shell_words} {history}"
        self.add_step(ins, step)

    def _heredoc_script(self, doc: Heredoc) -> list[str]:
        """RUN <<EOF: the body is the shell's script; with a #! line, the named interpreter runs it (from a
        file descriptor: BuildKit mounts it as a file, repro leaves no file behind)."""
        content = doc.content
        if not content.startswith("#!"):
            return [*self.shell, content]
        interpreter = content[2:].split("\n", 1)[0].split()
        if not interpreter:
            raise _Failure("the heredoc's #! line names no interpreter", "for example #!/usr/bin/env python3")
        delimiter = "REPRO_HEREDOC"
        while delimiter in content:
            delimiter += "_"
        quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in interpreter)
        body = content if content.endswith("\n") else content + "\n"
        return ["/bin/sh", "-c", f"exec {quoted} /proc/self/fd/3 3<<'{delimiter}'\n{body}{delimiter}\n"]

    # --- COPY and ADD ---
    def do_copy(self, ins: Instruction) -> None:
        self._copy(ins, add=False)

    def do_add(self, ins: Instruction) -> None:
        self._copy(ins, add=True)

    def _copy(self, ins: Instruction, add: bool) -> None:
        flags, rest = self.tr._flags(ins)
        keyword = ins.keyword
        form = _json_form(rest)
        written = form if form is not None else _split_blanks(rest)
        if len(written) < 2:
            raise self.fail(ins, f"{keyword} needs at least one source and a destination", f"{keyword} SRC... DST")
        docs = {doc.name: doc for doc in ins.heredocs}
        sources: list[tuple[str, object]] = []  # ("heredoc", Heredoc) | ("path", str) | ("url", str)
        for word in written[:-1]:
            marker = heredoc_marker(word) if form is None else None
            if marker is not None and marker[0] in docs:
                sources.append(("heredoc", docs[marker[0]]))
                continue
            value = self.word(ins, word)
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", value) or value.startswith("git@"):
                if not add:
                    raise self.fail(ins, f"COPY {value}: COPY does not take URLs",
                                    "use ADD --checksum=sha256:... URL DST")
                sources.append(("url", value))
            else:
                sources.append(("path", value))
        dst_written = written[-1]
        dst = self.word(ins, dst_written)
        if not dst:
            raise self.fail(ins, f"{keyword}: the destination is empty", f"{keyword} SRC... DST")
        into = dst.endswith("/") or dst in (".", "..") or dst.endswith(("/.", "/.."))
        dst = posixpath.normpath(posixpath.join(self.workdir, dst))
        if dst.startswith("//"):
            dst = "/" + dst.lstrip("/")
        if into and dst != "/":
            dst += "/"
        mode = None
        if flags.get("chmod"):
            text = self.word(ins, flags["chmod"][0] or "")
            if not re.fullmatch(r"0?[0-7]{3,4}", text):
                raise self.fail(ins, f"{keyword} --chmod={text}: expected an octal mode", "for example --chmod=0644")
            mode = text.zfill(4) if len(text) == 3 else text
        owner = None
        if flags.get("chown"):
            text = self.word(ins, flags["chown"][0] or "")
            user, _, group = text.partition(":")
            if not user:
                raise self.fail(ins, f"{keyword} --chown={text}: no user", "--chown=USER[:GROUP]")
            owner = f"{user}:{group or user}" if user.isdigit() and (not group or group.isdigit()) else text
            if not _ACCOUNT.fullmatch(owner):
                raise self.fail(ins, f"{keyword} --chown={text}: repro takes uid[:gid] or lower-case user and "
                                "group names of the image", "give numbers, e.g. --chown=1000:1000")
        excludes = [self.word(ins, v or "") for v in flags.get("exclude", [])]
        link = flags.get("link")
        if link and link[0] not in (None, "true", "false"):
            raise self.fail(ins, f"{keyword} --link={link[0]}: expected true or false", "--link")
        checksum = (flags.get("checksum") or [None])[0]
        source_from = (flags.get("from") or [None])[0]
        if source_from is not None:
            source_from = self.word(ins, source_from)
        options = {k: v for k, v in (("mode", mode), ("owner", owner)) if v is not None}
        if source_from is not None:  # --chmod sets the copied directories' modes too (not dst's, nor parents')
            self._copy_from(ins, source_from, sources, dst, dst_written,
                            {**options, "directory_mode": mode} if mode is not None else options, excludes)
            return
        # from the context: group consecutive paths into one step; heredocs and URLs make their own
        paths: list[str] = []
        for kind, value in sources:
            if kind == "path":
                paths += self._context_paths(ins, str(value), excludes)
        total = len(paths) + sum(1 for kind, _ in sources if kind != "path")
        if total > 1 and not dst.endswith("/"):
            raise self.fail(ins, f"{keyword}: with more than one source file, the destination must be a "
                            f"directory and end with a /", f"write {dst_written}/")
        if checksum is not None and not any(kind == "url" for kind, _ in sources):
            raise self.fail(ins, "ADD --checksum is only for URL sources", "leave it out for local files")
        if add:
            for rel in paths:
                if _is_archive(self.tr.context / rel):
                    raise self.fail(ins, f"ADD {rel}: a local tar archive, which Docker would unpack into {dst}; "
                                    "repro does not unpack archives",
                                    "unpack it into the build context and COPY the directory, or RUN tar -xf "
                                    "on a copy in the same RUN that removes it")
        if paths:
            step_copy: dict = {"src": paths if len(paths) > 1 else paths[0], "dst": dst, **options}
            if mode is not None and any((self.tr.context / rel).is_dir() for rel in paths):
                step_copy["directory_mode"] = mode  # files alone keep the step a spec's copy with mode
            if self.tr.ignore.patterns or excludes:
                step_copy["exclude"] = [*self.tr.ignore.patterns, *excludes]
            ignore = Ignore([*self.tr.ignore.patterns, *excludes]) if excludes else self.tr.ignore
            summary = _summary(self.tr.context, paths, ignore)
            self.add_step(ins, {"copy": step_copy, "history": _copy_history(keyword, summary, dst_written)})
        for kind, value in sources:
            if kind == "heredoc":
                assert isinstance(value, Heredoc)
                content = value.content
                if value.expand:
                    content = _expand_heredoc(content, self.lookup)
                target = dst + value.name if dst.endswith("/") else dst
                if owner is not None and not re.fullmatch(r"\d+:\d+", owner):
                    raise self.fail(ins, f"{keyword} <<{value.name} --chown={owner}: a heredoc file takes a numeric "
                                    "uid:gid", "give --chown=UID:GID")
                file_step = {"dst": target, "content": content, "mode": mode or "0644", "owner": owner or "0:0"}
                summary = "file:" + hashlib.sha256(content.encode()).hexdigest()
                self.add_step(ins, {"file": file_step, "history": _copy_history(keyword, summary, dst_written)})
            elif kind == "url":
                self._add_url(ins, str(value), checksum, dst, dst_written, options)

    def _context_paths(self, ins: Instruction, src: str, excludes: list[str]) -> list[str]:
        keyword = ins.keyword
        rel = posixpath.normpath(src.lstrip("/")) if src.strip("/") else "."
        if rel == ".." or rel.startswith("../"):
            raise self.fail(ins, f"{keyword} {src}: the path leaves the build context ({self.tr.context})",
                            "copy only files inside the context directory")
        ignore = Ignore([*self.tr.ignore.patterns, *excludes]) if excludes else self.tr.ignore
        if _has_glob(rel):
            matches = glob_context(self.tr.context, rel, ignore)
            if not matches:
                where = f"the context is {self.tr.context}" + (f"; see {ignore.source}" if ignore.source else "")
                raise self.fail(ins, f"{keyword} {src}: no file in the build context matches", where)
            return matches
        full = self.tr.context / rel
        if not os.path.lexists(full) or ignore.excluded(rel):
            why = f" (left out by {ignore.source})" if os.path.lexists(full) and ignore.source else ""
            raise self.fail(ins, f"{keyword} {src}: not found in the build context{why}",
                            f"the context is {self.tr.context}")
        try:
            if not full.resolve().is_relative_to(self.tr.context.resolve()):
                raise self.fail(ins, f"{keyword} {src}: leads outside the build context through a link",
                                "copy only files inside the context directory")
        except (OSError, RuntimeError) as exc:
            raise self.fail(ins, f"{keyword} {src}: cannot be looked up ({exc})", "check the path") from None
        return [rel]

    def _copy_from(self, ins: Instruction, source_from: str, sources: list, dst: str, dst_written: str,
                   options: dict, excludes: list[str]) -> None:
        keyword = ins.keyword
        if keyword == "ADD":
            raise self.fail(ins, "ADD --from is not supported", "use COPY --from")
        if any(kind != "path" for kind, _ in sources):
            raise self.fail(ins, "COPY --from takes paths only", "no heredocs or URLs with --from")
        try:
            stage = self.tr._stage_ref(source_from, self.stage)
        except _Failure as exc:
            raise self.fail(ins, f"COPY {exc.message}", exc.hint) from None
        name = stage.name if stage is not None else resolve_reference(source_from, self.tr.registry)
        paths = [str(v) for _, v in sources]
        if len(paths) > 1 and not dst.endswith("/"):
            raise self.fail(ins, "COPY: with more than one source file, the destination must be a directory and "
                            "end with a /", f"write {dst_written}/")
        step: dict = {"from": name, "src": paths if len(paths) > 1 or _has_glob(paths[0]) else paths[0], "dst": dst,
                      **options}
        if excludes:
            raise self.fail(ins, "COPY --from with --exclude is not supported", "copy what you need by name")
        history = _copy_history(keyword, f"--from={source_from} {' '.join(paths)}", dst_written)
        self.add_step(ins, {"copy": step, "history": history})

    def _add_url(self, ins: Instruction, url: str, checksum: str | None, dst: str, dst_written: str,
                 options: dict) -> None:
        if not re.match(r"^https?://", url):
            raise self.fail(ins, f"ADD {url}: only http:// and https:// URLs are supported (no git)",
                            "download it in the context, or clone it with RUN git ...")
        if checksum is None:
            raise self.fail(ins, f"ADD {url}: a URL needs --checksum=sha256:... to be reproducible",
                            f"pin it: ADD --checksum=sha256:$(curl -fsSL {url} | sha256sum | cut -d' ' -f1) {url} "
                            f"{dst_written}")
        checksum = self.word(ins, checksum)
        match = re.fullmatch(r"sha256:([0-9a-f]{64})", checksum)
        if not match:
            raise self.fail(ins, f"ADD --checksum={checksum}: expected sha256: and 64 lower-case hex digits",
                            "--checksum=sha256:<the file's sha256>")
        name = posixpath.basename(url.split("?", 1)[0].split("#", 1)[0].rstrip("/"))
        if dst.endswith("/"):
            if not name or "://" in name or name in (".", ".."):
                raise self.fail(ins, f"ADD {url}: no file name in the URL", "give the destination's file name")
            dst = dst + name
        try:
            layout = fetch_url(url, match.group(1))
        except _Failure as exc:
            raise self.fail(ins, f"ADD {url}: {exc.message}", exc.hint) from None
        step = {"from": f"oci:{layout}:add", "src": "/content", "dst": dst, "mode": "0600", **options}
        self.add_step(ins, {"copy": step, "history": _copy_history("ADD", f"file:{match.group(1)}", dst_written)})


def _copy_history(keyword: str, summary: str, dst_written: str) -> str:
    """buildah's created_by of COPY/ADD, trailing blank included."""
    return f"/bin/sh -c #(nop) {keyword} {summary} in {dst_written} "


def _is_archive(path: Path) -> bool:
    """A tar archive, plain or compressed with gzip, bzip2 or xz, as Docker's ADD recognizes one."""
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(6)
    opener: Callable | None = {b"\x1f\x8b": gzip.open, b"BZ": bz2.open}.get(head[:2])
    if head.startswith(b"\xfd7zXZ\x00"):
        opener = lzma.open
    try:
        if opener is not None:
            with opener(path, "rb") as f:
                block = f.read(512)
        else:
            with open(path, "rb") as f:
                block = f.read(512)
    except (OSError, EOFError, lzma.LZMAError):
        return False
    if len(block) < 512:
        return False
    if block[257:262] == b"ustar":
        return True
    try:  # an old (v7) tar header: the checksum field holds the sum of the header's bytes
        stored = int(block[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
    except ValueError:
        return False
    return stored == sum(block[:148]) + 32 * 8 + sum(block[156:])


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "repro" / "add"


def fetch_url(url: str, sha256: str) -> Path:
    """An OCI layout holding the URL's content as /content (mode 0600, time 0) in one layer, tagged `add`;
    kept by checksum in ~/.cache/repro/add, so a file is downloaded once."""
    import requests  # noqa: PLC0415 - lazy: only ADD of a URL needs the HTTP client, which costs a plain build's start

    layout_dir = _cache_dir() / sha256
    if (layout_dir / "index.json").is_file():
        return layout_dir
    layout_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = layout_dir.parent / f".{sha256}.{os.getpid()}.download"
    digest = hashlib.sha256()
    size = 0
    try:
        try:
            with requests.get(url, stream=True, timeout=60) as response, open(partial, "wb") as out:
                if response.status_code != 200:
                    raise _Failure(f"the server answered {response.status_code}", "check the URL")
                for chunk in response.iter_content(1 << 20):
                    size += len(chunk)
                    if size > MAX_ADD_BYTES:
                        raise _Failure(f"larger than {MAX_ADD_BYTES >> 20} MiB", "download it into the context")
                    digest.update(chunk)
                    out.write(chunk)
        except requests.RequestException as exc:
            raise _Failure(f"the download failed ({exc.__class__.__name__})", "check the URL and the network") from None
        if digest.hexdigest() != sha256:
            raise _Failure(f"the download has sha256:{digest.hexdigest()}, not the --checksum sha256:{sha256}",
                           "check the URL, or pin the new content's checksum if it was meant to change")
        work = Path(tempfile.mkdtemp(prefix=f".{sha256}.", dir=layout_dir.parent))
        try:
            layout = Layout.initialize(work) if not (work / "oci-layout").exists() else Layout.open_existing(work)

            def produce(tar) -> None:
                info = tarfile.TarInfo("content")
                info.size, info.mode, info.mtime = size, 0o600, 0
                with open(partial, "rb") as f:
                    tar.add(info, f)

            layer = write_layer(layout, produce, "gzip")
            config = new_config(Platform.host(), rfc3339(0), [layer.diff_id],
                                [{"created": rfc3339(0), "created_by": f"repro ADD {url}"}])
            image = commit(layout, config, [layer])
            layout.add_manifest(manifest_descriptor(image, {"org.opencontainers.image.ref.name": "add"}), "add")
            try:
                os.rename(work, layout_dir)
            except OSError:
                if not (layout_dir / "index.json").is_file():
                    raise
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
    finally:
        partial.unlink(missing_ok=True)
    return layout_dir


# --- entry points ---------------------------------------------------------------------------------------------


def _read(path: Path) -> tuple[bytes, str]:
    if not path.is_file():
        raise ReproError(f"{path}: Containerfile not found", "give the path of a Containerfile or Dockerfile")
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise _error(path, 1, f"larger than {MAX_FILE_BYTES} bytes", "a Containerfile is a short text file")
    try:
        return data, data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _error(path, data[:exc.start].count(b"\n") + 1, "not UTF-8 text", "save it as UTF-8") from None


def translate(path: str | Path, context: str | Path | None = None, build_args: dict[str, str] | None = None,
              target: str | None = None, registry: str | None = None,
              base_reader: Callable[..., BaseInfo] = read_base, platform=None) -> tuple[dict, dict[str, int]]:
    """The spec dict of a Containerfile and the line of each of its parts, built for `platform` (a
    repro.image.Platform: TARGETPLATFORM and the like; None: this machine's)."""
    path = Path(path)
    _data, text = _read(path)
    context_dir = Path(context) if context is not None else path.parent
    if not context_dir.is_dir():
        raise ReproError(f"{context_dir}: the build context is not a directory", "give the context directory")
    translator = Translator(path, text, context_dir.resolve(), build_args or {}, target, registry, base_reader,
                            platform)
    return translator.translate()


def load(path: str | Path, context: str | Path | None = None, build_args: dict[str, str] | None = None,
         target: str | None = None, registry: str | None = None, platform=None):
    """The Spec of a Containerfile, for `repro build`: for this machine's platform, or `platform`; the
    build translates it again for each platform it builds (Spec.for_platform)."""
    raw, lines = translate(path, context, build_args, target, registry, platform=platform)
    data, _text = _read(Path(path))
    spec = _spec.from_dict(Path(path), raw, lines, Path(context) if context is not None else None, data)
    spec = dataclasses.replace(spec, retarget=lambda other: spec if other == platform else load(
        path, context, build_args, target, registry, other))
    return spec
