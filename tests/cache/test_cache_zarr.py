import json
import multiprocessing
import os
import pickle
import shutil

import numpy as np
import pytest
from cache_testdata import add_bad_files, make_folder_dataset
from PIL import Image

from kamim.cache import open_cache
from kamim.cache.points import SUBPIXEL_STEPS
from kamim.datasets import open_dataset
from kamim.errors import UserError
from kamim.preprocess.build import CacheConfig, build_cache
from kamim.preprocess.detect import detect_keypoints, detect_with_attributes
from kamim.preprocess.resize import canonical_resize, to_source


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = make_folder_dataset(tmp_path_factory.mktemp("data"), per_class=6)
    bad = add_bad_files(root)
    out = tmp_path_factory.mktemp("caches")
    caches = {
        det: build_cache(
            CacheConfig(
                dataset="folder",
                data_root=str(root),
                detector=det,
                out=str(out / det),
                workers=1,
                block_size=5,
            )
        )
        for det in ("fast", "sift", "orb")
    }
    return root, bad, caches


def _sorted_by_quantised(points, steps):
    q = np.rint(points * steps)
    return points[np.lexsort((q[:, 0], q[:, 1]))]


@pytest.mark.parametrize("detector", ["fast", "sift", "orb"])
def test_cached_points_equal_direct_detection_on_the_canonical_image(built, detector):
    root, _, caches = built
    reader = open_cache(caches[detector])
    dataset = open_dataset("folder", "train", root)
    steps = SUBPIXEL_STEPS[detector]
    checked = 0
    for i in range(len(dataset)):
        if not reader.is_ok(i):
            continue
        image, _ = dataset[i]
        resized, scale = canonical_resize(image, 256)
        # SIFT/ORB caches are selection caches by default: their own detector (kamim.cache.select).
        found = detect_with_attributes(resized, detector)[0] if reader.manifest.get("point_attrs") else \
            detect_keypoints(resized, detector)
        direct = _sorted_by_quantised(found.astype(np.float64), steps)
        stored = reader.detect_points(i)
        assert stored.shape == direct.shape
        assert np.abs(stored - direct).max(initial=0) <= 0.5 / steps + 1e-6
        source = reader.points(i)
        sample_image, sample_points, label = reader.sample(i, dataset)
        assert np.array_equal(sample_image, image) and np.array_equal(sample_points, source)
        assert label == dataset.label(i)
        assert source.dtype == np.float32 and source.shape == direct.shape
        bound = 0.5 / steps / scale.min() + 1e-3  # detect-size bound, in source pixels
        assert np.abs(source - to_source(direct, scale)).max(initial=0) <= bound
        checked += 1
    assert checked == 18
    assert reader.counts[reader.ok].sum() > 0


def test_bad_inputs_are_recorded_and_the_build_goes_on(built):
    _, bad, caches = built
    cache_dir = caches["fast"]
    reader = open_cache(cache_dir)
    errors = [json.loads(line) for line in (cache_dir / "errors.jsonl").read_text().splitlines()]
    assert {e["name"] for e in errors} == set(bad)
    for error in errors:
        assert bad[error["name"]] in error["reason"]
        assert not reader.is_ok(error["index"])
        assert reader.points(error["index"]).shape == (0, 2)
    assert reader.manifest["status_counts"] == {"ok": 18, "bad": 5}
    assert int(reader.ok.sum()) == 18 and len(reader) == 23


def test_manifest_records_what_the_cache_is(built):
    manifest = open_cache(built[2]["orb"]).manifest
    assert manifest["format"] == "zarr" and manifest["detect_size"] == 256 and manifest["gray"] == "bgr"
    # A selection cache (kamim.cache.select): 3000 candidates per image, each crop keeps its own 500.
    assert manifest["detector_params"]["nfeatures"] == 3000 and manifest["detector_params"]["selection"]
    assert manifest["point_attrs"]["count"] == manifest["keypoints_per_image"]["total"]
    assert manifest["dataset"]["count"] == 23 and len(manifest["dataset"]["fingerprint"]) == 32
    stats = manifest["keypoints_per_image"]
    assert stats["min"] <= stats["median"] <= stats["p90"] <= stats["max"] <= 3000


_READER = None


def _points_in_child(index):
    return os.getpid(), _READER.points(index)


def test_reader_opens_lazily_and_forked_and_pickled_readers_read_the_same(built):
    global _READER
    _READER = open_cache(built[2]["sift"])
    assert _READER._flat is None  # only the manifest was read
    indices = [i for i in range(len(_READER)) if _READER.is_ok(i)][:4]
    expected = [_READER.points(i) for i in indices]
    assert _READER._flat is not None
    with multiprocessing.get_context("fork").Pool(2) as pool:  # children inherit the open flat file
        results = pool.map_async(_points_in_child, indices).get(timeout=60)
    for (pid, points), want in zip(results, expected, strict=True):
        assert pid != os.getpid() and np.array_equal(points, want)
    clone = pickle.loads(pickle.dumps(_READER))  # for spawned workers: no open handles travel
    assert clone._flat is None and np.array_equal(clone.points(indices[0]), expected[0])


def test_fingerprint_mismatch_names_both_and_the_fix(built, tmp_path):
    root, _, caches = built
    reader = open_cache(caches["fast"])
    reader.check_dataset(open_dataset("folder", "train", root))  # same files: fine
    changed = tmp_path / "data"
    shutil.copytree(root, changed)
    Image.new("RGB", (64, 64)).save(changed / "train" / "class0" / "zzz.png")
    dataset = open_dataset("folder", "train", changed)
    with pytest.raises(UserError) as info:
        reader.check_dataset(dataset)
    message = str(info.value)
    assert reader.manifest["dataset"]["fingerprint"] in message and dataset.fingerprint() in message
    assert "kamim cache" in message and "\n" not in message


def test_incomplete_or_missing_cache_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a kamim cache"):
        open_cache(tmp_path)
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "build.json").write_text("{}")
    with pytest.raises(UserError, match="not complete"):
        open_cache(tmp_path)
