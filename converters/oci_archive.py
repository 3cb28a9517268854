"""`oci-archive:PATH[:TAG]`: an OCI image layout packed in one tar file.

Read in place (members are read at their offsets, nothing is extracted). Written as a
deterministic tar: directories, blobs in digest order, index.json, oci-layout; the whole file
appears under its name only when complete.
"""

from __future__ import annotations

import tarfile

from converters.oci_layout import check_tag, read_from_files
from repro.atomic import atomic_file
from repro.clock import source_date_epoch
from repro.errors import ReproError
from repro.files import TarFiles
from repro.image import REF_NAME, Image, Index, canonical_json
from repro.layers import TarWriter
from repro.refs import Options, Reference, Transport, Written
from repro.store import INDEX_FILE, OCI_LAYOUT_FILE, blob_name, layout_marker
from repro.transfer import blob_progress, image_blobs, manifest_descriptor, with_progress


def read(ref: Reference, options: Options) -> Image:
    path, tag = ref.split_path()
    return read_from_files(TarFiles(path, str(ref), follow_links=False), check_tag(tag, ref), options, str(ref))


def write(image: Image, ref: Reference, options: Options, progress=None) -> Written:
    path, tag = ref.split_path()
    check_tag(tag, ref)
    mtime = source_date_epoch()
    blobs = sorted(image_blobs(image), key=lambda b: b.descriptor.digest)
    descriptor = manifest_descriptor(image, {REF_NAME: tag} if tag else {})
    index = Index((descriptor,))
    raw_manifest = image.raw_manifest
    try:
        with atomic_file(path) as out:
            tar = TarWriter(out)
            tar.add_dir("blobs", mtime=mtime)
            tar.add_dir("blobs/sha256", mtime=mtime)
            entries = [(b.descriptor.digest, b) for b in blobs]
            entries.append((image.digest, None))
            for digest, blob in sorted(entries, key=lambda e: e[0]):
                if blob is None:
                    tar.add_bytes(blob_name(digest), raw_manifest, mtime=mtime)
                    continue
                info = _file_info(blob_name(digest), blob.descriptor.size, mtime)
                with blob.open() as src:
                    tar.add(info, with_progress(src, blob_progress(progress, blob.descriptor)))
                    src.finish()
            tar.add_bytes(INDEX_FILE, canonical_json(index.to_json()), mtime=mtime)
            tar.add_bytes(OCI_LAYOUT_FILE, layout_marker(), mtime=mtime)
            tar.close()
    except IsADirectoryError:
        raise ReproError(f"{ref}: {path} is a directory", "give a file name for the archive") from None
    return Written(image.digest)


def _file_info(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, mtime
    return info


TRANSPORT = Transport("oci-archive", read=read, write=write, naming="path")
