"""Bad samples, round 2: a file damaged after caching is dropped WITH its keypoints; linprobe and finetune
go on past bad images; a float TIFF with NaNs is a bad sample (no warning leaks); a huge or non-image
file is refused before it is read whole."""

from __future__ import annotations

import io
import json
import subprocess
import warnings

import numpy as np
import pytest
import torch
from fault_files import PYTHON, add_files, bad_images, invoke_kamim, make_folder
from PIL import Image

from kamim.cache import open_cache
from kamim.datasets import BadSampleError, decode_image, open_dataset
from kamim.preprocess.build import CacheConfig, build_cache
from kamim.train.augment import crop_image, sample_crop, sample_seed, seeded
from kamim.train.checkpoint import export_model
from kamim.train.crop_codes import batch_point_lists
from kamim.train.crop_select import cached_crop_points
from kamim.train.data import PretrainSamples, collate
from kamim.train.models import build_model

pytestmark = pytest.mark.fault
TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2}


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    root = make_folder(tmp_path_factory.mktemp("pairs") / "data", per_class=4, size=96)
    cache = build_cache(CacheConfig(dataset="folder", data_root=str(root), detector="fast", workers=1,
                                    out=str(root.parent / "c.zarr")))
    return root, cache


def test_a_file_damaged_after_caching_is_dropped_with_its_keypoints(cached):
    root, cache_dir = cached
    dataset = open_dataset("folder", "train", root)
    cache = open_cache(cache_dir)
    bad = 1
    path = dataset.files[bad]
    original = path.read_bytes()
    try:
        path.write_bytes(b"\0" * len(original))  # same size: the fingerprint still matches the cache
        cache.check_dataset(open_dataset("folder", "train", root))
        samples = PretrainSamples(dataset, "cached", 16, seed=3, cache=cache)
        with pytest.warns(UserWarning, match=path.name):
            got = {epoch: samples[(epoch, bad)] for epoch in range(6)}
    finally:
        path.write_bytes(original)
    stand_in = bad + 1  # the next readable sample stands in for image AND keypoints
    image = dataset[stand_in][0]
    differs = 0
    for epoch, sample in got.items():
        with seeded(sample_seed(3, epoch, bad)):
            crop = sample_crop(image.shape[0], image.shape[1], 192)
        assert torch.equal(sample["image"], crop_image(image, crop, 192))
        expected = cached_crop_points(cache, stand_in, crop, 192)
        mapped = batch_point_lists(collate([sample]))[0]  # the codes the sample carries, as the step maps them
        assert mapped.shape == expected.shape
        np.testing.assert_allclose(mapped, expected, rtol=0, atol=1e-4)
        wrong = cached_crop_points(cache, bad, crop, 192)  # what the old code paired with that image
        differs += len(expected) > 0 and not np.array_equal(wrong, expected)
    assert differs, "the crops should show the stand-in's keypoints differing from the damaged file's"


@pytest.fixture(scope="module")
def probe_inputs(tmp_path_factory):
    base = tmp_path_factory.mktemp("probe")
    root = make_folder(base / "data", split="train", per_class=4, size=64)
    make_folder(root, split="val", per_class=2, size=64)
    for split in ("train", "val"):
        add_files(root / split / "c1", {"zz-broken.jpg": bad_images()["truncated.jpg"][0]})
    torch.manual_seed(0)
    export_model(build_model("vit_t", **TINY), {"model": "vit_t", "img_size": 192, "overrides": TINY}, base / "run")
    (base / "run" / "config.json").write_text(json.dumps({"dataset": "folder"}))
    return root, base / "run"


@pytest.mark.parametrize("verb", ["linprobe", "finetune"])
def test_linprobe_and_finetune_go_on_past_a_bad_image(probe_inputs, tmp_path, verb):
    root, run = probe_inputs
    extra = (["--epochs", "1", "--layer", "1"] if verb == "linprobe" else ["--epochs", "1", "--batch-size", "4"])
    with pytest.warns(UserWarning, match="zz-broken.jpg"):
        proc = invoke_kamim(verb, "--checkpoint", str(run), "--dataset", "folder", "--data-root", str(root),
                            "--device", "cpu", "--workers", "0", "--out", str(tmp_path / verb), *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / verb / f"{verb}.json").read_text())
    assert np.isfinite(result["top1"])
    if verb == "linprobe":
        assert result["train_count"] == 9 and result["val_count"] == 5  # the bad file's slot is filled


def nan_tiff() -> bytes:
    values = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    values[5, 7] = np.nan
    buffer = io.BytesIO()
    Image.fromarray(values, mode="F").save(buffer, format="TIFF")
    return buffer.getvalue()


def test_a_float_tiff_with_nans_is_a_bad_sample_and_no_warning_leaks(tmp_path):
    path = tmp_path / "nan.tif"
    path.write_bytes(nan_tiff())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a leaked numpy RuntimeWarning would fail here
        with pytest.raises(BadSampleError, match="non-finite") as caught:
            decode_image(path, name="nan.tif")
    assert caught.value.name == "nan.tif"
    finite = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    buffer = io.BytesIO()
    Image.fromarray(finite, mode="F").save(buffer, format="TIFF")
    assert decode_image(buffer.getvalue()).max() == 255  # finite float images still decode


# Peak RSS of this process image: VmHWM (getrusage's ru_maxrss survives exec, so in a child of a big
# pytest process it would report pytest's own peak).
PEAK_SCRIPT = """
import re, sys
from kamim.datasets import BadSampleError, decode_image
try:
    decode_image(sys.argv[1])
except BadSampleError as error:
    print(error.reason)
status = open("/proc/self/status").read()
print(int(re.search(r"VmHWM:\\s+(\\d+)", status).group(1)) // 1024)
"""


@pytest.mark.parametrize("head, reason", [(b"\xff\xd8\xff\xe0", "too large"), (b"", "not an image")])
def test_huge_or_non_image_files_are_refused_before_being_read(tmp_path, head, reason):
    path = tmp_path / "stray.jpg"
    size = 2**30 if head else 400 * 2**20  # sparse: costs no disk; 400 MiB is under the size limit
    with open(path, "wb") as handle:
        handle.write(head)
        handle.truncate(size)
    proc = subprocess.run([PYTHON, "-c", PEAK_SCRIPT, str(path)], capture_output=True, text=True, timeout=120)
    said, peak_mib = proc.stdout.splitlines()
    assert reason in said, proc.stdout + proc.stderr
    assert int(peak_mib) < 300, f"peak RSS {peak_mib} MiB for a {size >> 20} MiB file"
