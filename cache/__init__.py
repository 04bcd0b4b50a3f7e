"""kamim.cache: the on-disk keypoint cache formats (zarr, webdataset), manifest and fingerprint."""

from __future__ import annotations

import os


def open_cache(path: str | os.PathLike, **reader_options):
    """Open a complete cache by reading its manifest only (fork-safe: zarr opens lazily per process).

    Returns a ``ZarrCache`` (random access: ``points(i)`` in source-image pixels) or a ``WdsCache``
    (a stream of (image, points in that image's pixels, label)). UserError if incomplete or unknown.
    ``reader_options`` go to ``ZarrCache`` (none are needed: the reader memory-maps a derived flat file).
    """
    from kamim.cache.manifest import read_manifest

    manifest = read_manifest(path)
    if manifest["format"] == "zarr":
        from kamim.cache.zarr_store import ZarrCache

        return ZarrCache(path, manifest, **reader_options)
    from kamim.cache.wds_store import WdsCache

    return WdsCache(path, manifest)
