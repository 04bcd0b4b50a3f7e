"""Shared by the scale-out tests: a tiny real image folder, tiny-model pretrain arguments, launchers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skdata

REPO = Path(__file__).resolve().parents[2]
TINY = ["--override", "depth=1", "--override", "embed_dim=32", "--override", "num_heads=2"]


def photo_crop(index: int, height: int = 120, width: int = 160) -> np.ndarray:
    """A crop of one of scikit-image's photos (real texture for FAST), deterministic per index."""
    source = (skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket())[index % 4]
    top, left = (index * 37) % (source.shape[0] - height), (index * 53) % (source.shape[1] - width)
    return np.ascontiguousarray(source[top:top + height, left:left + width, :3])


def make_photo_folder(root: Path, count: int = 8, split: str = "train") -> Path:
    """``root/<split>/class{0,1}/img*.png`` of 120x160 photo crops."""
    for i in range(count):
        folder = root / split / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo_crop(i)).save(folder / f"img{i:03d}.png")
    return root


def pretrain_args(data_root: Path, out: Path, *extra: str) -> list[str]:
    """A few steps of a tiny KAMIM ViT (online keypoints: no cache needed) on the folder dataset."""
    return ["pretrain", "--dataset", "folder", "--data-root", str(data_root), *TINY, "--method", "kamim",
            "--keypoints", "online", "--workers", "0", "--grid-every", "0", "--lr", "1e-3", "--warmup-steps", "0",
            "--out", str(out), *extra]


def environment(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(KAMIM_RUNS_ROOT=str(tmp_path / "runs"), KAMIM_CACHE_ROOT=str(tmp_path / "cache"),
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def run_kamim(args: list[str], tmp_path: Path, nproc: int = 1, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m kamim ARGS`` (nproc 1) or ``torchrun --nproc-per-node N -m kamim ARGS`` (gloo on the CPU).

    A hang (a rank waiting forever in a collective) fails the test by the timeout instead of blocking it.
    """
    if nproc == 1:
        command = [sys.executable, "-m", "kamim", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                   "--standalone", "-m", "kamim", *args]
    result = subprocess.run(command, cwd=tmp_path, env=environment(tmp_path), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result
