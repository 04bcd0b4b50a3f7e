"""Linear-probe cost on this CPU: frozen-feature extraction img/s per model (the probe's dominant cost),
timed on a slice of `photos` val, and the implied time for all of `photos` (2,000 train + 500 val).

    python -m bench.probe_cost [--images 128] [--models vit_t,vit_b,swin_t]
"""

from __future__ import annotations

import json
import time

import click
import torch

from .common import results_dir


@click.command()
@click.option("--images", default=128, show_default=True)
@click.option("--models", default="vit_t,vit_s,vit_b,swin_t", show_default=True)
@click.option("--workers", default=2, show_default=True)
def main(images: int, models: str, workers: int) -> None:
    from torch.utils.data import Subset

    from kamim.datasets import open_dataset
    from kamim.evaluate.features import default_layer, extract_features
    from kamim.train.models import build_model

    dataset = open_dataset("photos", "val", None)
    subset = Subset(dataset, range(min(images, len(dataset))))
    rows = {}
    for name in models.split(","):
        encoder = build_model(name, 192).encoder
        layer = default_layer(encoder)
        extract_features(encoder, Subset(dataset, range(32)), layer, "avg", 192, "crop", 32, workers, torch.device("cpu"))
        began = time.perf_counter()
        extract_features(encoder, subset, layer, "avg", 192, "crop", 32, workers, torch.device("cpu"))
        rate = len(subset) / (time.perf_counter() - began)
        rows[name] = {"images_per_s": round(rate, 1), "photos_minutes": round(2500 / rate / 60, 1), "layer": layer}
        print(f"{name}: {rate:.1f} img/s -> photos (2,500 images) {2500 / rate / 60:.1f} min", flush=True)
    path = results_dir(False) / "probe_cost.json"
    path.write_text(json.dumps({"benchmark": "probe_cost", "images": len(subset), "workers": workers,
                                "results": rows}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
