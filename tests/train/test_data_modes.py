"""Loader samples per mode: the cache's points for the same image index, moved with the crop; the original's map."""

from __future__ import annotations

import numpy as np
import torch
from train_helpers import make_folder

from kamim.cache import open_cache
from kamim.datasets import open_dataset
from kamim.preprocess.build import CacheConfig, build_cache
from kamim.preprocess.detect import detect_keypoints
from kamim.preprocess.raster import ring_map_opencv
from kamim.train.augment import crop_points, sample_crop, sample_seed, seeded
from kamim.train.crop_codes import batch_point_lists
from kamim.train.data import PretrainSamples, collate


def test_cached_and_online_samples_carry_this_images_keypoints(tmp_path):
    root = make_folder(tmp_path / "data", count=4)
    # detect size = the images' shorter side: the cache holds exactly the full-image detections
    cache_dir = build_cache(CacheConfig(dataset="folder", data_root=str(root), detector="fast", detect_size=120,
                                        workers=1, out=str(tmp_path / "c.zarr")))
    dataset = open_dataset("folder", "train", str(root))
    cached = PretrainSamples(dataset, "cached", 16, seed=7, cache=open_cache(cache_dir))
    online = PretrainSamples(dataset, "online", 4, seed=7, detector="fast")
    assert list(cached.usable_indices()) == [0, 1, 2, 3]
    for index in (3, 1):
        image = dataset[index][0]
        with seeded(sample_seed(7, 2, index)):
            crop = sample_crop(*image.shape[:2])
        expected = crop_points(detect_keypoints(image, "fast"), crop)
        sample = cached[(2, index)]
        # the step maps the stored codes into the crop in one float32 multiply-add (crop_codes), the
        # reference chains two float maps: the same points to float32 rounding
        got = batch_point_lists(collate([sample]))[0]  # the codes, mapped into the crop as the step does
        assert len(expected) > 10 and got.shape == expected.shape
        np.testing.assert_allclose(got[np.lexsort(got.T)], expected[np.lexsort(expected.T)], rtol=0, atol=1e-4)
        assert sample["mask"].shape == (12, 12) and int(sample["mask"].sum()) == 22 * 4
        same = online[(2, index)]  # same seed, epoch, index: same crop, mask on the Swin grid
        assert torch.equal(same["image"], sample["image"]) and same["mask"].shape == (48, 48)
        view = np.ascontiguousarray(same["image"].permute(1, 2, 0).numpy())
        assert np.array_equal(same["map"].numpy(), ring_map_opencv(detect_keypoints(view, "fast"), 192))
    batch = collate([cached[(0, i)] for i in range(4)])
    assert batch["image"].dtype == torch.uint8 and batch["codes"].shape[0] == 4 and batch["code_meta"][:, 0].min() > 0
    assert all(len(points) > 10 for points in batch_point_lists(batch))


def test_a_batch_fetch_equals_the_samples_one_by_one_and_the_loader_serves_it(tmp_path):
    """PretrainSamples.__getitems__ (what DataLoader workers call) reads the batch's keypoints after its images:
    the same samples as fetching them one by one, and the same batches through forked workers."""
    from torch.utils.data import DataLoader

    from kamim.train.data import EpochBatches

    root = make_folder(tmp_path / "data", count=6)
    cache_dir = build_cache(CacheConfig(dataset="folder", data_root=str(root), detector="fast", detect_size=96,
                                        workers=1, out=str(tmp_path / "c.zarr")))
    dataset = open_dataset("folder", "train", str(root))
    samples = PretrainSamples(dataset, "cached", 16, seed=5, cache=open_cache(cache_dir))
    keys = [(1, 4), (1, 0), (1, 5), (1, 4)]
    batch = samples.__getitems__(keys)
    for key, fetched in zip(keys, batch, strict=True):
        alone = samples[key]
        assert fetched.keys() == alone.keys() and len(fetched["codes"]) > 20
        for name in fetched:
            assert np.array_equal(np.asarray(fetched[name]), np.asarray(alone[name])), name
    sampler = EpochBatches(samples.usable_indices(), batch_size=3, seed=5)
    loader = DataLoader(samples, batch_sampler=sampler, num_workers=2, collate_fn=collate,
                        multiprocessing_context="fork")
    for served, keys in zip(loader, sampler, strict=False):
        expected = collate(samples.__getitems__(keys))
        assert served.keys() == expected.keys()
        for name in expected:
            assert np.array_equal(np.asarray(served[name]), np.asarray(expected[name])), name
        if keys[0][0] == 2:  # two epochs' worth
            break
