"""What Apptainer expects inside the root filesystem of an image converted from OCI.

`/.singularity.d/` holds the environment scripts (the OCI Env as `export K="${K:-"V"}"` lines), a
runscript that runs ENTRYPOINT and CMD, labels, and the action scripts; a few directories and empty
`/etc/hosts` and `/etc/resolv.conf` complete the tree. Written from Apptainer's documented layout;
the scripts are repro's own, with the same behaviour. The inverse (config from these files) is here too.
"""

from __future__ import annotations

import json
import re
import tarfile

from repro.image import ImageConfig

SD = ".singularity.d"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SOURCE_ENV = """for script in /.singularity.d/env/*.sh; do
    if [ -f "$script" ]; then
        . "$script"
    fi
done
"""
HEADER = "#!/bin/sh\n# Written by repro for Apptainer/SingularityCE.\n"
ACTIONS = {
    "exec": f'{HEADER}\n{SOURCE_ENV}\nexec "$@"\n',
    "run": f"""{HEADER}\n{SOURCE_ENV}
if [ -x /.singularity.d/runscript ]; then
    exec /.singularity.d/runscript "$@"
fi
echo "No runscript found, executing /bin/sh"
exec /bin/sh "$@"
""",
    "shell": f"""{HEADER}\n{SOURCE_ENV}
if [ -n "${{SINGULARITY_SHELL:-}}" ] && [ -x "$SINGULARITY_SHELL" ]; then
    exec "$SINGULARITY_SHELL" "$@"
fi
if [ -x /bin/bash ]; then
    SHELL=/bin/bash
    PS1="Apptainer $APPTAINER_NAME:\\\\w> "
    export SHELL PS1
    exec /bin/bash --norc "$@"
fi
SHELL=/bin/sh
export SHELL
exec /bin/sh "$@"
""",
    "start": f"""{HEADER}\n# Let the instance's init know we are running.\nkill -CONT 1\n\n{SOURCE_ENV}
if [ -x /.singularity.d/startscript ]; then
    exec /.singularity.d/startscript
fi
""",
    "test": f"""{HEADER}\n{SOURCE_ENV}
if [ -x /.singularity.d/test ]; then
    exec /.singularity.d/test "$@"
fi
echo "No test found in container, executing /bin/sh -c true"
exec /bin/sh -c true
""",
}
ENV_FILES = {
    "01-base.sh": f"{HEADER}# Base environment: nothing to set.\n",
    "90-environment.sh": f"{HEADER}\n# Custom environment shell code should follow\n",
    "94-appsbase.sh": "",
    "99-base.sh": f"""{HEADER}
if [ -z "${{LD_LIBRARY_PATH:-}}" ]; then
    LD_LIBRARY_PATH="/.singularity.d/libs"
else
    LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/.singularity.d/libs"
fi
if [ -z "${{PS1:-}}" ]; then
    PS1="Apptainer> "
fi
export LD_LIBRARY_PATH PS1
""",
}
STARTSCRIPT = f"{HEADER}"
SYMLINKS = {
    "singularity": f"{SD}/runscript", ".run": f"{SD}/actions/run", ".exec": f"{SD}/actions/exec",
    ".test": f"{SD}/actions/test", ".shell": f"{SD}/actions/shell", "environment": f"{SD}/env/90-environment.sh",
}
DIRS = (SD, f"{SD}/actions", f"{SD}/env", f"{SD}/libs")
DEFAULT_DIRS = ("dev", "proc", "root", "var", "var/tmp", "tmp", "etc", "sys", "home")
EMPTY_FILES = ("etc/hosts", "etc/resolv.conf")


