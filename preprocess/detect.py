"""Handcrafted keypoint detectors with OpenCV's default parameters, as the original KAMIM uses them."""

from __future__ import annotations

import cv2
import numpy as np

from kamim.errors import UserError

DETECTORS = ("fast", "sift", "orb")
GRAY_MODES = ("bgr", "rgb")

_FACTORIES = {
    "fast": cv2.FastFeatureDetector_create,  # threshold 10, non-max suppression, TYPE_9_16
    "sift": cv2.SIFT_create,  # unlimited features, 3 octave layers, contrast 0.04, edge 10, sigma 1.6
    "orb": cv2.ORB_create,  # 500 features, scale 1.2, 8 levels, edge 31, patch 31, FAST 20, Harris
}
_detectors: dict[str, cv2.Feature2D] = {}  # one instance per process: construction is not free


def detector_parameters(name: str) -> dict:
    """The constructor parameters (all OpenCV defaults) recorded in cache manifests."""
    detector = get_detector(name)
    if name == "fast":
        return {
            "threshold": detector.getThreshold(),
            "nonmax_suppression": bool(detector.getNonmaxSuppression()),
            "type": int(detector.getType()),
        }
    if name == "orb":
        return {
            "nfeatures": detector.getMaxFeatures(),
            "scale_factor": detector.getScaleFactor(),
            "nlevels": detector.getNLevels(),
            "edge_threshold": detector.getEdgeThreshold(),
            "patch_size": detector.getPatchSize(),
            "fast_threshold": detector.getFastThreshold(),
        }
    return {"nfeatures": 0, "n_octave_layers": 3, "contrast_threshold": 0.04, "edge_threshold": 10, "sigma": 1.6}


def get_detector(name: str) -> cv2.Feature2D:
    if name not in _FACTORIES:
        raise UserError(f"unknown detector '{name}'; use one of: {', '.join(DETECTORS)}")
    if name not in _detectors:
        _detectors[name] = _FACTORIES[name]()
    return _detectors[name]


def detect_keypoints(image_rgb: np.ndarray, detector: str, gray: str = "bgr") -> np.ndarray:
    """Keypoint positions (x, y) as float32 [N, 2] in the pixel coordinates of ``image_rgb``.

    ``gray="bgr"`` hands the uint8 RGB array to OpenCV as is, exactly like the original code: OpenCV
    assumes BGR, so its internal gray conversion swaps the R and B weights. ``gray="rgb"`` converts
    RGB to gray properly first.
    """
    if gray not in GRAY_MODES:
        raise UserError(f"unknown gray mode '{gray}'; use one of: {', '.join(GRAY_MODES)}")
    image = np.ascontiguousarray(image_rgb, dtype=np.uint8)
    if gray == "rgb" and image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    keypoints = get_detector(detector).detect(image, None)
    if not keypoints:
        return np.zeros((0, 2), dtype=np.float32)
    return cv2.KeyPoint_convert(keypoints).astype(np.float32).reshape(-1, 2)


# --- Crop-time selection (DESIGN.md 4.3): detections with the attributes a crop needs ----------------
# ORB for a selection cache: more features than the crop's 500 (the crop keeps its own strongest per
# level), two more pyramid levels (a crop smaller than the detect-size image maps cache level k to crop
# level k - 1 or k - 2) and a small border (the crop applies its own 31-px level border at train time).
SELECTION_PARAMS = {
    "orb": {"nfeatures": 3000, "scaleFactor": 1.2, "nlevels": 10, "edgeThreshold": 8, "patchSize": 31,
            "fastThreshold": 20},
    "sift": {},  # OpenCV's defaults: the crop filters by size and border at train time
}
_selection_detectors: dict[str, cv2.Feature2D] = {}


def detect_with_attributes(image_rgb: np.ndarray, detector: str, gray: str = "bgr"
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(points float32 [N,2], response float32 [N], octave int32 [N], size float32 [N]) from the
    selection-cache detector (``SELECTION_PARAMS``): ORB's octave is its pyramid level, SIFT's the
    packed OpenCV octave word."""
    if detector not in SELECTION_PARAMS:
        raise UserError(f"detector '{detector}' has no selection cache; use one of: sift, orb")
    if detector not in _selection_detectors:
        factory = cv2.ORB_create if detector == "orb" else cv2.SIFT_create
        _selection_detectors[detector] = factory(**SELECTION_PARAMS[detector])
    image = np.ascontiguousarray(image_rgb, dtype=np.uint8)
    if gray == "rgb" and image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    keypoints = _selection_detectors[detector].detect(image, None)
    if not keypoints:
        return (np.zeros((0, 2), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32),
                np.zeros(0, np.float32))
    points = cv2.KeyPoint_convert(keypoints).astype(np.float32).reshape(-1, 2)
    response = np.array([k.response for k in keypoints], np.float32)
    octave = np.array([k.octave for k in keypoints], np.int32)
    size = np.array([k.size for k in keypoints], np.float32)
    return points, response, octave, size
