import cv2
import numpy as np
import pytest

from kamim.preprocess.resize import canonical_resize, canonical_size, from_source, to_source


@pytest.mark.parametrize(("shape", "size", "expected"), [((300, 200), 256, (384, 256)), ((32, 32), 256, (256, 256)),
                                                          ((1000, 1333), 256, (256, 341)), ((256, 999), 256, (256, 999))])  # fmt: skip
def test_shorter_side_becomes_detect_size(shape, size, expected):
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    resized, scale = canonical_resize(image, size)
    assert resized.shape[:2] == expected == canonical_size(*shape, size)
    assert resized.dtype == np.uint8
    np.testing.assert_allclose(scale, [expected[1] / shape[1], expected[0] / shape[0]])


def test_area_when_shrinking_linear_when_enlarging():
    image = np.random.default_rng(1).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    small, _ = canonical_resize(image, 45)
    assert np.array_equal(small, cv2.resize(image, (45, 60), interpolation=cv2.INTER_AREA))
    big, _ = canonical_resize(image, 180)
    assert np.array_equal(big, cv2.resize(image, (180, 240), interpolation=cv2.INTER_LINEAR))


def test_pixel_centre_mapping_is_exact_at_both_edges():
    # Source pixel centres -0.5 and W-0.5 (the image's outer edges) map to the resized outer edges.
    image = np.zeros((333, 500, 3), np.uint8)
    resized, scale = canonical_resize(image, 256)
    h, w = resized.shape[:2]
    edges = np.array([[-0.5, -0.5], [499.5, 332.5]])
    np.testing.assert_allclose(from_source(edges, scale), [[-0.5, -0.5], [w - 0.5, h - 0.5]], atol=1e-4)
    points = np.random.default_rng(2).uniform(0, 400, (50, 2))
    np.testing.assert_allclose(to_source(from_source(points, scale), scale), points, atol=1e-3)
