"""`rootfs:DIR`: a plain directory tree, read as a one-layer image (like `docker import`).

The layer is deterministic: entries in byte order of path, mtimes clamped to SOURCE_DATE_EPOCH,
hardlinks kept. It is assembled in a private temporary store that lives as long as the image.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path

from repro.errors import ReproError
from repro.image import Image, Platform
from repro.layers import source_date_epoch
from repro.mutate import add_directory, commit, new_config, rfc3339, write_layer
from repro.refs import Options, Reference
from repro.store import Layout


def image_from_layer_writer(produce, name: str, options: Options) -> Image:
    """A one-layer image around the entries `produce` writes, in a temporary store."""
    tmp = Path(tempfile.mkdtemp(prefix="repro-import-"))
    try:
        layout = Layout.initialize(tmp)
        layer = write_layer(layout, produce, "gzip")
        epoch = source_date_epoch()
        platform = options.platform or Platform.host()
        history = [{"created": rfc3339(epoch), "created_by": f"repro import {name.split(':', 1)[0]}"}]
        config = new_config(platform, rfc3339(epoch), [layer.diff_id], history)
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
