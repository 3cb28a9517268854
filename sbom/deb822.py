"""Debian's control-file format (deb822): paragraphs of `Field: value` lines, as dpkg's status file has them.

One parser for the SBOM's dpkg cataloger and the builder's packages step; kept apart from the catalogers
so that the builder reads a status file without loading the license tables.
"""

from __future__ import annotations

from collections.abc import Iterator


def paragraphs(text: str) -> Iterator[dict[str, str]]:
    """The fields of each paragraph of a dpkg status or control file (continuation lines joined)."""
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        last = ""
        for line in block.splitlines():
            if line.startswith((" ", "\t")) and last:
                fields[last] += "\n" + line.strip()
            elif ":" in line:
                last, _, value = line.partition(":")
                fields[last] = value.strip()
        if fields:
            yield fields
