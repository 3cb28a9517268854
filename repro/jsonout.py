"""JSON output written as it is produced, byte for byte what json.dumps(indent=2, sort_keys=True,
ensure_ascii=False) gives for the same values.

json.dumps builds the whole text in memory, and with an indent it runs its pure-Python encoder: for
an image's file list that is tens of megabytes and seconds. Here a list can be any iterable (a
generator is written item by item) and each item is formatted in one pass.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

_quote = json.encoder.encode_basestring  # what json.dumps uses with ensure_ascii=False
INDENT = "  "


def _scalar(value: Any) -> str | None:
    """The JSON text of a scalar, None for a container."""
    kind = type(value)
    if kind is str:
        return _quote(value)
    if kind is int:
        return int.__repr__(value)
    if value is None or kind is bool or kind is float:
        return json.dumps(value)
    if isinstance(value, (str, int, float)):  # subclasses, as json.dumps formats them
        return json.dumps(value)
    return None


def text(value: Any, depth: int = 0) -> str:
    """One value as json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) at `depth`."""
    simple = _scalar(value)
    if simple is not None:
        return simple
    inner = "\n" + INDENT * (depth + 1)
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        parts = []
        for key in sorted(value):
            item = value[key]
            kind = type(item)  # the two common cases inline: this runs for every field of every record
            if kind is str:
                parts.append(f"{inner}{_quote(key)}: {_quote(item)}")
            elif kind is int:
                parts.append(f"{inner}{_quote(key)}: {int.__repr__(item)}")
            else:
                parts.append(f"{inner}{_quote(key)}: {_scalar(item) or text(item, depth + 1)}")
        return "{" + ",".join(parts) + "\n" + INDENT * depth + "}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        return "[" + ",".join(inner + (_scalar(v) or text(v, depth + 1)) for v in value) + "\n" + INDENT * depth + "]"
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def write(value: Any, out: TextIO, depth: int = 0) -> None:
    """Write `value` to `out`; in mappings, values that are iterators are written as lists, an item at
    a time, so the whole text never exists at once."""
    if isinstance(value, Mapping) and value:
        inner = "\n" + INDENT * (depth + 1)
        out.write("{")
        for i, key in enumerate(sorted(value)):
            out.write(f"{',' if i else ''}{inner}{_quote(key)}: ")
            write(value[key], out, depth + 1)
        out.write("\n" + INDENT * depth + "}")
    elif isinstance(value, Iterable) and not isinstance(value, (str, bytes, list, tuple, Mapping)):
        _write_items(value, out, depth)
    else:
        out.write(text(value, depth))


def _write_items(items: Iterable, out: TextIO, depth: int) -> None:
    """A list from an iterable, written in batches of items."""
    inner = "\n" + INDENT * (depth + 1)
    batch: list[str] = []
    opening = "["
    for item in items:
        batch.append(inner + text(item, depth + 1))
        if len(batch) == 256:
            out.write(opening + ",".join(batch))
            opening = ","
            batch.clear()
    if batch:
        out.write(opening + ",".join(batch))
    elif opening == "[":
        out.write("[]")
        return
    out.write("\n" + INDENT * depth + "]")
