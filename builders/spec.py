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
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from repro.errors import ReproError

SCHEMA_FILE = "spec.schema.json"
MAX_SPEC_BYTES = 1 << 20
MAX_DEPTH = 32  # a spec nests five levels; deeper YAML would only exhaust the composer's recursion
MAX_ID = 0xFFFFFFFE  # the largest uid or gid a Linux file can have


@cache
def _validator_class():
    """jsonschema, loaded only when a spec is checked. Loading it imports every optional format checker
    that is installed, and one of them (rfc3987_syntax, brought by cyclonedx's validation extra)
    compiles a grammar for two seconds; a spec uses no formats, so it is kept out of that import."""
    blocked = "rfc3987_syntax" not in sys.modules
    if blocked:
        sys.modules["rfc3987_syntax"] = None  # type: ignore[assignment]  # makes its import fail, as if absent
    try:
        from jsonschema import Draft202012Validator, validators
    finally:
        if blocked:
            del sys.modules["rfc3987_syntax"]
    # JSON Schema counts 1.0 as an integer; a spec's integers are YAML integers (not booleans, not floats).
    types = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda checker, value: isinstance(value, int) and not isinstance(value, bool))
    return validators.extend(Draft202012Validator, type_checker=types)


@cache
def schema() -> dict:
    return json.loads(resources.files("builders").joinpath(SCHEMA_FILE).read_text())


@dataclass(frozen=True)
class Step:
    kind: str  # copy, file, packages, run
    value: Any
    network: bool
    line: int
    index: int

    def definition(self) -> dict:
        """What identifies the step in the cache key."""
        return {"kind": self.kind, "value": self.value, "network": self.network}


@dataclass(frozen=True)
class Spec:
    path: Path
    raw: dict
    lines: dict[str, int] = field(repr=False)

    @property
    def directory(self) -> Path:
        return self.path.parent

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
            kind = next(k for k in item if k != "network")
            network = bool(item.get("network", kind == "packages"))
            out.append(Step(kind, item[kind], network, self.line(f"steps[{i}]"), i))
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
        while where and where not in self.lines:
            where = where.rpartition(".")[0] if "." in where else where.rpartition("[")[0]
        return self.lines.get(where, 1)

    def error(self, where: str, message: str, hint: str = "") -> ReproError:
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
    spec = Spec(path.resolve(), raw if isinstance(raw, dict) else {}, lines)
    if not isinstance(raw, dict):
        raise spec.error("", "the spec must be a mapping of keys", "see catalog/ for examples")
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
    for step in spec.steps:
        owner = step.value.get("owner") if isinstance(step.value, dict) else None
        if owner is not None and any(len(part) > 10 or int(part) > MAX_ID for part in owner.split(":")):
            raise spec.error(f"steps[{step.index}].{step.kind}.owner", f"{owner!r}: ids go up to {MAX_ID}",
                             "give a numeric uid:gid that a file can have")
        if step.kind == "copy":
            check_copy_source(spec, step)
    return spec


def check_copy_source(spec: Spec, step: Step) -> Path:
    src = step.value["src"]
    where = f"steps[{step.index}].copy.src"
    try:
        candidate = (spec.directory / src).resolve()
        root = spec.directory.resolve()
        if not candidate.is_relative_to(root):
            raise spec.error(where, f"{src!r} is outside the spec's directory", "copy only files beside the spec")
        if not candidate.exists():
            raise spec.error(where, f"{src!r} does not exist", f"looked for {candidate}")
    except (OSError, ValueError) as exc:
        raise spec.error(where, f"{_short(src)} cannot be looked up ({exc})", "check the path") from None
    return candidate
