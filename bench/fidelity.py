"""Fidelity of the cache (DESIGN.md 4.1): per-patch keypoint densities of a random training crop,
cached (detected once at detect_size 256 on the whole image, points moved by the crop, rastered on the
device) vs online (detected on the 192 crop, drawn by OpenCV: the original), against the original's own
noise floor (online vs online with the crop shifted by one source pixel). Held-out photos, many crops.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import click
import numpy as np
import torch

from kamim.cache import open_cache
from kamim.train.augment import crop_image, crop_points, sample_crop, sample_seed, seeded
from kamim.train.data import online_ring_map
from kamim.train.weighting import patch_density

from .caches import ensure_cache, source
from .common import log, median, ratio_entry, start, write_result

IMG = 192


@dataclass
class FidelityBenchConfig:
    quick: bool = False
    # large: ImageNet-sized (mostly upscaled, so smoother than real photos); photos: real 224-px crops
    sources: tuple[str, ...] = ("large", "photos")
    split: str = "val"  # held out: never seen by the training benchmarks
    detectors: tuple[str, ...] = ("fast", "sift", "orb")
    weight_patch_sizes: tuple[int, ...] = (8, 16)
    crops: int = 160
    detect_size: int = 256
    seed: int = 1234


def shifted(crop, width: int, height: int):  # noqa: ANN001, ANN201
    """The same crop moved by one source pixel (right, else left, else down, else up); None if it fills
    the image both ways."""
    if crop.left + crop.width < width:
        return dataclasses.replace(crop, left=crop.left + 1)
    if crop.left > 0:
        return dataclasses.replace(crop, left=crop.left - 1)
    if crop.top + crop.height < height:
        return dataclasses.replace(crop, top=crop.top + 1)
    if crop.top > 0:
        return dataclasses.replace(crop, top=crop.top - 1)
    return None


def cached_map(points: np.ndarray) -> torch.Tensor:
    """The trainer's path: padded points -> ring_maps_torch (the stamp table)."""
    from kamim.preprocess.raster import ring_maps_torch

    tensor = torch.from_numpy(points).reshape(1, -1, 2)
    return ring_maps_torch(tensor, torch.tensor([len(points)]), IMG)[0]


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double().numpy(), b.flatten().double().numpy()
    if a.std() == 0 or b.std() == 0:
        return float("nan")  # a blank or saturated crop: correlation undefined
    return float(np.corrcoef(a, b)[0, 1])


def run(cfg: FidelityBenchConfig) -> dict:
    began = start(cfg)
    results, ratios = {}, []
    for tag in cfg.sources:
        results[tag] = measure_source(tag, cfg, ratios)
    payload = {"results": results, "ratios": ratios}
    write_result("fidelity", cfg, payload, began)
    return payload


def measure_source(tag: str, cfg: FidelityBenchConfig, ratios: list) -> dict:
    src = source(tag, cfg.split)
    dataset = src.open()
    images = [dataset[i][0] for i in range(min(len(dataset), cfg.crops))]
    results = {"dataset": f"{src.tag}/{src.split} ({len(images)} images, {cfg.crops} crops)"}
    for detector in cfg.detectors:
        cache = open_cache(ensure_cache(src, detector, "zarr", detect_size=cfg.detect_size))
        corr = {w: {"cached_vs_online": [], "floor_online_vs_shifted": []} for w in cfg.weight_patch_sizes}
        skipped = 0
        for k in range(cfg.crops):
            index = k % len(images)
            image = images[index]
            height, width = image.shape[:2]
            with seeded(sample_seed(cfg.seed, k // len(images), index)):
                crop = sample_crop(height, width, IMG)
            other = shifted(crop, width, height)
            if other is None:
                skipped += 1
                continue
            online = torch.from_numpy(online_ring_map(crop_image(image, crop, IMG), detector)).float()
            online_shift = torch.from_numpy(online_ring_map(crop_image(image, other, IMG), detector)).float()
            cached = cached_map(crop_points(cache.points(index), crop, IMG))
            for w in cfg.weight_patch_sizes:
                d_on, d_shift, d_cached = (patch_density(m[None], w)[0] for m in (online, online_shift, cached))
                corr[w]["cached_vs_online"].append(pearson(d_cached, d_on))
                corr[w]["floor_online_vs_shifted"].append(pearson(d_on, d_shift))
        results[detector] = {}
        for w, pair in corr.items():
            cached_values = [c for c in pair["cached_vs_online"] if np.isfinite(c)]
            floor_values = [c for c in pair["floor_online_vs_shifted"] if np.isfinite(c)]
            cached_median, floor_median = median(cached_values), median(floor_values)
            results[detector][f"w_ps{w}"] = {
                "cached_vs_online_median": round(cached_median, 4),
                "floor_online_vs_shifted_median": round(floor_median, 4),
                "crops": len(pair["cached_vs_online"]),
                "undefined": len(pair["cached_vs_online"]) - len(cached_values),
            }
            log(f"fidelity {tag} {detector} w_ps {w}: cached-vs-online {cached_median:.3f}, floor {floor_median:.3f}")
            ratios.append(ratio_entry(f"fidelity {tag} {detector} w_ps {w} cached/floor",
                                      cached_median / floor_median, 0.97,
                                      note=f"{cached_median:.3f} vs {floor_median:.3f}"))
        results[detector]["skipped_crops"] = skipped
    return results


def config(quick: bool = False) -> FidelityBenchConfig:
    cfg = FidelityBenchConfig(quick=quick)
    if quick:
        cfg.crops = 24
    return cfg


@click.command()
@click.option("--quick", is_flag=True, help="24 crops instead of 160: checks the benchmark works.")
def main(quick: bool) -> None:
    """Density correlation cached vs online, against the online-vs-shifted floor (FAST/SIFT/ORB, w_ps 8/16)."""
    run(config(quick))


if __name__ == "__main__":
    main()
