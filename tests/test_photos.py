"""The embedded photos dataset: offline, deterministic, labelled by source photo."""

import hashlib

import numpy as np

from kamim.datasets import open_dataset
from kamim.photos import SOURCES, build_photos, ensure_photos


def _digest(root):
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_build_is_deterministic(tmp_path):
    counts = {"train": 25, "val": 10}
    build_photos(tmp_path / "a", counts)
    build_photos(tmp_path / "b", counts)
    first, second = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert first == second and len(first) == 36  # 35 images + manifest


def test_full_dataset_materialises_once(tmp_path, capsys):
    train = open_dataset("photos", "train", tmp_path)
    val = open_dataset("photos", "val", tmp_path)
    assert len(train) >= 2000 and len(val) >= 500
    assert train.classes == sorted(name for name, _, _ in SOURCES)
    counts = np.bincount([train.label(i) for i in range(len(train))])
    assert counts.min() == counts.max()  # balanced classes
    image, _ = train[0]
    assert image.dtype == np.uint8 and min(image.shape[:2]) == 224
    assert "building" in capsys.readouterr().out
    marker = (tmp_path / "photos" / "MANIFEST.json").stat().st_mtime_ns
    ensure_photos(tmp_path)  # reused, not rebuilt
    assert (tmp_path / "photos" / "MANIFEST.json").stat().st_mtime_ns == marker
    assert "building" not in capsys.readouterr().out
