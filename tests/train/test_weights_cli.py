"""`kamim weights`: outputs, the cached == online identity case, crops/flips and one-line errors."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner
from PIL import Image
from train_helpers import photo

from kamim.evaluate.weights_cli import WeightsConfig, keypoint_weights, weights


def test_cached_and_online_agree_on_an_uncropped_192_image(tmp_path):
    image = photo(0, 192, 192)
    path = tmp_path / "p.png"
    Image.fromarray(image).save(path)
    densities = {}
    for mode in ("online", "cached"):
        out = tmp_path / mode
        result = CliRunner().invoke(weights, [str(path), "--keypoints", mode, "--detect-size", "192", "--out", str(out)])
        assert result.exit_code == 0, result.output
        density, w = np.load(out / "density.npy"), np.load(out / "weights.npy")
        assert density.dtype == w.dtype == np.float32 and density.shape == w.shape == (24, 24)
        assert w.min() == 1.0 and (out / "weights.png").stat().st_size > 10_000
        densities[mode] = density
    assert densities["online"].max() > 0.3  # a textured photo: real keypoints were found
    difference = np.abs(densities["online"] - densities["cached"])
    assert difference.max() <= 0.05 and difference[1:-1, 1:-1].max() == 0


def test_crop_and_flips_move_the_weights_with_the_image():
    image = photo(1, 240, 320)
    base = WeightsConfig("x", "y", keypoints="cached", detect_size=240, crop=(24, 40, 192, 192), weight_ps=16)
    plain = keypoint_weights(image, base)
    both = keypoint_weights(image, WeightsConfig(**{**base.__dict__, "hflip": True, "vflip": True}))
    assert np.array_equal(both["view"], plain["view"][::-1, ::-1])
    assert len(both["points"]) == len(plain["points"]) > 20
    np.testing.assert_allclose(np.sort(both["points"][:, 0]), np.sort(191 - plain["points"][:, 0]), atol=1e-4)
    # densities follow the flip up to the ring's own asymmetry (a pixel or two per point)
    assert np.abs(both["density"] - plain["density"][::-1, ::-1]).max() < 0.05


def test_bad_arguments_are_one_line_errors(tmp_path):
    path = tmp_path / "p.png"
    Image.fromarray(photo(0, 100, 100)).save(path)
    for flags, text in ((["--weight-ps", "12"], "--weight-ps 12"), (["--temperature", "0"], "--temperature"),
                        (["--crop", "0,0,200,50"], "--crop"), (["--crop", "1,2"], "--crop")):
        result = CliRunner().invoke(weights, [str(path), *flags, "--out", str(tmp_path / "o")])
        assert result.exit_code == 2 and result.output.splitlines()[-1].startswith("Error: ") and text in result.output
        assert not (tmp_path / "o" / "weights.npy").exists()
    missing = CliRunner().invoke(weights, [str(tmp_path / "nope.png"), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "no such image" in missing.output
