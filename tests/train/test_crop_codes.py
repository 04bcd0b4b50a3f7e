"""crop_codes: a cache's integer codes moved into the crop in one step agree with the reference chain
(to_source, then crop_points) on which points are kept, and to float32 rounding on where they land; a
webdataset batch's source points moved on the device equal crop_points bit for bit."""

import numpy as np
import pytest
import torch

from kamim.cache.points import to_source
from kamim.preprocess.raster import ring_maps_torch
from kamim.train.augment import CropParams, crop_points, crop_points_keep, sample_crop, seeded
from kamim.train.crop_codes import (
    batch_point_lists,
    batch_points,
    code_crop,
    crop_codes,
    crop_rows,
    point_crop,
)
from kamim.train.data import collate
from kamim.train.device import resolve_device

STEPS = 16


def stored_codes(rng: np.random.Generator, count: int, width: int, height: int) -> np.ndarray:
    """uint16 [2n]: x codes then y codes of random points, sorted by (y, x) as the cache stores them."""
    q = np.stack([rng.integers(0, width * STEPS, count), rng.integers(0, height * STEPS, count)], 1)
    q = q[np.lexsort((q[:, 0], q[:, 1]))].astype(np.uint16)
    return np.concatenate([q[:, 0], q[:, 1]])


def exact_crop(codes: np.ndarray, scale: tuple[float, float], crop: CropParams, size: int) -> tuple:
    """float64 crop coordinates of every stored point and the distance of each from the crop's edges."""
    n = len(codes) // 2
    detect = codes.reshape(2, n).T / STEPS
    src = (detect + 0.5) / np.asarray(scale) - 0.5
    x = (src[:, 0] - crop.left + 0.5) * size / crop.width - 0.5
    y = (src[:, 1] - crop.top + 0.5) * size / crop.height - 0.5
    x = size - 1 - x if crop.hflip else x
    y = size - 1 - y if crop.vflip else y
    xy = np.stack([x, y], 1)
    margin = np.minimum(np.abs(xy + 0.5), np.abs(xy - (size - 0.5))).min(axis=1)
    return xy, margin


@pytest.mark.parametrize("seed", range(4))
def test_crop_codes_keeps_what_the_reference_keeps_and_lands_within_float32_rounding(seed):
    rng = np.random.default_rng(seed)
    size, differing_near_edge, total_kept = 192, 0, 0
    for _ in range(150):
        source_h, source_w = rng.integers(60, 900, 2)
        detect = 256 / min(source_h, source_w)
        scale = (detect * (1 + rng.normal(0, 1e-3)), detect * (1 + rng.normal(0, 1e-3)))  # rounded sides
        codes = stored_codes(rng, int(rng.integers(0, 3000)), int(source_w * detect), int(source_h * detect))
        height, width = int(rng.integers(8, source_h + 1)), int(rng.integers(8, source_w + 1))
        crop = CropParams(int(rng.integers(-5, source_h - height + 6)), int(rng.integers(-5, source_w - width + 6)),
                          height, width, bool(rng.integers(2)), bool(rng.integers(2)))
        xy, first, inside = crop_codes(codes, STEPS, *scale, crop, size)
        n = len(codes) // 2
        kept = np.zeros(n, bool)
        kept[first : first + len(inside)] = inside
        exact, margin = exact_crop(codes, scale, crop, size)
        points = to_source(codes.reshape(2, n).T / STEPS, np.asarray(scale))
        reference, reference_kept = crop_points_keep(points, crop, size)
        clear = margin > 1e-3  # further from an edge than float rounding can move a point
        assert np.array_equal(kept[clear], reference_kept[clear])
        assert np.array_equal(kept[clear], ((exact > -0.5) & (exact < size - 0.5)).all(1)[clear])
        differing_near_edge += int((kept != reference_kept).sum())
        assert xy.dtype == np.float32 and xy.shape == (int(kept.sum()), 2)
        np.testing.assert_allclose(xy, exact[kept], rtol=0, atol=2e-5)  # one float32 rounding at <= 192
        if np.array_equal(kept, reference_kept):  # same order as the stored points; the reference rounds the
            # source position to float32 first, an error the crop then magnifies by size / crop side
            tolerance = 1e-4 * max(1.0, size / min(crop.width, crop.height))
            np.testing.assert_allclose(xy, reference, rtol=0, atol=tolerance)
        total_kept += len(xy)
    assert total_kept > 50_000 and differing_near_edge <= 2


