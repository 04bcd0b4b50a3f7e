"""Detectors equal direct OpenCV calls with default parameters, including the original's channel swap."""

import cv2
import numpy as np
import pytest
from skimage import data

from kamim.errors import UserError
from kamim.preprocess.detect import DETECTORS, detect_keypoints, detector_parameters

FACTORIES = {"fast": cv2.FastFeatureDetector_create, "sift": cv2.SIFT_create, "orb": cv2.ORB_create}


@pytest.fixture(scope="module")
def image():
    return np.ascontiguousarray(data.astronaut()[100:292, 150:342])  # 192x192 RGB


@pytest.mark.parametrize("name", DETECTORS)
def test_same_points_as_direct_opencv_call(image, name):
    expected = cv2.KeyPoint_convert(FACTORIES[name]().detect(image, None))
    points = detect_keypoints(image, name)
    assert points.dtype == np.float32 and points.shape[1] == 2 and len(points) > 10
    np.testing.assert_array_equal(points, expected)


@pytest.mark.parametrize("name", DETECTORS)
def test_bgr_default_is_the_original_channel_swap(image, name):
    swapped_gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    proper_gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    direct = cv2.KeyPoint_convert(FACTORIES[name]().detect(swapped_gray, None))
    np.testing.assert_array_equal(detect_keypoints(image, name, gray="bgr"), direct)
    proper = cv2.KeyPoint_convert(FACTORIES[name]().detect(proper_gray, None))
    np.testing.assert_array_equal(detect_keypoints(image, name, gray="rgb"), proper)


def test_defaults_recorded_and_unknown_detector():
    assert detector_parameters("fast")["threshold"] == 10
    assert detector_parameters("orb")["nfeatures"] == 500
    with pytest.raises(UserError, match="unknown detector 'surf'"):
        detect_keypoints(np.zeros((32, 32, 3), np.uint8), "surf")


def test_flat_image_has_no_keypoints():
    assert detect_keypoints(np.full((64, 64, 3), 128, np.uint8), "fast").shape == (0, 2)
