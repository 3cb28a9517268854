"""Why two images differ: manifest, config and layers, down to the file and the tar header field.

`semantic` ignores what a rebuild may legitimately change (like diffoci's semantic mode): timestamps
(created, history, file mtimes), history text, layer boundaries, file order and compression. What is
left is the merged file tree and the configuration a container runs with.
"""

from __future__ import annotations

import json

from repro.image import Descriptor, Image
from repro.mutate import COMPRESSOR_ANNOTATION
from sbom.files import inventory

FIELDS = ("type", "mode", "uid", "gid", "size", "sha256", "target", "mtime", "xattrs")
SEMANTIC_IGNORED_FIELDS = {"mtime"}
SEMANTIC_CONFIG = ("architecture", "os", "variant", "config")


def diff_images(a: Image, b: Image, semantic: bool = False) -> list[dict]:
    """Every difference, as {"what": ..., "a": ..., "b": ...} records; empty when none."""
    out: list[dict] = []
    if a.digest == b.digest:
        return out
    ca, cb = json.loads(a.raw_config), json.loads(b.raw_config)
    if not semantic:
        out.append({"what": "manifest digest", "a": a.digest, "b": b.digest})
        la, lb = a.layers, b.layers
        for i in range(max(len(la), len(lb))):
            da = la[i].diff_id if i < len(la) else None
            db = lb[i].diff_id if i < len(lb) else None
            if da != db:
                out.append({"what": f"layer {i} diff_id", "a": da, "b": db})
            elif la[i].descriptor.digest != lb[i].descriptor.digest:  # the same tar, compressed otherwise
                out.append({"what": f"layer {i} compression (same content)", "a": _compression(la[i].descriptor),
                            "b": _compression(lb[i].descriptor)})
    keys = SEMANTIC_CONFIG if semantic else sorted((set(ca) | set(cb)) - {"rootfs"})
    for key in keys:
        if ca.get(key) != cb.get(key):
            out.append({"what": f"config.{key}", "a": ca.get(key), "b": cb.get(key)})
    fa = {r.path: r for r in inventory(a)}
    fb = {r.path: r for r in inventory(b)}
    fields = [f for f in FIELDS if not (semantic and f in SEMANTIC_IGNORED_FIELDS)]
    for path in sorted(set(fa) | set(fb)):
        ra, rb = fa.get(path), fb.get(path)
        if ra is None or rb is None:
            out.append({"what": "added" if ra is None else "removed", "path": path})
            continue
        for field_name in fields:
            va, vb = getattr(ra, field_name), getattr(rb, field_name)
            if field_name == "sha256" and ra.type == "hardlink":
                continue
            if va != vb:
                out.append({"what": "changed", "path": path, "field": field_name, "a": va, "b": vb})
    return out


def _compression(descriptor: Descriptor) -> str:
    """The blob and what compressed it: the compressor repro recorded, else the media type."""
    made_by = descriptor.annotations.get(COMPRESSOR_ANNOTATION) or f"{descriptor.media_type}, compressor not recorded"
    return f"{descriptor.digest} ({made_by})"


def describe(record: dict) -> str:
    if record["what"] in ("added", "removed"):
        return f"{record['what']:<8}{record['path']}"
    if record["what"] == "changed":
        return f"changed {record['path']}: {record['field']} {record['a']!s:.40} -> {record['b']!s:.40}"
    return f"{record['what']}: {json.dumps(record['a'])[:200]} != {json.dumps(record['b'])[:200]}"
