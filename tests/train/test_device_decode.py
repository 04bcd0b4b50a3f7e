"""--decode device: the workers ship JPEG bytes and crops, the step decodes; on the CPU every batch equals
the worker-decode batch bit for bit (pixels, masks, keypoints), with files the device cannot take
(PNG, CMYK, grayscale-16, broken, tiny) handled by the worker path in the same batch."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from train_helpers import TINY_VIT_OVERRIDES, photo

from kamim.cli import main as cli
from kamim.datasets import open_dataset
from kamim.errors import UserError
from kamim.preprocess.build import CacheConfig, build_cache
from kamim.train.augment import CropParams
from kamim.train.data import EpochBatches, PretrainSamples, collate
from kamim.train.device import resolve_device
from kamim.train.device_decode import UndecodableJpeg, check_decoder, crop_row, decode_batch, read_jpeg
from kamim.train.pretrain import PretrainConfig, run_pretrain


def jpeg_folder(root, count: int = 14):
    """``root/train/<class>/*``: JPEGs of every kind decode_jpeg takes, and files it must not get."""
    for i in range(count):
        folder = root / "train" / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(photo(i, 120 + 8 * (i % 3), 160 - 8 * (i % 2)))
        kind = i % 7
        if kind == 0:
            picture.save(folder / f"img{i:03d}.jpg", quality=90)
        elif kind == 1:
            picture.save(folder / f"img{i:03d}.jpg", quality=75, progressive=True)
        elif kind == 2:
            picture.convert("L").save(folder / f"img{i:03d}.jpg", quality=85)
        elif kind == 3:
            picture.save(folder / f"img{i:03d}.jpg", quality=95, subsampling=0)  # 4:4:4 chroma
        elif kind == 4:
            picture.save(folder / f"img{i:03d}.png")  # not a JPEG: the worker decodes it
        elif kind == 5:
            picture.convert("CMYK").save(folder / f"img{i:03d}.jpg")  # CMYK JPEG: the worker's colours
        else:
            (folder / f"img{i:03d}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # replaced
    Image.fromarray(photo(99, 6, 6)).save(root / "train" / "class0" / "tiny.jpg")  # too small: replaced
    whole = root / "train" / "class0" / "img000.jpg"
    (root / "train" / "class1" / "cut.jpg").write_bytes(whole.read_bytes()[:-900])  # cut off: replaced
    return root


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    root = jpeg_folder(tmp_path_factory.mktemp("jpegs"))
    dataset = open_dataset("folder", "train", str(root))
    return root, dataset


def batches(samples: PretrainSamples, keys: list[list[tuple[int, int]]]) -> list[dict]:
    return [decode_batch(resolve_device("cpu").to(collate(samples.__getitems__(chunk)))) for chunk in keys]  # as the step


def test_header_check_sends_only_decodable_jpegs_to_the_device(jpegs):
    _, dataset = jpegs
    sent = []
    for i in range(len(dataset)):
        name, data = dataset.sample_name(i), read_jpeg(dataset, i)
        if data is not None:
            sent.append(name)
            assert data[1:] == Image.open(dataset.files[i]).size[::-1]  # (height, width) from the header
    assert len(sent) == 8  # 2 each of RGB, progressive, gray and 4:4:4 JPEGs
    assert not any(name.endswith((".png", "tiny.jpg", "cut.jpg")) for name in sent)
    assert all(Image.open(dataset.files[dataset_index]).mode in ("RGB", "L")
               for dataset_index in range(len(dataset)) if dataset.sample_name(dataset_index) in sent)


@pytest.mark.filterwarnings("ignore:bad sample:UserWarning")  # expected: the broken files
def test_device_decode_batches_equal_worker_decode_batches_bit_for_bit(jpegs):
    _, dataset = jpegs
    worker = PretrainSamples(dataset, "simmim", 16, seed=3)
    device = PretrainSamples(dataset, "simmim", 16, seed=3, decode="device")
    sampler = EpochBatches(np.arange(len(dataset)), 5, seed=3)
    keys = [batch for batch, _ in zip(sampler, range(6), strict=False)]  # 2 epochs: every file, twice
    with pytest.warns(UserWarning, match="bad sample"):
        expected = batches(worker, keys)
    with pytest.warns(UserWarning, match="bad sample"):  # the broken files are replaced the same way
        got = batches(device, keys)
    mixed = 0
    for want, have in zip(expected, got, strict=True):
        assert set(have) == set(want) and "jpeg" not in have
        assert torch.equal(have["image"], want["image"]) and torch.equal(have["mask"], want["mask"])
    for chunk in keys:
        raw = collate(device.__getitems__(chunk))
        lengths = raw["jpeg_offsets"].diff()
        mixed += bool((lengths == 0).any() and (lengths > 0).any())
    assert mixed >= 2  # batches really mixed device rows with worker rows
    loader = torch.utils.data.DataLoader(device, batch_sampler=keys, num_workers=2, collate_fn=collate)
    for want, raw in zip(expected, loader, strict=True):  # bytes and crops through forked workers' queues
        assert torch.equal(decode_batch(raw)["image"], want["image"])


@pytest.mark.filterwarnings("ignore:bad sample:UserWarning")  # expected: the broken files
def test_device_decode_keeps_cached_keypoints_and_trains(jpegs, tmp_path):
    root, dataset = jpegs
    cache = build_cache(CacheConfig(dataset="folder", data_root=str(root), detector="fast", detect_size=128,
                                    workers=1, out=str(tmp_path / "cache.zarr")))
    from kamim.cache import open_cache

    reader = open_cache(cache)
    worker = PretrainSamples(dataset, "cached", 16, 0, reader)
    device = PretrainSamples(dataset, "cached", 16, 0, reader, decode="device")
    keys = [[(0, int(i)) for i in worker.usable_indices()[:6]]]
    want, have = batches(worker, keys)[0], batches(device, keys)[0]
    assert set(have) == set(want)
    assert all(torch.equal(have[k], want[k]) for k in want)

    config = dict(model="vit_t", overrides=dict(TINY_VIT_OVERRIDES), dataset="folder", data_root=str(root),
                  cache=str(cache), detect_size=128, device="cpu", batch_size=4, workers=0, grid_every=0,
                  save_every=100, log_every=1, steps=3)
    for keypoints in ("cached", "device"):  # device: FAST on the decoded batch, after decode_batch
        runs = {d: run_pretrain(PretrainConfig(**config, keypoints=keypoints, out=str(tmp_path / f"{keypoints}-{d}"),
                                               decode=d)) for d in ("worker", "device")}
        losses = {d: [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
                  for d, run in runs.items()}
        assert losses["worker"] == losses["device"] and all(np.isfinite(losses["device"])), keypoints
        assert json.loads((runs["device"] / "config.json").read_text())["decode"] == "device"


def test_decode_device_where_it_cannot_work_is_one_line_exit_2(jpegs, tmp_path):
    root, _ = jpegs
    base = ["pretrain", "--model", "vit_t", "--override", "depth=1", "--override", "embed_dim=32", "--override",
            "num_heads=2", "--dataset", "folder", "--data-root", str(root), "--device", "cpu", "--steps", "1",
            "--batch-size", "2", "--workers", "0", "--decode", "device"]
    result = CliRunner().invoke(cli, [*base, "--keypoints", "online", "--out", str(tmp_path / "a")])
    assert result.exit_code == 2, result.output
    assert "--decode device: online detection needs the crop" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "a").exists()


def test_a_jpeg_the_device_cannot_decode_is_named_by_its_index(jpegs):
    _, dataset = jpegs
    data = dataset.files[0].read_bytes()
    broken = data[:400] + b"\xff\xd9"  # header intact, end marker present, image data gone
    sample = {"jpeg": broken, "mask": torch.zeros(6, 6, dtype=torch.bool),
              "jpeg_crop": crop_row(CropParams(0, 0, 100, 100, False, False), 192, 5)}
    good = {"jpeg": data, "mask": torch.zeros(6, 6, dtype=torch.bool),
            "jpeg_crop": crop_row(CropParams(0, 0, 100, 100, False, False), 192, 0)}
    with pytest.raises(UndecodableJpeg, match=r"image 5 of the dataset does not decode") as caught:
        decode_batch(collate([good, sample]))
    assert caught.value.index == 5


def test_a_damaged_jpeg_stops_the_run_and_the_printed_command_continues_it(tmp_path):
    """The file breaks after the worker read its header: exit 2, one line naming the file and the intact
    checkpoint; the command it prints resumes the run with --decode worker (which replaces the file)."""
    root, count, batch = tmp_path / "data", 12, 2
    for i in range(count):
        (root / "train" / "c").mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo(i)).save(root / "train" / "c" / f"img{i:02d}.jpg", quality=90)
    dataset = open_dataset("folder", "train", str(root))
    third = next(b for k, b in enumerate(EpochBatches(np.arange(count), batch, seed=0)) if k == 2)
    victim = dataset.files[third[0][1]]
    data = bytearray(victim.read_bytes())
    table = data.index(b"\xff\xc4") + 5  # a Huffman table's 16 code counts: PIL's header read skips them
    data[table : table + 16] = b"\xff" * 16  # libjpeg: "Bogus Huffman table definition"
    victim.write_bytes(bytes(data))  # step 3's batch holds it
    run = tmp_path / "run"
    args = ["pretrain", "--model", "vit_t", "--override", "depth=1", "--override", "embed_dim=32", "--override",
            "num_heads=2", "--dataset", "folder", "--data-root", str(root), "--device", "cpu", "--steps", "5",
            "--batch-size", str(batch), "--workers", "0", "--method", "simmim", "--save-every", "1",
            "--grid-every", "0", "--seed", "0", "--out", str(run), "--decode", "device"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    message = result.output.strip().splitlines()[-1]
    assert str(victim) in message and "step-0000002.pt" in message and "Traceback" not in result.output
    command = shlex.split(message.split("`")[1])
    assert command[:2] == ["kamim", "pretrain"] and command[-2:] == ["--decode", "worker"]
    resumed = CliRunner().invoke(cli, command[1:])
    assert resumed.exit_code == 0, resumed.output  # its workers replace the file (their warnings go to stderr)
    assert (run / "checkpoints" / "step-0000005.pt").exists()


def test_online_detection_with_device_decode_suggests_only_what_works(jpegs, tmp_path):
    root, _ = jpegs
    base = ["pretrain", "--model", "vit_t", "--override", "depth=1", "--dataset", "folder", "--data-root", str(root),
            "--device", "cpu", "--steps", "1", "--batch-size", "2", "--workers", "0", "--decode", "device",
            "--keypoints", "online"]
    sift = CliRunner().invoke(cli, [*base, "--detector", "sift", "--out", str(tmp_path / "s")])
    assert sift.exit_code == 2 and "--decode worker" in sift.output and "--keypoints cached" in sift.output
    assert "device" not in sift.output.split("; use", 1)[1].replace("--decode", "")


def test_a_missing_device_decoder_is_named_before_training(monkeypatch):
    import torchvision.io

    def no_decoder(*args, **kwargs):
        raise RuntimeError("torchvision not compiled with nvJPEG support")

    monkeypatch.setattr(torchvision.io, "decode_jpeg", no_decoder)
    with pytest.raises(UserError, match=r"cannot decode JPEGs on cpu \(torchvision not compiled with nvJPEG"):
        check_decoder(torch.device("cpu"))


FEW_FILES = """
import resource, sys
import numpy as np, torch
from kamim.datasets import open_dataset
from kamim.train.data import PretrainSamples, collate
resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
dataset = open_dataset("folder", "train", sys.argv[1])
samples = PretrainSamples(dataset, "simmim", 16, seed=0, decode=sys.argv[2])
keys = [[(0, i % len(dataset)) for i in range(300)]] * 3
loader = torch.utils.data.DataLoader(samples, batch_sampler=keys, num_workers=1, collate_fn=collate)
print(sum(len(b["mask"]) for b in loader))
"""


def test_a_large_batch_of_jpegs_crosses_the_worker_queue_under_a_low_file_limit(tmp_path):
    """The bytes travel as one tensor per batch: 300-image batches pass with 128 open files allowed."""
    root = tmp_path / "data" / "train" / "c"
    root.mkdir(parents=True)
    for i in range(8):
        Image.fromarray(photo(i)).save(root / f"img{i}.jpg", quality=90)
    done = subprocess.run([sys.executable, "-c", FEW_FILES, str(tmp_path / "data"), "device"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "900", done.stderr[-2000:]
