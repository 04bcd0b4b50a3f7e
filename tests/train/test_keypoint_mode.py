"""The keypoint-mode rule: tiny (CIFAR-like) images get per-crop detection unless asked otherwise."""

from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

from kamim.datasets import open_dataset
from kamim.train.keypoint_mode import TINY_SIDE, choose_keypoints, shorter_side


def _folder(root: Path, side: int) -> Path:
    photo = skimage.data.astronaut()
    for label in range(2):
        folder = root / "train" / f"c{label}"
        folder.mkdir(parents=True)
        for i in range(3):
            crop = photo[60 * i : 60 * i + 200, 50 * label : 50 * label + 240]
            Image.fromarray(crop).resize((side + 7 * i, side)).save(folder / f"{i}.png")
    return root


def test_tiny_images_default_to_online_or_device_and_say_why(tmp_path):
    tiny = open_dataset("folder", "train", str(_folder(tmp_path / "tiny", 32)))
    assert shorter_side(tiny) == 32
    mode, note = choose_keypoints(None, "sift", tiny)
    assert mode == "online" and "32 px" in note and "--keypoints cached" in note
    assert choose_keypoints(None, "fast", tiny)[0] == "online"  # no device mode offered
    assert choose_keypoints(None, "fast", tiny, ("cached", "online", "device"))[0] == "device"
    assert choose_keypoints(None, "orb", tiny, ("cached", "online", "device"))[0] == "online"
    kept, warning = choose_keypoints("cached", "fast", tiny)  # an explicit choice is kept, with a note
    assert kept == "cached" and warning.startswith("note:")


def test_photo_sized_images_keep_the_cache_and_fast_goes_to_the_device(tmp_path):
    photos = open_dataset("folder", "train", str(_folder(tmp_path / "big", TINY_SIDE)))
    assert shorter_side(photos) == TINY_SIDE
    assert choose_keypoints(None, "sift", photos, ("cached", "online", "device")) == ("cached", None)
    assert choose_keypoints(None, "orb", photos, ("cached", "online", "device")) == ("cached", None)
    mode, note = choose_keypoints(None, "fast", photos, ("cached", "online", "device"))
    assert mode == "device" and "--keypoints cached" in note  # exact FAST, no cache to build
    assert choose_keypoints(None, "fast", photos) == ("cached", None)  # where device is not offered
    assert choose_keypoints("cached", "fast", photos) == ("cached", None)  # an explicit choice is kept
    assert choose_keypoints("online", "sift", photos) == ("online", None)
    assert np.isscalar(shorter_side(photos))


def test_plain_sift_and_orb_caches_get_a_note():
    from kamim.train.keypoint_mode import plain_cache_note

    assert "rebuild" in plain_cache_note({"detector": "orb", "format": "zarr"}, "c")
    assert plain_cache_note({"detector": "orb", "format": "zarr", "point_attrs": {"count": 3}}, "c") is None
    assert plain_cache_note({"detector": "fast", "format": "zarr"}, "c") is None
