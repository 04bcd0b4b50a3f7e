"""`kamim cache` guards: one build per --out (a lock naming its holder), loky workers that die with a killed
parent, and disk-full messages that name the file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fault_files import PYTHON, assert_one_line_error, make_folder, run_kamim
from PIL import Image

from kamim.preprocess.guard import build_lock, lock_path

pytestmark = pytest.mark.fault


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("guard") / "data", per_class=4, size=96)


def cache_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["cache", "--dataset", "folder", "--data-root", str(data), "--detector", "fast", "--out", str(out),
            "--workers", "1", "--block-size", "2", *extra]


def test_a_second_build_on_the_same_out_is_refused_naming_the_holder(data, tmp_path):
    out = tmp_path / "c.zarr"
    with build_lock(out):  # this process holds the build lock, as a running `kamim cache` would
        proc = run_kamim(*cache_args(data, out))
        assert_one_line_error(proc, str(out), f"pid {os.getpid()}", "another `kamim cache`")
        assert not (out / "manifest.json").exists()
        finalize = run_kamim("cache", "finalize", str(out))
        assert_one_line_error(finalize, f"pid {os.getpid()}")
    assert run_kamim(*cache_args(data, out)).returncode == 0  # released: the build runs
    assert (out / "manifest.json").is_file() and lock_path(out).is_file() and not (out / lock_path(out).name).exists()


def test_a_killed_holder_leaves_no_stale_lock(data, tmp_path):
    out = tmp_path / "c.zarr"
    holder = subprocess.Popen([PYTHON, "-c", "import sys, time; from pathlib import Path; "
                               "from kamim.preprocess.guard import build_lock\n"
                               "with build_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)",
                               str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert_one_line_error(run_kamim(*cache_args(data, out)), f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    assert run_kamim(*cache_args(data, out)).returncode == 0


def children_of(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_kill_9_of_the_cache_parent_leaves_no_worker_running(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(24):  # noise: thousands of SIFT keypoints each, so the workers stay busy for a while
        folder = tmp_path / "data" / "train" / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (400, 400, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    out = tmp_path / "c.zarr"
    args = ["cache", "--dataset", "folder", "--data-root", str(tmp_path / "data"), "--detector", "sift",
            "--detect-size", "1024", "--out", str(out), "--workers", "2", "--block-size", "1"]
    parent = subprocess.Popen([PYTHON, "-m", "kamim", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and parent.poll() is None:
            workers |= children_of(parent.pid)
            if len(list((out / "parts").glob("block-*.npz"))) >= 2 and len(workers) >= 2:
                break  # both workers have run a block: they are mid-task now
            time.sleep(0.05)
        assert parent.poll() is None and len(workers) >= 2, "the build should still be running with its workers"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(alive(p) for p in workers):
            time.sleep(0.1)
        survivors = [p for p in workers if alive(p)]
        assert not survivors, f"workers {survivors} outlived the killed parent"
    finally:
        for pid in workers:  # our own build's workers, if the assertion above failed
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert not (out / "manifest.json").exists()


def test_disk_full_names_the_shard_and_the_cache(data, tmp_path):
    def limit(size: int):
        def apply() -> None:
            import resource

            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        return apply

    out = tmp_path / "c.wds"
    proc = subprocess.run([PYTHON, "-m", "kamim", *cache_args(data, out, "--format", "wds")], capture_output=True,
                          text=True, timeout=240, preexec_fn=limit(4000))
    assert_one_line_error(proc, "File too large", "shard-000000.tar")
    zout = tmp_path / "c.zarr"
    for part in ("0", "1"):
        assert run_kamim(*cache_args(data, zout, "--num-partitions", "2", "--partition", part)).returncode == 0
    proc = subprocess.run([PYTHON, "-m", "kamim", "cache", "finalize", str(zout)], capture_output=True, text=True,
                          timeout=240, preexec_fn=limit(300))
    assert_one_line_error(proc, "File too large", str(zout))
    assert sys.executable
