"""Damage to a zarr cache is found, never read as different points: flipped bytes (crc32c), deleted
chunks, shards, arrays or metadata, and inconsistent offsets or scale each give one UserError naming
the file and the rebuild command, through the reader and through the CLI (exit 2).

Not covered (cannot be): offsets rewritten through zarr (valid checksums) that keep the total and
move a boundary between two good images."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from cache_testdata import make_folder_dataset

from kamim.cache import open_cache
from kamim.errors import UserError
from kamim.preprocess.build import CacheConfig, build_cache


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = make_folder_dataset(tmp_path_factory.mktemp("data"), per_class=4)
    out = tmp_path_factory.mktemp("caches") / "clean.zarr"
    build_cache(CacheConfig(dataset="folder", data_root=str(root), detector="fast", out=str(out), workers=1))
    reader = open_cache(out)
    return root, out, [reader.points(i) for i in range(len(reader))]


def _flip(path: Path, at: int, count: int = 16) -> None:
    data = bytearray(path.read_bytes())
    data[at : at + count] = bytes(b ^ 0xA5 for b in data[at : at + count])
    path.write_bytes(bytes(data))


def _rewrite(cache: Path, name: str, change) -> None:  # noqa: ANN001
    array = zarr.open_array(cache / name, mode="r+")
    values = array[:]
    change(values)
    array[:] = values  # written through zarr: checksums valid, contents wrong


DAMAGE = {
    "points bytes flipped": (lambda c: _flip(c / "points/c/0/0", 40), "points/c/0/0"),
    "points shard deleted": (lambda c: (c / "points/c/0/0").unlink(), "points/c/0/0"),
    "scale shard deleted": (lambda c: (c / "scale/c/0/0").unlink(), "scale/c/0/0"),
    "scale bytes flipped": (lambda c: _flip(c / "scale/c/0/0", 20), "scale"),
    "status bytes flipped": (lambda c: _flip(c / "status/c/0", 20), "status"),
    "offsets deleted": (lambda c: shutil.rmtree(c / "offsets"), "offsets/zarr.json"),
    "offsets bytes flipped": (lambda c: _flip(c / "offsets/c/0", 30), "offsets"),
    "zarr.json removed": (lambda c: (c / "zarr.json").unlink(), "zarr.json"),
    "points zarr.json garbled": (lambda c: (c / "points/zarr.json").write_text("{"), "points/zarr.json"),
    "offsets end beyond points": (lambda c: _rewrite(c, "offsets", lambda v: v.__setitem__(-1, v[-1] + 3)),
                                  "offsets"),
    "scale NaN": (lambda c: _rewrite(c, "scale", lambda v: v.__setitem__((2, 0), np.nan)), "scale"),
}


def _damaged_copy(clean_dir: Path, tmp_path: Path, case: str) -> tuple[Path, str]:
    cache = tmp_path / "cache.zarr"
    shutil.copytree(clean_dir, cache)
    damage, names = DAMAGE[case]
    damage(cache)
    return cache, names


def _read_all(cache: Path) -> list[np.ndarray]:
    reader = open_cache(cache)
    return [reader.points(i) for i in range(len(reader))]


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damage_is_a_user_error_naming_the_file_never_different_points(clean, tmp_path, case):
    _, clean_dir, expected = clean
    cache, names = _damaged_copy(clean_dir, tmp_path, case)
    try:
        got = _read_all(cache)
    except UserError as error:
        message = error.format_message()
        assert str(cache / names) in message or f"{cache}/{names}" in message, message
        assert "kamim cache --dataset folder" in message and f"--out {cache}" in message and "\n" not in message
        return
    # Only damage that leaves the points exactly as they were may pass unnoticed.
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True)), case


def test_damage_after_the_flat_file_was_built_is_still_found(clean, tmp_path):
    _, clean_dir, expected = clean
    cache = tmp_path / "cache.zarr"
    shutil.copytree(clean_dir, cache)
    assert all(np.array_equal(a, b) for a, b in zip(_read_all(cache), expected, strict=True))
    _flip(cache / "points/c/0/0", 40)  # same size; the store's key changes with it
    with pytest.raises(UserError, match="points/c/0/0"):
        _read_all(cache)


def test_a_cache_without_checksums_is_read_with_a_note(clean, tmp_path, capfd):
    _, clean_dir, expected = clean
    cache = tmp_path / "old.zarr"
    shutil.copytree(clean_dir, cache)
    for meta in cache.glob("*/zarr.json"):  # as written before the crc32c codec: no checksum per chunk
        text = meta.read_text().replace(',\n          {\n            "name": "crc32c"\n          }\n        ],\n        "index_codecs"',
                                        '\n        ],\n        "index_codecs"')
        assert text != meta.read_text()
        meta.write_text(text)
    _rewrite(cache, "scale", lambda v: None)  # rewrite chunks in the old layout
    _rewrite(cache, "offsets", lambda v: None)
    _rewrite(cache, "status", lambda v: None)
    _rewrite(cache, "points", lambda v: None)
    capfd.readouterr()
    assert all(np.array_equal(a, b) for a, b in zip(_read_all(cache), expected, strict=True))
    assert "written before kamim's cache checksums" in capfd.readouterr().err


@pytest.mark.parametrize(("case", "workers"), [("scale shard deleted", "0"), ("points bytes flipped", "1")])
def test_pretrain_on_a_damaged_cache_exits_2_with_one_line(clean, tmp_path, case, workers):
    root, clean_dir, _ = clean
    cache, names = _damaged_copy(clean_dir, tmp_path, case)
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "kamim", "pretrain", "--dataset", "folder", "--data-root", str(root), "--cache",
         str(cache), "--device", "cpu", "--override", "depth=1", "--override", "embed_dim=32", "--override",
         "num_heads=2", "--batch-size", "2", "--workers", workers, "--steps", "1", "--grid-every", "0", "--out",
         str(out)], capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    # With a loader worker the damage is found there: still one line, not torch's "Caught ... in DataLoader worker".
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "Caught" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Error:") and names in last and "kamim cache" in last, last
