"""The build spec: YAML in, a validated Spec out, and errors that name the file, line and field.

The schema (spec.schema.json, shipped in the package) describes every field for editors; this module
checks a spec against it and adds the checks a schema cannot express (copy sources exist and stay
beside the spec). Every problem is one `file:line: field: message` error: YAML anchors, aliases and
tags are refused outright (a spec needs none, and expanding aliases turns a few hundred bytes into
gigabytes), and so are specs larger than MAX_SPEC_BYTES or nested deeper than MAX_DEPTH.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from builders import sources
from repro.clock import source_date_epoch
from repro.errors import ReproError

SCHEMA_FILE = "spec.schema.json"
MAX_SPEC_BYTES = 1 << 20
MAX_DEPTH = 32  # a spec nests five levels; deeper YAML would only exhaust the composer's recursion
MAX_ID = 0xFFFFFFFE  # the largest uid or gid a Linux file can have


# The optional format checkers jsonschema imports when they are installed (jsonschema/_format.py).
FORMAT_MODULES = ("fqdn", "idna", "rfc3987", "rfc3986_validator", "rfc3987_syntax", "rfc3339_validator", "webcolors",
                  "jsonpointer", "uri_template", "isoduration")


@cache
def _validator_class():
    """jsonschema, loaded only when a spec is checked. Loading it imports every optional format checker
    that is installed: one of them (rfc3987_syntax, brought by cyclonedx's validation extra) compiles a
    grammar for two seconds, the others (isoduration with arrow, rfc3986_validator, ...) took 0.5 s of CPU,
    most of a small build's start. A spec uses no formats, so they are all kept out of that import."""
    blocked = [name for name in FORMAT_MODULES if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # makes its import fail, as if absent
    try:
        # lazy: jsonschema is slow to import (see above), and only checking a spec needs it
        from jsonschema import Draft202012Validator, validators  # noqa: PLC0415 - lazy, see above
    finally:
        for name in blocked:
            del sys.modules[name]
    # JSON Schema counts 1.0 as an integer; a spec's integers are YAML integers (not booleans, not floats).
    types = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda checker, value: isinstance(value, int) and not isinstance(value, bool))
    return validators.extend(Draft202012Validator, type_checker=types)


@cache
def schema() -> dict:
    return json.loads(resources.files("builders").joinpath(SCHEMA_FILE).read_text())


STEP_KINDS = ("copy", "file", "directory", "packages", "run")
RUN_ONLY = ("env", "workdir", "user", "cache")  # what a run step may give beside the command


@dataclass(frozen=True)
class Step:
    kind: str  # one of STEP_KINDS
    value: Any
    network: bool
    line: int
    index: int
    extras: dict = field(default_factory=dict)  # run's env, workdir, user, cache; any step's history
    where: str = ""  # the step's place in the spec, e.g. stages[0].steps[2]

    def definition(self) -> dict:
        """What identifies the step in the cache key (history text is a label, not an input)."""
        out = {"kind": self.kind, "value": self.value, "network": self.network}
        out.update({k: v for k, v in self.extras.items() if k != "history"})
        return out


@dataclass(frozen=True)
class Spec:
    """A spec, or one stage of it (`prefix` names where the stage sits, for errors and line numbers).
    Front ends (Containerfile, def file) make the same object with `from_dict`."""

    path: Path
    raw: dict
    lines: dict[str, int] = field(repr=False)
    context: Path | None = None  # where copy sources come from; the spec's directory by default
    prefix: str = ""
    text: bytes | None = field(default=None, repr=False)  # the source a front end translated, for provenance
    # a front end's spec for another target platform (a Containerfile's TARGETARCH, a def file's arch labels
    # follow the platform being built); None: the spec is the same for every platform
    retarget: Callable[[Any], Spec] | None = field(default=None, repr=False, compare=False)

    @property
    def directory(self) -> Path:
        return self.context or self.path.parent

    @property
    def stages(self) -> dict[str, Spec]:
        """The earlier stages by name, each a Spec of its own sharing this one's file and context."""
        out = {}
        for i, stage in enumerate(self.raw.get("stages") or []):
            raw = {"spec": 1, "name": stage["name"], **{k: v for k, v in stage.items() if k != "name"}}
            raw["source_date_epoch"] = self.raw.get("source_date_epoch", 0)
            out[stage["name"]] = Spec(self.path, raw, self.lines, self.context, f"stages[{i}].", self.text)
        return out

    @property
    def epoch(self) -> int:
        """The build's SOURCE_DATE_EPOCH: the environment's, else the spec's."""
        return source_date_epoch(int(self.raw.get("source_date_epoch", 0)))

    @property
    def platform(self) -> str | None:
        """The platform this image or stage is built for whatever --platform asks (FROM --platform)."""
        return self.raw.get("platform")

    def for_platform(self, platform: Any) -> Spec:
        """This spec as built for `platform` (a front end translates its file again for it)."""
        return self.retarget(platform) if self.retarget is not None and platform is not None else self

    @property
    def name(self) -> str:
        return self.raw.get("name") or self.path.parent.name

    @property
    def tag(self) -> str:
        return self.raw.get("tag") or f"{self.name}:latest"

    @property
    def base(self) -> tuple[str, Any]:
        (kind, value), = self.raw["base"].items()
        return kind, value

    @property
    def steps(self) -> list[Step]:
        out = []
        for i, item in enumerate(self.raw.get("steps") or []):
            kind = next(k for k in item if k in STEP_KINDS)
            network = bool(item.get("network", kind == "packages"))
            extras = {k: v for k, v in item.items() if k in (*RUN_ONLY, "history")}
            out.append(Step(kind, item[kind], network, self.line(f"steps[{i}]"), i, extras,
                            f"{self.prefix}steps[{i}]"))
        return out

    @property
    def config(self) -> dict:
        return self.raw.get("config") or {}

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.raw.get("annotations") or {})

    @property
    def tests(self) -> list[dict]:
        return list(self.raw.get("tests") or [])

    def line(self, where: str) -> int:
        where = self.prefix + where if not where.startswith(self.prefix) else where
        while where and where not in self.lines:
            where = where.rpartition(".")[0] if "." in where else where.rpartition("[")[0]
        return self.lines.get(where, 1)

    def error(self, where: str, message: str, hint: str = "") -> ReproError:
        where = self.prefix + where if not where.startswith(self.prefix) else where
        if self.text is not None:  # a front end's file: its line says where, the spec's field names would not
            return _fail(f"{self.path}:{self.line(where)}: {message}", hint)
        return _fail(f"{self.path}:{self.line(where)}: {where}: {message}", hint)


