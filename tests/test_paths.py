"""Default cache paths identify the data (two folders never share a cache), and a cache/dataset mismatch
names the right cause and prints a command that runs as printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent / "train"))
from train_helpers import make_folder  # noqa: E402

from kamim.cache.manifest import check_dataset, read_manifest  # noqa: E402
from kamim.datasets import open_dataset  # noqa: E402
from kamim.errors import UserError  # noqa: E402
from kamim.paths import default_cache_dir  # noqa: E402
from kamim.preprocess.cli import cache  # noqa: E402

ARGS = ["--dataset", "folder", "--detect-size", "64", "--workers", "1"]


@pytest.fixture
def roots(tmp_path, monkeypatch):
    monkeypatch.setenv("KAMIM_CACHE_ROOT", str(tmp_path / "caches"))
    monkeypatch.chdir(tmp_path)
    return make_folder(tmp_path / "a", count=4, size=(64, 80)), make_folder(tmp_path / "b", count=6, size=(64, 80))


def build(root: Path) -> Path:
    result = CliRunner().invoke(cache, [*ARGS, "--data-root", str(root)])
    assert result.exit_code == 0, result.output
    return default_cache_dir("folder", "train", "fast", 64, data_root=root)


def run_printed(message: str) -> subprocess.CompletedProcess:
    command = re.search(r"`([^`]+)`", message).group(1)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(command, shell=True, env=env, capture_output=True, text=True, timeout=300)


def test_default_path_names_the_data_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = default_cache_dir("folder", "train", "fast", 256, data_root="a")
    assert a == default_cache_dir("folder", "train", "fast", 256, data_root=tmp_path / "a")  # same folder
    assert a != default_cache_dir("folder", "train", "fast", 256, data_root="b")
    assert default_cache_dir("photos", "train", "fast", 256).name == "photos-train-fast-256.zarr"


def test_two_folder_datasets_get_two_caches(roots):
    a, b = roots
    cache_a, cache_b = build(a), build(b)
    assert cache_a != cache_b
    assert read_manifest(cache_a)["dataset"]["count"] == 4 and read_manifest(cache_b)["dataset"]["count"] == 6
    check_dataset(read_manifest(cache_a), cache_a, open_dataset("folder", "train", a), a)
    check_dataset(read_manifest(cache_b), cache_b, open_dataset("folder", "train", b), b)


def test_files_changed_prints_a_rebuild_that_runs(roots):
    a, _ = roots
    cache_a = build(a)
    Image.new("RGB", (64, 80)).save(a / "train" / "class0" / "new.png")
    dataset = open_dataset("folder", "train", a)
    with pytest.raises(UserError) as info:
        check_dataset(read_manifest(cache_a), cache_a, dataset, a)
    message = str(info.value)
    assert "files changed" in message and "different dataset" not in message and "--data-root" in message
    assert run_printed(message).returncode == 0
    check_dataset(read_manifest(cache_a), cache_a, dataset, a)  # the rebuilt cache fits: no error


def test_another_datasets_cache_is_called_so_and_its_own_is_built(roots):
    a, b = roots
    cache_a = build(a)
    dataset_b = open_dataset("folder", "train", b)
    with pytest.raises(UserError) as info:
        check_dataset(read_manifest(cache_a), cache_a, dataset_b, b)
    message = str(info.value)
    assert "different dataset" in message and "files changed" not in message and "rm -r" not in message
    done = run_printed(message)
    assert done.returncode == 0, done.stderr
    own = default_cache_dir("folder", "train", "fast", 64, data_root=b)
    check_dataset(read_manifest(own), own, dataset_b, b)
    assert read_manifest(cache_a)["dataset"]["count"] == 4  # the other dataset's cache is untouched
    with pytest.raises(UserError, match=re.escape(f"--cache {own}")):  # now built: point at it
        check_dataset(read_manifest(cache_a), cache_a, dataset_b, b)
