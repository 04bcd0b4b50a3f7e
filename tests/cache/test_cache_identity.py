"""The identity case is exact: a cache built at detect size 192 on 192x192 images, read back and moved
through the identity crop by the loader's path, rasters to OpenCV's own ring map of the online
detection, pixel for pixel, for every detector (positions kept at 1/16 px, the resolution OpenCV draws
with). SIFT's selection cache is exact too (its crop-time rule keeps exactly what SIFT reports at the
identity); ORB's selection cache re-ranks 3000 candidates, so the exact ORB case is the plain cache."""

from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from kamim.cache import open_cache
from kamim.cache.points import SUBPIXEL_STEPS, max_side
from kamim.datasets import open_dataset
from kamim.errors import UserError
from kamim.preprocess.build import CacheConfig, build_cache
from kamim.preprocess.raster import ring_maps_torch
from kamim.train.augment import CropParams, crop_image
from kamim.train.crop_codes import batch_points
from kamim.train.crop_select import cached_sample_points
from kamim.train.data import collate, online_ring_map
from kamim.train.weighting import patch_density

SIZE = 192


@pytest.fixture(scope="module")
def square_photos(tmp_path_factory) -> Path:
    """Six 192x192 PNG crops of real photos (lossless, so the decoded image is the written one)."""
    root = tmp_path_factory.mktemp("identity")
    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee()]
    for label, photo in enumerate(photos):
        folder = root / "train" / f"class{label}"
        folder.mkdir(parents=True)
        for i, (top, left) in enumerate([(0, 0), (100, 90)]):
            Image.fromarray(photo[top : top + SIZE, left : left + SIZE]).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize(("detector", "select"), [("fast", None), ("sift", None), ("sift", False), ("orb", False)])
def test_identity_crop_of_a_cache_at_the_crop_size_is_exact(square_photos, tmp_path, detector, select):
    out = build_cache(CacheConfig(dataset="folder", data_root=str(square_photos), detector=detector,
                                  detect_size=SIZE, workers=1, select=select, out=str(tmp_path / detector)))
    reader = open_cache(out)
    assert bool(reader.manifest.get("point_attrs")) == (detector == "sift" and select is None)
    assert reader.manifest["subpixel_steps"] == SUBPIXEL_STEPS[detector]
    dataset = open_dataset("folder", "train", str(square_photos))
    identity = CropParams(0, 0, SIZE, SIZE, False, False)
    differing = 0
    for i in range(len(dataset)):
        image, _ = dataset[i]
        crop = crop_image(image, identity, SIZE)
        assert torch.equal(crop, torch.from_numpy(image).permute(2, 0, 1))  # the crop is the image
        online = torch.from_numpy(online_ring_map(crop, detector)).float()
        sample = {"image": crop, "mask": torch.zeros(12, 12), **cached_sample_points(reader, i, identity, SIZE)}
        cached = ring_maps_torch(*batch_points(collate([sample])), SIZE)[0]  # the loader's and the step's path
        assert online.sum() > 500  # real photos: many rings, a comparison that can fail
        differing += int((online != cached).sum())
        for w_ps in (8, 16):
            assert torch.equal(patch_density(cached[None], w_ps), patch_density(online[None], w_ps))
    assert differing == 0


def test_sub_pixel_codes_hold_panoramas_up_to_16_to_1_and_refuse_larger_sizes(tmp_path):
    from kamim.datasets import BadSampleError
    from kamim.preprocess.build import detect_canonical

    assert max_side(SUBPIXEL_STEPS["sift"]) == 4095  # 16:1 at detect size 256
    strip = np.zeros((40, 40 * 17, 3), np.uint8)  # 17:1 -> 4352 px long at detect size 256
    with pytest.raises(BadSampleError, match="aspect ratio too extreme.*smaller --detect-size"):
        detect_canonical(strip, "sift", "bgr", 256, SUBPIXEL_STEPS["sift"])
    codes, _ = detect_canonical(strip[:, : 40 * 15], "sift", "bgr", 256, SUBPIXEL_STEPS["sift"])
    assert codes.shape[1] == 2
    with pytest.raises(UserError, match="--detect-size 4096"):
        build_cache(CacheConfig(dataset="folder", data_root=str(tmp_path), detector="orb", detect_size=4096))
