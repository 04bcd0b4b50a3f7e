"""Selection caches (SIFT/ORB with per-point attributes): built by the real builder, read back aligned
with the points, and the loader's crop keeps what the crop's own detector would (kamim.cache.select)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cache_testdata import make_folder_dataset  # noqa: E402

from kamim.cache import open_cache  # noqa: E402
from kamim.cache.attrs_store import ATTRS_FILE, open_point_attrs  # noqa: E402
from kamim.cache.points import SUBPIXEL_STEPS  # noqa: E402
from kamim.cache.select import orb_quota, select_in_crop  # noqa: E402
from kamim.datasets import open_dataset  # noqa: E402
from kamim.preprocess.build import CacheConfig, build_cache, detect_canonical_selected  # noqa: E402
from kamim.preprocess.raster import ring_maps_torch  # noqa: E402
from kamim.train.augment import crop_image, crop_points, sample_crop, seeded  # noqa: E402
from kamim.train.crop_select import cached_crop_points  # noqa: E402
from kamim.train.data import PretrainSamples, online_ring_map  # noqa: E402
from kamim.train.weighting import patch_density  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = make_folder_dataset(tmp_path_factory.mktemp("sel"), per_class=2, seed=3)
    big = root / "train" / "class0" / "big.png"  # one photo-sized image: crops with many points
    Image.fromarray(skimage.data.astronaut()[:400, :460]).save(big)
    return root


@pytest.mark.parametrize("detector", ["sift", "orb"])
def test_attributes_are_stored_aligned_with_the_points(folder, tmp_path, detector):
    out = build_cache(CacheConfig(dataset="folder", data_root=str(folder), detector=detector, workers=1,
                                  block_size=3, out=str(tmp_path / detector)))
    reader = open_cache(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["point_attrs"]["count"] == int(reader.counts.sum()) > 0
    assert manifest["detector_params"]["selection"] is True and (out / ATTRS_FILE).is_file()
    attrs = open_point_attrs(reader)
    dataset = open_dataset("folder", "train", str(folder))
    steps = SUBPIXEL_STEPS[detector]
    for i in range(len(dataset)):
        codes, expected, _ = detect_canonical_selected(dataset[i][0], detector, "bgr", 256, steps)
        assert np.array_equal(attrs.attrs(i), expected)
        assert len(attrs.attrs(i)) == len(reader.points(i))


def test_orb_crops_keep_their_own_strongest_per_level_and_agree_better_with_online(folder, tmp_path):
    root = folder
    selected = open_cache(build_cache(CacheConfig(dataset="folder", data_root=str(root), detector="orb",
                                                  workers=1, out=str(tmp_path / "sel"))))
    plain = open_cache(build_cache(CacheConfig(dataset="folder", data_root=str(root), detector="orb",
                                               select=False, workers=1, out=str(tmp_path / "plain"))))
    assert open_point_attrs(plain) is None and not plain.manifest.get("point_attrs")
    dataset = open_dataset("folder", "train", str(root))
    index = next(i for i in range(len(dataset)) if dataset.sample_name(i).endswith("big.png"))
    image = dataset[index][0]
    r_sel, r_plain = [], []
    for seed in range(6):
        with seeded(seed):
            crop = sample_crop(image.shape[0], image.shape[1], 192)
        points = cached_crop_points(selected, index, crop)
        assert len(points) <= sum(orb_quota()) < len(crop_points(selected.points(index), crop))
        online = torch.from_numpy(online_ring_map(crop_image(image, crop), "orb")).float()
        for cache, out in ((selected, r_sel), (plain, r_plain)):
            xy = torch.from_numpy(cached_crop_points(cache, index, crop))
            ring = ring_maps_torch(xy[None], torch.tensor([len(xy)]), 192)[0]
            a, b = (patch_density(m[None], 16).flatten().numpy() for m in (ring, online))
            out.append(np.corrcoef(a, b)[0, 1])
    # Measured on held-out photos (bench/fidelity.py): ~0.97 against ~0.78 for the plain cache.
    assert np.median(r_sel) > np.median(r_plain) + 0.05
    # The loader's cached mode goes through the same selection.
    samples = PretrainSamples(dataset, "cached", 16, seed=0, cache=selected, detector="orb")
    sample = samples[(0, index)]
    assert 0 < len(sample["points"]) <= 500


def test_selection_rules_on_constructed_points():
    # SIFT: sizes below 1.8 crop px go; a big blob near the border goes (its octave's 5-px border).
    size_code = lambda size: np.rint((np.log2(size) + 8) * 1024)  # noqa: E731
    xy = np.array([[96, 96], [96, 96], [2, 96], [30, 96], [15, 96]], float)
    attrs = np.array([size_code(3.0), size_code(1.5), size_code(3.0), size_code(24.0), size_code(24.0)])
    # 3 px: octave -1, border 2.5 px; 24 px: octave 2, border 20 px.
    assert select_in_crop("sift", xy, attrs, 1.0).tolist() == [True, False, False, True, False]
    # A crop at half the detect scale: the 3-px blobs become 1.5 px (gone), 24 -> 12 px (octave 1, 10 px).
    assert select_in_crop("sift", xy, attrs, 0.5).tolist() == [False, False, False, True, True]
    # ORB: level 0 keeps its quota, strongest first, and nothing within 31 px of the crop border.
    n = 300
    xy = np.column_stack([np.full(n, 96.0), np.full(n, 96.0)])
    xy[0] = [10, 96]
    attrs = np.arange(n)  # level 0, rank i
    keep = select_in_crop("orb", xy, attrs, 1.0)
    assert not keep[0] and keep.sum() == orb_quota()[0] and keep[1 : 1 + orb_quota()[0]].all()


def test_cli_no_select_builds_a_plain_cache(folder, tmp_path):
    from click.testing import CliRunner

    from kamim.cli import main

    out = tmp_path / "plain-cli"
    result = CliRunner().invoke(main, ["cache", "--dataset", "folder", "--data-root", str(folder), "--detector",
                                       "sift", "--no-select", "--workers", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest.get("point_attrs") and not (out / ATTRS_FILE).exists()
    assert manifest["detector_params"]["contrast_threshold"] == 0.04


def test_kamim_weights_cached_shows_the_selection_cache(folder):
    from kamim.evaluate.weights_cli import WeightsConfig, keypoint_weights

    image = skimage.data.astronaut()[:400, :460]
    crop = (20, 30, 330, 380)
    cached = keypoint_weights(image, WeightsConfig("x", "y", keypoints="cached", detector="orb", crop=crop))
    online = keypoint_weights(image, WeightsConfig("x", "y", keypoints="online", detector="orb", crop=crop))
    assert 0 < len(cached["points"]) <= 500
    r = np.corrcoef(cached["density"].ravel(), online["density"].ravel())[0, 1]
    assert r > 0.9  # measured: 0.967 here; the plain cache gives 0.767 on this crop


def test_selection_caches_shrink_without_antialiasing_like_the_crop():
    import cv2

    from kamim.preprocess.detect import detect_with_attributes
    from kamim.preprocess.resize import canonical_resize

    image = skimage.data.astronaut()  # 512 px -> 200: shrunk 2.56x (at exactly 2x the two agree)
    aliased, scale = canonical_resize(image, 200, aliased=True)
    assert np.array_equal(aliased, cv2.resize(image, (200, 200), interpolation=cv2.INTER_LINEAR))
    assert not np.array_equal(aliased, canonical_resize(image, 200)[0])  # the plain cache: INTER_AREA
    codes, attrs, _ = detect_canonical_selected(image, "sift", "bgr", 200, 16)
    assert len(codes) == len(attrs) == len(detect_with_attributes(aliased, "sift")[0])


@pytest.mark.parametrize("name", [ATTRS_FILE, "point-attrs-offsets.npy", "point-attrs-crc.npy"])
def test_a_damaged_attribute_file_is_one_line_naming_it_never_a_different_selection(folder, tmp_path, name):
    from kamim.errors import UserError

    out = build_cache(CacheConfig(dataset="folder", data_root=str(folder), detector="sift", workers=1,
                                  out=str(tmp_path / "sift")))
    clean = [open_point_attrs(open_cache(out)).attrs(i).copy() for i in range(len(open_cache(out)))]
    target = out / name
    data = bytearray(target.read_bytes())
    data[-3] ^= 0x10  # one bit in the array's data (past the .npy header)
    target.write_bytes(bytes(data))
    attrs = open_point_attrs(open_cache(out))
    with pytest.raises(UserError, match=r"point-attrs"):
        for i, expected in enumerate(clean):
            assert np.array_equal(attrs.attrs(i), expected)  # never silently different
