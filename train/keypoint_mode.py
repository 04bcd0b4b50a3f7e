"""Which keypoint path a pretraining run uses when the user leaves ``--keypoints`` out.

Tiny images (CIFAR: 32 px) are where a cache cannot follow the original. RandomResizedCrop upsamples
a ~26-32 px box 6-7x to 192, and the per-crop detector sees that blurry upsampling; a cache detects on
the image upsampled once to the detect size, a different blur. Measured by bench/fidelity.py on the
bundled photos area-downscaled to 32x32 (120 crops), cached vs online r against floor B (the crop
moved one output pixel; floor A, one *source* pixel, is six output pixels there): FAST 0.627 / 0.465
(median / p10) against 0.982 / 0.958, a mean density 0.60x the original's; SIFT and ORB 0.80-0.88 of
floor B. Detection on the crop costs the same for any source size, so for tiny images the faithful
paths are the original's per-crop detection (``online``) or, for FAST, exact detection on the device
(``device``) where that mode exists.
"""

from __future__ import annotations

from typing import Any

from kamim.datasets import BadSampleError

TINY_SIDE = 96  # source images whose shorter side is below this get per-crop detection
PROBES = 16  # images looked at (spread over the dataset) to decide


def shorter_side(dataset: Any, probes: int = PROBES) -> int | None:
    """The largest shorter side among ``probes`` images spread over ``dataset`` (None if none decode)."""
    count = len(dataset)
    if count == 0:
        return None
    sides = []
    for index in sorted({round(i * (count - 1) / max(probes - 1, 1)) for i in range(min(probes, count))}):
        try:
            image = dataset[index][0]
        except BadSampleError:
            continue
        sides.append(min(image.shape[:2]))
    return max(sides) if sides else None


def choose_keypoints(requested: str | None, detector: str, dataset: Any,
                     available: tuple[str, ...] = ("cached", "online")) -> tuple[str, str | None]:
    """(mode, note): ``requested`` when given; else ``device`` for FAST where available (exact, per crop,
    no cache), else ``cached``, unless the images are tiny (shorter side under TINY_SIDE px): then
    ``online``. The note says why (print it); with an explicit ``cached`` on tiny images it warns
    instead of overriding."""
    side = shorter_side(dataset) if dataset is not None else None
    tiny = side is not None and side < TINY_SIDE
    reason = (f"images of {side} px or less (shorter side under {TINY_SIDE} px): a keypoint cache cannot follow "
              f"the original's per-crop detection on the upsampled crop (bench/fidelity.py, tiny set: cached FAST r "
              f"0.63 against floor B 0.98)")
    if requested is not None:
        if tiny and requested == "cached":
            return requested, f"note: {reason}; --keypoints online (or device for FAST) is faithful for these"
        return requested, None
    if detector == "fast" and "device" in available:
        return "device", ("keypoints: device (FAST detected on each crop where the model runs, bit-exact to the "
                          "original; no cache needed); pass --keypoints cached to train from the FAST cache")
    if not tiny:
        return "cached", None
    mode = "online"
    return mode, f"keypoints: {mode} (not cached) for {reason}; pass --keypoints cached to use a cache anyway"


def plain_cache_note(manifest: dict, path: Any) -> str | None:
    """A note for a SIFT/ORB zarr cache without crop-time selection (built before it, or --no-select)."""
    if manifest.get("detector") not in ("sift", "orb") or manifest.get("format") != "zarr" or manifest.get("point_attrs"):
        return None
    return (f"note: {path} holds plain {manifest['detector']} detections without crop-time selection: its per-crop "
            f"densities are biased against the original's (bench/fidelity.py: mean weight at T 0.25 1.11-1.53x); "
            f"delete it and rebuild with `kamim cache` (selection is the default) to fix that")
