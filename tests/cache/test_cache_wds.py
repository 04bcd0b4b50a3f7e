import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from cache_testdata import add_bad_files, make_folder_dataset
from webdataset import TarWriter

from kamim.cache import open_cache
from kamim.cache.wds_store import encode_sample, iter_wds
from kamim.datasets import open_dataset
from kamim.errors import UserError
from kamim.preprocess.build import CacheConfig, build_cache
from kamim.preprocess.resize import canonical_resize, from_source

STORE = 64


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = make_folder_dataset(tmp_path_factory.mktemp("data"), per_class=5, seed=3)
    add_bad_files(root)
    out = tmp_path_factory.mktemp("caches")
    common = {"dataset": "folder", "data_root": str(root), "detector": "sift", "workers": 1, "block_size": 4}
    wds_dir = build_cache(CacheConfig(**common, format="wds", store_size=STORE, out=str(out / "wds")))
    zarr_dir = build_cache(CacheConfig(**common, out=str(out / "zarr")))
    return root, open_cache(wds_dir), open_cache(zarr_dir)


def test_wds_stream_matches_zarr_points_scaled_to_the_stored_image(caches):
    root, wds_cache, zarr_cache = caches
    dataset = open_dataset("folder", "train", root)
    ok = [i for i in range(len(zarr_cache)) if zarr_cache.is_ok(i)]
    samples = list(wds_cache)
    assert len(samples) == len(wds_cache) == len(ok) == 15
    assert wds_cache.manifest["status_counts"] == {"ok": 15, "bad": 5}
    for i, (image, points, label) in zip(ok, samples, strict=True):
        source, _ = dataset[i]
        assert label == dataset.label(i)
        assert image.dtype == np.uint8 and image.shape[2] == 3
        expected = zarr_cache.points(i)
        if min(source.shape[:2]) > STORE:
            resized, scale = canonical_resize(source, STORE)
            assert image.shape == resized.shape
            expected = from_source(expected, scale)
        else:
            assert image.shape == source.shape  # never enlarged
        assert points.dtype == np.float32
        np.testing.assert_allclose(points, expected, atol=1e-3)


def test_shards_are_listed_in_order_and_hold_every_good_sample(caches):
    wds_cache = caches[1]
    names = wds_cache.manifest["shards"]
    assert names == sorted(names) and all(p.is_file() for p in wds_cache.shards)
    assert sum(wds_cache.manifest["shard_samples"]) == 15
    assert sum(1 for _ in iter_wds(wds_cache.shards[:1])) == wds_cache.manifest["shard_samples"][0]


class _Tripwire:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))  # would create a file if anything unpickled it


def test_reader_decodes_known_keys_only_and_never_unpickles(tmp_path):
    tripwire = tmp_path / "unpickled"
    image = np.full((20, 30, 3), 120, np.uint8)
    sample = encode_sample(7, image, np.array([[1.5, 2.0]]), 3)
    sample["pickle"] = sample["pyd"] = pickle.dumps(_Tripwire(tripwire))
    shard = tmp_path / "shard-000000.tar"
    with open(shard, "wb") as handle, TarWriter(handle, encoder=False) as writer:
        writer.write(sample)
    [(decoded, points, label)] = list(iter_wds([shard]))
    assert decoded.shape == (20, 30, 3) and label == 3
    assert np.array_equal(points, [[1.5, 2.0]])
    assert not tripwire.exists()

    evil = io.BytesIO()
    np.save(evil, np.array([_Tripwire(tripwire)], dtype=object), allow_pickle=True)
    sample["kp.npy"] = evil.getvalue()
    with open(shard, "wb") as handle, TarWriter(handle, encoder=False) as writer:
        writer.write(sample)
    with pytest.raises(UserError, match="unreadable keypoints"):
        list(iter_wds([shard]))
    assert not tripwire.exists()


@pytest.mark.parametrize("rows", [0, 1, 1422])
def test_points_read_as_np_load_reads_them_and_anything_else_goes_through_np_load(rows):
    import io

    from kamim.cache.wds_store import load_points

    points = (np.random.default_rng(rows).random((rows, 2)) * 300).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, points)  # as the writer stores them
    data = buffer.getvalue()
    fast = load_points(data)
    assert fast.dtype == np.float32 and fast.shape == (rows, 2) and np.array_equal(fast, points)
    other = io.BytesIO()
    np.save(other, points.astype(np.float64))  # another header: the np.load path, same values
    assert np.array_equal(load_points(other.getvalue()), points)
    with pytest.raises((ValueError, OSError, EOFError)):  # a truncated member is not read short (UserError above)
        load_points(data[:-4] if rows else data[:-1])
