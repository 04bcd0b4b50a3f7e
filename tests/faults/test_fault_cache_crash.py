"""kill -9 during a cache build, at several points: the rerun completes and equals a clean build.

Points: before a block file's rename (its temp is left behind), right after a block lands, in the middle
of the zarr assembly, just before the manifest (the mark of completeness) is renamed, and half-way
through the final cleanup; for wds also before a shard's rename. Until the rerun finishes, readers must
refuse the directory as incomplete: no partial file is ever taken for a complete cache.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest
from fault_child import run_child
from fault_files import PYTHON, add_files, bad_images, make_folder

from kamim.cache import open_cache
from kamim.cache.finalize import finalize
from kamim.errors import UserError
from kamim.preprocess.build import CacheConfig, build_cache

pytestmark = pytest.mark.fault


def tree_bytes(directory) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_folder(tmp_path_factory.mktemp("crash") / "data", per_class=6, size=80)
    add_files(root / "train" / "c1", {k: v[0] for k, v in bad_images().items() if k in ("zero.jpg", "text.jpg")})
    return root  # 14 images, 2 bad: 7 blocks of 2


def config(data, out, fmt="zarr", workers=1) -> CacheConfig:
    return CacheConfig(dataset="folder", data_root=str(data), detector="fast", format=fmt, out=str(out),
                       workers=workers, block_size=2)


@pytest.fixture(scope="module")
def clean(data, tmp_path_factory):
    base = tmp_path_factory.mktemp("clean")
    return {fmt: tree_bytes(build_cache(config(data, base / fmt, fmt))) for fmt in ("zarr", "wds")}


CRASHES = [
    ("zarr", "before-replace", "block-*.npz", 3),
    ("zarr", "after-replace", "block-*.npz", 5),
    ("zarr", "zarr-write", "points", 1),
    ("zarr", "before-replace", "manifest.json", 1),
    ("zarr", "rmtree", "*", 3),
    ("wds", "before-replace", "shard-*.tar", 2),
    ("wds", "before-replace", "errors.jsonl", 1),
]


@pytest.mark.parametrize(("fmt", "point", "pattern", "nth"), CRASHES)
def test_kill_during_build_then_rerun_equals_clean_build(data, clean, tmp_path, fmt, point, pattern, nth):
    out = tmp_path / "cache"
    code = run_child(build_cache, config(data, out, fmt), point=point, pattern=pattern, nth=nth)
    assert code == -signal.SIGKILL, f"the crash point {point} {pattern} #{nth} was never reached"
    if point != "rmtree":  # before the manifest lands, nobody may take this for a cache
        assert not (out / "manifest.json").exists()
        with pytest.raises(UserError, match="not complete"):
            open_cache(out)
    if point == "before-replace":
        assert list(out.rglob("*.tmp")), "the crash should have left a temp file behind"
    if point == "rmtree":  # complete but not cleaned up: `kamim cache finalize` must accept it as is
        finalize(out)
        assert not (out / "parts").exists()
    build_cache(config(data, out, fmt))  # the same command again
    assert tree_bytes(out) == clean[fmt]
    assert len(open_cache(out)) in (14, 12)


def test_sigkill_of_the_whole_process_group_mid_build(data, clean, tmp_path):
    """A real external kill -9 (as a job scheduler does) of the CLI and its two loky workers."""
    out = tmp_path / "cache"
    args = ["-m", "kamim", "cache", "--dataset", "folder", "--data-root", str(data), "--detector", "fast",
            "--out", str(out), "--workers", "2", "--block-size", "2"]
    proc = subprocess.Popen([PYTHON, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        parts = out / "parts"
        if parts.is_dir() and len(list(parts.glob("block-*.npz"))) >= 2:
            break
        time.sleep(0.02)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if killed:
        assert not (out / "manifest.json").exists()
    build_cache(config(data, out, workers=1))
    assert tree_bytes(out) == clean["zarr"]


def test_rerun_after_a_deleted_block_and_a_torn_temp_rebuilds_only_that(data, clean, tmp_path):
    out = tmp_path / "cache"
    assert run_child(build_cache, config(data, out), point="before-replace", pattern="manifest.json") == -9
    parts = out / "parts"
    (parts / "block-000004.npz").unlink()
    (parts / f"block-000004.npz.{os.getpid()}.tmp").write_bytes(b"PK\x03\x04 torn")
    shutil.rmtree(out / "points", ignore_errors=True)  # half an assembly from the killed finalize
    build_cache(config(data, out))
    assert tree_bytes(out) == clean["zarr"]
