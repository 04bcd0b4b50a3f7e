"""kill -9 of one rank in a 2-rank gloo run: torchrun tears the other rank down (no hang), the checkpoints
on disk are whole, and ``--resume`` under torchrun finishes with exactly the uninterrupted run's weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from scaleout_helpers import environment, make_photo_folder, pretrain_args, run_kamim

from kamim.train.checkpoint import list_checkpoints, load_checkpoint

ARGS = ("--steps", "16", "--save-every", "2", "--batch-size", "1", "--keep-checkpoints", "0")


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc)."""
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == parent:
                    found.append(int(entry.name))
                    frontier.append(int(entry.name))
    return found


def rank_of(pid: int) -> int | None:
    try:
        env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(v.split(b"=", 1)[1]) for v in env if v.startswith(b"RANK=")]
    return ranks[0] if ranks else None


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(predicate, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def killed(tmp_path_factory):  # noqa: ANN201
    tmp = tmp_path_factory.mktemp("kill-rank")
    data = make_photo_folder(tmp / "data", count=8)
    whole = tmp / "whole"
    run_kamim(pretrain_args(data, whole, *ARGS), tmp, nproc=2)
    run = tmp / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", "-m", "kamim",
               *pretrain_args(data, run, *ARGS)]
    launcher = subprocess.Popen(command, cwd=tmp, env=environment(tmp), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(lambda: (run / "checkpoints" / "step-0000002.pt").exists(), 180, "the first checkpoint")
        ranks = {pid: rank_of(pid) for pid in children(launcher.pid)}
        ranks = {pid: rank for pid, rank in ranks.items() if rank is not None}
        assert sorted(ranks.values()) == [0, 1], ranks
        os.kill(next(pid for pid, rank in ranks.items() if rank == 1), signal.SIGKILL)
        began = time.monotonic()
        _, stderr = launcher.communicate(timeout=120)  # torchrun must tear rank 0 down, not wait forever
        torn_down = time.monotonic() - began
        print(f"torchrun ended {torn_down:.1f} s after rank 1 was killed (exit {launcher.returncode})")
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    survivors = [pid for pid in ranks if alive(pid)]
    after_kill = [load_checkpoint(p)["step"] for p in list_checkpoints(run)]
    exported = (run / "model.safetensors").exists()
    resumed = run_kamim(pretrain_args(data, run, *ARGS, "--resume"), tmp, nproc=2)
    return {"whole": whole, "run": run, "code": launcher.returncode, "stderr": stderr, "seconds": torn_down,
            "survivors": survivors, "after_kill": after_kill, "exported": exported, "resumed": resumed}


def test_killing_one_rank_ends_the_whole_job(killed):  # noqa: ANN001
    assert killed["code"] != 0 and not killed["survivors"]
    assert killed["seconds"] < 120
    assert not killed["exported"] and killed["after_kill"][-1] < 16  # killed mid-run, before the end


def test_checkpoints_left_by_the_kill_are_whole(killed):  # noqa: ANN001
    steps = killed["after_kill"]
    assert steps and steps[0] == 2 and steps == sorted(steps) and all(s % 2 == 0 for s in steps)


def test_resume_after_the_kill_equals_the_uninterrupted_run(killed):  # noqa: ANN001
    assert "resuming" in killed["resumed"].stderr
    a, b = load_file(killed["whole"] / "model.safetensors"), load_file(killed["run"] / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (killed["run"] / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 17))
