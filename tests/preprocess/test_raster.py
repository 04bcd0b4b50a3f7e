"""The stamp-table raster against OpenCV's own keypoint drawing (the original's map)."""

import numpy as np
import pytest
import torch

from kamim.preprocess.raster import ring_map, ring_map_opencv, ring_maps_torch


def _density(ring: np.ndarray, w_ps: int) -> np.ndarray:
    h, w = ring.shape
    return ring.reshape(h // w_ps, w_ps, w // w_ps, w_ps).mean(axis=(1, 3))


@pytest.mark.parametrize("seed", range(4))
def test_stamp_raster_equals_opencv_everywhere(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        n = int(rng.integers(1, 400))
        # sub-pixel positions, points on, near and beyond all four borders
        points = rng.uniform(-6, 198, size=(n, 2)).astype(np.float32)
        ours, reference = ring_map(points), ring_map_opencv(points)
        assert np.array_equal(ours, reference)
        for w_ps in (8, 16):
            assert np.abs(_density(ours, w_ps) - _density(reference, w_ps)).max() <= 0.05


def test_exact_subpixel_grid_and_half_steps():
    # positions exactly on 1/32 px steps exercise OpenCV's round-half-to-even of the 1/16 px centre
    xs = np.arange(20, 30, 1 / 32)
    points = np.stack([xs, 60 + xs / 7], axis=1).astype(np.float32)
    for chunk in np.array_split(points, 16):
        assert np.array_equal(ring_map(chunk, 96), ring_map_opencv(chunk, 96))


def test_non_square_canvas_and_empty():
    rng = np.random.default_rng(7)
    points = np.stack([rng.uniform(-3, 131, 200), rng.uniform(-3, 67, 200)], axis=1)
    assert np.array_equal(ring_map(points, (64, 128)), ring_map_opencv(points, (64, 128)))
    assert ring_map(np.zeros((0, 2)), 192).sum() == 0


def test_single_ring_shape_matches_original_description():
    ring = ring_map(np.array([[100.0, 100.0]]), 192)
    assert ring.sum() == 48  # 48 'on' pixels for a whole-pixel point
    assert ring[99:102, 99:102].sum() == 0  # the centre stays empty
    assert ring[100, 96] == 1 and ring[100, 104] == 1 and ring[100, 95] == 0  # reaches 4 px out
    assert ring[96, 100] == 1 and ring[95, 100] == 0


def test_torch_batch_equals_numpy_with_padding():
    rng = np.random.default_rng(3)
    counts = [0, 5, 300, 120]
    padded = np.full((4, 300, 2), 1e4, dtype=np.float32)  # garbage beyond each count must be ignored
    for i, n in enumerate(counts):
        padded[i, :n] = rng.uniform(-4, 196, size=(n, 2))
    maps = ring_maps_torch(torch.from_numpy(padded), torch.tensor(counts), 192)
    assert maps.shape == (4, 192, 192) and maps.dtype == torch.float32
    for i, n in enumerate(counts):
        assert np.array_equal(maps[i].numpy(), ring_map_opencv(padded[i, :n], 192))


def test_compiled_raster_equals_eager_bit_for_bit_for_any_point_count():
    # --compile's raster (train/engine.batch_weights): one dynamic graph for every padded point count P,
    # and for batch sizes; points inside, on and beyond the borders, padding garbage and dropped points.
    rng = np.random.default_rng(11)
    for batch, width in ((4, 64), (4, 320), (3, 1408), (1, 128)):
        counts = rng.integers(0, width + 1, batch)
        points = rng.uniform(-8, 200, size=(batch, width, 2)).astype(np.float32)
        points[rng.random((batch, width)) < 0.2] = -1.0e4  # what batch_points does with dropped codes
        args = (torch.from_numpy(points), torch.from_numpy(counts), 192)
        eager, compiled = ring_maps_torch(*args), ring_maps_torch(*args, compile_=True)
        assert eager.sum() > 0 or counts.sum() == 0
        assert compiled.dtype == eager.dtype and torch.equal(compiled, eager), (batch, width)
