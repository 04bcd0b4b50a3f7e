"""The benchmark harness's accounting (bench/peer.py, bench/e2e.py, bench/original.py): rates, timing
blocks, the swappable feed, and that the original's rebuilt step computes the project's loss."""

from __future__ import annotations

import json
import time

import pytest
import torch

from bench.e2e import pretrain_rate
from bench.original import OriginalStep, original_batch
from bench.peer import Feed, PeerBenchConfig, loss_gap, tiled, time_block, twin_models
from kamim.train.device import resolve_device
from kamim.train.masking import random_mask


def test_pretrain_rate_uses_images_between_the_middle_record_and_the_last(tmp_path):
    # steps 4, 8, ..., 24 logged; the first records are slow (start-up), the rest 2 s per 4 steps
    times = [0.0, 30.0, 32.0, 34.0, 36.0, 38.0]
    records = [{"step": 4 * (i + 1), "time": t, "loss": 1.0} for i, t in enumerate(times)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    rate = pretrain_rate(tmp_path, batch_size=16)
    assert (rate["from_step"], rate["to_step"]) == (16, 24)  # the middle record (index 3) to the last
    assert rate["images_per_s"] == pytest.approx((24 - 16) * 16 / (38.0 - 34.0))


def test_time_block_returns_seconds_per_step_and_runs_each_step_once():
    calls = []

    def step():
        calls.append(1)
        time.sleep(0.02)

    seconds = time_block(step, 3, resolve_device("cpu"))
    assert len(calls) == 3 and 0.02 <= seconds < 0.1


def test_feed_hands_out_the_current_source_and_can_be_swapped():
    feed = Feed(iter([1, 2]))
    assert next(feed) == 1
    feed.source = iter([7])
    assert next(iter(feed)) == 7
    with pytest.raises(StopIteration):
        next(feed)


def test_the_original_step_computes_the_project_loss_on_the_same_weights():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 192, 192), dtype=torch.uint8)
    mask = torch.stack([random_mask(None, 16, 192) for _ in range(4)])
    counts = torch.tensor([300, 10, 0, 64])
    points = torch.rand(4, 320, 2) * 191
    batch = {"image": images, "mask": mask, "points": points, "counts": counts}
    cfg = PeerBenchConfig(overrides={"depth": 1, "embed_dim": 32, "num_heads": 2})
    hf, ours, sizes = twin_models(cfg)
    assert sizes == (32, 1, 2)
    assert loss_gap(hf, ours, batch, cfg) < 1e-6  # the two rebuilt trainers differ in code, not in maths
    theirs = original_batch(tiled(batch, 6))
    assert theirs["pixel_values"].shape == (6, 3, 192, 192) and theirs["map"].shape == (6, 1, 192, 192)
    step = OriginalStep(hf, resolve_device("cpu"))
    before = [p.detach().clone() for p in hf.parameters()]
    loss = step(theirs)
    assert torch.isfinite(loss) and step.updates == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, hf.parameters(), strict=True))


def test_decode_jpeg_gives_pil_pixels_and_the_same_training_crops(tmp_path):
    from PIL import Image
    from skimage import data as skdata

    from bench.decode import jpeg_bytes, pixel_difference

    for i, photo in enumerate((skdata.astronaut(), skdata.coffee(), skdata.chelsea())):
        Image.fromarray(photo[: 300 + 50 * i, : 400 - 30 * i]).save(tmp_path / f"{i}.jpg", quality=90)
    datas = [jpeg_bytes(tmp_path / f"{i}.jpg") for i in range(3)]
    diff = pixel_difference(datas, torch.device("cpu"))
    # libjpeg(-turbo) on both sides with the same IDCT and upsampling: tolerance 0 on the CPU. nvJPEG on
    # a GPU differs by a few levels; bench.gpu's decode part measures that.
    assert diff["full_max"] == 0 and diff["crop_max"] == 0


def test_cpu_ns_counts_every_thread_of_a_process_and_only_while_it_runs():
    import os
    import threading

    from bench.pipelines import cpu_ns

    def spin(seconds: float) -> None:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    before = cpu_ns([os.getpid()])
    worker = threading.Thread(target=spin, args=(0.15,))
    worker.start()
    spin(0.15)
    worker.join()
    spent = (cpu_ns([os.getpid()]) - before) / 1e9
    assert 0.27 <= spent < 0.6  # both threads' 0.15 s (one has ended), not the time the other one waited
    idle = cpu_ns([os.getpid()])
    time.sleep(0.2)
    assert (cpu_ns([os.getpid()]) - idle) / 1e9 < 0.05


def test_hand_over_moves_every_tensor_through_shared_memory_and_back():
    from bench.scale_loader import hand_over

    batch = {"image": torch.arange(3 * 64, dtype=torch.uint8).reshape(3, 64),
             "codes": torch.tensor([-1, 5], dtype=torch.int16)}
    hand_over(batch)  # no error, and the batch's storages are now shared, as a worker's are
    assert all(t.is_shared() for t in batch.values())
