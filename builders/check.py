"""`repro build --check`: build twice, never from the cache, and say what differs.

The second build always goes to an empty store, so nothing of the first can leak into it; the first goes
to the given store when there is one (its layers, tag and cache entries kept for a later build or run).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from builders import build as _build
from builders.build import BuildResult
from builders.spec import Spec
from repro.blobs import IndexImage
from repro.image import Platform
from repro.store import Layout
from sbom.diff import diff_images


def build_twice(spec: Spec, store: Path | None, executor: str | None, platforms: list[Platform] | None,
                built: Callable[[int, Layout, BuildResult], None]) -> tuple[list[str], list[dict]]:
    """The two digests and, when they differ, every difference (sbom.diff records, platform by platform);
    `built(n, store, result)` is called as each build finishes (the CLI attaches provenance and reports)."""
    digests: list[str] = []
    with tempfile.TemporaryDirectory(prefix="repro-check-") as tmp:
        images = []
        for n in (1, 2):
            layout = _build.open_store(store if n == 1 and store else Path(tmp) / f"store{n}")
            result = _build.build(spec, layout, executor=executor, use_cache=False, platforms=platforms)
            digests.append(result.digest)
            images.append(result.image)
            built(n, layout, result)
        if digests[0] == digests[1]:
            return digests, []
        pairs = (zip(images[0].children, images[1].children, strict=True) if isinstance(images[0], IndexImage)
                 else [(images[0], images[1])])
        return digests, [record for first, second in pairs for record in diff_images(first, second)]
