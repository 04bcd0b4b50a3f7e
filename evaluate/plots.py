"""Shared matplotlib helpers for the analyses (Agg backend: files only, no display needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # noqa: E402

from kamim.train.checkpoint import jsonable  # noqa: E402

# Fixed colours so a checkpoint keeps its colour across every figure of a report.
PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray")


def color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def to_display(image: torch.Tensor) -> np.ndarray:
    """A normalised [3,H,W] tensor -> HxWx3 floats in [0,1] for imshow."""
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    return (image.detach().float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def save_figure(fig: plt.Figure, path: str | os.PathLike) -> Path:
    """Write a PNG atomically (temp + rename) and close the figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def save_json(data: Any, path: str | os.PathLike) -> Path:
    """Write JSON atomically; infinite floats become the string "inf" (strict JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(jsonable(data), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def per_depth_figure(
    results: dict[str, np.ndarray], ylabel: str, title: str, first_depth: int = 1,
    ylim: tuple[float, float | None] | None = None,
) -> plt.Figure:
    """One line per checkpoint of the head-mean against depth, with each head as a faint dot.

    ``results``: label -> ``[depths]`` or ``[depths, heads]``. ``ylim`` = (bottom, top or None for 5%
    above the largest value) fixes the axis where the size of a difference matters (autoscaling would
    stretch a 1% gap across the whole plot).
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for index, (label, values) in enumerate(results.items()):
        values = np.asarray(values, dtype=float)
        depths = np.arange(first_depth, first_depth + values.shape[0])
        if values.ndim == 2:
            for head in range(values.shape[1]):
                ax.scatter(depths, values[:, head], s=10, alpha=0.35, color=color(index), linewidths=0)
            values = values.mean(axis=1)
        ax.plot(depths, values, marker="o", color=color(index), label=label)
    ax.set_xlabel("depth (block)" if first_depth == 1 else "depth (0 = embeddings)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim is not None:
        top = ylim[1] if ylim[1] is not None else 1.05 * max(float(np.max(v)) for v in results.values())
        ax.set_ylim(ylim[0], top)
    ax.set_xticks(depths)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def image_grid(rows: list[list[np.ndarray]], column_titles: list[str], row_titles: list[str] | None = None,
               suptitle: str = "", cell: float = 1.9) -> plt.Figure:
    """A grid of HxWx3 (or HxW, shown with a colour map) images, titles above the first row."""
    n_rows, n_cols = len(rows), len(column_titles)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell * n_cols, cell * n_rows + 0.4), squeeze=False)
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            ax = axes[r][c]
            ax.imshow(picture, cmap=None if picture.ndim == 3 else "viridis", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(column_titles[c], fontsize=9)
            if c == 0 and row_titles:
                ax.set_ylabel(row_titles[r], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def scatter_panels(panels: dict[str, list[tuple[np.ndarray, str, str]]], suptitle: str) -> plt.Figure:
    """One subplot per checkpoint; each holds (points [n,2], colour, legend label) groups."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.4), squeeze=False)
    for ax, (title, groups) in zip(axes[0], panels.items(), strict=True):
        for points, group_color, group_label in groups:
            ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.6, color=group_color, label=group_label,
                       linewidths=0)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8, markerscale=2,
               bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig
