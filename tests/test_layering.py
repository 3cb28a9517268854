"""The floors of the code base and the rule that every import points down (issue 18).

From the bottom: the core (modules directly in repro/: images, digests, the store, layer streams, the tar
reader, the extractor), the run floor (repro/run), SBOMs (sbom) and transports (converters), the builders,
the preservation floor (repro/preserve), and on top the CLI. A module may import its own floor and the
floors its row names; the CLI may import anything. Imports inside functions count as much as the ones at
the top: a function-level import was how the floors drifted before.

Transports are found at run time by name (repro/refs.py's table): that is the one late-bound seam, and
its table may name only modules of converters/.
"""

from __future__ import annotations

import ast
from pathlib import Path

from repro import refs

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("repro", "converters", "builders", "sbom")

MAY_IMPORT: dict[str, set[str]] = {
    "core": {"core"},
    "run": {"core", "run"},
    "sbom": {"core", "sbom"},
    "converters": {"core", "run", "converters"},
    "builders": {"core", "run", "converters", "sbom", "builders"},
    "preserve": {"core", "run", "sbom", "converters", "builders", "preserve"},
    "cli": {"core", "run", "sbom", "converters", "builders", "preserve", "cli"},
}


def floor(module: str) -> str | None:
    """The floor of a dotted module name of this project; None for anything else (stdlib, third party)."""
    parts = module.split(".")
    if parts[0] in ("converters", "builders", "sbom"):
        return parts[0]
    if parts[0] != "repro":
        return None
    if len(parts) == 1:
        return "core"
    return {"run": "run", "preserve": "preserve", "cli": "cli", "__main__": "cli"}.get(parts[1], "core")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path):
    """(line, module) for every import in the file, wherever it stands; `from P import N` counts as P.N
    where N is a module of P, else as P."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                as_path = root.joinpath(*candidate.split("."))
                is_module = as_path.with_suffix(".py").is_file() or (as_path / "__init__.py").is_file()
                yield node.lineno, candidate if is_module else base


def violations(root: Path) -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            mine = floor(module_name(path, root))
            for line, target in imported_modules(path, root):
                theirs = floor(target)
                if theirs is not None and theirs not in MAY_IMPORT[mine]:
                    found.append(f"{path.relative_to(root)}:{line}: {mine} imports {target} ({theirs})")
    return found


def test_every_import_points_down():
    assert violations(ROOT) == []


def test_the_transport_table_names_transports_only():
    assert refs.TRANSPORTS
    for module in refs.TRANSPORTS.values():
        assert floor(module) == "converters", module


def test_an_upward_import_is_found(tmp_path):
    """The check itself: a core module importing a builder, even inside a function, is reported."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "builders" / "spec.py").write_text("")
    (tmp_path / "repro" / "store.py").write_text("def f():\n    from builders import spec\n")
    (tmp_path / "builders" / "build.py").write_text("from repro import store\n")
    assert violations(tmp_path) == ["repro/store.py:2: core imports builders.spec (builders)"]
