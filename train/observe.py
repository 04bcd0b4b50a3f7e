"""What a run shows while it trains: JSONL metrics (optionally TensorBoard / wandb) and reconstruction grids."""

from __future__ import annotations

import contextlib
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
        if self.path.exists():  # records past the checkpoint (all of them for a fresh start) are redone
            self._truncate_after(start_step)
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
        """Keep the records up to ``step``. A torn last line (a write cut short by a full disk or a kill)
        is dropped; an unreadable line before the last one is damage, named in one line."""
        text = self.path.read_text(errors="replace")
        lines = text.split("\n")
        complete, torn = lines[:-1], lines[-1]  # text after the last newline never finished writing
        kept = []
        for number, line in enumerate(complete, start=1):
            if not line:
                continue
            try:
                record = json.loads(line)
                step_of = record.get("step", 0) if isinstance(record, dict) else None
            except ValueError:
                step_of = None
            if not isinstance(step_of, int):
                if number == len(complete) and not torn:  # a torn last record that did get its newline
                    break
                raise UserError(f"{self.path} line {number} is not a metrics record ({line[:60]!r}); delete that "
                                f"line (or the file) and resume")
            if step_of <= step:
                kept.append(line)
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text("".join(line + "\n" for line in kept))
        except OSError as error:
            tmp.unlink(missing_ok=True)
            raise UserError(f"cannot rewrite {self.path} ({os.strerror(error.errno or 0)}); free disk space and "
                            f"resume") from None
        os.replace(tmp, self.path)

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(jsonable(record)) + "\n"
        try:
            end = os.fstat(self.file.fileno()).st_size  # every earlier record was flushed whole
            self.file.write(line)
            self.file.flush()
        except OSError as error:  # full disk or size limit: cut the torn line off, name the file
            self._cut_to(end)
            raise UserError(f"cannot write {self.path}: {os.strerror(error.errno or 0)}; free disk space and "
                            f"resume (--resume): checkpoints so far are untouched") from None
        step = record["step"]
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb is not None:
            for key, value in numbers.items():
                self.tb.add_scalar(f"pretrain/{key}", value, step)
        if self.wandb is not None:
            self.wandb.log(numbers, step=step)

    def _cut_to(self, end: int) -> None:
        """Drop a partly written record (whatever reached the disk past ``end``); the rest stays valid."""
        with contextlib.suppress(OSError):  # the buffered rest cannot be flushed either; the truncate drops it
            self.file.close()
        with contextlib.suppress(OSError):  # if even this fails, resume drops a torn last line (_truncate_after)
            os.truncate(self.path, end)
        self.file = self.path.open("a")

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def save_grid(path: Path, images: torch.Tensor, pixel_mask: torch.Tensor, recon: torch.Tensor,
              weights: torch.Tensor | None, rows: int = 4, title: str = "") -> Path:
    """PNG with one row per image: input | masked input | reconstruction (visible pixels pasted) | weights
    (KAMIM only: SimMIM has no weight map, so no column). ``title`` names the run (method, step);
    the figure adds how many of the batch's images it shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images_in_batch = images.shape[0]
    rows = min(rows, images_in_batch)
    images, recon = denormalize(images[:rows].cpu()), denormalize(recon[:rows].detach().cpu())
    mask = pixel_mask[:rows].float().cpu()
    masked = images * (1 - mask)
    pasted = images * (1 - mask) + recon * mask
    columns = 4 if weights is not None else 3
    titles = ("input", "masked input", "reconstruction", "KAMIM weight map")[:columns]
    fig, axes = plt.subplots(rows, columns, figsize=(2 * columns, 2 * rows + 0.6), squeeze=False)
    for r in range(rows):
        panels = (images[r], masked[r], pasted[r])
        for c, panel in enumerate(panels):
            axes[r, c].imshow(panel.permute(1, 2, 0).numpy())
        if weights is not None:
            shown = axes[r, 3].imshow(weights[r, 0].float().cpu().numpy(), cmap="magma", vmin=1.0)
            fig.colorbar(shown, ax=axes[r, 3], fraction=0.046)
        for c in range(columns):
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(titles[c], fontsize=9)
    fig.suptitle(f"{title}{'; ' if title else ''}{rows} of {images_in_batch} images of the step's last micro-batch",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)
    return path
