"""Webdataset streams under DDP: uneven shards, fewer shards than ranks x workers, no hang, equal
batch counts per rank, and a real 2-rank torchrun pretraining from a wds cache."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from itertools import islice

import numpy as np
import pytest
import torch
from scaleout_helpers import TINY, environment, make_photo_folder, photo_crop, run_kamim

from kamim.cache.wds_store import encode_sample, write_shard
from kamim.train.crop_codes import FAR, batch_points
from kamim.train.wds_stream import WdsPretrainStream

SHARD_SIZES = (5, 1, 2)  # uneven, and 3 shards for 2 ranks x 2 workers = 4 readers


@pytest.fixture(scope="module")
def shards(tmp_path_factory):  # noqa: ANN001, ANN201
    folder = tmp_path_factory.mktemp("shards")
    paths, index = [], 0
    for number, size in enumerate(SHARD_SIZES):
        samples = []
        for _ in range(size):
            image = photo_crop(index, 72, 96)
            points = np.random.default_rng(index).uniform(0, 72, size=(20 + index, 2)).astype(np.float32)
            samples.append(encode_sample(index, image, points, index % 2))
            index += 1
        paths.append(folder / f"shard-{number:06d}.tar")
        write_shard(paths[-1], samples)
    return paths


def _take(shards, rank: int, count: int, workers: int = 2, seconds: float = 120) -> list[dict]:  # noqa: ANN001
    """``count`` batches of rank ``rank``'s loader, or a failure (not a hang) after ``seconds``."""
    stream = WdsPretrainStream(shards, "cached", 16, seed=0, batch_size=2, rank=rank)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
    got: list[dict] = []
    reader = threading.Thread(target=lambda: got.extend(islice(iter(loader), count)), daemon=True)
    reader.start()
    reader.join(seconds)
    assert not reader.is_alive(), f"rank {rank}: the stream hung after {len(got)} of {count} batches"
    return got


def test_every_rank_gets_the_batches_it_asks_for_from_uneven_shards(shards):  # noqa: ANN001
    # 8 samples in all: a plain split would leave readers empty or ranks unequal; more batches than
    # one pass holds are asked for, and every rank must deliver all of them
    per_rank = [_take(shards, rank, 7) for rank in (0, 1)]
    for batches in per_rank:
        assert len(batches) == 7
        for batch in batches:
            assert batch["image"].shape == (2, 3, 192, 192) and batch["image"].dtype == torch.uint8
            assert batch["mask"].shape == (2, 12, 12)
            assert batch["source_points"].shape[0] == 2 and batch["source_meta"].shape == (2, 8)
    # ranks and workers draw different streams; a rank's stream is reproducible
    assert not torch.equal(per_rank[0][0]["image"], per_rank[1][0]["image"])
    assert not torch.equal(per_rank[0][0]["image"], per_rank[0][1]["image"])
    again = _take(shards, 0, 3)
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(again, per_rank[0][:3], strict=True))


def test_the_training_loader_hands_the_points_over_as_numpy_from_its_workers(shards):  # noqa: ANN001
    # DataLoader's default collate_fn for whole batches (default_convert) would make them tensors in the
    # worker, each handed over through its own shared-memory segment and fd handshake
    from types import SimpleNamespace

    from kamim.train.wds_stream import wds_loader

    loader = wds_loader(SimpleNamespace(shards=shards, checksummed=False), "cached", 16, 0, 2, 0, workers=1)
    batch = next(iter(loader))
    assert isinstance(batch["source_points"], np.ndarray) and isinstance(batch["source_meta"], np.ndarray)
    assert isinstance(batch["image"], torch.Tensor) and batch["image"].shape == (2, 3, 192, 192)


def test_points_follow_the_crop(shards):  # noqa: ANN001
    batch = _take(shards, 0, 1, workers=0)[0]
    for points, count in zip(*batch_points(batch), strict=True):  # moved into the crop as the step does
        inside = points[:count][points[:count, 0] > FAR / 2]  # the points the crop keeps
        assert len(inside) > 0 and inside.min() >= -0.5 and inside.max() <= 192.5  # in the 192-px crop


def test_torchrun_pretrains_from_a_wds_cache_with_uneven_shards(tmp_path):  # noqa: ANN001
    data = make_photo_folder(tmp_path / "data", count=7)
    cache = tmp_path / "cache.wds"
    run_kamim(["cache", "--dataset", "folder", "--data-root", str(data), "--detector", "fast", "--format", "wds",
               "--block-size", "3", "--workers", "1", "--out", str(cache)], tmp_path)
    manifest = json.loads((cache / "manifest.json").read_text())
    assert len(manifest["shards"]) == 3  # 3 + 3 + 1 samples
    shutil.rmtree(data)  # the shards are self-contained: training needs no dataset files
    out = tmp_path / "run"
    args = ["pretrain", *TINY, "--method", "kamim", "--keypoints", "cached", "--cache", str(cache), "--workers", "2",
            "--batch-size", "2", "--steps", "3", "--save-every", "3", "--grid-every", "0", "--out", str(out)]
    result = run_kamim([*args, "--dataset", "folder"], tmp_path, nproc=2, timeout=180)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3] and (out / "model.safetensors").is_file()
    assert "effective batch 4 = 2 x 1 accumulation x 2 rank(s)" in result.stderr
    wrong = subprocess.run([sys.executable, "-m", "kamim", *args[:-1], str(tmp_path / "other"), "--dataset", "photos"],
                           cwd=tmp_path, env=environment(tmp_path), capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "holds folder train, not --dataset photos" in wrong.stderr
