"""Linear probe of a frozen pretrained encoder (reference/original-kamim.md section 4).

Two recipes. ``fast`` (default): features of one block are extracted once for train and val, cached on
disk keyed by the weights and every setting that changes them, and the linear head trains on them.
``original``: the original's augmentations (TrivialAugmentWide, RandomErasing, MixUp/CutMix) and
schedule, running the frozen backbone on every step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from timm.loss import SoftTargetCrossEntropy
from torch import nn
from tqdm import tqdm

from kamim.config import format_config, save_config
from kamim.datasets import open_dataset
from kamim.errors import UserError
from kamim.paths import usual_mode
from kamim.validation import check_numbers, check_out

from .features import (
    check_layer,
    default_layer,
    eval_transform,
    extract_features,
    feature_key,
    layer_features,
    load_features,
    make_loader,
    save_features,
)
from .recipe import (
    cosine_schedule,
    evaluate_classifier,
    mixed_batch,
    mixup_cutmix,
    original_train_transform,
    squash_eval_transform,
    topk_correct,
)
from .runs import default_out_dir, latest_run, pick_device

RECIPES = ("fast", "original")


@dataclasses.dataclass
class LinprobeConfig:
    checkpoint: str | None = None  # run dir, .pt checkpoint or .safetensors export
    latest: bool = False  # probe the newest run under runs/ pretrained on `dataset`
    dataset: str = "photos"
    data_root: str | None = None
    layer: int | None = None  # 1-based block (ViT) or stage (Swin); None: 8 for ViT, last stage for Swin
    pool: str = "avg"  # avg: mean of patch tokens (CLS dropped); cls: the CLS token
    bn: bool = False  # BatchNorm1d(affine=False) before the linear layer (MAE-style)
    recipe: str = "fast"
    epochs: int | None = None  # None: 100 (fast), 110 = 100 + 10 warmup (original)
    warmup_epochs: int = 10
    batch_size: int | None = None  # None: 256 (fast), 2048 (original)
    lr: float = 5e-3
    weight_decay: float = 0.05
    lr_min: float = 2.5e-6
    mixup: float = 1.0  # original recipe: MixUp/CutMix alpha (0 disables)
    resize: str | None = None  # crop | squash; None: crop (fast), squash (original, its Resize((192,192)))
    feature_batch_size: int = 128
    workers: int = 2
    device: str = "auto"
    seed: int = 0
    compile: bool = False  # torch.compile the encoder for feature extraction (fast recipe)
    out: str | None = None  # default: RUN_DIR/linprobe or <file stem>-linprobe beside the file

    def resolved(self) -> LinprobeConfig:
        """Fill the recipe-dependent defaults, so the saved config says what actually ran."""
        if self.recipe not in RECIPES:
            raise UserError(f"--recipe {self.recipe}: use one of {', '.join(RECIPES)}")
        check_numbers("linprobe", self)  # every numeric flag: type, finite, range (kamim/validation.py)
        check_out(self.out)
        original = self.recipe == "original"
        return dataclasses.replace(
            self,
            epochs=self.epochs if self.epochs is not None else (110 if original else 100),
            batch_size=self.batch_size or (2048 if original else 256),
            resize=self.resize or ("squash" if original else "crop"),
        )


class ProbeHead(nn.Sequential):
    """[optional BatchNorm1d(affine=False)] + Linear, the only trained part."""

    def __init__(self, dim: int, num_classes: int, bn: bool) -> None:
        layers: list[nn.Module] = [nn.BatchNorm1d(dim, affine=False, eps=1e-6)] if bn else []
        linear = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(linear.weight, std=0.01)
        nn.init.zeros_(linear.bias)
        super().__init__(*layers, linear)


class FrozenProbe(nn.Module):
    """Frozen encoder features (no grad, in chunks) + the trainable head."""

    def __init__(self, encoder: nn.Module, head: ProbeHead, layer: int, pool: str, chunk: int) -> None:
        super().__init__()
        self.encoder, self.head, self.layer, self.pool, self.chunk = encoder, head, layer, pool, chunk

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.encoder.eval()
        feats = torch.cat([layer_features(self.encoder, part, self.layer, self.pool)
                           for part in images.split(self.chunk)])
        return self.head(feats)


def resolve_checkpoint(config: LinprobeConfig) -> Path:
    if config.latest == bool(config.checkpoint):
        raise UserError("give exactly one of --checkpoint RUN_DIR|FILE and --latest")
    return latest_run(config.dataset) if config.latest else Path(config.checkpoint)


def cached_features(encoder, dataset, config: LinprobeConfig, img_size: int, device, out_dir: Path):
    """(features, labels) of one split, from the on-disk cache when its key matches, else extracted."""
    fields = {"dataset": dataset.name, "split": dataset.split, "fingerprint": dataset.fingerprint(),
              "layer": config.layer, "pool": config.pool, "img_size": img_size, "resize": config.resize}
    path = out_dir / "features" / f"{dataset.split}-{feature_key(encoder, fields)}.safetensors"
    cached = load_features(path)
    if cached is not None:
        print(f"linprobe: reusing {dataset.split} features {path}", file=sys.stderr, flush=True)  # progress: stderr
        return cached["features"], cached["labels"], True
    features, labels = extract_features(encoder, dataset, config.layer, config.pool, img_size, config.resize,
                                        config.feature_batch_size, config.workers, device, desc=dataset.split,
                                        compile_=config.compile)
    save_features(path, {"features": features, "labels": labels}, fields)
    return features, labels, False


def train_head_on_features(head: ProbeHead, train: tuple, val: tuple, config: LinprobeConfig,
                           device: torch.device) -> dict:
    """AdamW + warmup/cosine on cached features; returns the final and best val metrics."""
    if device.type != "cpu":
        return _train_head(head, train, val, config, device)
    # A linear head's matmuls are too small to gain from threads; on a busy 2-core box the thread
    # hand-offs made 100 epochs take 44.6 s instead of 1.7 s single-threaded.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_head(head, train, val, config, device)
    finally:
        torch.set_num_threads(threads)


def _train_head(head: ProbeHead, train: tuple, val: tuple, config: LinprobeConfig, device: torch.device) -> dict:
    (x, y), (xv, yv) = (t.to(device) for t in train), (t.to(device) for t in val)
    head.to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = -(-len(x) // config.batch_size)
    schedule = cosine_schedule(optimizer, config.epochs * steps_per_epoch, config.warmup_epochs * steps_per_epoch,
                               config.lr_min, config.lr_min)
    generator = torch.Generator().manual_seed(config.seed)
    step, best = 0, 0.0
    for _ in tqdm(range(config.epochs), desc="head", leave=False):
        head.train()
        for batch in torch.randperm(len(x), generator=generator).to(device).split(config.batch_size):
            if config.bn and len(batch) < 2:
                continue  # BatchNorm cannot normalise a single sample
            loss = nn.functional.cross_entropy(head(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            schedule.step_update(step)
        metrics = score_features(head, xv, yv)
        best = max(best, metrics["top1"])
    return {**metrics, "best_top1": best, "train_loss": float(loss.detach())}


@torch.no_grad()
def score_features(head: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    head.eval()
    logits = head(x).float()
    c1, c5 = topk_correct(logits, y)
    return {"top1": 100.0 * c1 / len(y), "top5": 100.0 * c5 / len(y),
            "loss": float(nn.functional.cross_entropy(logits, y)), "count": len(y)}


def train_original_recipe(probe: FrozenProbe, train_ds, val_ds, config: LinprobeConfig, img_size: int,
                          num_classes: int, device: torch.device) -> dict:
    """The original's loop: augmented images through the frozen backbone every step, MixUp/CutMix,
    soft-target cross-entropy, AdamW + warmup/cosine with the last warmup_epochs at lr_min."""
    batch = min(config.batch_size, len(train_ds))
    loader = make_loader(train_ds, original_train_transform(img_size), batch, config.workers, shuffle=True,
                         drop_last=True, seed=config.seed)
    # The original's validation Resize((192,192)) ran without antialias, like its training transform.
    val_transform = squash_eval_transform(img_size) if config.resize == "squash" else eval_transform(img_size, "crop")
    val_loader = make_loader(val_ds, val_transform, config.feature_batch_size, config.workers)
    mix = mixup_cutmix(num_classes, config.mixup)
    criterion = SoftTargetCrossEntropy()
    optimizer = torch.optim.AdamW(probe.head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = len(loader)
    schedule = cosine_schedule(optimizer, config.epochs * steps, config.warmup_epochs * steps, config.lr_min,
                               config.lr_min, cosine_steps=(config.epochs - config.warmup_epochs) * steps)
    step, best = 0, 0.0
    for _ in tqdm(range(config.epochs), desc="epochs", leave=False):
        probe.head.train()
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            images, targets = mixed_batch(images, labels, mix, num_classes)
            loss = criterion(probe(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            schedule.step_update(step)
        metrics = evaluate_classifier(probe, val_loader, device)
        best = max(best, metrics["top1"])
    return {**metrics, "best_top1": best, "train_loss": float(loss.detach())}


def write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def run_linprobe(config: LinprobeConfig) -> dict:
    """Probe one checkpoint; writes OUT/linprobe.json (+ config, head weights) and returns the result."""
    from kamim.train.checkpoint import load_pretrained

    config = config.resolved()
    checkpoint = resolve_checkpoint(config)
    model, info = load_pretrained(checkpoint)
    encoder = model.encoder.requires_grad_(False)
    config = dataclasses.replace(config, checkpoint=str(checkpoint),
                                 layer=config.layer if config.layer is not None else default_layer(encoder))
    check_layer(encoder, config.layer, config.pool)
    train_ds = open_dataset(config.dataset, "train", config.data_root)
    val_ds = open_dataset(config.dataset, "val", config.data_root)
    if train_ds.classes != val_ds.classes:
        raise UserError(f"{config.dataset}: train and val have different classes; fix the val folder")
    out_dir = Path(config.out) if config.out else default_out_dir(checkpoint, "linprobe")
    config = dataclasses.replace(config, out=str(out_dir))
    print(format_config(config), file=sys.stderr, flush=True)  # configs and progress: stderr; results: stdout
    save_config(config, out_dir / "linprobe_config.json")
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    encoder.to(device)
    img_size, num_classes = int(info.get("img_size", 192)), len(train_ds.classes)
    start = time.perf_counter()
    timing: dict[str, float] = {}
    if config.recipe == "fast":
        xt, yt, reused_train = cached_features(encoder, train_ds, config, img_size, device, out_dir)
        xv, yv, reused_val = cached_features(encoder, val_ds, config, img_size, device, out_dir)
        timing["features_s"] = time.perf_counter() - start
        head = ProbeHead(xt.shape[1], num_classes, config.bn)
        torch.manual_seed(config.seed)
        metrics = train_head_on_features(head, (xt, yt), (xv, yv), config, device)
        timing["features_reused"] = reused_train and reused_val
    else:
        head = ProbeHead(encoder.num_features, num_classes, config.bn)
        probe = FrozenProbe(encoder, head.to(device), config.layer, config.pool, config.feature_batch_size)
        metrics = train_original_recipe(probe, train_ds, val_ds, config, img_size, num_classes, device)
    timing["total_s"] = time.perf_counter() - start
    result = {
        # top-5 of 5 or fewer classes is 100% by construction: not reported
        "top1": metrics["top1"], "top5": metrics["top5"] if num_classes > 5 else None, "best_top1": metrics["best_top1"],
        "val_loss": metrics["loss"], "train_loss": metrics["train_loss"], "val_count": metrics["count"],
        "train_count": len(train_ds), "num_classes": num_classes, "recipe": config.recipe,
        "layer": config.layer, "pool": config.pool, "bn": config.bn, "epochs": config.epochs,
        "checkpoint": str(checkpoint), "source": info.get("source"), "model": info.get("model"),
        "dataset": config.dataset, "timing": timing,
    }
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
              str(out_dir / "head.safetensors"))
    usual_mode(out_dir / "head.safetensors")  # safetensors writes 0600; every other output is 0644
    write_json(out_dir / "linprobe.json", result)
    top5 = f"{result['top5']:.2f}%" if result["top5"] is not None else f"n/a ({num_classes} classes)"
    print(f"linprobe: top-1 {result['top1']:.2f}%  top-5 {top5}  (best top-1 "
          f"{result['best_top1']:.2f}%, {config.recipe} recipe, layer {config.layer}, {config.pool} pool, "
          f"{timing['total_s']:.1f} s) -> {out_dir / 'linprobe.json'}", flush=True)
    return result
