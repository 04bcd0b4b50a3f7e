"""Ctrl-C during `kamim cache`: exit 130, no worker tracebacks, and the printed resume command, run as
printed, finishes the cache with the blocks already built kept."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))
from train_helpers import make_folder  # noqa: E402

from kamim.cache.manifest import read_manifest  # noqa: E402


def test_ctrl_c_prints_a_resume_command_that_finishes_the_cache(tmp_path):
    root, out = make_folder(tmp_path / "data", count=48, size=(64, 80)), tmp_path / "cache.zarr"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    child = subprocess.Popen(["kamim", "cache", "--dataset", "folder", "--data-root", str(root), "--detector", "sift",
                              "--workers", "2", "--block-size", "2", "--out", str(out)], env=env,
                             start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((out / "parts").glob("block-*.npz")):
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.01)
    os.killpg(child.pid, signal.SIGSTOP)  # frozen mid-build, then Ctrl-C to the whole group, as at a terminal
    os.killpg(child.pid, signal.SIGINT)
    os.killpg(child.pid, signal.SIGCONT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    printed = re.search(r"resume with: (kamim cache .*)$", err, re.M).group(1)
    assert f"--data-root {root}" in printed and f"--out {out}" in printed
    kept = int(re.search(r"interrupted: (\d+) of 24 blocks", err).group(1))
    assert kept < 24 and not (out / "manifest.json").exists()
    done = subprocess.run(printed, shell=True, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert read_manifest(out)["status_counts"]["ok"] == 48
    rebuilt = int(re.search(r"built (\d+) images", done.stdout).group(1))
    assert rebuilt <= 48 - 2 * kept  # the blocks built before Ctrl-C were kept, not redone
