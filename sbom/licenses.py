"""License names as SPDX expressions: SPDX identifiers and their aliases, Debian's short names
(copyright-format 1.0), the License fields of machine-readable copyright files, and the licenses that
well-known wording shows in copyright files that are not machine-readable.

What SPDX does not list becomes a LicenseRef- whose text (or, lacking one, name) goes with it: an SPDX
document must declare every LicenseRef it uses (hasExtractedLicensingInfos).
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, field

from license_expression import get_license_index, get_spdx_licensing

_licensing = get_spdx_licensing()


@functools.cache
def _tables() -> tuple[dict[str, str], dict[str, str]]:
    """(licenses, exceptions): lower-cased SPDX identifier or alias -> the current identifier.

    Deprecated identifiers (GPL-2.0) are aliases of their replacements; ScanCode's own keys
    (LicenseRef-scancode-*) are left out: a document would have to declare them."""
    licenses: dict[str, str] = {}
    exceptions: dict[str, str] = {}
    for entry in get_license_index():
        key = entry.get("spdx_license_key") or ""
        if not key or key.startswith("LicenseRef-") or entry.get("is_deprecated"):
            continue
        table = exceptions if entry.get("is_exception") else licenses
        table.setdefault(key.lower(), key)
        for alias in entry.get("other_spdx_license_keys") or ():
            if not alias.startswith("LicenseRef-") and " " not in alias:
                table.setdefault(alias.lower(), key)
    return licenses, exceptions


# Debian's short names (and a few common spellings) whose SPDX identifier is not found by rule.
_NAMES = {
    "expat": "MIT", "mit": "MIT", "mit-license": "MIT", "artistic": "Artistic-1.0-Perl",
    "perl": "Artistic-1.0-Perl", "psf": "PSF-2.0", "psf-2": "PSF-2.0", "python": "Python-2.0",
    "zlib": "Zlib", "zlib/libpng": "Zlib", "bsd-2": "BSD-2-Clause", "bsd-3": "BSD-3-Clause",
    "bsd-4": "BSD-4-Clause", "cc0": "CC0-1.0", "isc": "ISC", "apache": "Apache-2.0",
    "gpl": "GPL-1.0-or-later", "lgpl": "LGPL-2.0-or-later", "agpl": "AGPL-3.0-or-later",
    "gpl+": "GPL-1.0-or-later", "lgpl+": "LGPL-2.0-or-later", "boost": "BSL-1.0",
    "wtfpl": "WTFPL", "sleepycat": "Sleepycat", "openssl": "OpenSSL", "ssleay": "OpenSSL",
}
# Families whose versions SPDX spells NAME-N.N-only / -or-later.
_GNU = {"gpl": "GPL", "lgpl": "LGPL", "agpl": "AGPL", "gfdl": "GFDL", "fdl": "GFDL",
        "gfdl-niv": "GFDL", "gfdl-no-invariants": "GFDL"}
_FAMILY_VERSION = re.compile(r"^(?P<family>[a-z][a-z0-9-]*?)[-_ ]?(?:v|version[-_ ]?)?(?P<version>\d+(?:\.\d+)*)"
                             r"(?P<later>\+|-or-later|\s+or\s+(?:any\s+)?later)?(?P<only>-only)?$")
_EXCEPTION_ALIASES = {"gcc-runtime": "gcc", "gcc-runtime-library": "gcc"}  # Debian's name -> SPDX's stem


def _with_version(family: str, version: str, later: bool, suffix: str = "") -> str | None:
    licenses, _ = _tables()
    versions = [version] if "." in version else [f"{version}.0", version]
    for v in versions:
        if family in _GNU:
            base = f"{_GNU[family]}-{v}{suffix}"
            found = licenses.get(f"{base}-{'or-later' if later else 'only'}".lower())
            if found:
                return found
        elif not later:
            found = licenses.get(f"{family}-{v}".lower())
            if found:
                return found
    return None


def license_id(name: str) -> str | None:
    """The SPDX identifier of one license name (an SPDX identifier in any case, a deprecated or
    alias identifier, a Debian short name such as GPL-2+, Apache-2 or Expat), or None."""
    licenses, _ = _tables()
    low = " ".join(name.strip().lower().split())
    low = re.sub(r"\s+licen[cs]e$", "", low)  # "MIT License", "CC0 license"
    if not low:
        return None
    found = licenses.get(low) or _NAMES.get(low)
    if found:
        return found
    match = _FAMILY_VERSION.match(low)
    if not match:
        return None
    family, version, later = match["family"], match["version"], bool(match["later"])
    family = family.rstrip("-_ ")
    if family in ("gfdl-niv", "gfdl-no-invariants"):
        return _with_version("gfdl", version, later, "-no-invariants")
    return _with_version(family, version, later)


def exception_id(name: str, license: str = "") -> str | None:
    """The SPDX identifier of a license exception named in Debian's "with NAME exception" (Bison-2.2,
    GCC-Runtime-3.1, Autoconf, Linux-syscall-note), or None. Of several versions the one that goes
    with the license's version is taken, else the latest."""
    _, exceptions = _tables()
    low = name.strip().lower().replace(" ", "-").removesuffix("-exception")
    if not low:
        return None
    for candidate in (low, f"{low}-exception"):
        if candidate in exceptions:
            return exceptions[candidate]
    base, _, version = low.rpartition("-") if re.search(r"-\d+(?:\.\d+)*$", low) else (low, "", "")
    base = _EXCEPTION_ALIASES.get(base, base)
    if version:
        return exceptions.get(f"{base}-exception-{version}")
    numbered = re.compile(re.escape(base) + r"-exception-(\d+(?:\.\d+)*)$")
    options = sorted(((tuple(int(x) for x in m[1].split(".")), key) for key in exceptions
                      if (m := numbered.match(key))), reverse=True)
    if not options:
        return None
    major = re.search(r"-(\d+)", license)
    same = [key for v, key in options if major and v[0] == int(major[1])]
    return exceptions[(same or [options[0][1]])[0]]


