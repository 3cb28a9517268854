"""Why two images differ: manifest, config and layers, down to the file and the tar header field."""

from __future__ import annotations

import json

from repro.image import Image
from sbom.files import inventory

FIELDS = ("type", "mode", "uid", "gid", "size", "sha256", "target")


def diff_images(a: Image, b: Image) -> list[str]:
    """Lines describing every difference; empty when the images are the same."""
    lines: list[str] = []
    if a.digest == b.digest:
        return lines
    lines.append(f"manifest: {a.digest} != {b.digest}")
    ca, cb = json.loads(a.raw_config), json.loads(b.raw_config)
    for key in sorted(set(ca) | set(cb)):
        if key == "rootfs" or ca.get(key) == cb.get(key):
            continue
        lines.append(f"config.{key}: {json.dumps(ca.get(key))[:200]} != {json.dumps(cb.get(key))[:200]}")
    la, lb = a.layers, b.layers
    for i in range(max(len(la), len(lb))):
        da = la[i].diff_id if i < len(la) else "(none)"
        db = lb[i].diff_id if i < len(lb) else "(none)"
        if da != db:
            lines.append(f"layer {i}: diff_id {da} != {db}")
    fa = {r.path: r for r in inventory(a)}
    fb = {r.path: r for r in inventory(b)}
    for path in sorted(set(fa) | set(fb)):
        ra, rb = fa.get(path), fb.get(path)
        if ra is None:
            lines.append(f"added   {path}")
        elif rb is None:
            lines.append(f"removed {path}")
        else:
            changed = [f for f in FIELDS if getattr(ra, f) != getattr(rb, f)]
            if changed:
                detail = ", ".join(f"{f} {getattr(ra, f)!s:.20} -> {getattr(rb, f)!s:.20}" for f in changed)
                lines.append(f"changed {path}: {detail}")
    return lines
