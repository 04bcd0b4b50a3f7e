"""Full finetuning of a pretrained encoder (reference/original-kamim.md section 4, plus layer decay).

Head as the original: the encoder's final *normalised* tokens, CLS dropped, average pooled, one linear
layer. Training as the original (TrivialAugmentWide, RandomErasing, MixUp/CutMix, soft-target CE, AdamW,
warmup + cosine with a tail at lr_min). The default recipe (``kamim``) improves on it: layer-wise LR
decay 0.65 (the original's config has LR_DECAY=0.65 but never applies it), no weight decay on biases and
norms, clipping at 1.0, antialiased resizing; ``--recipe original`` runs the original's script as it was
(recipe.FINETUNE_RECIPES).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import torch
from timm.loss import SoftTargetCrossEntropy
from timm.optim._param_groups import param_groups_layer_decay
from torch import nn
from tqdm import tqdm

from kamim.config import format_config, save_config
from kamim.datasets import open_dataset
from kamim.errors import UserError
from kamim.train.compile import adamw, check_compile, compile_module
from kamim.validation import check_numbers, check_out

from .features import is_swin, make_loader
from .finetune_state import restore, resume_state, seed_everything, training_state
from .linprobe import write_json
from .recipe import (
    cosine_schedule,
    evaluate_classifier,
    finetune_recipe,
    mixed_batch,
    mixup_cutmix,
    original_train_transform,
    squash_eval_transform,
)
from .runs import default_out_dir, latest_run


@dataclasses.dataclass
class FinetuneConfig:
    recipe: str = "kamim"  # kamim: the improved defaults; original: the original's script (recipe.FINETUNE_RECIPES)
    checkpoint: str | None = None  # run dir, .pt checkpoint or .safetensors export
    latest: bool = False
    dataset: str = "photos"
    data_root: str | None = None
    epochs: int = 110  # the original: 100 + 10 warmup, the last 10 at lr_min
    warmup_epochs: int = 10
    batch_size: int = 2048
    lr: float = 5e-3
    weight_decay: float = 0.05
    lr_min: float = 2.5e-6
    layer_decay: float | None = None  # None: the recipe's (kamim 0.65; original 1.0 = none)
    decay_all: bool | None = None  # weight decay on biases and norms too (None: kamim no, original yes)
    mixup: float = 1.0  # MixUp/CutMix alpha; 0 disables
    clip_grad: float | None = None  # 0 = off; None: the recipe's (kamim 1.0; original 0 for ViT, 1.0 for Swin)
    antialias: bool | None = None  # antialiased Resize (None: kamim yes, original no)
    eval_batch_size: int = 128
    workers: int = 2
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 on cuda, fp32 on cpu
    compile: bool = False  # torch.compile the classifier (in place: checkpoints keep the eager keys)
    seed: int = 0
    out: str | None = None  # default: RUN_DIR/finetune
    resume: bool = False  # continue OUT from its newest checkpoint (exactly, on the CPU)
    save_every: int = 1  # epochs between checkpoints (OUT/checkpoints/step-*.pt; the last epoch always)
    keep_checkpoints: int = 2

    def resolved(self, family: str) -> FinetuneConfig:
        """The settings left as None filled from the recipe for a ``vit``/``swin`` encoder, so the saved
        config says what ran."""
        values = finetune_recipe(self.recipe, family)
        unset = {k: v for k, v in values.items() if k != "head_init" and getattr(self, k) is None}
        return dataclasses.replace(self, **unset)


class Classifier(nn.Module):
    """Encoder -> final normalised tokens (CLS dropped) -> average pool -> Linear."""

    def __init__(self, encoder: nn.Module, num_classes: int, head_init: str = "trunc_normal") -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.num_features, num_classes)  # "torch": PyTorch's default, as the original
        if head_init == "trunc_normal":
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder.forward_features(images)  # final norm applied
        if is_swin(self.encoder):
            return tokens.mean(dim=(1, 2))  # [B,h,w,C]
        return tokens[:, self.encoder.num_prefix_tokens:].mean(dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(images))


def param_groups(model: Classifier, weight_decay: float, layer_decay: float, decay_all: bool = False) -> list[dict]:
    """timm's layer-decay groups for the encoder (stem smallest, last block/norm 1.0); the head at 1.0.
    Biases and norms are not decayed unless ``decay_all`` (the original decayed everything; not decaying
    them is the usual practice). ``decay_all`` without layer decay: the original's single group."""
    if decay_all and layer_decay == 1.0:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    groups = param_groups_layer_decay(model.encoder, weight_decay=weight_decay, layer_decay=layer_decay)
    groups.append({"params": [model.head.weight], "weight_decay": weight_decay, "lr_scale": 1.0})
    groups.append({"params": [model.head.bias], "weight_decay": 0.0, "lr_scale": 1.0})
    for group in groups if decay_all else ():
        group["weight_decay"] = weight_decay
    return groups


