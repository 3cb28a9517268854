"""The build spec: YAML in, a validated Spec out, and errors that name the file, line and field.

The schema (spec.schema.json, shipped in the package) describes every field for editors; this module
checks a spec against it and adds the checks a schema cannot express (copy sources exist and stay
beside the spec).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from repro.errors import ReproError

SCHEMA_FILE = "spec.schema.json"


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
        return ReproError(f"{self.path}:{self.line(where)}: {where}: {message}", hint)


def _walk(node: yaml.Node, where: str, lines: dict[str, int]) -> Any:
    lines.setdefault(where, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for key_node, value_node in node.value:
            key = key_node.value
            child = f"{where}.{key}" if where else key
            lines[child] = key_node.start_mark.line + 1
            out[key] = _walk(value_node, child, lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(item, f"{where}[{i}]", lines) for i, item in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


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
    if error.validator == "type":
        return f"expected {error.validator_value}, got {type(error.instance).__name__} {error.instance!r}"
    if error.validator in ("maxProperties", "minProperties") and error.path and error.path[-1] == "base":
        return "give exactly one of scratch, image or debian"
    return error.message


def load(path: str | Path) -> Spec:
    path = Path(path)
    if not path.is_file():
        raise ReproError(f"{path}: spec not found", "give the path of a spec YAML file")
    try:
        node = yaml.compose(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise ReproError(f"{path}:{line}: not valid YAML ({getattr(exc, 'problem', exc)})", "fix the syntax") from None
    if node is None:
        raise ReproError(f"{path}:1: the spec is empty", "see catalog/ for examples")
    lines: dict[str, int] = {}
    raw = _walk(node, "", lines)
    spec = Spec(path.resolve(), raw if isinstance(raw, dict) else {}, lines)
    if not isinstance(raw, dict):
        raise spec.error("", "the spec must be a mapping of keys", "see catalog/ for examples")
    errors = sorted(Draft202012Validator(schema()).iter_errors(raw), key=lambda e: (len(list(e.path)), str(e.path)))
    if errors:
        error = max(errors, key=lambda e: len(list(e.absolute_path)))
        where = _where(error.absolute_path)
        message = _message(error)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = error.schema.get("properties", {})
            unknown = sorted(k for k in error.instance if k not in allowed)
            where = f"{where}.{unknown[0]}" if where else unknown[0]
            message = f"unknown key (expected one of: {', '.join(allowed)})"
        raise spec.error(where or "spec", message, "see builders/spec.schema.json for the fields")
    for step in spec.steps:
        if step.kind == "copy":
            check_copy_source(spec, step)
    return spec


def check_copy_source(spec: Spec, step: Step) -> Path:
    src = step.value["src"]
    where = f"steps[{step.index}].copy.src"
    candidate = (spec.directory / src).resolve()
    root = spec.directory.resolve()
    if not candidate.is_relative_to(root):
        raise spec.error(where, f"{src!r} is outside the spec's directory", "copy only files beside the spec")
    if not candidate.exists():
        raise spec.error(where, f"{src!r} does not exist", f"looked for {candidate}")
    return candidate
