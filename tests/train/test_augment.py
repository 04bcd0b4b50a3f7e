"""Paired augmentation: keypoints follow the image content through the crop and both flips."""

from __future__ import annotations

import numpy as np
import torch

from kamim.train.augment import (
    CropParams,
    crop_image,
    crop_points,
    normalize,
    sample_crop,
    sample_seed,
    seeded,
)
from kamim.train.data import EpochBatches, collate, epoch_order


def test_a_dot_stays_under_its_transformed_keypoint():
    height, width = 300, 420
    rng = np.random.default_rng(0)
    checked = flipped = 0
    for trial in range(60):
        x, y = int(rng.integers(20, width - 20)), int(rng.integers(20, height - 20))
        image = np.zeros((height, width, 3), np.uint8)
        image[y - 2:y + 3, x - 2:x + 3] = 255  # a 5x5 bright dot centred on (x, y)
        with seeded(sample_seed(1, 0, trial)):
            crop = sample_crop(height, width)
        moved = crop_points(np.array([[x, y]], np.float32), crop)
        margin = 4  # keep the whole dot inside the crop so its centroid is unbiased
        inside = (crop.left + margin <= x < crop.left + crop.width - margin
                  and crop.top + margin <= y < crop.top + crop.height - margin)
        outside = not (crop.left - 1 <= x < crop.left + crop.width + 1 and crop.top - 1 <= y < crop.top + crop.height + 1)
        if outside:
            assert len(moved) == 0
        if not inside:
            continue
        assert len(moved) == 1
        out = crop_image(image, crop)[0].float().numpy()
        # intensity-weighted centre of the dot in the crop
        ys, xs = np.nonzero(out)
        cx, cy = (xs * out[ys, xs]).sum() / out.sum(), (ys * out[ys, xs]).sum() / out.sum()
        assert abs(cx - moved[0, 0]) < 0.6 and abs(cy - moved[0, 1]) < 0.6, (crop, moved, cx, cy)
        checked += 1
        flipped += crop.hflip or crop.vflip
    assert checked > 20 and flipped > 5


def test_points_outside_the_crop_are_dropped_and_flips_mirror():
    crop = CropParams(top=10, left=20, height=96, width=96, vflip=False, hflip=False)
    points = np.array([[19.0, 50.0], [20.0, 10.0], [115.0, 105.0], [116.0, 50.0]], np.float32)
    moved = crop_points(points, crop)
    np.testing.assert_allclose(moved, [[0.5, 0.5], [190.5, 190.5]])  # 2x upscale, pixel centres
    both = crop_points(points, CropParams(10, 20, 96, 96, vflip=True, hflip=True))
    np.testing.assert_allclose(both, 191 - moved)


def test_same_seed_same_augmentation_and_identity_crop_is_exact():
    image = np.random.default_rng(0).integers(0, 256, (192, 192, 3), dtype=np.uint8)
    with seeded(sample_seed(0, 3, 7)):
        first = (sample_crop(192, 192), torch.rand(3))
    with seeded(sample_seed(0, 3, 7)):
        again = (sample_crop(192, 192), torch.rand(3))
    assert first[0] == again[0] and torch.equal(first[1], again[1])
    identity = crop_image(image, CropParams(0, 0, 192, 192, False, False))
    assert torch.equal(identity, torch.from_numpy(image).permute(2, 0, 1))
    norm = normalize(identity[None])
    assert norm.dtype == torch.float32 and abs(float(norm[0, 0, 0, 0]) - (image[0, 0, 0] / 255 - 0.485) / 0.229) < 1e-5


def test_epoch_order_resumes_mid_epoch_and_splits_ranks():
    indices = np.arange(10)
    fresh = EpochBatches(indices, 3, seed=5)
    stream = iter(fresh)
    batches = [next(stream) for _ in range(7)]  # 3 batches/epoch: runs into epoch 2
    resumed = iter(EpochBatches(indices, 3, seed=5, start=4))
    assert [next(resumed) for _ in range(3)] == batches[4:]
    assert {e for b in batches for e, _ in b} == {0, 1, 2}
    assert [i for _, i in batches[0] + batches[1] + batches[2]] != [i for _, i in batches[3] + batches[4] + batches[5]]
    ranks = [set(epoch_order(indices, 5, 0, r, 2)) for r in range(2)]
    assert not ranks[0] & ranks[1] and len(ranks[0]) == len(ranks[1]) == 5


def test_collate_pads_points_with_counts():
    samples = [{"image": torch.zeros(3, 192, 192, dtype=torch.uint8), "mask": torch.zeros(12, 12, dtype=torch.int64),
                "points": torch.full((n, 2), float(n))} for n in (0, 3, 70)]
    batch = collate(samples)
    assert batch["points"].shape == (3, 128, 2) and batch["counts"].tolist() == [0, 3, 70]
    assert isinstance(batch["points"], np.ndarray) and isinstance(batch["counts"], np.ndarray)  # pickled inline
    assert np.array_equal(batch["points"][2, :70], samples[2]["points"].numpy()) and batch["points"][1, 3:].sum() == 0
