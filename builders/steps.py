"""The step kinds of a build spec: what each step's layer holds (copy, file), what a run or packages step
runs, and what the builder reads back from the working tree (accounts, installed packages).

The builder (builders/build.py) orders the steps, keys them in the cache and keeps the working tree;
the functions here know one step's own rules, as docker and buildah have them.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

from builders import sources as _sources
from builders.spec import Spec, Step
from repro.confined import Tree, clean_path
from repro.errors import ReproError
from repro.flatten import WHITEOUT_PREFIX
from repro.image import Image, Platform
from repro.layers import TarWriter
from sbom.deb822 import paragraphs

MAX_DPKG_STATUS = 256 << 20
MAX_ACCOUNTS = 4 << 20


def title(step: Step) -> str:
    if step.extras.get("history"):  # a front end's own words for the step (its instruction)
        first = step.extras["history"].strip().splitlines()[0] if step.extras["history"].strip() else ""
        return first if len(first) <= 100 else first[:97] + "..."
    if step.kind == "copy":
        src = step.value["src"]
        source = " ".join(src) if isinstance(src, list) else src
        origin = f"--from={step.value['from']} " if step.value.get("from") else ""
        return f"copy {origin}{source} -> {step.value['dst']}"
    if step.kind == "file":
        return f"file {step.value['dst']}"
    if step.kind == "directory":
        return f"directory {step.value['dst']}"
    if step.kind == "packages":
        return "packages " + " ".join(step.value)
    return f"run {step.value if isinstance(step.value, str) else ' '.join(step.value)}"


PLATFORM_VARIABLES = ("TARGETPLATFORM", "TARGETOS", "TARGETARCH", "TARGETVARIANT")


def platform_variables(platform: Platform) -> dict[str, str]:
    """Docker's automatic platform ARGs, which a copy source may name (busybox-${TARGETARCH})."""
    return {"TARGETPLATFORM": str(platform), "TARGETOS": platform.os, "TARGETARCH": platform.architecture,
            "TARGETVARIANT": platform.variant}


def copy_sources(step: Step, platform: Platform | None = None) -> list[str]:
    src = step.value["src"]
    sources = list(src) if isinstance(src, list) else [src]
    if platform is None:
        return sources
    values = platform_variables(platform)
    for name in PLATFORM_VARIABLES:
        sources = [s.replace("${" + name + "}", values[name]) for s in sources]
    return sources


def _placement(spec: Spec, step: Step, sources: list[str], names: int) -> str:
    """Where one file source lands; several sources (or a glob) need a directory destination."""
    dst = step.value["dst"]
    if (len(sources) > 1 or any(_sources.is_glob(s) for s in sources) or names > 1) and not dst.endswith("/"):
        raise spec.error(f"steps[{step.index}].copy.dst", f"{dst!r}: several sources need a directory "
                         "destination", "end dst with /")
    return dst


def _made_parents(owner: tuple[int, int] | None, epoch: int, is_dir: Callable[[str], bool]
                  ) -> Callable[[TarWriter, str], None]:
    """The directories an entry's name needs that the image lacks, as buildah makes them for COPY
    --chown: each owned by the step's owner, mode 0755, written before the entry. Without an owner (or
    root's) they are left to extraction, which makes them alike (root's, 0755): layers stay as they were."""
    made: set[str] = set()

    def make(tar: TarWriter, name: str) -> None:
        parts = name.split("/")
        if owner is not None and owner != (0, 0):
            for end in range(1, len(parts)):
                path = "/".join(parts[:end])
                if path in made or is_dir(path):
                    continue
                info = tarfile.TarInfo(path)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, epoch
                info.uid, info.gid = owner
                tar.add(info)
                made.add(path)
        made.add(name)  # an entry of the step: what is below it is not made again

    return make


