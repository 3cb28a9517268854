"""What `repro inspect` and `repro hash` show of an image, as plain JSON-ready dicts.

The image model holds more than a reader wants to see; these pick the fields, in the shape the
commands print and emit as JSON.
"""

from __future__ import annotations

from repro.image import Image


def image_details(image: Image) -> dict:
    """The image's reference, digests, config fields, layers and history."""
    config = image.config
    manifest = image.manifest
    return {
        "reference": image.name,
        "digest": image.digest,
        "mediaType": manifest.media_type,
        "config": {
            "digest": manifest.config.digest,
            "size": manifest.config.size,
            "mediaType": manifest.config.media_type,
        },
        "platform": str(config.platform),
        "created": config.created,
        "env": list(config.env),
        "entrypoint": list(config.entrypoint),
        "cmd": list(config.cmd),
        "workdir": config.workdir,
        "user": config.user,
        "labels": dict(config.labels),
        "annotations": dict(manifest.annotations),
        "layers": [
            {
                "digest": layer.descriptor.digest,
                "size": layer.descriptor.size,
                "mediaType": layer.descriptor.media_type,
                "diff_id": layer.diff_id,
            }
            for layer in image.layers
        ],
        "history": [
            {
                "created": h.get("created", ""),
                "created_by": h.get("created_by", ""),
                "empty_layer": bool(h.get("empty_layer", False)),
            }
            for h in config.history
        ],
    }


def image_digests(image: Image) -> dict:
    """The manifest, config and layer digests with the layers' diff_ids: what identifies the image."""
    return {
        "digest": image.digest,
        "config": image.manifest.config.digest,
        "layers": [{"digest": layer.descriptor.digest, "diff_id": layer.diff_id} for layer in image.layers],
    }
