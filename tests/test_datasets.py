"""Dataset adapters on tiny datasets made here in the real on-disk formats."""

import pickle

import numpy as np
import pytest
from PIL import Image

from kamim.datasets import BadSampleError, ImageFolderDataset, decode_image, open_dataset
from kamim.errors import UserError


def _cifar_batch(path, n, label_key, seed):
    rng = np.random.default_rng(seed)
    batch = {
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        label_key: [int(x) for x in rng.integers(0, 10, size=n)],
        b"batch_label": b"testing batch",
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    return batch


@pytest.fixture()
def cifar10_root(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = [_cifar_batch(folder / f"data_batch_{i}", 4, b"labels", i) for i in range(1, 6)]
    _cifar_batch(folder / "test_batch", 3, b"labels", 9)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f, protocol=2)
    return tmp_path, batches


def test_cifar10_reads_torchvision_layout(cifar10_root):
    root, batches = cifar10_root
    ds = open_dataset("cifar10", "train", root)
    assert len(ds) == 20 and ds.classes[3] == "c3"
    image, label = ds[5]  # second image of data_batch_2
    expected = batches[1][b"data"][1].reshape(3, 32, 32).transpose(1, 2, 0)
    assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
    np.testing.assert_array_equal(image, expected)
    assert label == batches[1][b"labels"][1]
    assert len(open_dataset("cifar10", "test", root)) == 3  # test is an alias of val


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    batch = _cifar_batch(folder / "train", 6, b"fine_labels", 1)
    ds = open_dataset("cifar100", "train", tmp_path)
    assert [ds.label(i) for i in range(6)] == batch[b"fine_labels"]


def test_cifar_missing_files_say_where(tmp_path):
    with pytest.raises(UserError, match="cifar-10-batches-py/data_batch_1"):
        open_dataset("cifar10", "train", tmp_path)


def test_cifar_hostile_pickle_is_refused(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(folder / "train", "wb") as f:
        pickle.dump({b"data": Evil()}, f)
    with pytest.raises(UserError, match="refused global builtins.print"):
        open_dataset("cifar100", "train", tmp_path)


def _write_folder(root):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    (root / "train" / "cat").mkdir(parents=True)
    (root / "train" / "dog").mkdir(parents=True)
    Image.fromarray(rgb).save(root / "train" / "cat" / "a.jpg", quality=95)
    Image.fromarray(rgb).save(root / "train" / "cat" / "b.png")
    Image.fromarray(rgb[..., 0]).save(root / "train" / "dog" / "gray.png")
    rgba = np.concatenate([rgb, np.full((40, 50, 1), 128, np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(root / "train" / "dog" / "rgba.png")
    Image.fromarray(rgb).convert("P").save(root / "train" / "dog" / "palette.png")
    (root / "train" / "dog" / "notes.txt").write_text("not an image, not listed")
    return rgb


def test_image_folder_order_and_conversion(tmp_path):
    rgb = _write_folder(tmp_path)
    ds = open_dataset("folder", "train", tmp_path)
    assert ds.classes == ["cat", "dog"] and len(ds) == 5
    assert [ds.sample_name(i) for i in range(5)] == [
        "cat/a.jpg", "cat/b.png", "dog/gray.png", "dog/palette.png", "dog/rgba.png",
    ]
    for i in range(5):
        image, label = ds[i]
        assert image.dtype == np.uint8 and image.shape == (40, 50, 3)
        assert label == (0 if i < 2 else 1)
    np.testing.assert_array_equal(ds[1][0], rgb)  # PNG is lossless
    gray = ds[2][0]
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 0] == rgb[..., 0]).all()
    np.testing.assert_array_equal(ds[4][0], rgb)  # alpha dropped, colour kept


def test_imagenet_layout_and_fingerprint_changes(tmp_path):
    _write_folder(tmp_path / "imagenet")
    ds = open_dataset("imagenet", "train", tmp_path)
    before = ds.fingerprint()
    assert before == open_dataset("imagenet", "train", tmp_path).fingerprint()
    (tmp_path / "imagenet" / "train" / "cat" / "a.jpg").write_bytes(b"x" * 10)
    assert open_dataset("imagenet", "train", tmp_path).fingerprint() != before


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(UserError, match="no directory"):
        open_dataset("folder", "val", tmp_path)
    (tmp_path / "val" / "cls").mkdir(parents=True)
    with pytest.raises(UserError, match="no images"):
        ImageFolderDataset(tmp_path / "val")


def test_bad_images_raise_bad_sample(tmp_path):
    good = tmp_path / "good.png"
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(good)
    truncated = good.read_bytes()[: good.stat().st_size // 2]
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tiny)
    for data, reason in [(b"", "zero-byte"), (b"hello world", "not an image"), (truncated, "truncated")]:
        with pytest.raises(BadSampleError, match=reason):
            decode_image(data, name="x")
    with pytest.raises(BadSampleError, match="too small"):
        decode_image(tiny)
    sixteen = tmp_path / "deep.png"
    Image.fromarray(np.full((16, 16), 65535, np.uint16)).save(sixteen)
    assert decode_image(sixteen).max() == 255 and decode_image(sixteen).min() == 255


def test_unknown_dataset_and_split(tmp_path):
    with pytest.raises(UserError, match="unknown dataset"):
        open_dataset("mnist", "train", tmp_path)
    with pytest.raises(UserError, match="unknown split"):
        open_dataset("folder", "dev", tmp_path)


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return (isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
                and a.flags.f_contiguous == b.flags.f_contiguous)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_plain_pickle_reader_gives_what_pickle_gives(protocol):
    from kamim.safe_pickle import parse_plain_pickle

    rng = np.random.default_rng(protocol)
    shared = [b"a.png", b"b.png"]
    value = {
        b"data": rng.integers(0, 256, size=(3, 3072), dtype=np.uint8), b"labels": list(range(300)),
        b"names": shared, b"again": shared, b"empty": b"", "text": "é", "numbers": (1.5, -2, 2**70, -(2**70), 65_535),
        "flags": [None, True, False], "big_endian": np.arange(12, dtype=">f4").reshape(3, 4),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)), "nothing": np.zeros(0, np.uint8),
        "scalar": np.float32(3.5),
    }
    got = parse_plain_pickle(pickle.dumps(value, protocol=protocol))
    assert _same(got, value)  # dtypes exactly as written (pickle.loads itself turns '>f4' into native float32)
    assert got[b"again"] == shared  # a memo reference (BINGET) reads the same value


def test_plain_pickle_reader_reads_a_python2_cifar_batch():
    # As CIFAR's own files are written (Python 2 cPickle, protocol 2: str as BINSTRING, numpy.core globals).
    from kamim.safe_pickle import parse_plain_pickle

    pixels = np.arange(6, dtype=np.uint8)
    data = (b"\x80\x02}q\x01(U\x04dataq\x02cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\nq\x04K\x00"
            b"\x85U\x01b\x87Rq\x05(K\x01K\x06\x85cnumpy\ndtype\nq\x06U\x02u1K\x00K\x01\x87Rq\x07(K\x03U\x01|NNNJ\xff"
            b"\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T\x06\x00\x00\x00" + pixels.tobytes() +
            b"tbU\x06labelsq\x08]q\t(K\x01K\x02eu.")
    got = parse_plain_pickle(data)
    assert _same(got, pickle.loads(data, encoding="bytes"))
    assert got[b"labels"] == [1, 2] and np.array_equal(got[b"data"], pixels)


def test_plain_pickle_reader_refuses_object_arrays_and_unknown_opcodes(tmp_path):
    from kamim.safe_pickle import load_plain_pickle

    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": np.array([1, "x"], dtype=object)}, protocol=2))
    with pytest.raises(UserError, match="array of Python objects"):
        load_plain_pickle(path)
    path.write_bytes(pickle.dumps({b"data": [1, 2]}, protocol=0))  # text opcodes: never how CIFAR is written
    with pytest.raises(UserError, match="unsupported pickle opcode"):
        load_plain_pickle(path)
