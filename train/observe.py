"""What a run shows while it trains: JSONL metrics (optionally TensorBoard / wandb) and reconstruction grids."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from kamim.errors import UserError

from .augment import denormalize
from .checkpoint import jsonable


class MetricsLog:
    """Append-only ``metrics.jsonl`` (flushed per record); TensorBoard/wandb only when asked for."""

    def __init__(self, run_dir: Path, config: dict[str, Any], tensorboard: bool = False,
                 wandb_project: str | None = None, start_step: int = 0) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        if start_step and self.path.exists():
            self._truncate_after(start_step)  # records past the checkpoint were never saved: redo them
        self.file = self.path.open("a")
        self.tb = self.wandb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("--tensorboard needs tensorboard: pip install -e '.[tensorboard]'") from None
            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if wandb_project:
            try:
                import wandb
            except ImportError:
                raise UserError("--wandb needs wandb: pip install -e '.[wandb]'") from None
            self.wandb = wandb.init(project=wandb_project, config=config, dir=str(run_dir), resume="allow")

    def _truncate_after(self, step: int) -> None:
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(jsonable(record)) + "\n")
        self.file.flush()
        step = record["step"]
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb is not None:
            for key, value in numbers.items():
                self.tb.add_scalar(f"pretrain/{key}", value, step)
        if self.wandb is not None:
            self.wandb.log(numbers, step=step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def save_grid(path: Path, images: torch.Tensor, pixel_mask: torch.Tensor, recon: torch.Tensor,
              weights: torch.Tensor | None, rows: int = 4) -> Path:
    """PNG with one row per image: input | masked input | reconstruction (visible pixels pasted) | weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = min(rows, images.shape[0])
    images, recon = denormalize(images[:rows].cpu()), denormalize(recon[:rows].detach().cpu())
    mask = pixel_mask[:rows].float().cpu()
    masked = images * (1 - mask)
    pasted = images * (1 - mask) + recon * mask
    weight = weights[:rows, 0].float().cpu() if weights is not None else torch.ones_like(mask[:, 0])
    titles = ("input", "masked input", "reconstruction", "weight map")
    fig, axes = plt.subplots(rows, 4, figsize=(8, 2 * rows + 0.3), squeeze=False)
    for r in range(rows):
        panels = (images[r], masked[r], pasted[r])
        for c, panel in enumerate(panels):
            axes[r, c].imshow(panel.permute(1, 2, 0).numpy())
        shown = axes[r, 3].imshow(weight[r].numpy(), cmap="magma", vmin=1.0)
        fig.colorbar(shown, ax=axes[r, 3], fraction=0.046)
        for c in range(4):
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(titles[c], fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)
    return path
