"""`rootfs:DIR`: a plain directory tree, read as a one-layer image (like `docker import`).

The layer is deterministic: entries in byte order of path, mtimes clamped to SOURCE_DATE_EPOCH,
hardlinks kept. It is assembled in a private temporary store that lives as long as the image.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path

from repro.errors import ReproError
from repro.extract import Policy
from repro.image import Image, Platform
from repro.layers import source_date_epoch
from repro.mutate import add_directory, commit, new_config, rfc3339, write_layer
from repro.refs import Options, Reference
from repro.store import Layout

log = logging.getLogger(__name__)


def image_from_layer_writer(produce, name: str, options: Options, container_config=None) -> Image:
    """A one-layer image around the entries `produce` writes, in a temporary store.

    `container_config()`, called once the layer is written, gives the config's `config` part."""
    tmp = Path(tempfile.mkdtemp(prefix="repro-import-"))
    try:
        layout = Layout.initialize(tmp)
        layer = write_layer(layout, produce, "gzip")
        epoch = source_date_epoch()
        platform = options.platform or Platform.host()
        history = [{"created": rfc3339(epoch), "created_by": f"repro import {name.split(':', 1)[0]}"}]
        config = new_config(platform, rfc3339(epoch), [layer.diff_id], history,
                            container_config() if container_config else None)
        image = commit(layout, config, [layer], name=name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    weakref.finalize(image, shutil.rmtree, tmp, True)
    return image


def read(ref: Reference, options: Options) -> Image:
    root = Path(ref.body)
    if not ref.body:
        raise ReproError(f"{ref}: missing directory", "write it as rootfs:DIR")
    if not root.is_dir():
        raise ReproError(f"{ref}: {root} is not a directory", "check the path")
    epoch = source_date_epoch()
    return image_from_layer_writer(lambda tar: add_directory(tar, root, epoch), str(ref), options)


def write(image: Image, ref: Reference, options: Options, progress=None) -> str:
    """Flatten into a new directory (assembled under a temporary name, renamed when complete)."""
    from repro.atomic import atomic_dir
    from repro.flatten import extract

    if not ref.body:
        raise ReproError(f"{ref}: missing directory", "write it as rootfs:DIR")
    target = Path(ref.body)
    if target.exists():
        raise ReproError(f"{ref}: {target} already exists", "flatten into a new directory")
    policy = Policy(devices=bool(options.extra.get("preserve_devices")),
                    setid=bool(options.extra.get("preserve_setuid")))
    with atomic_dir(target) as tmp:
        stats = extract(image, tmp, policy)
    if stats.skipped_devices:
        how = "creating them needs root" if os.geteuid() else "--preserve-devices creates them"
        log.warning("%s: left out %d device nodes (%s)", ref, stats.skipped_devices, how)
    if stats.dropped_setid:
        log.warning("%s: dropped the setuid/setgid bits of %d files (--preserve-setuid keeps them)", ref,
                    stats.dropped_setid)
    if stats.skipped_xattrs:
        log.warning("%s: %d extended attributes could not be set here", ref, stats.skipped_xattrs)
    if stats.unresolved_links:
        log.warning("%s: %d hardlinks whose target is missing were skipped", ref, len(stats.unresolved_links))
    return image.digest