def copy_layer(spec: Spec, step: Step, epoch: int, owner: tuple[int, int] | None, image: Image | None,
                  platform: Platform, resolve: Callable[..., str],
                  is_dir: Callable[[str], bool] = lambda path: False) -> Callable[[TarWriter], None]:
    """The layer of a copy step: context files (owned by root unless `owner`) or another image's files
    (owners kept unless `owner`), placed like `COPY` places them. `mode` is the copied files',
    `directory_mode` the copied directories' (not the destination's); the directories the step makes
    on the way to its entries are `owner`'s (see _made_parents), as buildah has it."""
    dst = step.value["dst"]
    mode = int(step.value["mode"], 8) if step.value.get("mode") else None
    directory_mode = int(step.value["directory_mode"], 8) if step.value.get("directory_mode") else None
    sources = copy_sources(step, platform)
    parents = _made_parents(owner, epoch, is_dir)

    def error(message: str, hint: str) -> ReproError:
        return spec.error(f"steps[{step.index}].copy.src", message, hint)

    def place(info: tarfile.TarInfo, relative: str, is_root_file: bool) -> str:
        if is_root_file:
            target = dst + relative if dst.endswith("/") else dst
            return clean_path(target)
        return clean_path(f"{dst}/{relative}")

    def add(tar: TarWriter, info: tarfile.TarInfo, content, name: str) -> None:
        info.name = resolve(name, info.isdir())
        _refuse_whiteout(info.name, spec, step)
        if owner is not None:
            info.uid, info.gid = owner
            info.uname = info.gname = ""
        if mode is not None and info.isreg():
            info.mode = mode
        if directory_mode is not None and info.isdir():
            info.mode = directory_mode
        info.mtime = min(info.mtime, epoch)
        parents(tar, info.name)
        if info.isreg() and isinstance(content, Path):
            with open(content, "rb") as f:
                tar.add(info, f)
        else:
            tar.add(info, content)

    def produce(tar: TarWriter) -> None:
        if image is None:
            ignore = exclusions(step)
            found = _sources.context_sources(spec.directory, sources, ignore, error)
            _placement(spec, step, sources, len(found))
            for source in found:
                is_dir = source.path.is_dir()
                base = "" if is_dir else None
                for info, path in _sources.context_entries(source, ignore, epoch):
                    relative = info.name
                    if owner is None:
                        info.uid = info.gid = 0
                    name = place(info, relative, base is None)
                    if info.islnk():
                        info.linkname = resolve(place(info, info.linkname, False))
                    add(tar, info, path, name)
            return
        _placement(spec, step, sources, 1)
        copied: dict[str, str] = {}
        for _source, relative, whole, info, content in _sources.image_entries(image, sources, error):
            name = place(info, relative, whole)
            original = info.name
            if info.islnk():
                if info.linkname not in copied:
                    raise error(f"{original!r} is a hard link to {info.linkname!r}, outside what is copied",
                                "copy the directory that holds both")
                info.linkname = resolve(copied[info.linkname])
            copied[original] = name
            add(tar, info, content, name)

    return produce


def exclusions(step: Step) -> _sources.Ignore:
    return _sources.Ignore.parse(list(step.value.get("exclude") or []))


def _refuse_whiteout(name: str, spec: Spec, step: Step) -> None:
    """A name that a layer would read as a whiteout deletes files instead of adding one."""
    if name.rpartition("/")[2].startswith(WHITEOUT_PREFIX):
        raise spec.error(f"steps[{step.index}].{step.kind}", f"{name!r}: names starting with {WHITEOUT_PREFIX} are "
                         "whiteouts in a layer (they delete files)", "rename the file")


def file_layer(spec: Spec, step: Step, epoch: int, resolve: Callable[..., str],
                is_dir: Callable[[str], bool] = lambda path: False) -> Callable[[TarWriter], None]:
    """The layer of a file step; the directories it makes on the way are its owner's (as a copy's)."""
    def produce(tar: TarWriter) -> None:
        data = step.value["content"].encode()
        info = tarfile.TarInfo(resolve(clean_path(step.value["dst"])))
        _refuse_whiteout(info.name, spec, step)
        info.size, info.mtime = len(data), epoch
        info.mode = int(step.value.get("mode") or "0644", 8)
        uid, _, gid = (step.value.get("owner") or "0:0").partition(":")
        info.uid, info.gid = int(uid), int(gid)
        _made_parents((info.uid, info.gid), epoch, is_dir)(tar, info.name)
        tar.add(info, io.BytesIO(data))

    return produce


def accounts(root: Path, name: str) -> dict[str, list[str]]:
    """passwd or group of the tree (read inside it, bounded): name -> its colon-separated fields."""
    try:
        with Tree(root) as tree, tree.open_file(name) as f:
            text = f.read(MAX_ACCOUNTS).decode(errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return {}
    out = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[0] not in out and fields[2].isdigit():
            out[fields[0]] = fields
    return out


def home(root: Path, uid: int) -> str:
    """HOME as docker sets it: the user's from passwd, else /root for root and / for others."""
    for fields in accounts(root, "etc/passwd").values():
        if fields[2] == str(uid) and len(fields) >= 6 and fields[5].startswith("/"):
            return fields[5]
    return "/root" if uid == 0 else "/"


def installed_packages(root: Path) -> list[dict]:
    """dpkg's status file in the tree, read inside it (a step may have made it a link to the host's)."""
    try:
        with Tree(root) as tree, tree.open_file("var/lib/dpkg/status") as status:
            text = status.read(MAX_DPKG_STATUS + 1).decode(errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return []
    if len(text) > MAX_DPKG_STATUS:
        raise ReproError(f"{root}: /var/lib/dpkg/status is larger than {MAX_DPKG_STATUS >> 20} MiB",
                         "the image is damaged or hostile")
    out = [{"name": fields["Package"], "version": fields.get("Version", ""),
            "architecture": fields.get("Architecture", ""), "sha256": ""}
           for fields in paragraphs(text) if fields.get("Status", "").endswith(" installed") and "Package" in fields]
    return sorted(out, key=lambda p: p["name"])


def command(step: Step) -> list[str]:
    """The argv of a run or packages step: a string runs in /bin/sh -c, a list as it is."""
    if step.kind == "packages":
        # apt drops to its _apt user for downloads; in a plain user's namespace (bwrap) there is no
        # such id, and as root the step is confined already: download as root inside, everywhere, so
        # that the files apt leaves are owned alike as root and as a plain user.
        apt = "apt-get -o APT::Sandbox::User=root"
        packages = " ".join(step.value)
        script = f"{apt} update -qq && {apt} install -y -qq --no-install-recommends {packages} > /dev/null"
    else:
        script = step.value
    return list(script) if isinstance(script, list) else ["/bin/sh", "-c", script]

