import numpy as np
import pytest

from kamim.cache.points import SUBPIXEL_STEPS, decode_points, encode_points, max_side


def _sorted_quantised(points, steps):
    q = np.rint(points * steps)
    return points[np.lexsort((q[:, 0], q[:, 1]))]


@pytest.mark.parametrize("steps", [1, 8])
def test_round_trip_error_is_the_quantisation_bound(steps):
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 400, (3000, 2))
    points[:50] = points[50:100]  # duplicates (SIFT reports a point once per orientation)
    decoded = decode_points(encode_points(points, steps), steps)
    error = np.abs(decoded - _sorted_quantised(points, steps)).max()
    assert error <= 0.5 / steps + 1e-9
    assert len(decoded) == len(points)


def test_whole_pixel_points_are_exact_and_sorted_row_major():
    rng = np.random.default_rng(1)
    points = rng.integers(0, 300, (500, 2)).astype(np.float64)
    decoded = decode_points(encode_points(points, SUBPIXEL_STEPS["fast"]), 1)
    order = np.lexsort((points[:, 0], points[:, 1]))
    assert np.array_equal(decoded, points[order])


def test_codes_are_small_deltas_and_empty_is_fine():
    points = np.array([[10, 5], [12, 5], [3, 7], [40, 7]], np.float64)
    codes = encode_points(points, 1)
    assert codes.dtype == np.uint16
    assert codes.tolist() == [[10, 5], [2, 0], [3, 2], [37, 0]]
    assert decode_points(encode_points(np.zeros((0, 2)), 8), 8).shape == (0, 2)


def test_largest_side_fits_the_code():
    side = max_side(8)
    points = np.array([[side - 1, side - 1], [0.0, 0.0]])
    decoded = decode_points(encode_points(points, 8), 8)
    np.testing.assert_allclose(decoded, [[0, 0], [side - 1, side - 1]])


def test_ragged_decode_equals_per_image_decode():
    from kamim.cache.points import decode_ragged

    rng = np.random.default_rng(5)
    images = [rng.uniform(0, 300, size=(n, 2)) for n in (0, 1, 7, 0, 250, 3)]
    codes = [encode_points(p, 8) for p in images]
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in codes])])
    joined = decode_ragged(np.concatenate(codes), offsets, 8)
    for i, c in enumerate(codes):
        np.testing.assert_array_equal(joined[offsets[i] : offsets[i + 1]], decode_points(c, 8))
