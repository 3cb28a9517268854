"""Apptainer definition files (`repro build app.def`): read as Apptainer 1.x reads them, built as a spec.

A def file is one or more stages, each starting at a `Bootstrap:` line: a header of `Key: value` lines,
then `%section` blocks that run to the next line whose first word starts with `%`. `{{ name }}` is
replaced first, stage by stage, from `--build-arg name=value` or the stage's `%arguments` defaults
(Apptainer 1.2's build arguments). The last stage is the image; earlier ones (named by `Stage:`) are
built only when a `%files from NAME` of a later stage needs them.

The translation, in Apptainer's order: `%files from STAGE`, then `%files`, then `%post` (run as
`/bin/sh -ex` with the network, as Apptainer runs it), then the files Apptainer writes into
`/.singularity.d` (the def file itself, labels.json, the environment, runscript, startscript, test
and help), each a file step. For docker and podman users the image config gets the labels, the
runscript as the entrypoint (after the environment scripts, as `apptainer run` does), and the
`%environment` lines that are plain `export NAME=value` as Env. `%setup` and `%pre` run on the build
host in Apptainer and are refused, as are SCIF apps and the bootstraps that fetch a distribution
themselves. Every problem is one `FILE:LINE: message` error.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import posixpath
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from builders.spec import Spec, from_dict
from converters import sif_rootfs as sd
from repro.clock import rfc3339, source_date_epoch
from repro.errors import ReproError
from repro.image import Platform

log = logging.getLogger(__name__)

MAX_DEF_BYTES = 1 << 20
MAX_SCRIPT_BYTES = 120 << 10  # a %post is one argument of the step's command; Linux caps one at 128 KiB
DEFAULT_REGISTRY = "docker.io"
DOCKER_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")  # Docker Hub answers at the last

# Bootstraps repro builds from: an image it can read, or nothing.
IMAGE_BOOTSTRAPS = ("docker", "docker-archive", "docker-daemon", "oci", "oci-archive", "localimage")
BOOTSTRAPS = (*IMAGE_BOOTSTRAPS, "scratch")
# Bootstraps that fetch and install a distribution (or a remote image) by themselves.
FETCHING = {
    "debootstrap": "runs debootstrap on the host", "yum": "runs yum on the host", "dnf": "runs dnf on the host",
    "zypper": "runs zypper on the host", "arch": "runs pacstrap on the host", "busybox": "downloads busybox",
    "library": "pulls from a Sylabs library", "shub": "pulls from Singularity Hub", "oras": "pulls a SIF by ORAS",
}
BUILDKIT = ("buildkit", "dockerfile")

# Apptainer's header keywords (otherurlN for any N); repro uses bootstrap, from, stage, registry, namespace.
HEADER_KEYS = {
    "bootstrap", "from", "includecmd", "mirrorurl", "updateurl", "osversion", "include", "library", "registry",
    "namespace", "stage", "product", "user", "regcode", "productpgp", "registerurl", "modules", "fingerprints",
    "confurl", "setopt", "target", "frontend", "filename", "buildargs",
}
SECTIONS = ("arguments", "files", "post", "environment", "runscript", "startscript", "test", "labels", "help")
HOST_SECTIONS = ("setup", "pre")
APP_SECTIONS = ("appinstall", "applabels", "appfiles", "appenv", "apptest", "apphelp", "apprun", "appstart")

TEMPLATE = re.compile(r"{{[ \t]*(\w+)[ \t]*}}")  # Apptainer's {{\s*(\w+)\s*}}, on one line
COMMENTED = re.compile(r"#[^!]")  # Apptainer leaves {{ x }} alone after a '#' on its line
GLOB = re.compile(r"[*?\[]")

SD = "/" + sd.SD
POST_SCRIPT = "/.post.script"
ENVIRONMENT = f"{SD}/env/91-environment.sh"  # what %post writes to $APPTAINER_ENVIRONMENT
# The environment scripts, sourced as `apptainer run` and `apptainer test` do before the script.
SOURCE_ENV = f'for f in {SD}/env/*.sh; do if [ -f "$f" ]; then . "$f"; fi; done; '
RUN = f'{SOURCE_ENV}exec {SD}/runscript "$@"'
TEST = f"{SOURCE_ENV}exec {SD}/test"


@dataclass
class Section:
    name: str
    args: str
    body: str
    line: int  # the %name line
    lines: list[str] = field(default_factory=list)  # the body's lines, the first at line + 1


@dataclass
class Stage:
    header: dict[str, str]
    header_lines: dict[str, int]
    sections: list[Section]
    line: int  # the Bootstrap line
    text: str  # the stage after templating: what Apptainer stores

    def script(self, name: str) -> tuple[str, str, int]:
        """(body, args, line) of a script section: Apptainer joins repeated sections, the last args win."""
        found = [s for s in self.sections if s.name == name]
        args = next((s.args for s in reversed(found) if s.args), "")
        return "".join(s.body for s in found), args, found[0].line if found else 0

    @property
    def name(self) -> str:
        return self.header.get("stage", "")


class _Def:
    """One def file being read: its path, the context, and errors that name its lines."""

    def __init__(self, path: Path, build_args: dict[str, str], registry: str | None) -> None:
        self.path = path
        self.context = path.parent.resolve()
        self.build_args = dict(build_args)
        self.registry = registry or DEFAULT_REGISTRY
        self.used_args: set[str] = set()
        self.data = b""  # the file as read

    def error(self, line: int, message: str, hint: str = "") -> ReproError:
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in f"{self.path}:{line}: {message}")
        return ReproError(text if len(text) <= 1000 else text[:997] + "...", hint)


# --- reading ----------------------------------------------------------------------------------------


def _read(d: _Def) -> str:
    if not d.path.is_file():
        raise ReproError(f"{d.path}: definition file not found", "give the path of an Apptainer .def file")
    with open(d.path, "rb") as f:
        data = f.read(MAX_DEF_BYTES + 1)
    if len(data) > MAX_DEF_BYTES:
        raise d.error(1, f"the definition file is larger than {MAX_DEF_BYTES} bytes", "a def file is a short text")
    d.data = data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise d.error(data[: exc.start].count(b"\n") + 1, "the definition file is not UTF-8 text",
                      "save it as UTF-8") from None
    if "\0" in text:
        raise d.error(text[: text.index("\0")].count("\n") + 1, "the definition file holds a NUL character",
                      "a def file is text")
    return text


def _lines(text: str) -> list[str]:
    """Lines as Go's bufio.ScanLines gives them: split at \\n, a \\r before it dropped, no empty last line."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _is_section_line(line: str) -> bool:
    return line.lstrip().startswith("%")


