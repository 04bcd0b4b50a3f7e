"""Device FAST (torch ops) against OpenCV's own FAST, keypoint for keypoint, and its ring maps against
the online mode's OpenCV drawing, pixel for pixel."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from kamim.photos import load_sources, random_crop_box
from kamim.preprocess.fast_torch import (
    CIRCLE,
    fast_keypoints_torch,
    fast_ring_maps_torch,
    fast_scores_torch,
    gray_torch,
    keypoint_ring_maps_torch,
)
from kamim.train.augment import crop_image, sample_crop, seeded
from kamim.train.data import online_ring_map
from kamim.train.weighting import keypoint_pixel_weights


def opencv_bitmap(image: np.ndarray, threshold: int = 10, nonmax: bool = True, gray: str = "bgr") -> np.ndarray:
    """OpenCV's FAST keypoints of one HWC (or gray) uint8 image as a bool map."""
    if gray == "rgb" and image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    keypoints = cv2.FastFeatureDetector_create(threshold, nonmax).detect(np.ascontiguousarray(image), None)
    out = np.zeros(image.shape[:2], dtype=bool)
    for kp in keypoints:
        x, y = kp.pt
        assert x == int(x) and y == int(y)  # FAST points are whole pixels
        assert not out[int(y), int(x)]
        out[int(y), int(x)] = True
    return out


def assert_same_keypoints(images_hwc: np.ndarray, threshold: int = 10, nonmax: bool = True,
                          gray: str = "bgr") -> int:
    """Batch [B,H,W,3] or [B,H,W]: 0 differing keypoints; returns how many keypoints there were."""
    tensor = torch.from_numpy(np.ascontiguousarray(images_hwc))
    if tensor.dim() == 4:
        tensor = tensor.permute(0, 3, 1, 2)
    ours = fast_keypoints_torch(tensor, threshold, gray, nonmax).numpy()
    total = 0
    for i, image in enumerate(images_hwc):
        reference = opencv_bitmap(image, threshold, nonmax, gray)
        differ = int((ours[i] != reference).sum())
        assert differ == 0, f"image {i}: {differ} keypoints differ ({int(reference.sum())} from OpenCV)"
        total += int(reference.sum())
    return total


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Many small elementwise ops: on a shared 2-core machine OpenMP's second thread mostly waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----- real crops through the project's own augmentation -------------------------------------------

@pytest.fixture(scope="module")
def sources() -> list[np.ndarray]:
    return [photo for _, photo in load_sources()]


