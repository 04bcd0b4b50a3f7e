"""``kamim weights``: one image's keypoints, per-patch densities and KAMIM weights, as the trainer sees them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from kamim.config import format_config, save_config
from kamim.errors import UserError

IMG_SIZE = 192


@dataclass
class WeightsConfig:
    image: str
    out: str
    detector: str = "fast"
    weight_ps: int = 8
    temperature: float = 0.25
    keypoints: str = "online"
    detect_size: int = 256
    gray: str = "bgr"
    crop: tuple[int, int, int, int] | None = None  # top, left, height, width in source pixels
    hflip: bool = False
    vflip: bool = False


def keypoint_weights(image: np.ndarray, cfg: WeightsConfig) -> dict[str, np.ndarray]:
    """The 192 crop, its keypoints (crop pixels), ring map, density and weights for one image.

    online: detect on the (cropped, resized) 192 image and draw with OpenCV, like the original loader.
    cached: detect on the whole image resized to ``detect_size`` (as ``kamim cache`` stores it), move
    the points through the crop and flips, raster them with the trainer's device raster.
    """
    import torch  # here, not at import: `kamim weights --bad-flag` answers without loading torch

    from kamim.preprocess.detect import detect_keypoints
    from kamim.preprocess.raster import ring_map_opencv, ring_maps_torch
    from kamim.train.augment import CropParams, crop_image, crop_points
    from kamim.train.weighting import patch_density, patch_weights

    height, width = image.shape[:2]
    top, left, crop_h, crop_w = cfg.crop or (0, 0, height, width)
    if not (top >= 0 and left >= 0 and crop_h > 0 and crop_w > 0 and top + crop_h <= height and left + crop_w <= width):
        raise UserError(f"--crop {top},{left},{crop_h},{crop_w} does not fit the {width}x{height} image "
                        f"(TOP,LEFT,HEIGHT,WIDTH in source pixels)")
    crop = CropParams(top, left, crop_h, crop_w, cfg.vflip, cfg.hflip)
    view = crop_image(image, crop, IMG_SIZE).permute(1, 2, 0).contiguous().numpy()
    if cfg.keypoints == "online":
        points = detect_keypoints(view, cfg.detector, cfg.gray)
        ring = ring_map_opencv(points, IMG_SIZE)
    else:
        from kamim.cache.points import SUBPIXEL_STEPS, decode_points
        from kamim.preprocess.build import detect_canonical
        from kamim.preprocess.resize import to_source

        steps = SUBPIXEL_STEPS[cfg.detector]
        if cfg.detector in ("sift", "orb"):  # a selection cache (kamim cache's default for these)
            from kamim.cache.select import crop_scale, select_in_crop
            from kamim.preprocess.build import detect_canonical_selected
            from kamim.train.augment import crop_points_keep

            codes, attrs, scale = detect_canonical_selected(image, cfg.detector, cfg.gray, cfg.detect_size, steps)
            source = to_source(decode_points(codes, steps), scale)  # exactly what the cache returns
            points, keep = crop_points_keep(source, crop, IMG_SIZE)
            points = points[select_in_crop(cfg.detector, points, attrs[keep],
                                           crop_scale(crop.width, crop.height, scale, IMG_SIZE), IMG_SIZE)]
        else:
            codes, scale = detect_canonical(image, cfg.detector, cfg.gray, cfg.detect_size, steps)
            source = to_source(decode_points(codes, steps), scale)  # exactly what the cache returns
            points = crop_points(source, crop, IMG_SIZE)
        tensor = torch.from_numpy(points)[None]
        ring = ring_maps_torch(tensor, torch.tensor([len(points)]), IMG_SIZE)[0].numpy()
    density = patch_density(torch.from_numpy(ring)[None], cfg.weight_ps)
    weights = patch_weights(density, cfg.temperature)
    return {"view": view, "points": np.asarray(points, np.float32), "ring": ring, "crop_size": (crop_w, crop_h),
            "density": density[0].numpy().astype(np.float32), "weights": weights[0].numpy().astype(np.float32)}


DOTS_ABOVE = 600  # keypoints; above this the rings overlap into a blob at 192 px


def plot_weights(result: dict[str, np.ndarray], cfg: WeightsConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    axes[0].imshow(result["view"])
    width, height = result["crop_size"]
    squash = "" if width == height else f"\n(aspect {width / height:.2f} squashed to 1, as training sees it)"
    axes[0].set_title(f"{cfg.keypoints}: {width}x{height} crop resized to {IMG_SIZE}x{IMG_SIZE}{squash}", fontsize=9)
    axes[1].imshow(result["view"])
    points = result["points"]
    if len(points) > DOTS_ABOVE:  # 3-px rings of this many points merge into one blob: dots stay readable
        axes[1].scatter(points[:, 0], points[:, 1], s=1.5, c="yellow", linewidths=0)
        how = "dots; the weights use its rings"
    else:
        axes[1].imshow(np.ma.masked_equal(result["ring"], 0), cmap="autumn", alpha=0.7, vmin=0, vmax=1)
        how = "rings, as the weights use them"
    axes[1].set_title(f"{len(points)} {cfg.detector.upper()} keypoints ({how})", fontsize=9)
    shown = axes[2].imshow(result["weights"], cmap="magma", vmin=1.0, extent=(-0.5, IMG_SIZE - 0.5, IMG_SIZE - 0.5, -0.5))
    axes[2].set_title(f"weights, w_ps {cfg.weight_ps}, T {cfg.temperature:g} (max {result['weights'].max():.2f})",
                      fontsize=9)
    fig.colorbar(shown, ax=axes[2], fraction=0.046)
    for axis in axes:
        axis.set_axis_off()
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def parse_crop(value: str | None) -> tuple[int, int, int, int] | None:
    if value is None:
        return None
    try:
        numbers = tuple(int(v) for v in value.split(","))
    except ValueError:
        numbers = ()
    if len(numbers) != 4:
        raise UserError(f"--crop {value!r}: use TOP,LEFT,HEIGHT,WIDTH (four integers, source pixels)")
    return numbers  # type: ignore[return-value]


@click.command("weights")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--detector", default="fast", show_default=True, help="fast, sift or orb.")
@click.option("--weight-ps", default=8, show_default=True, type=int, help="Weight patch size: 8, 16 or 32.")
@click.option("--temperature", default=0.25, show_default=True, type=float, help="T > 0.")
@click.option("--keypoints", default="online", show_default=True,
              help="online (detect on the 192 crop, the original) or cached (detect on the image at --detect-size).")
@click.option("--detect-size", default=256, show_default=True, type=int, help="Shorter side for cached detection.")
@click.option("--gray", default="bgr", show_default=True, help="bgr (the original's channel order) or rgb.")
@click.option("--crop", default=None, metavar="TOP,LEFT,HEIGHT,WIDTH", help="Crop box in source pixels (default: all).")
@click.option("--hflip", is_flag=True, help="Flip the crop horizontally.")
@click.option("--vflip", is_flag=True, help="Flip the crop vertically.")
@click.option("--out", required=True, help="Output dir: density.npy, weights.npy, weights.png.")
def weights(image: str, crop: str | None, **options) -> None:  # noqa: ANN003
    """Show one image's keypoints and KAMIM weight map (the crop is resized to 192 like in training).

    \b
    Writes density.npy and weights.npy (float32 [192/w_ps, 192/w_ps]) and weights.png
    (image | keypoints | weight heatmap).

    \b
    Examples:
      kamim weights photo.jpg --out out/weights
      kamim weights photo.jpg --keypoints cached --crop 0,40,300,300 --hflip --weight-ps 16 --out out/w16
    """
    from kamim.datasets import BadSampleError, decode_image

    cfg = WeightsConfig(image=image, crop=parse_crop(crop), **options)
    checks = [
        (cfg.detector in ("fast", "sift", "orb"), f"--detector {cfg.detector}: use fast, sift or orb"),
        (cfg.weight_ps in (8, 16, 32), f"--weight-ps {cfg.weight_ps}: use 8, 16 or 32 (must divide {IMG_SIZE})"),
        (cfg.temperature > 0, f"--temperature {cfg.temperature}: must be > 0"),
        (cfg.keypoints in ("online", "cached"), f"--keypoints {cfg.keypoints}: use online or cached"),
        (cfg.gray in ("bgr", "rgb"), f"--gray {cfg.gray}: use bgr or rgb"),
        (16 <= cfg.detect_size <= 4096, f"--detect-size {cfg.detect_size}: use 16..4096"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    if not Path(image).is_file():
        raise UserError(f"{image}: no such image file")
    try:
        array = decode_image(Path(image))
    except BadSampleError as error:
        raise UserError(f"{image}: {error.reason}") from None
    click.echo(format_config(cfg), err=True)
    result = keypoint_weights(array, cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("density", "weights"):
        tmp = out / f".{name}.tmp.npy"
        np.save(tmp, result[name])
        os.replace(tmp, out / f"{name}.npy")
    plot_weights(result, cfg, out / "weights.png")
    save_config(cfg, out / "config.json")
    w = result["weights"]
    click.echo(f"{len(result['points'])} keypoints; density mean {result['density'].mean():.3f}; weights "
               f"{w.min():.2f}..{w.max():.2f} (mean {w.mean():.2f}) -> {out}/weights.png, density.npy, weights.npy")