def _fail(message: str, hint: str = "") -> ReproError:
    """The error, on one line: keys and values may hold newlines or control characters, or be long."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    return ReproError(text if len(text) <= 1000 else text[:997] + "...", hint)


class _Refused(Exception):
    """YAML that a spec may not use, at a line."""

    def __init__(self, line: int, message: str, hint: str) -> None:
        super().__init__(message)
        self.line, self.message, self.hint = line, message, hint


class _SpecLoader(yaml.SafeLoader):
    """Composes the node tree only, refusing anchors, aliases, tags and deep nesting before any of
    them costs time or recursion."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(line, "YAML anchors and aliases (&name, *name) are not allowed in a spec",
                           "write each value out in full")
        if getattr(event, "tag", None) is not None:
            raise _Refused(line, f"YAML tags ({event.tag}) are not allowed in a spec", "remove the tag")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(line, f"nested more than {MAX_DEPTH} levels deep", "see catalog/ for examples")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _walk(node: yaml.Node, where: str, lines: dict[str, int], loader: _SpecLoader) -> Any:
    lines.setdefault(where, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise _Refused(line, f"{where or 'spec'}: a key must be a plain name", "see catalog/ for examples")
            key = key_node.value
            child = f"{where}.{key}" if where else key
            if key in out:
                raise _Refused(line, f"{child}: duplicate key", "give each key once")
            lines[child] = line
            out[key] = _walk(value_node, child, lines, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(item, f"{where}[{i}]", lines, loader) for i, item in enumerate(node.value)]
    try:
        return loader.construct_object(node)
    except (yaml.YAMLError, ValueError, TypeError, KeyError, OverflowError) as exc:
        raise _Refused(node.start_mark.line + 1, f"{where or 'spec'}: cannot read the value {_short(node.value)} "
                       f"({exc.__class__.__name__})", "quote it to make it a string") from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _compose(path: Path) -> yaml.Node | None:
    """The spec's node tree, or one file:line error."""
    with open(path, "rb") as f:
        data = f.read(MAX_SPEC_BYTES + 1)
    if len(data) > MAX_SPEC_BYTES:
        raise _fail(f"{path}:1: the spec is larger than {MAX_SPEC_BYTES} bytes", "a spec is a short text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise _fail(f"{path}:{line}: the spec is not UTF-8 text", "save it as UTF-8") from None
    loader = None
    try:
        loader = _SpecLoader(text)  # checks the characters already
        return loader.get_single_node()
    except _Refused as exc:
        raise _fail(f"{path}:{exc.line}: {exc.message}", exc.hint) from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        raise _fail(f"{path}:{line}: not valid YAML (character {exc.character:#x} is not allowed)",
                    "remove control characters; write them as escapes in a quoted string") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise _fail(f"{path}:{line}: not valid YAML ({getattr(exc, 'problem', exc)})", "fix the syntax") from None
    finally:
        if loader is not None:
            loader.dispose()


def _where(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(error) -> str:
    if error.validator == "additionalProperties":
        return error.message.replace("Additional properties are not allowed", "unknown key")
    if error.validator == "pattern" and "mode" in str(error.path[-1] if error.path else ""):
        return f"expected an octal string like \"0644\", got {error.instance!r}"
    if error.validator == "pattern" and error.path and error.path[-1] == "dst":
        return (f"{_short(error.instance)} is not an absolute path of plain names (no '.', '..', '//' or NUL"
                + (")" if "file" in error.path else "; a trailing / means into that directory)"))
    if error.validator == "pattern" and error.path and error.path[-1] == "src":
        return f"{_short(error.instance)} holds a NUL character"
    if error.validator == "type":
        return f"expected {error.validator_value}, got {type(error.instance).__name__} {_short(error.instance)}"
    if error.validator == "oneOf" and error.path and error.path[-1] == "run":
        return "expected a command string or a non-empty list of strings"
    if error.validator == "oneOf" and len(error.path) == 2 and error.path[0] == "steps":
        return "give exactly one of copy, file, packages or run"
    if error.validator in ("maxProperties", "minProperties") and error.path and error.path[-1] == "base":
        return "give exactly one of scratch, image or debian"
    return error.message


def load(path: str | Path) -> Spec:
    path = Path(path)
    if not path.is_file():
        raise _fail(f"{path}: spec not found", "give the path of a spec YAML file")
    node = _compose(path)
    if node is None:
        raise _fail(f"{path}:1: the spec is empty", "see catalog/ for examples")
    lines: dict[str, int] = {}
    try:
        raw = _walk(node, "", lines, _SpecLoader(""))
    except _Refused as exc:
        raise _fail(f"{path}:{exc.line}: {exc.message}", exc.hint) from None
    if not isinstance(raw, dict):
        raise Spec(path.resolve(), {}, lines).error("", "the spec must be a mapping of keys",
                                                      "see catalog/ for examples")
    return from_dict(path, raw, lines)


def from_dict(path: str | Path, raw: dict, lines: dict[str, int], context: Path | None = None,
              text: bytes | None = None) -> Spec:
    """A spec from its dict: the YAML loader's, or a front end's translation of a Containerfile or a def
    file (then `text` is that file, recorded in the provenance, and `lines` maps fields to its lines)."""
    path = Path(path)
    spec = Spec(path.resolve(), raw, lines, context.resolve() if context else None, "", text)
    errors = sorted(_validator_class()(schema()).iter_errors(raw), key=lambda e: (len(list(e.path)), str(e.path)))
    if errors:
        error = max(errors, key=lambda e: len(list(e.absolute_path)))
        where = _where(error.absolute_path)
        message = _message(error)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = error.schema.get("properties", {})
            unknown = sorted(str(k) for k in error.instance if k not in allowed)
            where = f"{where}.{unknown[0]}" if where else unknown[0]
            message = f"unknown key (expected one of: {', '.join(allowed)})"
        raise spec.error(where or "spec", message, "see builders/spec.schema.json for the fields")
    for part in (spec, *spec.stages.values()):
        _check_steps(part, set(spec.stages))
    return spec


def _check_steps(spec: Spec, stages: set[str]) -> None:
    """What the schema cannot say: ids in range, run-only keys, stages that exist, sources beside the spec."""
    kind, value = spec.base
    if kind == "stage" and value not in stages:
        raise spec.error("base.stage", f"no stage named {value!r}", "name one of the spec's stages")
    for step in spec.steps:
        where = f"steps[{step.index}]"
        for owner in (step.value.get("owner") if isinstance(step.value, dict) else None, step.extras.get("user")):
            if owner is not None and any(p.isdigit() and (len(p) > 10 or int(p) > MAX_ID) for p in owner.split(":")):
                raise spec.error(f"{where}.{step.kind}.owner", f"{owner!r}: ids go up to {MAX_ID}",
                                 "give a uid:gid that a file can have")
        if step.kind != "run" and any(k in step.extras for k in RUN_ONLY):
            key = next(k for k in RUN_ONLY if k in step.extras)
            raise spec.error(f"{where}.{key}", f"{key} is for run steps only", "move it to a run step")
        if step.kind == "copy":
            source = step.value.get("from")
            if source is None:
                if "${TARGET" not in str(step.value["src"]):  # else the platform's build checks them
                    check_copy_sources(spec, step)
            elif ":" not in source and source not in stages:
                raise spec.error(f"{where}.copy.from", f"no stage named {source!r}",
                                 "name an earlier stage, or give an image reference such as oci:DIR:TAG")


def check_copy_sources(spec: Spec, step: Step) -> None:
    """Every source of a context copy exists inside the context (globs match something)."""
    src = step.value["src"]
    where = f"steps[{step.index}].copy.src"
    try:
        sources.context_sources(spec.directory, list(src) if isinstance(src, list) else [src],
                                sources.Ignore.parse(list(step.value.get("exclude") or [])),
                                lambda message, hint: spec.error(where, message, hint))
    except (OSError, ValueError) as exc:
        raise spec.error(where, f"{_short(src)} cannot be looked up ({exc})", "check the path") from None