def test_points_exactly_on_the_crop_edge_follow_crop_points_half_open_rule():
    # scale 1, 1/16 px codes: code 16 * 9.5 sits exactly on the low edge of a crop starting at 10
    codes = np.array([152, 152 + 16 * 40, 300, 100, 100, 100], np.uint16)  # x codes, then y codes (equal)
    points = to_source(codes.reshape(2, 3).T / STEPS, np.ones(2))
    for hflip in (False, True):
        crop = CropParams(0, 10, 40, 40, False, hflip)
        xy, first, inside = crop_codes(codes, STEPS, 1.0, 1.0, crop, 40)
        reference, keep = crop_points_keep(points, crop, 40)
        assert first == 0 and np.array_equal(inside, keep) and np.array_equal(xy, reference)
        assert inside.tolist() == [not hflip, hflip, True]  # the low edge is in, the high edge out, after the flip


def test_no_points_and_a_crop_off_every_point_give_empty_float32_arrays():
    empty, _, inside = crop_codes(np.zeros(0, np.uint16), STEPS, 0.5, 0.5, CropParams(0, 0, 10, 10, True, True))
    assert empty.shape == (0, 2) and empty.dtype == np.float32 and len(inside) == 0
    codes = np.array([10, 20, 5, 6], np.uint16)
    far, _, _ = crop_codes(codes, STEPS, 1.0, 1.0, CropParams(500, 500, 50, 50, False, False))
    assert far.shape == (0, 2)
    assert np.array_equal(crop_points(to_source(codes.reshape(2, 2).T / STEPS, np.ones(2)),
                                      CropParams(500, 500, 50, 50, False, False)), far)


