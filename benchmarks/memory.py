"""Memory stays flat: the peak RSS of flatten, per-file hashes, an SBOM, convert and push on the synthetic
image at about 1 GiB (50,000 files), at about 4 GiB of the same number of larger files (the bytes alone
grow), and at about 4 GiB of four times the files (scale 4). Each command runs once per input (peak RSS
does not need pairs); never in --quick mode, since a 4 GiB input takes minutes to generate and about
2.5 GiB of disk in the cache, plus as much again as an output while it runs."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from benchmarks.inputs import TAG, synthetic_image
from benchmarks.measure import Sample, run
from benchmarks.registry import LocalRegistry

NAME = "memory: peak RSS, 1 GiB vs 4 GiB image"
# (label, size scale, file count scale): the first is the base of both ratios.
INPUTS = (("1 GiB", 1.0, 1.0), ("4 GiB, same files", 4.0, 1.0), ("4 GiB, 4x files", 4.0, 4.0))


def _clean(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def memory_rows(cache: Path, repro: str) -> list[dict]:
    """One row per operation: wall time, CPU time and peak RSS at each size, and the RSS ratio."""
    samples: dict[str, dict[str, Sample]] = {}
    for label, scale, files in INPUTS:
        print(f"  {NAME}: generating {label} in {cache} ...", file=sys.stderr)
        image = synthetic_image(cache, scale, files)
        src = f"oci:{image}:{TAG}"
        out = cache / f"memory-{scale:g}-{files:g}"
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
                print(f"    {name} ({label}) ...", file=sys.stderr)
                sample = run(command)
                _clean(outputs)
                samples.setdefault(name, {})[label] = sample
        finally:
            registry.stop()
            _clean([out])
    labels = [label for label, _, _ in INPUTS]
    rows = []
    for name, by_input in samples.items():
        base = by_input[labels[0]].peak_rss_mb
        rss = [by_input[label].peak_rss_mb for label in labels]
        rows.append({"operation": name, "inputs": labels,
                     "wall_s": [by_input[label].wall for label in labels],
                     "cpu_s": [by_input[label].cpu for label in labels],
                     "peak_rss_mb": rss,
                     "rss_ratio_bytes": rss[1] / base if base else float("nan"),
                     "rss_ratio": rss[2] / base if base else float("nan")})
    return rows


def memory_table(rows: list[dict]) -> str:
    lines = ["| operation | RSS MB, 1 GiB | RSS MB, 4 GiB, same files | RSS MB, 4 GiB, 4x files | "
             "ratio, 4x bytes | ratio, 4x bytes and files | s, 1 GiB | s, 4 GiB, same files | s, 4 GiB, 4x files |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rss, wall = r["peak_rss_mb"], r["wall_s"]
        lines.append(f"| {r['operation']} | {rss[0]:.0f} | {rss[1]:.0f} | {rss[2]:.0f} | "
                     f"{r['rss_ratio_bytes']:.2f} | {r['rss_ratio']:.2f} | "
                     f"{wall[0]:.2f} | {wall[1]:.2f} | {wall[2]:.2f} |")
    return "\n".join(lines)