def escape(value: str) -> str:
    """Escape for the inside of a double-quoted shell word: \\ " ` $ (newlines stay literal)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`").replace("$", "\\$")


def env_script(env: tuple[str, ...]) -> str:
    lines = ["#!/bin/sh\n"]
    for item in env:
        name, sep, value = item.partition("=")
        if not ENV_NAME.match(name):
            continue
        if not sep:
            lines.append(f'export {name}="${{{name}:-}}"\n')
        elif name == "PATH":
            lines.append(f'export PATH="{escape(value)}"\n')
        else:
            lines.append(f'export {name}="${{{name}:-"{escape(value)}"}}"\n')
    return "".join(lines)


def _single_quoted(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def _args_quoted(args: tuple[str, ...]) -> str:
    return " ".join(f'"{escape(a)}"' for a in args)


def runscript(entrypoint: tuple[str, ...], cmd: tuple[str, ...]) -> str:
    """ENTRYPOINT then CMD; arguments given to the container replace CMD, as with docker run."""
    set_cmd = f"    set -- {' '.join(_single_quoted(a) for a in cmd)}\n" if cmd else "    :\n"
    prepend = f"set -- {' '.join(_single_quoted(a) for a in entrypoint)} \"$@\"\n" if entrypoint else ""
    return (
        "#!/bin/sh\n"
        f"OCI_ENTRYPOINT={_single_quoted(_args_quoted(entrypoint))}\n"
        f"OCI_CMD={_single_quoted(_args_quoted(cmd))}\n"
        "# Runs the image's ENTRYPOINT with CMD, or with the arguments given instead of CMD.\n"
        f"if [ $# -eq 0 ]; then\n{set_cmd}fi\n"
        f"{prepend}"
        "if [ $# -eq 0 ]; then\n    set -- /bin/sh\nfi\n"
        'exec "$@"\n'
    )


def labels_json(labels: dict[str, str]) -> str:
    return json.dumps(labels, indent="\t", sort_keys=True, ensure_ascii=False)


def deffile(source: str, digest: str) -> str:
    return f"bootstrap: docker-archive\nfrom: {source}@{digest}\n\n"


def files_for(config: ImageConfig, deffile_text: str) -> dict[str, str]:
    """Path -> content of every file repro writes (all mode 0755 but labels.json and Singularity)."""
    out = {f"{SD}/actions/{name}": body for name, body in ACTIONS.items()}
    out |= {f"{SD}/env/{name}": body for name, body in ENV_FILES.items()}
    out[f"{SD}/env/10-docker2singularity.sh"] = env_script(config.env)
    out[f"{SD}/runscript"] = runscript(config.entrypoint, config.cmd)
    out[f"{SD}/startscript"] = STARTSCRIPT
    out[f"{SD}/labels.json"] = labels_json(config.labels)
    out[f"{SD}/Singularity"] = deffile_text
    for path in EMPTY_FILES:
        out[path] = ""
    return out


def inspect_metadata(files: dict[str, str], labels: dict[str, str]) -> dict:
    """The `apptainer inspect --all` view, as Apptainer stores it in its inspect-metadata.json object
    (test and helpfile only when the image has them, as from a def file's %test and %help)."""
    scripts = (f"{SD}/env/10-docker2singularity.sh", f"{SD}/env/90-environment.sh", f"{SD}/env/91-environment.sh")
    env = {f"/{p}": files[p].rstrip("\n") for p in scripts if p in files}
    attributes = {"deffile": files[f"{SD}/Singularity"].rstrip("\n"), "environment": env, "labels": labels,
                  "runscript": files[f"{SD}/runscript"].rstrip("\n"),
                  "startscript": files[f"{SD}/startscript"].rstrip("\n")}
    for key, path in (("test", f"{SD}/test"), ("helpfile", f"{SD}/runscript.help")):
        if files.get(path):
            attributes[key] = files[path].rstrip("\n")
    return {"data": {"attributes": attributes}, "type": "container"}


# A label every Apptainer build sets (and repro's def-file builds): the image's /.singularity.d is its own.
DEF_BUILD_LABEL = "org.label-schema.usage.singularity.deffile.bootstrap"
# What the SIF writer reads back from such an image for the deffile object and inspect-metadata.json.
OWN_FILES = (f"{SD}/Singularity", f"{SD}/labels.json", f"{SD}/runscript", f"{SD}/startscript", f"{SD}/test",
             f"{SD}/runscript.help", f"{SD}/env/10-docker2singularity.sh", f"{SD}/env/90-environment.sh",
             f"{SD}/env/91-environment.sh")
MAX_OWN_FILE = 1 << 20


def built_from_def(config: ImageConfig) -> bool:
    """Whether the image carries the /.singularity.d files of a def-file build (Apptainer's or repro's),
    which a SIF keeps instead of writing its own."""
    return DEF_BUILD_LABEL in config.labels


def overlay_entries(config: ImageConfig, deffile_text: str, mtime: int):
    """(TarInfo, bytes) for the files, links and directories repro adds, and the set of paths they own."""
    entries: list[tuple[tarfile.TarInfo, bytes]] = []
    for path in DIRS:
        info = tarfile.TarInfo(path)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
        entries.append((info, b""))
    for path, body in sorted(files_for(config, deffile_text).items()):
        data = body.encode()
        info = tarfile.TarInfo(path)
        info.size, info.mtime = len(data), mtime
        info.mode = 0o644 if path.endswith(("labels.json", "Singularity")) or path in EMPTY_FILES else 0o755
        entries.append((info, data))
    for path, target in sorted(SYMLINKS.items()):
        info = tarfile.TarInfo(path)
        info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, target, 0o777, mtime
        entries.append((info, b""))
    return entries


# --- the inverse: an OCI config from the files -----------------------------------------------------


def _read_double_quoted(text: str, start: int) -> tuple[str, int]:
    """Unescape a double-quoted word body starting after its opening quote; returns (value, end)."""
    out, i = [], start
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in '\\"`$':
            out.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise ValueError("unterminated string")


def parse_env_script(text: str) -> list[str]:
    """The Env entries from an env/10-docker2singularity.sh written by Apptainer or repro."""
    env, i = [], 0
    pattern = re.compile(r'export ([A-Za-z_][A-Za-z0-9_]*)="')
    while (match := pattern.search(text, i)) is not None:
        name, i = match.group(1), match.end()
        try:
            if text.startswith(f"${{{name}:-}}\"", i):
                env.append(name)
                i += len(name) + 5
            elif text.startswith(f'${{{name}:-"', i):
                value, i = _read_double_quoted(text, i + len(name) + 5)
                env.append(f"{name}={value}")
            else:
                value, i = _read_double_quoted(text, i)
                env.append(f"{name}={value}")
        except ValueError:
            break
    return env


def _parse_args_quoted(text: str) -> list[str]:
    args, i = [], 0
    while i < len(text):
        if text[i] == '"':
            value, i = _read_double_quoted(text, i + 1)
            args.append(value)
        else:
            i += 1
    return args


def parse_runscript(text: str) -> tuple[list[str], list[str]]:
    """(entrypoint, cmd) from the OCI_ENTRYPOINT= and OCI_CMD= lines of a runscript."""
    found: dict[str, list[str]] = {}
    for key in ("OCI_ENTRYPOINT", "OCI_CMD"):
        match = re.search(rf"^{key}='((?:[^']|'\"'\"')*)'", text, re.M)
        if match:
            found[key] = _parse_args_quoted(match.group(1).replace("'\"'\"'", "'"))
    return found.get("OCI_ENTRYPOINT", []), found.get("OCI_CMD", [])
