"""Fidelity of the cache (DESIGN.md 4.1, 4.3, 8): per-patch keypoint densities of random training crops,
cached vs online (the original: detection on the 192 crop, drawn by OpenCV), against two noise floors
of the original itself: A, the crop box moved by one source pixel; B, the crop translated by one output
pixel. Reported per source, detector, cache design and w_ps: the Pearson r of the per-patch densities
(median and 10th percentile over crops), r / floor A, the mean-density ratio cached/online and the
mean-weight ratio at T 0.25 (median, 10th-90th percentile).

Cache designs ("variants"), each exactly what the cache builder stores and the loader reads back:
``cache256`` the default (detect size 256), ``cache192`` (detect size 192, about the crop's own scale),
``select256`` (detect size 256 with per-point attributes and the crop-time selection of
kamim.cache.select). Sources: ``photos`` (held-out 224-px photos), ``large`` (ImageNet-sized),
``tiny`` (the photos area-downscaled to 32x32, CIFAR-like; RandomResizedCrop upsamples them as the
original does).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import click
import numpy as np
import torch
from joblib import Parallel, delayed

from kamim.train.augment import sample_crop, sample_seed, seeded
from kamim.train.weighting import patch_density, patch_weights

from .caches import source
from .common import cores, log, ratio_entry, start, write_result
from .fidelity_maps import IMG, cached_map, online_maps, plain_entry, selection_entry, tiny

TEMPERATURE = 0.25
VARIANTS = {
    "fast": {"cache256": (plain_entry, 256)},
    "sift": {"cache256": (plain_entry, 256), "cache192": (plain_entry, 192), "select256": (selection_entry, 256)},
    "orb": {"cache256": (plain_entry, 256), "cache192": (plain_entry, 192), "select256": (selection_entry, 256)},
}


@dataclass
class FidelityBenchConfig:
    quick: bool = False
    sources: tuple[str, ...] = ("photos", "large", "tiny")
    split: str = "val"  # held out: never seen by the training benchmarks
    detectors: tuple[str, ...] = ("fast", "sift", "orb")
    weight_patch_sizes: tuple[int, ...] = (8, 16)
    crops: dict[str, int] = field(default_factory=lambda: {"photos": 120, "large": 60, "tiny": 120})
    seed: int = 1234


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double().numpy(), b.flatten().double().numpy()
    if a.std() == 0 or b.std() == 0:
        return float("nan")  # a blank or saturated crop: correlation undefined
    return float(np.corrcoef(a, b)[0, 1])


def spread(values: list[float]) -> dict:
    """median, 10th and 90th percentile over the finite values, and how many were not."""
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return {"median": float("nan"), "p10": float("nan"), "p90": float("nan"), "undefined": len(values)}
    p10, p50, p90 = np.percentile(finite, [10, 50, 90])
    return {"median": round(float(p50), 4), "p10": round(float(p10), 4), "p90": round(float(p90), 4),
            "undefined": len(values) - len(finite)}


def load_images(tag: str, split: str, count: int) -> list[np.ndarray]:
    src = source("photos" if tag == "tiny" else tag, split)
    dataset = src.open()
    step = max(1, len(dataset) // count)  # spread over the classes (photos are grouped by source photo)
    images = [dataset[i][0] for i in range(0, len(dataset), step)][:count]
    return [tiny(im) for im in images] if tag == "tiny" else images


def run(cfg: FidelityBenchConfig) -> dict:
    began = start(cfg)
    for tag in cfg.sources:  # made once here (the photos and large sets write themselves on first use)
        source("photos" if tag == "tiny" else tag, cfg.split).open()
    jobs = [(tag, detector) for tag in cfg.sources for detector in cfg.detectors]
    # One (source, detector) per process: the crops are independent, and the 2-core default run halves.
    parallel = Parallel(n_jobs=min(cores(), len(jobs)), backend="loky")
    done = parallel(delayed(measure)(tag, detector, cfg) for tag, detector in jobs)
    results: dict = {tag: {"crops": cfg.crops[tag]} for tag in cfg.sources}
    ratios: list = []
    for (tag, detector), (result, lines, entries) in zip(jobs, done, strict=True):
        results[tag][detector] = result
        ratios += entries
        for line in lines:
            log(line)
    write_result("fidelity", cfg, {"results": results, "ratios": ratios}, began)
    return {"results": results, "ratios": ratios}


def measure(tag: str, detector: str, cfg: FidelityBenchConfig) -> tuple[dict, list[str], list[dict]]:
    """(result, log lines, ratio entries) of one detector on one source."""
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    images = load_images(tag, cfg.split, cfg.crops[tag])
    ratios: list = []
    variants = VARIANTS[detector]
    corr = {name: {w: [] for w in cfg.weight_patch_sizes} for name in ("floor_a", "floor_b", *variants)}
    density = {name: [] for name in variants}
    weight = {name: {w: [] for w in cfg.weight_patch_sizes} for name in variants}
    points = {name: [] for name in ("online", *variants)}
    skipped = 0
    for index, image in enumerate(images):
        with seeded(sample_seed(cfg.seed, 0, index)):
            crop = sample_crop(image.shape[0], image.shape[1], IMG)
        maps = online_maps(image, crop, detector)
        if maps is None:
            skipped += 1
            continue
        online = maps.pop("online")
        points["online"].append(int((online > 0).sum()))
        for name, (entry, detect_size) in variants.items():
            maps[name], drawn = cached_map(entry(image, detector, detect_size), crop, detector)
            points[name].append(drawn)
        for w in cfg.weight_patch_sizes:
            d_on = patch_density(online[None], w)
            w_on = patch_weights(d_on, TEMPERATURE).mean()
            for name, ring in maps.items():
                d = patch_density(ring[None], w)
                corr[name][w].append(pearson(d, d_on))
                if name in variants:
                    weight[name][w].append(float(patch_weights(d, TEMPERATURE).mean() / w_on))
                    if w == cfg.weight_patch_sizes[0]:
                        density[name].append(float(d.mean() / d_on.mean()) if d_on.mean() > 0 else float("nan"))
    lines: list[str] = []
    result = summarise(tag, detector, cfg, corr, density, weight, points, skipped, ratios, lines)
    return result, lines, ratios


def summarise(tag: str, detector: str, cfg: FidelityBenchConfig, corr: dict, density: dict, weight: dict,
              points: dict, skipped: int, ratios: list, lines: list[str]) -> dict:
    result: dict = {"skipped_crops": skipped, "ring_pixels_online_median": float(np.median(points["online"]))}
    for w in cfg.weight_patch_sizes:
        floor_a, floor_b = spread(corr["floor_a"][w]), spread(corr["floor_b"][w])
        result[f"w_ps{w}"] = {"floor_a": floor_a, "floor_b": floor_b}
        for name in VARIANTS[detector]:
            r = spread(corr[name][w])
            entry = {
                "r": r,
                "r_over_floor_a": {"median": round(r["median"] / floor_a["median"], 4),
                                   "p10": round(r["p10"] / floor_a["p10"], 4)},
                # On tiny images one source pixel is 6 output pixels: floor A is no floor there, B is.
                "r_over_floor_b": {"median": round(r["median"] / floor_b["median"], 4),
                                   "p10": round(r["p10"] / floor_b["p10"], 4)},
                "mean_weight_ratio_T0.25": spread(weight[name][w]),
            }
            if w == cfg.weight_patch_sizes[0]:
                entry["density_ratio"] = spread(density[name])
            result[f"w_ps{w}"][name] = entry
            dr = spread(density[name])
            wr = entry["mean_weight_ratio_T0.25"]
            lines.append(f"fidelity {tag:6s} {detector} {name:9s} w_ps {w:2d}: r {r['median']:.3f}/{r['p10']:.3f} "
                f"floor A {floor_a['median']:.3f}/{floor_a['p10']:.3f} B {floor_b['median']:.3f}/{floor_b['p10']:.3f} "
                f"| /A {entry['r_over_floor_a']['median']:.3f}/{entry['r_over_floor_a']['p10']:.3f} "
                f"/B {entry['r_over_floor_b']['median']:.3f}/{entry['r_over_floor_b']['p10']:.3f} "
                f"| density {dr['median']:.2f} [{dr['p10']:.2f}-{dr['p90']:.2f}] "
                f"| weight {wr['median']:.3f} [{wr['p10']:.2f}-{wr['p90']:.2f}]")
            floor, key = (floor_b, "r_over_floor_b") if tag == "tiny" else (floor_a, "r_over_floor_a")
            for stat in ("median", "p10"):
                ratios.append(ratio_entry(f"fidelity {tag} {detector} {name} w_ps {w} r/floor{key[-1].upper()} {stat}",
                                          entry[key][stat], 0.97, note=f"{r[stat]:.3f} vs {floor[stat]:.3f}"))
            ratios.append(ratio_entry(f"fidelity {tag} {detector} {name} w_ps {w} mean-weight ratio T0.25",
                                      abs(wr["median"] - 1.0), 0.05, higher_is_better=False,
                                      note=f"|{wr['median']:.3f} - 1| (p10-p90 {wr['p10']:.2f}-{wr['p90']:.2f})"))
    return result


def config(quick: bool = False) -> FidelityBenchConfig:
    cfg = FidelityBenchConfig(quick=quick)
    if quick:
        cfg.crops = {"photos": 16, "large": 8, "tiny": 16}
    return cfg


@click.command()
@click.option("--quick", is_flag=True, help="A few crops per source: checks the benchmark works.")
def main(quick: bool) -> None:
    """Per-patch density cached vs online against floors A and B, density and mean-weight ratios."""
    run(config(quick))


if __name__ == "__main__":
    main()
