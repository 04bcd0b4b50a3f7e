"""Cache partitions built on machines without a shared filesystem: each builds into its own directory,
the directories are copied into one, and finalize gives the single-machine cache byte for byte.
(The shared-directory case is tests/preprocess/test_build_partitions.py.)"""

from __future__ import annotations

import shutil
import subprocess
import sys

from scaleout_helpers import environment, make_photo_folder

from kamim.preprocess.build import CacheConfig, build_cache


def _tree(directory):  # noqa: ANN001, ANN202
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_partitions_in_separate_dirs_copied_together_equal_one_build(tmp_path):  # noqa: ANN001
    data = make_photo_folder(tmp_path / "data", count=10)
    common = ["--dataset", "folder", "--data-root", str(data), "--detector", "fast", "--block-size", "2",
              "--workers", "1", "--num-partitions", "3"]
    machines = [subprocess.Popen([sys.executable, "-m", "kamim", "cache", *common, "--partition", str(i),
                                  "--out", str(tmp_path / f"node{i}" / "c.zarr")], cwd=tmp_path,
                                 env=environment(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for i in range(3)]
    for machine in machines:
        _, err = machine.communicate(timeout=300)
        assert machine.returncode == 0, err[-2000:]
    merged = tmp_path / "merged" / "c.zarr"
    for i in range(3):  # what `rsync -a nodeI:/scratch/c.zarr/ merged/` does
        shutil.copytree(tmp_path / f"node{i}" / "c.zarr", merged, dirs_exist_ok=True)
    assert not (merged / "manifest.json").exists()
    done = subprocess.run([sys.executable, "-m", "kamim", "cache", "finalize", str(merged)], cwd=tmp_path,
                          env=environment(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    single = build_cache(CacheConfig(dataset="folder", data_root=str(data), detector="fast", block_size=2, workers=1,
                                     out=str(tmp_path / "single" / "c.zarr")))
    assert (merged / "manifest.json").is_file() and _tree(merged) == _tree(single)