def run_finetune(config: FinetuneConfig) -> dict:
    """Finetune one checkpoint; writes OUT/finetune.json (+ config, weights) and returns the result."""
    from torch.nn.parallel import DistributedDataParallel

    from kamim.train.checkpoint import load_pretrained, refuse_non_finite, save_checkpoint, write_safetensors
    from kamim.train.device import resolve_device, to_host
    from kamim.train.distributed import rank_loader

    check_numbers("finetune", config)  # every numeric flag: type, finite, range (kamim/validation.py)
    check_out(config.out)
    if config.latest == bool(config.checkpoint):
        raise UserError("give exactly one of --checkpoint RUN_DIR|FILE and --latest")
    checkpoint = latest_run(config.dataset) if config.latest else Path(config.checkpoint)
    config = dataclasses.replace(config, checkpoint=str(checkpoint))
    mim, info = load_pretrained(checkpoint)
    config = config.resolved(mim.family)  # --recipe fills what was not given (clip depends on ViT/Swin)
    train_ds = open_dataset(config.dataset, "train", config.data_root)
    val_ds = open_dataset(config.dataset, "val", config.data_root)
    out_dir = Path(config.out) if config.out else default_out_dir(checkpoint, "finetune")
    config = dataclasses.replace(config, out=str(out_dir))
    resumed = resume_state(out_dir, config)  # before anything is written: same settings, finite weights
    device = resolve_device(config.device, config.precision)  # joins the process group under torchrun
    if device.is_main:  # under torchrun every rank trains, only rank 0 prints and writes
        print(format_config(config), file=sys.stderr, flush=True)  # configs: stderr; results: stdout
        save_config(config, out_dir / "finetune_config.json")
    seed_everything(config.seed)  # MixUp/CutMix draw from numpy: seeded too, so a run repeats (and resumes) exactly
    img_size, num_classes = int(info.get("img_size", 192)), len(train_ds.classes)
    model = Classifier(mim.encoder, num_classes, finetune_recipe(config.recipe, mim.family)["head_init"])
    model = model.to(device.device)
    check_compile(config.compile, device.kind)
    compile_module(model, config.compile)
    optimizer = adamw(param_groups(model, config.weight_decay, config.layer_decay, config.decay_all), device.kind, lr=config.lr)
    # workers restart every epoch from the reseeded generator: an epoch's draws depend on (seed, epoch) only
    loader = make_loader(train_ds, original_train_transform(img_size, config.antialias), min(config.batch_size, len(train_ds)),
                         config.workers, shuffle=True, drop_last=True, seed=config.seed, persistent=False)
    val_loader = make_loader(val_ds, squash_eval_transform(img_size, config.antialias), config.eval_batch_size,
                             config.workers)
    loader = rank_loader(loader, device, config.seed)  # DistributedSampler over the ranks (torchrun)
    steps = len(loader)
    schedule = cosine_schedule(optimizer, config.epochs * steps, config.warmup_epochs * steps, config.lr_min,
                               config.lr_min, cosine_steps=max(1, config.epochs - config.warmup_epochs) * steps)
    mix, criterion = mixup_cutmix(num_classes, config.mixup), SoftTargetCrossEntropy()
    start, first, step, best, history, metrics, train_loss = time.perf_counter(), 0, 0, 0.0, [], {}, float("nan")
    if resumed is not None:
        first, step, best, history, metrics, train_loss = restore(resumed, model, optimizer, schedule)
        if device.is_main:
            print(f"finetune: resuming {out_dir} after epoch {first} (step {step})", flush=True)
    train_model = DistributedDataParallel(model) if device.world > 1 else model
    for epoch in tqdm(range(first, config.epochs), desc="finetune", disable=not device.is_main, initial=first,
                      total=config.epochs):
        if device.world > 1:
            loader.sampler.set_epoch(epoch)
        else:
            loader.generator.manual_seed(config.seed + epoch)
        model.train()
        for images, labels in loader:
            images, labels = images.to(device.device), labels.to(device.device)
            images, targets = mixed_batch(images, labels, mix, num_classes)
            with device.autocast():
                loss = criterion(train_model(images).float(), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
            optimizer.step()
            step += 1
            schedule.step_update(step)
        with device.autocast():
            metrics = evaluate_classifier(model, val_loader, device.device)
        best, train_loss = max(best, metrics["top1"]), float(loss.detach())
        history.append({"epoch": epoch + 1, "train_loss": train_loss, **metrics})
        if device.is_main and ((epoch + 1) % config.save_every == 0 or epoch + 1 == config.epochs):
            save_checkpoint(out_dir, step, to_host(training_state(model, optimizer, schedule, config, epoch + 1, step,
                                                                  best, history, metrics, train_loss)),
                            keep=config.keep_checkpoints)
    result = {
        # top-5 of 5 or fewer classes is 100% by construction: not reported (as linprobe)
        "top1": metrics["top1"], "top5": metrics["top5"] if num_classes > 5 else None, "best_top1": best,
        "val_loss": metrics["loss"],
        "epochs": config.epochs, "recipe": config.recipe, "layer_decay": config.layer_decay, "num_classes": num_classes,
        "checkpoint": str(checkpoint), "model": info.get("model"), "dataset": config.dataset,
        "seconds": time.perf_counter() - start, "history": history,
    }
    if not device.is_main:  # every rank evaluated the whole val set, so all return the same result
        return result
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    refuse_non_finite(weights, out_dir / "finetuned.safetensors")
    write_safetensors(weights, out_dir / "finetuned.safetensors", hint="free disk space and rerun with --resume")
    write_json(out_dir / "finetune.json", result)
    top5 = f"{result['top5']:.2f}%" if result["top5"] is not None else f"n/a ({num_classes} classes)"
    print(f"finetune: top-1 {result['top1']:.2f}%  top-5 {top5}  (best top-1 {best:.2f}%) "
          f"-> {out_dir / 'finetune.json'}", flush=True)
    return result
