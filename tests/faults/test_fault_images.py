"""Bad and odd images at the dataset and cache-build entry points.

Bad ones (zero bytes, truncated JPEG/PNG, text or HTML named .jpg/.png, 1x1, a 100000x100000 PNG header)
raise BadSampleError with a reason; odd-but-valid ones (16-bit, CMYK, palette, alpha, gray) decode to
uint8 RGB. The cache build records the bad ones in errors.jsonl and goes on.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from fault_files import (
    PYTHON,
    _photo,
    add_files,
    assert_one_line_error,
    bad_images,
    make_folder,
    odd_images,
    run_kamim,
)

from kamim.datasets import BadSampleError, ImageFolderDataset, decode_image

pytestmark = pytest.mark.fault


@pytest.mark.parametrize("name", sorted(bad_images()))
def test_bad_image_bytes_raise_bad_sample_with_reason(name, tmp_path):
    data, word = bad_images()[name]
    for source in (data, tmp_path / name):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(BadSampleError) as caught:
            decode_image(source, name=name)
        assert caught.value.name == name and word in caught.value.reason
        assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name", sorted(odd_images()))
def test_odd_but_valid_images_decode_to_uint8_rgb(name):
    image = decode_image(odd_images()[name], name=name)
    assert image.dtype == np.uint8 and image.shape == (64, 64, 3)
    reference = _photo(64).astype(np.float64)
    if name.startswith("gray"):  # one channel of the photo, replicated
        assert (image[:, :, 0] == image[:, :, 2]).all()
        reference = np.repeat(reference[:, :, (0 if name == "gray16.png" else 1), None], 3, axis=2)
    # Same picture (not black, white or colour-swapped): JPEG/palette loss only.
    assert np.abs(image - reference).mean() < 12, name


def test_bomb_header_is_refused_without_allocating_it():
    """Headers claiming 10^10 and 2.25*10^8 pixels fail fast under a 768 MiB address-space limit, in which
    allocating even the smaller one (675 MB of RGB) is impossible (the control at the end)."""
    code = (
        "import resource,sys; sys.path.insert(0,'tests/faults')\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({768 * 2**20}, {768 * 2**20}))\n"
        "import numpy as np\n"
        "from fault_files import bomb_png\nfrom kamim.datasets import decode_image, BadSampleError\n"
        "for size in (100000, 15000):\n"
        "    try: decode_image(bomb_png(size, size), name='bomb.png')\n"
        "    except BadSampleError as e: print(e.reason.split(' (')[0])\n"
        "try: np.zeros(15000 * 15000 * 3, np.uint8); print('allocated')\n"
        "except MemoryError: print('cannot allocate')\n"
    )
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:3] == ["image too large", "image too large", "cannot allocate"]


def test_folder_dataset_names_the_bad_file_and_serves_the_rest(tmp_path):
    root = make_folder(tmp_path, per_class=2)
    add_files(root / "train" / "c1", {n: b for n, (b, _) in bad_images().items()})
    add_files(root / "train" / "c0", odd_images())
    ds = ImageFolderDataset(root / "train")
    assert len(ds) == 4 + len(bad_images()) + len(odd_images())
    bad, good = [], 0
    for i in range(len(ds)):
        try:
            image, _ = ds[i]
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            good += 1
        except BadSampleError as error:
            assert error.name == ds.sample_name(i)
            bad.append(error.name)
    assert sorted(bad) == sorted(f"c1/{n}" for n in bad_images())
    assert good == 4 + len(odd_images())


@pytest.mark.parametrize("fmt", ["zarr", "wds"])
def test_cache_build_records_bad_images_and_goes_on(tmp_path, fmt):
    root = make_folder(tmp_path / "data", per_class=3)
    add_files(root / "train" / "c1", {n: b for n, (b, _) in bad_images().items()})
    add_files(root / "train" / "c0", odd_images())
    out = tmp_path / f"c.{fmt}"
    proc = run_kamim("cache", "--dataset", "folder", "--data-root", str(root), "--detector", "fast",
                     "--format", fmt, "--out", str(out), "--workers", "2", "--block-size", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    n_good, n_bad = 6 + len(odd_images()), len(bad_images())
    assert f"{n_good} images ok, {n_bad} bad" in proc.stdout
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    by_name = {e["name"]: e["reason"] for e in errors}
    assert set(by_name) == {f"c1/{n}" for n in bad_images()}
    for name, (_, word) in bad_images().items():
        assert word in by_name[f"c1/{name}"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status_counts"] == {"ok": n_good, "bad": n_bad}
    from kamim.cache import open_cache

    cache = open_cache(out)
    if fmt == "zarr":
        assert int(cache.ok.sum()) == n_good
        bad_index = {e["index"] for e in errors}
        for i in range(len(cache)):
            assert cache.is_ok(i) == (i not in bad_index)
            assert (len(cache.points(i)) == 0) if i in bad_index else True
    else:
        assert sum(1 for _ in cache) == n_good


def test_cache_build_with_only_bad_images_is_a_one_line_error(tmp_path):
    folder = tmp_path / "data" / "train" / "c0"
    add_files(folder, {n: b for n, (b, _) in bad_images().items()})
    proc = run_kamim("cache", "--dataset", "folder", "--data-root", str(tmp_path / "data"), "--detector", "orb",
                     "--out", str(tmp_path / "c.zarr"), "--workers", "1")
    assert_one_line_error(proc, "failed", "errors.jsonl")
    assert not (tmp_path / "c.zarr" / "manifest.json").exists()  # never taken for a complete cache