def photo_crops(sources: list[np.ndarray], count: int, seed: int, source_size: int = 224) -> np.ndarray:
    """[count,192,192,3]: photos-dataset-like images (a random region of a bundled photo, shorter side
    ``source_size``; 32: CIFAR-like 32x32), each cut 4 times by the pretraining augmentation
    (RandomResizedCrop 192, bilinear without antialias, + flips), as the trainer's loader does."""
    rng = np.random.default_rng(seed)
    crops = []
    for i in range((count + 3) // 4):
        photo = sources[i % len(sources)]
        top, left, height, width = random_crop_box(*photo.shape[:2], rng, (0.02, 0.5))
        region = photo[top:top + height, left:left + width]
        scale = source_size / min(height, width)
        size = (source_size, source_size) if source_size < 64 else (round(width * scale), round(height * scale))
        image = cv2.resize(region, (max(size[0], source_size), max(size[1], source_size)), interpolation=cv2.INTER_AREA)
        for j in range(4):
            with seeded(seed * 100_003 + i * 4 + j):
                crop = sample_crop(image.shape[0], image.shape[1], 192)
            crops.append(crop_image(image, crop, 192).permute(1, 2, 0).numpy())
    return np.stack(crops[:count])


def test_real_photo_crops_match_opencv(sources):
    crops = photo_crops(sources, 1200, seed=1)
    assert assert_same_keypoints(crops) > 1200 * 300  # real texture: hundreds of points per crop


def test_cifar_like_upsampled_crops_match_opencv(sources):
    crops = photo_crops(sources, 600, seed=2, source_size=32)
    assert assert_same_keypoints(crops) > 600 * 5


def test_saturated_flat_and_noise_crops_match_opencv(sources):
    crops = photo_crops(sources, 300, seed=3).astype(np.int32)
    saturated = np.clip((crops - 128) * 4 + 128, 0, 255).astype(np.uint8)  # large 0 and 255 regions
    assert (saturated == 0).mean() > 0.1 and (saturated == 255).mean() > 0.1
    rng = np.random.default_rng(3)
    flat = np.full((100, 192, 192, 3), 0, dtype=np.uint8) + rng.integers(0, 256, (100, 1, 1, 3), dtype=np.uint8)
    for image in flat:  # one flat disc each: its rim has corners of many scores
        cv2.circle(image, (int(rng.integers(40, 150)), int(rng.integers(40, 150))), int(rng.integers(5, 40)),
                   rng.integers(0, 256, 3).tolist(), -1)
    noise = rng.integers(0, 256, (100, 192, 192, 3), dtype=np.uint8)
    low_noise = np.clip(crops[:100] + rng.integers(-12, 13, crops[:100].shape), 0, 255).astype(np.uint8)
    assert assert_same_keypoints(saturated) > 0
    assert assert_same_keypoints(flat) > 0  # on the discs' rims
    assert assert_same_keypoints(noise) > 100 * 1000
    assert assert_same_keypoints(low_noise) > 0


def test_proper_rgb_gray_and_other_thresholds_match_opencv(sources):
    crops = photo_crops(sources, 60, seed=4)
    assert assert_same_keypoints(crops, gray="rgb") > 0
    for threshold in (0, 1, 5, 25, 60, 254, 255):
        assert_same_keypoints(crops[:12], threshold=threshold)
    assert assert_same_keypoints(crops[:12], nonmax=False) > assert_same_keypoints(crops[:12])


def test_gray_conversion_equals_opencv_on_every_colour():
    values = np.arange(1 << 24, dtype=np.uint32)
    cube = np.stack([values >> 16, (values >> 8) & 255, values & 255], axis=1).astype(np.uint8).reshape(4096, 4096, 3)
    tensor = torch.from_numpy(cube).permute(2, 0, 1)[None]
    for gray, code in (("bgr", cv2.COLOR_BGR2GRAY), ("rgb", cv2.COLOR_RGB2GRAY)):
        ours = gray_torch(tensor, gray)[0].numpy()
        assert np.array_equal(ours, cv2.cvtColor(cube, code))


# ----- constructed corner cases ---------------------------------------------------------------------

def ring_image(values: list[int], centre: int, size: int = 15, at: tuple[int, int] = (7, 7)) -> np.ndarray:
    """A gray image of ``centre`` with the 16 circle pixels around ``at`` (x, y) set to ``values``."""
    image = np.full((size, size), centre, dtype=np.uint8)
    x, y = at
    for (dx, dy), value in zip(CIRCLE, values, strict=True):
        image[y + dy, x + dx] = value
    return image


def test_threshold_is_strict_and_arcs_wrap_around():
    t = 10
    for start in (0, 5, 12, 15):  # 12 and 15: the run of 9 wraps past the last circle pixel
        for sign in (1, -1):
            for step, is_corner in ((t, False), (t + 1, True)):
                values = [100] * 16
                for k in range(9):
                    values[(start + k) % 16] = 100 + sign * step
                image = ring_image(values, 100)
                reference = opencv_bitmap(image, t)
                assert bool(reference[7, 7]) == is_corner
                assert_same_keypoints(image[None], t)
                if is_corner:  # the score: the largest threshold at which it is still a corner
                    score = fast_scores_torch(torch.from_numpy(image)[None], t)[0, 7 - 3, 7 - 3]
                    assert int(score) == step - 1
    values = [100] * 16
    for k in range(8):  # 8 contiguous is not enough
        values[(13 + k) % 16] = 200
    assert not opencv_bitmap(ring_image(values, 100)).any()
    assert_same_keypoints(ring_image(values, 100)[None])


def test_nonmax_ties_and_neighbour_comparisons_match_opencv():
    # pairs of identical corners side by side: equal scores in every one of the 8 directions
    rng = np.random.default_rng(5)
    images = []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        for gap in (0, 1):  # equal scores, then scores one apart
            image = np.full((24, 24), 90, dtype=np.uint8)
            image[8:11, 8:11] = 200
            image[8 + dy:11 + dy, 8 + dx:11 + dx] = 200 + 20 * gap
            images.append(image)
    tiles = rng.integers(0, 4, (200, 24, 24)) * 60  # few levels: many equal scores side by side
    images += list(tiles.astype(np.uint8))
    batch = np.stack(images)
    assert assert_same_keypoints(batch) > 0
    scores = fast_scores_torch(torch.from_numpy(batch)).numpy()
    ties = (scores[:, :, 1:] == scores[:, :, :-1]) & (scores[:, :, 1:] > 0)
    assert ties.sum() > 100  # the batch really exercises ties


@pytest.mark.parametrize("height,width", [(1, 1), (5, 9), (6, 6), (7, 7), (7, 12), (8, 8), (9, 30), (16, 7), (33, 17)])
def test_borders_and_tiny_images_match_opencv(height, width):
    rng = np.random.default_rng(height * 100 + width)
    images = rng.integers(0, 256, (30, height, width, 3), dtype=np.uint8)
    assert_same_keypoints(images)
    assert_same_keypoints(images[..., 0])  # gray input


def test_corners_at_and_near_the_border():
    images = []
    for position in (2, 3, 4, 5, 6, 7, 184, 185, 186, 187, 188, 189):
        for axis in (0, 1):
            image = np.full((192, 192), 120, dtype=np.uint8)
            corner = [96, 96]
            corner[axis] = position
            y, x = corner
            image[y, x] = 30  # an isolated dark pixel: a corner with no equal neighbour, if 3 px in
            images.append(image)
    found = assert_same_keypoints(np.stack(images))
    assert found > 0
    ours = fast_keypoints_torch(torch.from_numpy(np.stack(images)))
    assert not ours[:, :3].any() and not ours[:, -3:].any() and not ours[:, :, :3].any() and not ours[:, :, -3:].any()


# ----- ring maps and weights: the online mode's, bit for bit ------------------------------------------

def test_ring_maps_and_weights_equal_the_online_mode(sources):
    crops = np.concatenate([photo_crops(sources, 48, seed=6), photo_crops(sources, 16, seed=7, source_size=32)])
    tensor = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()
    for gray in ("bgr", "rgb"):
        ours = fast_ring_maps_torch(tensor, gray=gray)
        online = torch.stack([torch.from_numpy(online_ring_map(crop, "fast", gray)) for crop in tensor])
        assert torch.equal(ours, online.float())
        for w_ps in (8, 16):
            assert torch.equal(keypoint_pixel_weights(ours, w_ps, 0.25), keypoint_pixel_weights(online, w_ps, 0.25))


def test_dense_ring_raster_equals_opencv_drawing_at_the_borders():
    from kamim.preprocess.raster import ring_map_opencv

    rng = np.random.default_rng(8)
    keypoints = torch.zeros(40, 40, 56, dtype=torch.bool)
    keypoints[:, 3:-3, 3:-3] = torch.from_numpy(rng.random((40, 34, 50)) < 0.02)
    keypoints[:, 3, 3] = keypoints[:, -4, -4] = True
    maps = keypoint_ring_maps_torch(keypoints)
    for i in range(len(keypoints)):
        ys, xs = np.nonzero(keypoints[i].numpy())
        assert np.array_equal(maps[i].numpy(), ring_map_opencv(np.stack([xs, ys], 1).astype(np.float32), (40, 56)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_equals_cpu(sources):
    crops = torch.from_numpy(photo_crops(sources, 32, seed=9)).permute(0, 3, 1, 2).contiguous()
    assert torch.equal(fast_ring_maps_torch(crops.cuda()).cpu(), fast_ring_maps_torch(crops))


@pytest.mark.xla
def test_xla_equals_cpu(sources):
    """`make test-xla` runs this on PJRT's CPU client (static shapes: one graph for the batch)."""
    pytest.importorskip("torch_xla", reason="needs torch_xla (make test-xla builds .venv-xla)")
    import os

    from kamim.train.device import resolve_device

    os.environ.setdefault("PJRT_DEVICE", "CPU")
    xla = resolve_device("xla", "fp32")
    crops = torch.from_numpy(photo_crops(sources, 8, seed=10)).permute(0, 3, 1, 2).contiguous()
    on_cpu = fast_ring_maps_torch(crops)
    assert on_cpu.sum() > 1000 and torch.equal(fast_ring_maps_torch(crops.to(xla.device)).cpu(), on_cpu)
