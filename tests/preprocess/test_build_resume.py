import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cache"))
from cache_testdata import make_folder_dataset, tree_bytes  # noqa: E402

from kamim.preprocess.build import CacheConfig, build_cache  # noqa: E402


@pytest.mark.parametrize("fmt", ["zarr", "wds"])
def test_kill_9_mid_build_then_resume_equals_a_clean_build(tmp_path, capsys, fmt):
    root = make_folder_dataset(tmp_path / "data", per_class=12, seed=7)  # 36 images, 18 blocks
    common = {"dataset": "folder", "data_root": str(root), "detector": "sift", "format": fmt, "block_size": 2}
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "kamim", "cache", "--dataset", "folder", "--data-root", str(root),
               "--detector", "sift", "--format", fmt, "--block-size", "2",
               "--workers", "1", "--out", str(killed)]  # fmt: skip
    process = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while len(list((killed / "parts").glob("block-*.npz"))) < 3:
        assert process.poll() is None, "the build ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "manifest.json").exists()
    finished = len(list((killed / "parts").glob("block-*.npz")))
    assert 3 <= finished < 18
    (killed / "parts" / "block-000017.npz.99999.tmp").write_bytes(b"torn")  # what a kill mid-write leaves

    capsys.readouterr()
    build_cache(CacheConfig(**common, workers=2 if fmt == "zarr" else 1, out=str(killed)))
    assert f"built {36 - 2 * finished} images" in capsys.readouterr().out  # finished blocks were skipped
    clean = build_cache(CacheConfig(**common, workers=1, out=str(tmp_path / "clean")))
    assert tree_bytes(killed) == tree_bytes(clean)