def test_the_step_maps_a_collated_batch_of_codes_as_crop_codes_does_and_rasters_the_same_rings():
    rng = np.random.default_rng(7)
    samples, expected = [], []
    for k in range(24):
        source_h, source_w = (int(v) for v in rng.integers(150, 1200, 2))
        detect = 256 / min(source_h, source_w)
        codes = stored_codes(rng, int(rng.integers(0 if k == 0 else 200, 2500)), int(source_w * detect),
                             int(source_h * detect))
        with seeded(k):
            crop = sample_crop(source_h, source_w)  # the loader's RandomResizedCrop and flips
        crop_map = code_crop(STEPS, detect, detect, crop)  # as the loader's worker hands a sample over
        first, last = crop_rows(codes, crop_map[6], crop_map[7])
        y = codes[len(codes) // 2 :]
        assert np.array_equal(np.flatnonzero((y >= crop_map[6]) & (y < crop_map[7])), np.arange(first, last))
        samples.append({"image": torch.zeros(3, 8, 8, dtype=torch.uint8), "mask": torch.zeros(2, 2),
                        "codes": codes, "code_rows": (first, last), "code_crop": crop_map})
        expected.append(crop_codes(codes, STEPS, detect, detect, crop)[0])
    batch = collate(samples)
    assert batch["codes"].dtype == np.int16 and batch["codes"].shape[1] == 2 and batch["codes"].shape[2] % 64 == 0
    assert set(batch) == {"image", "mask", "codes", "code_meta"}  # one array for counts and crop maps
    # numpy, pickled inline: no shared-memory segment (and fd handshake) per array in a loader worker
    assert isinstance(batch["codes"], np.ndarray) and isinstance(batch["code_meta"], np.ndarray)
    on_device = resolve_device("cpu").to(batch)  # what the training step receives: tensors, same values
    assert all(isinstance(v, torch.Tensor) for v in on_device.values())
    assert torch.equal(batch_points(on_device)[0], batch_points(batch)[0])
    got = batch_point_lists(batch)
    assert sum(len(e) for e in expected) > 10_000
    for mapped, reference in zip(got, expected, strict=True):
        assert mapped.shape == reference.shape  # the same points kept: an integer test on both sides
        np.testing.assert_allclose(mapped, reference, rtol=0, atol=3e-5)
    width = max(len(e) for e in expected)
    padded = torch.zeros(len(expected), width, 2)
    for row, points in enumerate(expected):
        padded[row, : len(points)] = torch.from_numpy(points)
    reference_maps = ring_maps_torch(padded, torch.tensor([len(e) for e in expected]))
    maps = ring_maps_torch(*batch_points(batch))
    assert reference_maps.sum() > 50_000
    # positions differ by float32 rounding only; a ring moves only where x * 16 sits on a rounding tie
    assert (maps != reference_maps).sum() <= 1e-4 * reference_maps.sum()


def test_codes_with_the_top_bit_set_survive_the_batch_and_map_as_crop_codes_does():
    """A wide panorama at 16 steps stores x codes above 2**15: they travel as negative int16 and must come
    back as the same uint16 values (a sign slip would move them off the crop or onto the wrong pixel)."""
    rng = np.random.default_rng(3)
    width, height = 3800, 200  # detect-size pixels: x codes up to 60,800
    codes = stored_codes(rng, 3000, width, height)
    crop = CropParams(top=20, left=3000, height=150, width=700, hflip=True, vflip=False)
    crop_map = code_crop(STEPS, 1.0, 1.0, crop)
    sample = {"image": torch.zeros(3, 8, 8, dtype=torch.uint8), "mask": torch.zeros(2, 2), "codes": codes,
              "code_rows": crop_rows(codes, crop_map[6], crop_map[7]), "code_crop": crop_map}
    batch = collate([sample])
    assert int(batch["codes"].min()) < 0  # the top bit is set for some: the int16 round trip is exercised
    got, reference = batch_point_lists(batch)[0], crop_codes(codes, STEPS, 1.0, 1.0, crop)[0]
    assert len(reference) > 300 and got.shape == reference.shape
    np.testing.assert_allclose(got, reference, rtol=0, atol=3e-5)


def wds_sample(points: np.ndarray, crop: CropParams, size: int = 192) -> dict:
    """A webdataset sample as the stream's worker hands it to collate (kamim.train.wds_stream)."""
    return {"image": torch.zeros(3, 8, 8, dtype=torch.uint8), "mask": torch.zeros(2, 2),
            "source_points": points, "point_crop": point_crop(crop, size)}


@pytest.mark.parametrize("size", [192, 224])
def test_the_step_moves_webdataset_points_through_the_crop_bit_for_bit_as_crop_points(size):
    rng = np.random.default_rng(size)
    samples, expected = [], []
    for k in range(40):
        height, width = (int(v) for v in rng.integers(20, 1600, 2))
        points = rng.uniform(0, 1, (0 if k == 0 else int(rng.integers(1, 3000)), 2)) * [width, height]  # k=0: none
        if k % 2:  # on half pixels: points fall exactly on the crop's edges (kept at -0.5, dropped at size - 0.5)
            points = np.round(points * 2) / 2
        points = points.astype(np.float32)
        with seeded(k):
            crop = sample_crop(height, width, size)
        if k == 1:  # the edges themselves, flipped both ways
            crop = CropParams(top=10, left=20, height=100, width=90, vflip=True, hflip=True)
            points = np.array([[19.5, 50], [109.5, 50], [40, 9.5], [40, 109.5], [109.4, 109.4]], np.float32)
        samples.append(wds_sample(points, crop, size))
        expected.append(crop_points(points, crop, size))
    batch = collate(samples)
    assert set(batch) == {"image", "mask", "source_points", "source_meta"}  # counts ride in source_meta
    assert isinstance(batch["source_points"], np.ndarray) and isinstance(batch["source_meta"], np.ndarray)
    assert batch["source_points"].shape[1] % 64 == 0
    on_device = resolve_device("cpu").to(batch)
    assert torch.equal(batch_points(on_device)[0], batch_points(batch)[0])
    got = batch_point_lists(batch)
    assert sum(len(e) for e in expected) > 10_000 and len(expected[0]) == 0
    assert 0 < len(expected[1]) < 5  # of the edge points some are kept, some dropped
    for mapped, reference in zip(got, expected, strict=True):
        assert mapped.dtype == np.float32 and np.array_equal(mapped, reference)  # bit for bit, same points kept


def test_a_webdataset_stream_batch_maps_to_what_the_worker_used_to_compute(tmp_path):
    from kamim.cache.wds_store import decode_wds_sample, encode_sample, read_shard, write_shard
    from kamim.train.wds_stream import WdsPretrainStream

    rng = np.random.default_rng(5)
    image = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    points = (rng.uniform(0, 1, (900, 2)) * [160, 120]).astype(np.float32)
    write_shard(tmp_path / "shard-000000.tar", [encode_sample(0, image, points, 3)])
    stream = WdsPretrainStream([tmp_path / "shard-000000.tar"], "cached", 16, seed=0, batch_size=4)
    decoded, stored, _ = decode_wds_sample(next(read_shard(str(tmp_path / "shard-000000.tar"), False)))
    samples = [stream.augment(decoded, stored, seed) for seed in range(4)]
    crops = []
    for seed in range(4):  # the crop the stream drew for that seed (augment draws the crop first)
        with seeded(seed):
            crops.append(sample_crop(120, 160, 192))
    for mapped, crop in zip(batch_point_lists(collate(samples)), crops, strict=True):
        assert len(mapped) > 20 and np.array_equal(mapped, crop_points(stored, crop))
