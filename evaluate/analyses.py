"""The paper's analyses over labelled models: each returns (JSON-ready results, matplotlib figure).

Formulas live in analysis_math; tokens and attention come from the hooks in attention; this module
runs the models over the image set and overlays the checkpoints in one figure.
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from kamim.errors import UserError
from kamim.train.masking import random_mask

from . import plots
from .analysis_inputs import ImageSet, LabelledModel, image_batches, spread_indices
from .analysis_math import (
    attention_distance,
    attention_nmi,
    fourier_log_amplitude,
    reconstruction_metrics,
    tokens_to_map,
)
from .attention import resolve_depth, trace_encoder

CELL = 32  # SimMIM's mask cell in pixels


def grid_of(lm: LabelledModel) -> tuple[int, int]:
    side = lm.img_size // lm.model.patch_size
    return side, side


def encode_batches(lm: LabelledModel, images: ImageSet, batch_size: int, **trace_args):
    """Run the encoder unmasked over the image set; yield (batch size, trace) per batch."""
    device = next(lm.model.parameters()).device
    side = grid_of(lm)[0]
    for batch in image_batches(images, lm.img_size, "center", batch_size):
        mask = torch.zeros(batch.shape[0], side, side, device=device)
        with torch.no_grad(), trace_encoder(lm.model.encoder, **trace_args) as trace:
            lm.model.encode(batch.to(device), mask)
        yield batch.shape[0], trace


def reconstruction(models: list[LabelledModel], images: ImageSet, batch_size: int, mask_ratio: float,
                   seed: int, grid_images: int):
    generator = torch.Generator().manual_seed(seed)
    size = models[0].img_size
    cells = torch.stack([random_mask(generator, CELL, size, CELL, mask_ratio) for _ in images.sources])
    targets = torch.cat(list(image_batches(images, size, "resize", batch_size)))
    pixel_mask = cells.repeat_interleave(CELL, 1).repeat_interleave(CELL, 2).float()
    results, composites = {}, {}
    for lm in models:
        device = next(lm.model.parameters()).device
        token_mask = cells.repeat_interleave(CELL // lm.model.patch_size, 1).repeat_interleave(
            CELL // lm.model.patch_size, 2)
        recons = []
        for start in range(0, len(targets), batch_size):
            with torch.no_grad():
                recon = lm.model(targets[start : start + batch_size].to(device),
                                 token_mask[start : start + batch_size].to(device))
            recons.append(recon.float().cpu())
        recon = torch.cat(recons)
        results[lm.label] = reconstruction_metrics(targets, recon, pixel_mask)
        m = pixel_mask[:, None]
        composites[lm.label] = targets * (1 - m) + recon * m
    rows = []
    for i in spread_indices(grid_images, len(targets)):  # spread, so the grid shows several classes
        shown = plots.to_display(targets[i])
        masked = shown * (1 - pixel_mask[i, :, :, None].numpy()) + 0.5 * pixel_mask[i, :, :, None].numpy()
        rows.append([shown, masked] + [plots.to_display(composites[lm.label][i]) for lm in models])
    titles = ["input", f"masked ({mask_ratio:.0%})"] + [
        f"{label}\nPSNR {r['psnr']:.2f} SSIM {r['ssim']:.3f}\n(mean over {len(targets)} images)"
        for label, r in results.items()]
    fig = plots.image_grid(rows, titles, suptitle=f"reconstruction of the masked cells (visible pixels from the "
                           f"input)\n{len(rows)} of {len(targets)} images shown; PSNR/SSIM: mean over all "
                           f"{len(targets)}, on full normalised images")
    return results, fig


def overlay(image: np.ndarray, heat: np.ndarray, patch: int, query: tuple[int, int] | None) -> np.ndarray:
    """Blend an attention map (upsampled to pixels) over an image; outline the query patch in red."""
    heat = np.kron(heat / max(float(heat.max()), 1e-12), np.ones((patch, patch)))
    blended = 0.35 * image + 0.65 * colormaps["inferno"](heat)[..., :3]
    if query is not None:
        x, y = query
        top, left = y * patch, x * patch
        for edge in (blended[top, left : left + patch], blended[top + patch - 1, left : left + patch],
                     blended[top : top + patch, left], blended[top : top + patch, left + patch - 1]):
            edge[...] = (1.0, 0.0, 0.0)
    return blended


def attention_maps(models: list[LabelledModel], images: ImageSet, batch_size: int, depth: int, head: int,
                   query: tuple[int, int]):
    results, rows = {}, []
    shown = [plots.to_display(b) for batch in image_batches(images, models[0].img_size, "center", batch_size)
             for b in batch]
    for lm in models:
        rows_n, cols_n = grid_of(lm)
        x, y = query
        if not (0 <= x < cols_n and 0 <= y < rows_n):
            raise UserError(f"--query {x},{y} is outside the {cols_n}x{rows_n} token grid")
        block = resolve_depth(depth, len(lm.model.encoder.blocks))
        prefix = lm.model.encoder.num_prefix_tokens
        if not 0 <= head < lm.model.encoder.blocks[block].attn.num_heads:
            raise UserError(f"--head {head}: the model has {lm.model.encoder.blocks[block].attn.num_heads} heads")
        maps = []
        for _, trace in encode_batches(lm, images, batch_size, attention_blocks={block}):
            row = trace.attn[block][:, head, prefix + y * cols_n + x, prefix:]
            maps.append(row / row.sum(dim=-1, keepdim=True))
        maps = torch.cat(maps).reshape(-1, rows_n, cols_n).numpy()
        results[lm.label] = {"block": block + 1, "maps": maps.tolist()}
        rows.append([overlay(img, m, lm.model.patch_size, query) for img, m in zip(shown, maps, strict=True)])
    fig = plots.image_grid(rows, [f"image {i}" for i in images.indices], [lm.label for lm in models],
                           suptitle=f"attention of query token (x={query[0]}, y={query[1]}), "
                           f"block {results[models[0].label]['block']}, head {head}")
    return results, fig


def attention_per_depth(models: list[LabelledModel], images: ImageSet, batch_size: int, metric: str):
    """``metric`` = "distance" (pixels) or "nmi": per block and head, averaged over images."""
    results = {}
    for lm in models:
        blocks = len(lm.model.encoder.blocks)
        prefix = lm.model.encoder.num_prefix_tokens
        total, count = None, 0
        for n, trace in encode_batches(lm, images, batch_size, attention_blocks=set(range(blocks))):
            per_block = np.stack([
                attention_distance(trace.attn[b], grid_of(lm), lm.model.patch_size, prefix)
                if metric == "distance" else attention_nmi(trace.attn[b], prefix) for b in range(blocks)])
            total = per_block * n if total is None else total + per_block * n
            count += n
        results[lm.label] = total / count  # [blocks, heads]
    ylabel = "mean attention distance (px)" if metric == "distance" else "NMI of attention"
    # Axes from 0 (distance) and 0-1 (NMI), so the gap between checkpoints is drawn to scale.
    ylim = (0.0, None) if metric == "distance" else (0.0, 1.0)
    fig = plots.per_depth_figure(results, ylabel, f"attention {metric} per depth, mean over {count} images "
                                 f"(dots: heads, line: mean)", ylim=ylim)
    return {k: {"per_head": v.tolist(), "mean": v.mean(axis=1).tolist()} for k, v in results.items()}, fig


def fourier(models: list[LabelledModel], images: ImageSet, batch_size: int):
    results, deltas = {}, {}
    for lm in models:
        prefix = lm.model.encoder.num_prefix_tokens
        total, count = None, 0
        for n, trace in encode_batches(lm, images, batch_size, hidden=True):
            curves = np.stack([fourier_log_amplitude(tokens_to_map(h, grid_of(lm), prefix)) for h in trace.hidden])
            total = curves * n if total is None else total + curves * n
            count += n
        curves = total / count  # [depths incl. embeddings, frequencies]
        deltas[lm.label] = curves[:, -1]
        results[lm.label] = {"delta_log_amplitude": curves[:, -1].tolist(), "half_diagonal": curves.tolist()}
    fig = plots.per_depth_figure(deltas, "Δ log amplitude (highest frequency)",
                                 "Fourier analysis of tokens per depth", first_depth=0)
    return results, fig


def depth_name(depth: int) -> str:
    return "last block" if depth == -1 else f"block {depth}"


def class_colour(label: int, classes: int) -> str:
    cmap = colormaps["tab10" if classes <= 10 else "tab20"]
    return cmap(label % cmap.N)


def tokens_at(lm: LabelledModel, images: ImageSet, batch_size: int, depth: int, kinds: tuple[str, ...]):
    """``[images, tokens, C]`` per kind at one block: its output ("hidden") or its "pre_attn"/"post_attn"."""
    block = resolve_depth(depth, len(lm.model.encoder.blocks))
    traces = [t for _, t in encode_batches(lm, images, batch_size, hidden="hidden" in kinds, token_blocks={block})]
    pick = {"hidden": lambda t: t.hidden[block + 1], "pre_attn": lambda t: t.pre_attn[block],
            "post_attn": lambda t: t.post_attn[block]}
    return [torch.cat([pick[kind](t) for t in traces]) for kind in kinds]


def tsne(models: list[LabelledModel], images: ImageSet, batch_size: int, depth: int, perplexity: float,
         seed: int, max_iter: int = 1000):
    panels, results = {}, {}
    for lm in models:
        tokens = tokens_at(lm, images, batch_size, depth, ("hidden",))[0][:, lm.model.encoder.num_prefix_tokens :]
        per_image = tokens.shape[1]
        flat = tokens.reshape(-1, tokens.shape[-1]).numpy()
        embedded = TSNE(n_components=2, perplexity=min(perplexity, len(flat) - 1), init="random", max_iter=max_iter,
                        random_state=seed).fit_transform(flat)
        token_labels = np.repeat(images.labels, per_image)
        groups = [(embedded[token_labels == c], class_colour(c, len(images.classes)), images.classes[c])
                  for c in sorted(set(images.labels))]
        panels[lm.label] = groups
        results[lm.label] = {"points": embedded.tolist(), "labels": token_labels.tolist()}
    fig = plots.scatter_panels(panels, f"t-SNE of patch tokens ({depth_name(depth)}, "
                               f"perplexity {perplexity}), coloured by class")
    return results, fig


def pca(models: list[LabelledModel], images: ImageSet, batch_size: int, depth: int, image_index: int):
    panels, results = {}, {}
    position = min(image_index, len(images.sources) - 1)
    for lm in models:
        prefix = lm.model.encoder.num_prefix_tokens
        pre, post = (t[position, prefix:].numpy() for t in tokens_at(lm, images, batch_size, depth,
                                                                     ("pre_attn", "post_attn")))
        fitted = PCA(n_components=2).fit(np.concatenate([pre, post]))
        pre2, post2 = fitted.transform(pre), fitted.transform(post)
        cosine = (pre * post).sum(1) / (np.linalg.norm(pre, axis=1) * np.linalg.norm(post, axis=1) + 1e-12)
        panels[lm.label] = [(pre2, "tab:blue", "pre-attention"), (post2, "tab:orange", "post-attention")]
        results[lm.label] = {
            "explained_variance_ratio": fitted.explained_variance_ratio_.tolist(),
            "centroid_distance": float(np.linalg.norm(pre2.mean(0) - post2.mean(0))),
            "post_spread": float(post2.std(0).mean()), "pre_spread": float(pre2.std(0).mean()),
            "mean_cosine_pre_post": float(cosine.mean()),
            "pre": pre2.tolist(), "post": post2.tolist(),
        }
    fig = plots.scatter_panels(panels, f"PCA of tokens before/after self-attention (image "
                               f"{images.indices[position]}, {depth_name(depth)})")
    return results, fig