def _split_stages(d: _Def, text: str) -> list[tuple[int, str]]:
    """(first line, text) of each stage: a stage starts at each line that starts with `bootstrap:`, and
    what comes before the first one is a stage too unless it is only comments (Apptainer's rule)."""
    starts = [m.start() for m in re.finditer(r"(?mi)^bootstrap:", text)]
    out = []
    prefix = text[: starts[0]] if starts else text
    content = [n for n, line in enumerate(_lines(prefix), start=1) if line.strip() and not line.strip().startswith("#")]
    if content:  # from its first line that is not a comment
        out.append((content[0], prefix.split("\n", content[0] - 1)[-1]))
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(text)
        out.append((text[:start].count("\n") + 1, text[start:end]))
    if not out:
        raise d.error(1, "the definition file is empty", "see catalog/hello/app.def for an example")
    return out


def _short(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


def _scan(d: _Def, first: int, text: str) -> tuple[list[tuple[int, str]], list[Section]]:
    """The header's (line, text) pairs and the sections of one stage's text."""
    header: list[tuple[int, str]] = []
    sections: list[Section] = []
    for number, line in enumerate(_lines(text), start=first):
        if _is_section_line(line):
            parts = line.strip().lstrip("%").split(None, 1)
            name, args = (parts[0].lower(), parts[1].strip() if len(parts) > 1 else "") if parts else ("", "")
            if not name:
                raise d.error(number, "a % line with no section name", "write e.g. %post")
            sections.append(Section(name, args, "", number))
        elif sections:
            sections[-1].lines.append(line)
            sections[-1].body += line + "\n"
        else:
            header.append((number, line))
    return header, sections


def _arguments(d: _Def, sections: list[Section]) -> dict[str, str]:
    """The defaults of the stage's %arguments sections: `name=value` lines."""
    out: dict[str, str] = {}
    for section in sections:
        if section.name != "arguments":
            continue
        for number, line in enumerate(section.lines, start=section.line + 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition("=")
            if not sep or not key.strip():
                raise d.error(number, f"%arguments: {_short(line)!r} is not name=value", "write e.g. version=1.2")
            out[key.strip()] = value.strip()
    return out


def _template(d: _Def, first: int, text: str, defaults: dict[str, str]) -> str:
    """{{ name }} replaced by its --build-arg value, else its %arguments default (which may itself use
    {{ other }} once); an undefined name is an error at its line. Lines with '#' before it are left."""
    out, position = [], 0
    for match in TEMPLATE.finditer(text):
        line_start = text.rfind("\n", 0, match.start()) + 1
        if COMMENTED.search(text, max(line_start, position), match.start()):
            continue
        name = match.group(1)
        if name in d.build_args:
            value = d.build_args[name]
        elif name in defaults:
            value = defaults[name]
        else:
            raise d.error(first + text.count("\n", 0, match.start()), f"{{{{ {name} }}}} is not defined",
                          f"give --build-arg {name}=VALUE or a default in %arguments")
        d.used_args.add(name)

        def nested(m: re.Match) -> str:
            return d.build_args.get(m.group(1), defaults.get(m.group(1), m.group(0)))

        out += [text[position: match.start()], TEMPLATE.sub(nested, value)]
        position = match.end()
    out.append(text[position:])
    return "".join(out)


def _header(d: _Def, lines: list[tuple[int, str]]) -> tuple[dict[str, str], dict[str, int]]:
    """`Key: value` lines (keys case-insensitive; '#' starts a comment; a value ending in \\ continues)."""
    header: dict[str, str] = {}
    where: dict[str, int] = {}
    key_cont, val_cont, cont_line = "", "", 0
    for number, raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            if key_cont:
                header[key_cont], where[key_cont] = val_cont, cont_line
                key_cont, val_cont = "", ""
            continue
        line = line.split("#", 1)[0]
        if not val_cont:
            key, sep, value = line.partition(":")
            if not sep:
                raise d.error(number, f"header line {_short(line.strip())!r} has no ':'",
                              "write 'Key: value' (or start the section with %)")
            key, value, cont_line = key.strip().lower(), value.strip(), number
        else:
            key, value = key_cont, val_cont + line.strip()
            key_cont, val_cont = "", ""
        if value.endswith("\\"):
            key_cont, val_cont = key, value[:-1]
            if val_cont.endswith("\\n"):
                val_cont = val_cont[:-2] + "\n"
            continue
        if key not in HEADER_KEYS and not re.fullmatch(r"otherurl\d+", key):
            raise d.error(number, f"unknown header keyword {_short(key)!r}",
                          "Apptainer's are Bootstrap, From, Stage, Registry, Namespace and the bootstraps' own")
        header[key], where[key] = value, cont_line
    if key_cont:
        raise d.error(cont_line, f"header {key_cont!r}: unterminated continuation (the value ends with \\)",
                      "remove the trailing backslash or continue the value on the next line")
    return header, where


def _check_sections(d: _Def, sections: list[Section]) -> None:
    for section in sections:
        name, number = section.name, section.line
        if name in HOST_SECTIONS:
            raise d.error(number, f"%{name} runs on the build host in Apptainer; repro never runs anything on "
                          "the host", "do it in %post (inside the image), or copy files in with %files")
        if name in APP_SECTIONS:
            raise d.error(number, f"%{name}: SCIF apps are not supported",
                          "install into the image in %post and choose what to run in %runscript")
        if name not in SECTIONS:
            raise d.error(number, f"unknown section %{_short(name)}",
                          "sections are %" + ", %".join(SECTIONS))
        if name == "files" and section.args:
            args = section.args.split("#", 1)[0].split()
            if args and (len(args) != 2 or args[0] != "from"):
                raise d.error(number, f"%files {_short(section.args)}: expected nothing or 'from STAGE'",
                              "write %files from NAME to copy from an earlier stage")


def parse(path: str | Path, build_args: dict[str, str] | None = None, registry: str | None = None
          ) -> tuple[_Def, list[Stage]]:
    """The stages of a def file, templated and checked."""
    d = _Def(Path(path), build_args or {}, registry)
    text = _read(d)
    stages = []
    for first, chunk in _split_stages(d, text):
        header_lines, sections = _scan(d, first, chunk)
        templated = _template(d, first, chunk, _arguments(d, sections))
        header_lines, sections = _scan(d, first, templated)
        _check_sections(d, sections)
        header, where = _header(d, header_lines)
        stages.append(Stage(header, where, sections, first, templated))
    unused = sorted(set(d.build_args) - d.used_args)
    if unused:
        log.warning("%s: --build-arg %s not used by the definition file", d.path, ", ".join(unused))
    return d, stages


# --- translating ------------------------------------------------------------------------------------


def _base(d: _Def, stage: Stage) -> dict:
    """The spec's base for the stage's Bootstrap and From (registry and namespace for docker)."""
    if "bootstrap" not in stage.header:
        raise d.error(stage.line, "no Bootstrap: header" + (" before this line" if stage.line > 1 else ""),
                      "each stage starts with a Bootstrap: line, e.g. 'Bootstrap: docker' and 'From: debian:bookworm'")
    bootstrap = stage.header["bootstrap"]
    line = stage.header_lines.get("bootstrap", stage.line)
    if bootstrap in FETCHING:
        raise d.error(line, f"Bootstrap: {bootstrap} {FETCHING[bootstrap]}, which repro does not do",
                      "start from an image (Bootstrap: docker, From: debian:bookworm), or use a repro YAML spec "
                      "with base: {debian: {suite: bookworm}}")
    if bootstrap in BUILDKIT:
        raise d.error(line, f"Bootstrap: {bootstrap} builds a Dockerfile with BuildKit",
                      "build the Dockerfile itself with repro build")
    if bootstrap not in BOOTSTRAPS:
        raise d.error(line, f"unknown Bootstrap: {_short(bootstrap)!r}" if bootstrap else "Bootstrap: has no value",
                      "use one of " + ", ".join(BOOTSTRAPS))
    if "fingerprints" in stage.header:
        raise d.error(stage.header_lines["fingerprints"], "Fingerprints: repro does not verify SIF signatures",
                      "remove the header; name the base by its digest to pin it")
    if bootstrap == "scratch":
        return {"scratch": True}
    source = stage.header.get("from", "")
    if not source:
        raise d.error(line, f"Bootstrap: {bootstrap} needs a From: header",
                      "e.g. From: debian:bookworm" if bootstrap == "docker" else "name the image in From:")
    if bootstrap == "docker":
        return {"image": _docker_ref(d, stage, source)}
    if bootstrap == "docker-daemon":
        return {"image": f"docker-daemon:{source}"}
    path, sep, rest = source.partition(":")
    resolved = str((d.context / path).resolve()) if path else path
    if bootstrap == "localimage":
        return {"image": _local_image(d, stage, Path(resolved), source)}
    return {"image": f"{bootstrap}:{resolved}{sep}{rest}"}


def _docker_ref(d: _Def, stage: Stage, source: str) -> str:
    """docker://HOST/REPO: From as Apptainer completes it (Registry: and Namespace: headers, else Docker
    Hub's rules with --registry as the host; library/ for one-part names on docker.io, whose registry
    answers at registry-1.docker.io)."""
    ref = source
    if stage.header.get("namespace"):
        ref = f"{stage.header['namespace']}/{ref}"
    if stage.header.get("registry"):
        return f"docker://{stage.header['registry']}/{ref}"
    first = ref.split("/", 1)[0]
    if "/" in ref and ("." in first or ":" in first or first == "localhost"):
        return f"docker://{ref}"
    host = d.registry
    if host in DOCKER_HUB:
        host = DOCKER_HUB[-1]
        if "/" not in ref:
            ref = f"library/{ref}"
    return f"docker://{host}/{ref}"


def _local_image(d: _Def, stage: Stage, path: Path, source: str) -> str:
    """A SIF file, a squashfs image or a sandbox directory, by what the path holds."""
    line = stage.header_lines.get("from", stage.line)
    if path.is_dir():
        return f"rootfs:{path}"
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise d.error(line, f"From: {_short(source)}: cannot be read ({exc.strerror})",
                      f"looked for {path}") from None
    if head[32:41] == b"SIF_MAGIC":
        return f"sif:{path}"
    if head[:4] == b"hsqs":
        return f"squashfs:{path}"
    raise d.error(line, f"From: {_short(source)} is not a SIF, a squashfs image or a sandbox directory",
                  "repro reads those local images (ext3 images are not supported)")


def _words(d: _Def, line: str, number: int) -> list[str]:
    """A %files line's words: bare, "double-quoted" or 'single-quoted'; a word starting with # ends it."""
    words, i = [], 0
    while i < len(line):
        c = line[i]
        if c.isspace():
            i += 1
            continue
        if c == "#" and words:
            break
        if c in "\"'":
            end = line.find(c, i + 1)
            if end < 0:
                raise d.error(number, f"%files: unterminated quote in {_short(line)!r}", f"close the {c}")
            words.append(line[i + 1: end])
            i = end + 1
            continue
        j = i
        while j < len(line) and not line[j].isspace():
            j += 1
        words.append(line[i:j])
        i = j
    return words


def _files(d: _Def, section: Section) -> list[tuple[int, str, str]]:
    """(line, source, destination or '') of each line of a %files section."""
    out = []
    for number, line in enumerate(section.lines, start=section.line + 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = _words(d, line, number)
        if len(words) > 2:
            raise d.error(number, f"%files: {_short(line)!r} has more than a source and a destination",
                          "quote paths that hold spaces")
        if any(not w for w in words) or "\0" in line:
            raise d.error(number, f"%files: {_short(line)!r} has an empty path", "give a source path")
        out.append((number, words[0], words[1] if len(words) > 1 else ""))
    return out


def _absolute(dst: str) -> str:
    """A destination in the image: relative ones are under /, as Apptainer joins them to the root."""
    out = posixpath.normpath("/" + dst)
    out = "/" + out.lstrip("/")
    return out + "/" if dst.endswith("/") and out != "/" else out


def _match(d: _Def, pattern: str, number: int) -> list[str]:
    """Context paths that a %files source names, as bash expands it (globstar on, dot files only for a
    dot in the pattern); each stays inside the context."""
    if pattern.startswith("/"):
        raise d.error(number, f"%files: {_short(pattern)} is an absolute path on the build host",
                      f"copy it beside the def file and name it relative to {d.context}")
    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    found = [""]
    for part in parts:
        nxt = []
        for base in found:
            directory = d.context / base if base else d.context
            if part == "**":
                nxt.append(base)
                nxt += [f"{base}/{p}" if base else p for p in _descendants(directory)]
            elif GLOB.search(part):
                if directory.is_dir():
                    names = sorted(e.name for e in directory.iterdir())
                    nxt += [f"{base}/{n}" if base else n for n in names
                            if fnmatch.fnmatchcase(n, part) and (part.startswith(".") or not n.startswith("."))]
            else:
                nxt.append(f"{base}/{part}" if base else part)
        found = nxt
    out = []
    for name in found:
        candidate = (d.context / name).resolve()
        if not candidate.is_relative_to(d.context):
            raise d.error(number, f"%files: {_short(pattern)} is outside the build context",
                          f"copy only files under {d.context}")
        if candidate.exists():
            out.append(name)
    if not out:
        what = "matches no file" if GLOB.search(pattern) else "does not exist"
        raise d.error(number, f"%files: {_short(pattern)} {what}", f"looked in {d.context}")
    return out


def _descendants(directory: Path) -> list[str]:
    out = []
    if not directory.is_dir() or directory.is_symlink():
        return out
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith("."):
            continue
        out.append(entry.name)
        if entry.is_dir() and not entry.is_symlink():
            out += [f"{entry.name}/{p}" for p in _descendants(entry)]
    return out


def _copy(src: str | list[str], dst: str, number: int, text: str, origin: str = "") -> tuple[dict, int]:
    value: dict = {"src": src, "dst": dst}
    if origin:
        value["from"] = origin
    return {"copy": value, "history": f"apptainer %files{' from ' + origin if origin else ''} {text}"}, number


def _into(directory: str) -> str:
    return directory.rstrip("/") + "/"


def _host_files(d: _Def, number: int, src: str, dst: str) -> list[tuple[dict, int]]:
    """Copy steps for one %files line, placed as `cp -r SRC DST` places each match: into DST when it ends
    in / (or when a glob matched several), a directory as a directory; without DST, at its own path.
    Files that land in one directory share a step."""
    text = f"{src} {dst}".strip()
    matches = [posixpath.normpath(n) if n else "." for n in _match(d, src, number)]
    several = len(matches) > 1
    steps: list[tuple[dict, int]] = []
    files: dict[str, list[str]] = {}
    for name in matches:
        is_dir = (d.context / name).is_dir()
        if dst:
            target = _into(_absolute(dst)) if several else _absolute(dst)
        elif several and not is_dir:
            target = _into(_absolute(posixpath.dirname(name)))
        else:
            target = _absolute(name)
        if not target.endswith("/"):
            steps.append(_copy(name, target, number, text))
        elif is_dir:
            base = posixpath.basename(name) if name != "." else ""
            steps.append(_copy(name, _into(target + base) if base else target, number, text))
        else:
            files.setdefault(target, []).append(name)
    for target, names in files.items():
        steps.append(_copy(names if len(names) > 1 else names[0], target, number, text))
    return steps


def _stage_files(d: _Def, number: int, origin: str, src: str, dst: str) -> tuple[dict, int]:
    """A copy step from an earlier stage: paths are the stage's, a missing destination is the source's."""
    text = f"{src} {dst}".strip()
    source = "/" + posixpath.normpath("/" + src).lstrip("/")
    if GLOB.search(src):
        if dst:
            target = _absolute(dst).rstrip("/") + "/"
        elif GLOB.search(posixpath.dirname(source)):
            raise d.error(number, f"%files from {origin}: {_short(src)} has a pattern above its last part",
                          "give a destination directory")
        else:
            target = posixpath.dirname(source).rstrip("/") + "/"
        return _copy(source, target, number, text, origin)
    target = _absolute(dst) if dst else source
    if target.endswith("/"):
        target += posixpath.basename(source)
    return _copy(source, target, number, text, origin)


def _post(body: str, args: str) -> list[str]:
    """The command of a %post: what Apptainer runs (`/bin/sh -ex /.post.script`, or `-c SHELL...` from the
    section's arguments) with $APPTAINER_ENVIRONMENT set; the script file is gone after the step."""
    params = args.split("#", 1)[0].split()
    prepare = (f"mkdir -p {SD}/env 2>/dev/null; "
               f"export APPTAINER_ENVIRONMENT={ENVIRONMENT} SINGULARITY_ENVIRONMENT={ENVIRONMENT}; ")
    if not params:
        return ["/bin/sh", "-c", f'{prepare}exec /bin/sh -ex -c "$1" {POST_SCRIPT}', "/bin/sh", body]
    if "-c" in params:
        i = params.index("-c")
        argv = ["/bin/sh", "-ex", *params[: i + 1], " ".join(params[i + 1:]) + " " + POST_SCRIPT]
    else:
        argv = ["/bin/sh", "-ex", *params, POST_SCRIPT]
    wrapper = (f'{prepare}printf "%s" "$1" > {POST_SCRIPT} || exit 1; shift; "$@"; status=$?; '
               f"rm -f {POST_SCRIPT}; exit $status")
    return ["/bin/sh", "-c", wrapper, "/bin/sh", body, *argv]


def _shebang_script(body: str, args: str) -> str:
    """A runscript, startscript or test as Apptainer writes it: its own #! line or #!/bin/sh (plus the
    section's arguments), a blank line, the script."""
    shebang, script = "#!/bin/sh", body
    if body.strip().startswith("#!"):
        first, _, script = body.lstrip("\n").partition("\n")
        shebang = first.strip()
    if args:
        shebang += " " + args.split("#", 1)[0].rstrip()
    return f"{shebang}\n\n{script}\n"


def labels_of(sections: list[Section]) -> list[tuple[int, str, str]]:
    """(line, key, value) of %labels lines: the key up to the first blank, the rest the value."""
    out = []
    for section in (s for s in sections if s.name == "labels"):
        for number, line in enumerate(section.lines, start=section.line + 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, _, value = line.partition(" ")
            out.append((number, key.strip(), value.strip()))
    return out


def build_labels(stage: Stage, epoch: int, has_help: bool, platform: Platform | None = None) -> dict[str, str]:
    """The labels Apptainer adds at build, from SOURCE_DATE_EPOCH's time (never the clock) and without
    its version or the build host's names; the architecture is the platform built (this machine's
    unless --platform names another, as `apptainer build --arch`)."""
    when = datetime.fromtimestamp(epoch, UTC)
    arch = (platform or Platform.host()).architecture
    out = {
        "org.label-schema.schema-version": "1.0",
        "org.opencontainers.image.created": rfc3339(epoch),
        "org.label-schema.build-date": f"{when.strftime('%A')}_{when.day}_{when.strftime('%B')}_{when.year}_"
                                       f"{when.hour}:{when.minute}:{when.second}_UTC",
        "org.opencontainers.image.architecture": arch,
        "org.label-schema.build-arch": arch,
    }
    if has_help:
        out["org.label-schema.usage"] = f"{SD}/runscript.help"
        out["org.label-schema.usage.apptainer.runscript.help"] = f"{SD}/runscript.help"
    for key, value in stage.header.items():
        out[f"org.label-schema.usage.singularity.deffile.{key}"] = value
    return out


_SIMPLE_VALUE = re.compile(r"""([^\s$`\\"'|&;<>()*?\[\]~#{}]*)|'([^']*)'|"([^"$`\\]*)\"""")
_EXPORT = re.compile(r"export[ \t]+([A-Za-z_][A-Za-z0-9_]*)=(.*)")


def simple_environment(body: str) -> dict[str, str]:
    """The `export NAME=value` lines of %environment whose value is literal, for the OCI config's Env;
    a name that any other line mentions is left to the script (it may change it)."""
    found: dict[str, str] = {}
    other: list[str] = []
    for line in body.split("\n"):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _EXPORT.fullmatch(stripped)
        value = _SIMPLE_VALUE.fullmatch(match.group(2)) if match else None
        if match and value:
            found[match.group(1)] = next(g for g in value.groups() if g is not None)
        else:
            other.append(stripped)
    rest = "\n".join(other)
    return {k: v for k, v in found.items() if not re.search(rf"\b{k}\b", rest)}


def _metadata(d: _Def, stage: Stage, full_text: str, epoch: int, platform: Platform | None = None
              ) -> tuple[list[tuple[dict, int]], dict, list]:
    """The final stage's /.singularity.d files (file steps), its config and its tests."""
    help_text, _, help_line = stage.script("help")
    environment, _, env_line = stage.script("environment")
    labels = build_labels(stage, epoch, bool(help_text), platform)
    given = {key: (number, value) for number, key, value in labels_of(stage.sections)}
    for key, (number, value) in given.items():
        if key in labels:  # Apptainer keeps the label it set (unless --force) and warns
            log.warning("%s:%d: label %s is set by the build; %%labels does not change it", d.path, number, key)
        else:
            labels[key] = value
    steps: list[tuple[dict, int]] = []

    def add(dst: str, content: str, mode: str, line: int, what: str) -> None:
        steps.append(({"file": {"dst": dst, "content": content, "mode": mode},
                       "history": f"apptainer {what}: {dst}"}, line))

    if help_text:
        add(f"{SD}/runscript.help", help_text + "\n", "0644", help_line, "%help")
    add(f"{SD}/labels.json", sd.labels_json(labels), "0644", stage.line, "labels")
    add(f"{SD}/Singularity", full_text, "0644", stage.line, "definition")
    if environment:
        add(f"{SD}/env/90-environment.sh", sd.ENV_FILES["90-environment.sh"] + "\n" + environment + "\n", "0755",
            env_line, "%environment")
    config: dict = {"labels": labels}
    for name, what in (("startscript", "startscript"), ("runscript", "runscript"), ("test", "test")):
        body, args, line = stage.script(name)
        if body:
            add(f"{SD}/{what}", _shebang_script(body, args), "0755", line, f"%{name}")
            if name == "runscript":
                config["entrypoint"] = ["/bin/sh", "-c", RUN, f"{SD}/runscript"]
    env = simple_environment(environment)
    if env:
        config["env"] = env
    tests = [{"run": TEST}] if stage.script("test")[0] else []
    return steps, config, tests


def _stage_spec(d: _Def, stage: Stage, names: list[str], index: int) -> tuple[dict, list[tuple[dict, int]]]:
    """The base and the steps (with their lines) of %files from, %files and %post."""
    steps: list[tuple[dict, int]] = []
    earlier = names[:index]
    for section in stage.sections:
        if section.name == "files" and section.args.split("#", 1)[0].split():
            origin = section.args.split("#", 1)[0].split()[1]
            if origin not in earlier:
                hint = (f"stages before this one: {', '.join(n for n in earlier if n)}" if any(earlier)
                        else "name an earlier stage with Stage: NAME in its header")
                raise d.error(section.line, f"%files from {_short(origin)}: no earlier stage has that name", hint)
            steps += [_stage_files(d, number, origin, src, dst) for number, src, dst in _files(d, section)]
    for section in stage.sections:
        if section.name == "files" and not section.args.split("#", 1)[0].split():
            for number, src, dst in _files(d, section):
                steps += _host_files(d, number, src, dst)
    body, args, line = stage.script("post")
    if body.strip():
        if len(body.encode()) > MAX_SCRIPT_BYTES:
            raise d.error(line, f"%post is longer than {MAX_SCRIPT_BYTES >> 10} KiB",
                          "put the long part in a script file, copy it with %files and run it")
        for number, text in _post_lines(stage):
            if re.search(r"(APPTAINER|SINGULARITY)_LABELS", text):
                raise d.error(number, "%post writes labels to $APPTAINER_LABELS, which repro does not read back",
                              "give the labels in %labels")
        steps.append(({"run": _post(body, args), "network": True,
                       "history": f"apptainer %post{' ' + args if args else ''}"}, line))
    return _base(d, stage), steps


def _post_lines(stage: Stage) -> list[tuple[int, str]]:
    return [(s.line + 1 + i, text) for s in stage.sections if s.name == "post" for i, text in enumerate(s.lines)]


def translate(d: _Def, stages: list[Stage], epoch: int, platform: Platform | None = None
              ) -> tuple[dict, dict[str, int]]:
    """The spec dict and its lines: earlier stages under `stages`, the last stage at the top; for
    `platform` (its labels; None: this machine's)."""
    names: list[str] = []
    for stage in stages:
        name = stage.name
        if name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise d.error(stage.header_lines.get("stage", stage.line), f"Stage: {_short(name)!r} is not a plain name",
                          "letters, digits, '.', '_' and '-'")
        if name and name in names:
            raise d.error(stage.header_lines.get("stage", stage.line), f"Stage: {name} is named twice",
                          "give each stage its own name")
        names.append(name)
    lines: dict[str, int] = {}
    raw: dict = {"spec": 1}
    earlier = []
    for i, stage in enumerate(stages[:-1]):
        base, steps = _stage_spec(d, stage, names, i)
        name = names[i] or _unnamed(i, names)
        prefix = f"stages[{i}]"
        lines[prefix] = lines[f"{prefix}.base"] = stage.line
        earlier.append({"name": name, "base": base, "steps": [s for s, _ in steps]})
        for j, (_, number) in enumerate(steps):
            lines[f"{prefix}.steps[{j}]"] = number
    final = stages[-1]
    base, steps = _stage_spec(d, final, names, len(stages) - 1)
    full_text = "".join(s.text for s in stages)
    metadata, config, tests = _metadata(d, final, full_text, epoch, platform)
    steps += metadata
    if earlier:
        raw["stages"] = earlier
    raw["base"] = base
    raw["steps"] = [s for s, _ in steps]
    raw["config"] = config
    if tests:
        raw["tests"] = tests
        lines["tests"] = final.script("test")[2]
    lines[""] = 1
    lines["base"] = final.line
    lines["config"] = lines["steps"] = final.line
    for j, (_, number) in enumerate(steps):
        lines[f"steps[{j}]"] = number
    return raw, lines


def _unnamed(i: int, names: list[str]) -> str:
    name = f"stage{i}"
    while name in names:
        name += "_"
    return name


def _translated(path: str | Path, build_args: dict[str, str] | None, registry: str | None, epoch: int | None,
                platform: Platform | None = None) -> tuple[_Def, dict, dict[str, int]]:
    d, stages = parse(path, build_args, registry)
    return (d, *translate(d, stages, source_date_epoch() if epoch is None else epoch, platform))


def to_dict(path: str | Path, build_args: dict[str, str] | None = None, registry: str | None = None,
            epoch: int | None = None, platform: Platform | None = None) -> tuple[dict, dict[str, int]]:
    """The spec dict of a def file and the def file's line of each of its fields."""
    _, raw, lines = _translated(path, build_args, registry, epoch, platform)
    return raw, lines


def load(path: str | Path, build_args: dict[str, str] | None = None, registry: str | None = None,
         platform: Platform | None = None) -> Spec:
    """The build spec of an Apptainer definition file (its `text` is the file, for the provenance), for
    `platform` (None: this machine's); a build for other platforms translates it again for each
    (Spec.for_platform), so that each image's labels.json names its own architecture."""
    d, raw, lines = _translated(path, build_args, registry, None, platform)
    spec = from_dict(d.path, raw, lines, text=d.data)
    spec = dataclasses.replace(spec, retarget=lambda other: spec if other == platform else load(
        path, build_args, registry, other))
    return spec
