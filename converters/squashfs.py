"""`squashfs:PATH`: a flattened root filesystem as a squashfs image, for hosts without overlayfs.

Written by streaming the flattened tar into squashfs-tools-ng's tar2sqfs (no intermediate tree);
read by streaming sqfs2tar's output. Reproducible: the same image gives the same bytes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from converters.tarball import write_flat
from repro.atomic import copy_into_special, fsync_dir, is_special
from repro.clock import source_date_epoch
from repro.errors import ReproError
from repro.flatten import flattening
from repro.image import Image
from repro.layers import TarWriter
from repro.mutate import image_from_layer_writer
from repro.refs import Options, Reference, Transport, Written
from repro.tarstream import copy_tar_stream

COMPRESSORS = ("gzip", "zstd", "xz", "lz4")
GZIP_LEVEL = 6


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ReproError(f"{name} is not installed", "install squashfs-tools-ng (make setup does)")
    return path


def run_tar2sqfs(produce, output: Path, compression: str, mtime: int, what: str) -> None:
    """Stream the tar that `produce(stdin)` writes into tar2sqfs, making `output`. The flattened
    stream must name each path once (tar2sqfs refuses a second entry): should it start over (see
    repro.flatten.flattening), tar2sqfs is started again."""
    flattening(lambda: _run_tar2sqfs(produce, output, compression, mtime, what))


def _run_tar2sqfs(produce, output: Path, compression: str, mtime: int, what: str) -> None:
    command = [_tool("tar2sqfs"), "--quiet", "--force", "--compressor", compression, "--no-skip",
               "--defaults", f"mtime={mtime}", "--num-jobs", str(os.cpu_count() or 1)]
    if compression == "gzip":
        # Level 6, as for layers: 5x faster than the default 9 on a 1 GiB image for 0.8% more bytes.
        command += ["--comp-extra", f"level={GZIP_LEVEL}"]
    command.append(str(output))
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        produce(proc.stdin)
        proc.stdin.close()  # type: ignore[union-attr]
    except BrokenPipeError:
        pass
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.wait() != 0:
        last = (stderr.strip().splitlines() or [""])[-1]
        raise ReproError(f"{what}: tar2sqfs failed: {last}", "see its message; squashfs-tools-ng makes the file")


def write(image: Image, ref: Reference, options: Options, progress=None) -> Written:
    if not ref.body:
        raise ReproError(f"{ref}: missing file name", "write it as squashfs:FILE")
    target = Path(ref.body)
    compression = options.compression or "gzip"
    if compression not in COMPRESSORS:
        raise ReproError(f"--compression {compression}: not supported", f"use one of {', '.join(COMPRESSORS)}")
    if not target.parent.is_dir():
        raise ReproError(f"{ref}: directory {target.parent} does not exist", "create it first")
    special = is_special(target)  # /dev/null: written into, never replaced
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.repro-tmp-", dir=None if special else target.parent)
    os.close(fd)
    try:
        run_tar2sqfs(lambda out: write_flat(image, out), Path(tmp), compression, source_date_epoch(), str(ref))
        if special:
            copy_into_special(Path(tmp), target)
            return Written(image.digest)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return Written(image.digest)


def read(ref: Reference, options: Options) -> Image:
    path = Path(ref.body)
    if not ref.body or not path.is_file():
        raise ReproError(f"{ref}: {path} does not exist", "check the path")
    with open(path, "rb") as f:
        if f.read(4) != b"hsqs":
            raise ReproError(f"{ref}: {path} is not a squashfs image", "check the file")
    epoch = source_date_epoch()

    def produce(tar: TarWriter) -> None:
        proc = subprocess.Popen([_tool("sqfs2tar"), "--no-skip", str(path)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            copy_tar_stream(proc.stdout, tar, str(ref), epoch)  # type: ignore[arg-type]
        finally:
            proc.stdout.close()  # type: ignore[union-attr]
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            if proc.wait() != 0:
                raise ReproError(f"{ref}: sqfs2tar failed: {stderr.strip()[-300:]}", "the squashfs may be damaged")

    return image_from_layer_writer(produce, str(ref), options.platform)


TRANSPORT = Transport("squashfs", read=read, write=write, flat=True)
