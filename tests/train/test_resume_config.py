"""`kamim pretrain --out RUN --resume` alone: the run's config.json supplies the flags; Ctrl-C saves and says
how to resume, and that command, run as printed, finishes the run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner
from train_helpers import TINY_VIT

from kamim.train.pretrain_cli import pretrain

VENV_BIN = Path(sys.executable).parent


def first_args(folder, run: Path, *extra: str) -> list[str]:
    root, cache = folder
    overrides = [a for o in TINY_VIT for a in ("--override", o)]
    return ["--model", "vit_t", *overrides, "--dataset", "folder", "--data-root", str(root), "--cache", str(cache),
            "--detect-size", "128", "--device", "cpu", "--batch-size", "2", "--workers", "0", "--grid-every", "0",
            "--lr", "5e-4", "--out", str(run), *extra]


def steps_logged(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_with_no_flags_continues_from_config_json(folder, tmp_path):
    run = tmp_path / "run"
    first = CliRunner().invoke(pretrain, first_args(folder, run, "--steps", "4", "--save-every", "2",
                                                    "--stop-after", "2"))
    assert first.exit_code == 0, first.output
    saved = json.loads((run / "config.json").read_text())
    assert saved["out"] == str(run) and saved["device"] == "cpu"  # resolved values, not None/auto
    again = CliRunner().invoke(pretrain, ["--out", str(run), "--resume"])
    assert again.exit_code == 0, again.output
    assert (run / "model.safetensors").is_file() and steps_logged(run) == [1, 2, 3, 4]
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "model.json", "config.json"):  # one file mode for every output
        assert (run / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    resumed = json.loads((run / "config.json").read_text())
    assert resumed["lr"] == 5e-4 and resumed["batch_size"] == 2 and resumed["overrides"]["embed_dim"] == 32


def test_conflicting_flags_are_listed_one_per_line_and_allowed_ones_pass(folder, tmp_path):
    run = tmp_path / "run"
    assert CliRunner().invoke(pretrain, first_args(folder, run, "--steps", "4", "--stop-after", "1")).exit_code == 0
    result = CliRunner().invoke(pretrain, ["--out", str(run), "--resume", "--lr", "1e-3", "--batch-size", "4",
                                           "--steps", "5", "--workers", "0", "--stop-after", "2"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()  # the items, then one Error: line naming the flags
    assert lines[-1].startswith("Error:") and "2 flag(s) differ" in lines[-1] and "--batch-size, --lr" in lines[-1]
    assert any(re.search(r"--batch-size 4: the run used 2; drop --batch-size", line) for line in lines[:-1])
    assert any(re.search(r"--lr 0.001: the run used 0.0005; drop --lr", line) for line in lines[:-1])
    assert not any("--steps" in line or "--workers" in line for line in lines)  # allowed to change
    extended = CliRunner().invoke(pretrain, ["--out", str(run), "--resume", "--steps", "5", "--stop-after", "2"])
    assert extended.exit_code == 0, extended.output
    assert steps_logged(run) == [1, 2] and not (run / "model.safetensors").exists()


def test_ctrl_c_saves_then_the_printed_resume_command_finishes_the_run(folder, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    args = first_args(folder, run, "--steps", "60", "--save-every", "1000", "--log-every", "1")
    args[args.index("--workers") + 1] = "1"  # a loader worker in the same process group, as at a terminal
    child = subprocess.Popen([str(VENV_BIN / "kamim"), "pretrain", *args], env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text().count("\n") >= 1):
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.01)
    os.killpg(child.pid, signal.SIGSTOP)  # frozen, so the signal lands mid-run however fast the steps are
    os.killpg(child.pid, signal.SIGINT)  # what Ctrl-C at a terminal does: the whole foreground group
    os.killpg(child.pid, signal.SIGCONT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert "Traceback" not in err and "Aborted" not in err
    printed = re.search(r"resume with: (kamim pretrain .*--resume)$", err, re.M)
    assert printed, err
    stopped = int(re.search(r"stopped at step (\d+) of 60", err).group(1))
    assert stopped < 60 and (run / "checkpoints" / f"step-{stopped:07d}.pt").is_file()
    resumed = subprocess.run(printed.group(1), shell=True, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run} from step {stopped}" in resumed.stderr
    assert (run / "model.safetensors").is_file() and steps_logged(run)[-1] == 60


def test_no_save_optimizer_writes_smaller_checkpoints_that_still_resume(folder, tmp_path):
    import torch

    lean, full = tmp_path / "lean", tmp_path / "full"
    for run, flag in ((lean, "--no-save-optimizer"), (full, "--save-optimizer")):
        result = CliRunner().invoke(pretrain, first_args(folder, run, "--steps", "2", "--stop-after", "1", flag))
        assert result.exit_code == 0, result.output
    lean_ckpt, full_ckpt = (r / "checkpoints" / "step-0000001.pt" for r in (lean, full))
    assert "optimizer" not in torch.load(lean_ckpt, weights_only=True)
    assert lean_ckpt.stat().st_size < 0.6 * full_ckpt.stat().st_size  # AdamW's two moments are 2/3 of it
    again = CliRunner().invoke(pretrain, ["--out", str(lean), "--resume"])
    assert again.exit_code == 0, again.output
    assert "not bit-exact" in again.output and steps_logged(lean) == [1, 2]