def ref_id(name: str) -> str:
    """A LicenseRef- for a name SPDX does not list (letters, digits, '.' and '-' only)."""
    safe = re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9.-]", "-", name.strip().replace("+", "-plus-"))).strip("-.")
    if not safe:
        safe = "unnamed-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"LicenseRef-{safe[:80]}"


@dataclass
class Licenses:
    """What was found for one package: the SPDX expression, and the text of each LicenseRef in it."""

    expression: str = ""
    refs: dict[str, str] = field(default_factory=dict)
    source: str = ""  # what the package said, when it is not already an SPDX expression


def term(name: str, texts: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """One license of a License field (GPL-2+, "GPL-3+ with Bison-2.2 exception") as an SPDX
    expression, and the LicenseRef- it needed with its text (from `texts`, by lower-cased name)."""
    texts = texts or {}
    name = " ".join(name.split()).strip(" ,;")
    if re.fullmatch(r"LicenseRef-[A-Za-z0-9.-]+", name):
        return name, {name: texts.get(name.lower()) or name}
    found = license_id(name)
    if found:
        return found, {}
    match = re.match(r"^(?P<license>.+?)(?:\s+|-)with(?:\s+|-)(?P<exception>.+?)(?:[\s-]+exception)?$", name, re.I)
    if match is None:
        match = re.match(r"^(?P<license>(?:a|l)?gpl\S*?\+?)-(?P<exception>[a-z0-9.-]+?)-exception$", name, re.I)
    if match:
        base = license_id(match["license"])
        exception = exception_id(match["exception"], base or "") if base else None
        if base and exception:
            return f"{base} WITH {exception}", {}
    ref = ref_id(name)
    return ref, {ref: texts.get(name.lower()) or name}


def expression(field_value: str, texts: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """A DEP-5 License field's first line ("GPL-1+ or Artistic, and BSD-3-clause") as an SPDX
    expression: `or` and `and` are kept, a comma groups what is before it, duplicates are dropped."""
    value = re.sub(r"[_\s]+(and/or|or|and)[_\s]+", r" \1 ", field_value.strip(), flags=re.I)
    value = re.sub(r"\s+and/or\s+", " or ", value, flags=re.I)
    refs: dict[str, str] = {}
    groups = re.split(r",\s*(?=(?:and|or)\s)", value, flags=re.I)
    result = ""
    for n, group in enumerate(groups):
        joiner = "AND"
        if n:
            op, _, group = group.partition(" ")
            joiner = op.upper()
        alternatives = []
        for choice in re.split(r"\s+or\s+", group, flags=re.I):
            parts = []
            for name in re.split(r"\s+and\s+|\s*[&,]\s*", choice, flags=re.I):
                if name.strip(" ,;"):
                    spdx, needed = term(name, texts)
                    refs.update(needed)
                    if spdx not in parts:
                        parts.append(spdx)
            if parts:
                joined = " AND ".join(parts)
                alternatives.append(joined if len(parts) == 1 else f"({joined})")
        alternatives = list(dict.fromkeys(alternatives))
        if not alternatives:
            continue
        group_expression = " OR ".join(alternatives)
        if not result:
            result = group_expression
        else:
            wrap = f"({group_expression})" if len(alternatives) > 1 else group_expression
            result = f"({result}) {joiner} {wrap}" if " " in result else f"{result} {joiner} {wrap}"
    return normalize(result), refs


@functools.lru_cache(maxsize=4096)
def normalize(text: str) -> str:
    """An expression in one spelling: SPDX identifiers as SPDX writes them, nested ANDs and ORs
    flattened, their terms sorted and duplicates dropped; "" if it does not parse or names a license
    that is neither on the SPDX list nor a LicenseRef-. Remembered: a Debian image's copyright files
    name a few dozen licenses thousands of times, and parsing one costs about 0.1 ms."""
    if not text:
        return ""
    try:
        parsed = _licensing.parse(text, strict=True)
    except Exception:  # only expressions built here reach this: a bug, not the package's fault
        return ""
    if parsed is None or any(not key.startswith("LicenseRef-") for key in _licensing.unknown_license_keys(parsed)):
        return ""
    return _render(parsed, top=True)


def _render(node, top: bool = False) -> str:
    for kind, word in ((_licensing.AND, " AND "), (_licensing.OR, " OR ")):
        if isinstance(node, kind):
            parts = sorted({_render(arg) for arg in _flatten(node, kind)})
            joined = word.join(parts)
            return joined if top or len(parts) == 1 else f"({joined})"
    return str(node)


def _flatten(node, kind) -> list:
    out = []
    for arg in node.args:
        out.extend(_flatten(arg, kind) if isinstance(arg, kind) else [arg])
    return out


def combine(expressions: list[str]) -> str:
    """Distinct expressions ANDed together, in one spelling."""
    distinct = sorted({e for e in expressions if e})
    if len(distinct) <= 1:
        return distinct[0] if distinct else ""
    return normalize(" AND ".join(f"({e})" for e in distinct))


# --- copyright files --------------------------------------------------------------------------

def _dep5_paragraphs(text: str) -> list[dict[str, str]]:
    """The paragraphs of a machine-readable copyright file; a field's continuation lines are kept
    (a line of a single '.' is an empty line)."""
    out = []
    for block in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, str] = {}
        last = ""
        for line in block.splitlines():
            if line.startswith((" ", "\t")) and last:
                line = line.strip()
                fields[last] += "\n" + ("" if line == "." else line)
            elif ":" in line and not line.startswith("#"):
                last, _, value = line.partition(":")
                last = last.strip().lower()
                fields[last] = value.strip()
        if fields:
            out.append(fields)
    return out


def is_machine_readable(text: str) -> bool:
    return "copyright-format" in text.split("\n", 1)[0] or text.startswith("Format-Specification:")


def _field_name(value: str) -> str:
    return value.split("\n", 1)[0].strip()


_PROSE = re.compile(r"\b(?:this|the|is|to|in|by|its|any|use|hereby|granted|permission|software|licensed|under|"
                    r"provided|redistribution|copyright)\b", re.I)


def _looks_like_text(first_line: str) -> bool:
    """A License field that starts with the license's text instead of its short name."""
    return len(first_line.split()) > 3 and bool(_PROSE.search(first_line))


def dep5(text: str) -> Licenses:
    """The licenses of a machine-readable copyright file: the License field of every paragraph."""
    paragraphs = _dep5_paragraphs(text)
    texts: dict[str, str] = {}
    for fields in paragraphs:
        value = fields.get("license", "")
        name, _, body = value.partition("\n")
        if name.strip() and body.strip():
            texts.setdefault(name.strip().lower(), body.strip())
    found: list[str] = []
    refs: dict[str, str] = {}
    named: list[str] = []
    for fields in paragraphs:
        value = fields.get("license", "")
        name = _field_name(value)
        if not name:
            continue
        if _looks_like_text(name):
            in_text = licenses_in_text(value)
            if in_text.expression:
                found.append(in_text.expression)
                refs.update(in_text.refs)
            else:
                ref = "LicenseRef-unnamed-" + hashlib.sha256(value.encode()).hexdigest()[:8]
                found.append(ref)
                refs[ref] = value.strip()
            continue
        if "files" not in fields and fields is not paragraphs[0]:
            continue  # a stand-alone license paragraph: the text of a name the Files paragraphs use
        spdx, needed = expression(name, texts)
        if spdx:
            found.append(spdx)
            refs.update(needed)
            named.append(name)
    result = combine(found)
    refs = {k: v for k, v in refs.items() if re.search(rf"(?<![\w.-]){re.escape(k)}(?![\w.-])", result)}
    source = "; ".join(dict.fromkeys(named)) if refs else ""
    return Licenses(result, refs, source)


_SPACE = re.compile(r"\s+")
_GNU_LONG = re.compile(
    r"GNU (?P<kind>Lesser |Library |Affero )?General Public Licen[cs]e|GNU Free Documentation Licen[cs]e", re.I)
_VERSION_AFTER = re.compile(r"[^.]{0,120}?\bv(?:ersion|\.)?\s*(?P<version>\d(?:\.\d)?)\b", re.I)
_VERSION_BEFORE = re.compile(r"\bversion\s*(?P<version>\d(?:\.\d)?)\s*(?:\(or later\)\s*)?of the\s*$", re.I)
_LATER = re.compile(r"^[^.]{0,80}?(?:any later version|or later|or newer|\(or later\)|or any later)", re.I)
_GNU_SHORT = re.compile(r"(?<![\w/-])(?P<family>A?GPL|LGPL|GFDL)(?:-|v|\s?version\s?|\s)?(?P<version>\d(?:\.\d)?)"
                        r"(?P<later>\+|-or-later|\s+or\s+(?:any\s+)?later)?(?![\d.]*\d)", re.I)
_COMMON = re.compile(r"/usr/share/common-licenses/(?P<name>[A-Za-z0-9.+_-]+)")
_BSD = re.compile(r"Redistribution and use in source and binary forms, with or without modification, are "
                  r"permitted", re.I)
_PATTERNS: list[tuple[str, re.Pattern]] = [
    ("MIT", re.compile(r"Permission is hereby granted, free of charge, to any person obtaining a copy", re.I)),
    ("ISC", re.compile(r"Permission to use, copy, modify, and(?:/or)? distribute this software for any purpose "
                       r"with or without fee is hereby granted", re.I)),
    ("Zlib", re.compile(r"provided ['\"]?as-is['\"]?, without any express or implied warranty.{0,300}Permission is "
                        r"granted to anyone to use this software for any purpose", re.I)),
    ("Apache-2.0", re.compile(r"Apache License,? Version 2\.0", re.I)),
    ("Artistic-2.0", re.compile(r"Artistic License,? (?:Version )?2\.0", re.I)),
    ("MPL-1.1", re.compile(r"Mozilla Public License,? (?:Version |v\. ?)?1\.1", re.I)),
    ("MPL-2.0", re.compile(r"Mozilla Public License,? (?:Version |v\. ?)?2\.0", re.I)),
    ("BSL-1.0", re.compile(r"Boost Software License", re.I)),
    ("CC0-1.0", re.compile(r"CC0 1\.0 Universal", re.I)),
    ("LicenseRef-public-domain", re.compile(r"\b(?:in|into|to) the public domain\b|\bpublic domain "
                                            r"(?:software|code)\b|\bis public domain\b", re.I)),
]
_PUBLIC_DOMAIN_TEXT = "The copyright file says this software, or a part of it, is in the public domain."


@functools.lru_cache(maxsize=64)
def licenses_in_text(text: str) -> Licenses:
    """The licenses that well-known wording shows in a copyright file that is not machine-readable:
    GNU licence notices with their versions ("either version 2.1 of the License, or (at your option)
    any later version"), references to /usr/share/common-licenses, and the MIT, BSD, ISC, zlib,
    Apache, MPL, Python and public-domain wordings."""
    flat = _SPACE.sub(" ", text.replace("`", " "))
    gnu: dict[tuple[str, str], bool] = {}  # (family, version) -> or later

    def note(family: str, version: str, later: bool) -> None:
        gnu[(family, version)] = gnu.get((family, version), False) or later

    for match in _GNU_LONG.finditer(flat):
        kind = (match["kind"] or "").strip().lower()
        family = {"lesser": "lgpl", "library": "lgpl", "affero": "agpl"}.get(kind, "gpl")
        if "documentation" in match[0].lower():
            family = "gfdl"
        after = _VERSION_AFTER.match(flat, match.end())
        before = _VERSION_BEFORE.search(flat, max(0, match.start() - 40), match.start())
        if after:
            note(family, after["version"], bool(_LATER.match(flat[after.end():])))
        elif before:
            note(family, before["version"], bool(_LATER.match(flat[match.end():])) or "later" in before[0])
    for match in _GNU_SHORT.finditer(flat):
        note(match["family"].lower(), match["version"], bool(match["later"]))
    found: set[str] = set()
    for match in _COMMON.finditer(flat):
        name = match["name"].rstrip(".-_")
        spdx = license_id(name)
        low = name.lower()
        gnu_name = _FAMILY_VERSION.match(low)
        if gnu_name and gnu_name["family"].rstrip("-") in _GNU:
            note(gnu_name["family"].rstrip("-"), gnu_name["version"], bool(gnu_name["later"]))
        elif low in ("gpl", "lgpl", "gfdl", "agpl"):
            continue  # the current version, whichever it is: the notice says which
        elif low == "bsd":
            found.add("BSD-3-Clause")  # Debian's common-licenses/BSD is the University of California's
        elif spdx:
            found.add(spdx)
    for (family, version), later in gnu.items():
        spdx = _with_version(family, version, later)
        if spdx:
            found.add(spdx)
    for start in (m.start() for m in _BSD.finditer(flat)):
        following = flat[start:start + 1500]
        nxt = _BSD.search(following, 10)
        clause = following[: nxt.start()] if nxt else following
        if re.search(r"advertising materials", clause, re.I):
            found.add("BSD-4-Clause")
        elif re.search(r"Neither the name|endorse or promote products", clause, re.I):
            found.add("BSD-3-Clause")
        else:
            found.add("BSD-2-Clause")
    for spdx, pattern in _PATTERNS:
        if pattern.search(flat):
            found.add(spdx)
    if re.search(r"PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2", flat):
        found.add("Python-2.0" if re.search(r"BEOPEN", flat) else "PSF-2.0")
    refs = {"LicenseRef-public-domain": _PUBLIC_DOMAIN_TEXT} if "LicenseRef-public-domain" in found else {}
    return Licenses(combine(sorted(found)), refs)


def copyright_licenses(text: str) -> Licenses:
    """The licenses of a Debian copyright file, machine-readable or not."""
    if is_machine_readable(text):
        found = dep5(text)
        if found.expression:
            return found
    return licenses_in_text(text)


def refs_in(expression_text: str) -> list[str]:
    """The LicenseRef- identifiers an expression uses."""
    return sorted(set(_REF.findall(expression_text)))


_REF = re.compile(r"(?<![\w.-])LicenseRef-[A-Za-z0-9.-]+")


def from_names(names: list[str]) -> Licenses:
    """License names as one package manager gave them (an SPDX expression, or names to be mapped)."""
    names = [n.strip() for n in names if n and n.strip()]
    if not names:
        return Licenses()
    source = " AND ".join(sorted(set(names)))
    if len(names) == 1:
        as_is = normalize(names[0])
        if as_is:
            refs = {ref: names[0] for ref in refs_in(as_is)}
            return Licenses(as_is, refs, source if refs else "")
    found: list[str] = []
    refs: dict[str, str] = {}
    for name in names:
        spdx, needed = expression(name) if re.search(r"\s(?:or|and)\s", name, re.I) else term(name)
        found.append(spdx)
        refs.update(needed)
    return Licenses(combine(found), refs, source if refs else "")
