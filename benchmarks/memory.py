"""Memory stays flat: the peak RSS of flatten, per-file hashes, an SBOM, convert and push on the synthetic image
at about 1 GiB and at about 4 GiB (scale 4: four times the content and the files). Each command runs
once per size (peak RSS does not need pairs); never in --quick mode, since the 4 GiB input takes minutes
to generate and about 4 GiB of disk in the cache, plus as much again for an output while it runs."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from benchmarks.inputs import TAG, synthetic_image
from benchmarks.measure import Sample, run
from benchmarks.registry import LocalRegistry

NAME = "memory: peak RSS, 1 GiB vs 4 GiB image"
SCALES = (1.0, 4.0)


def _clean(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def memory_rows(cache: Path, repro: str) -> list[dict]:
    """One row per operation: wall time, CPU time and peak RSS at each size, and the RSS ratio."""
    samples: dict[str, dict[float, Sample]] = {}
    for scale in SCALES:
        print(f"  {NAME}: generating scale {scale:g} in {cache} ...", file=sys.stderr)
        image = synthetic_image(cache, scale)
        src = f"oci:{image}:{TAG}"
        out = cache / f"memory-{scale:g}"
        _clean([out])
        out.mkdir()
        registry = LocalRegistry(out / "registry")
        try:
            commands = [
                ("flatten to a directory", [repro, "flatten", src, f"rootfs:{out}/rootfs"], [out / "rootfs"]),
                ("per-file hashes", f"{repro} hash --files --json {src} > /dev/null", []),
                ("SBOM (every file hashed)", f"{repro} sbom --format spdx-json {src} > /dev/null", []),
                ("oci -> docker-archive", [repro, "convert", src, f"docker-archive:{out}/image.tar:bench:1"],
                 [out / "image.tar"]),
                ("push to a local registry", [repro, "convert", src, f"docker://{registry.host}/bench/mem:1"], []),
            ]
            for name, command, outputs in commands:
                print(f"    {name} (scale {scale:g}) ...", file=sys.stderr)
                sample = run(command)
                _clean(outputs)
                samples.setdefault(name, {})[scale] = sample
        finally:
            registry.stop()
            _clean([out])
    rows = []
    for name, by_scale in samples.items():
        small, large = by_scale[SCALES[0]], by_scale[SCALES[-1]]
        rows.append({"operation": name, "scales": list(SCALES),
                     "wall_s": [by_scale[s].wall for s in SCALES], "cpu_s": [by_scale[s].cpu for s in SCALES],
                     "peak_rss_mb": [by_scale[s].peak_rss_mb for s in SCALES],
                     "rss_ratio": large.peak_rss_mb / small.peak_rss_mb if small.peak_rss_mb else float("nan")})
    return rows


def memory_table(rows: list[dict]) -> str:
    lines = ["| operation | RSS MB, 1 GiB | RSS MB, 4 GiB | RSS ratio | s, 1 GiB | s, 4 GiB |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['operation']} | {r['peak_rss_mb'][0]:.0f} | {r['peak_rss_mb'][-1]:.0f} | "
                     f"{r['rss_ratio']:.2f} | {r['wall_s'][0]:.2f} | {r['wall_s'][-1]:.2f} |")
    return "\n".join(lines)
