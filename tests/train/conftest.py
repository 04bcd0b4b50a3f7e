"""Fixtures shared by the trainer tests."""

from __future__ import annotations

import pytest
from train_helpers import make_folder

from kamim.preprocess.build import CacheConfig, build_cache


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny real image folder (8 photos, 2 classes) and its FAST cache at detect size 128: (root, cache)."""
    root = make_folder(tmp_path_factory.mktemp("data"), count=8)
    cache = build_cache(CacheConfig(dataset="folder", data_root=str(root), detector="fast", detect_size=128,
                                    workers=1, out=str(root / "cache.zarr")))
    return root, cache
