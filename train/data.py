"""What the loader hands the device: uint8 crops, SimMIM masks and, per method, keypoints or ring maps.

Modes: ``simmim`` (image + mask), ``cached`` (+ the cache's points moved through the same crop and
flips; rastered on the device), ``online`` (+ the original's ring map: detection on the augmented
192 crop inside the worker, drawn with cv2.drawKeypoints), ``device`` (image + mask like simmim:
FAST runs on the batch where the model runs, bit-exact to online; preprocess/fast_torch.py). Every
sample's randomness comes from (seed, epoch, index) and the order of an epoch from (seed, epoch), so
resumed runs, any number of workers and any rank reproduce the same batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from kamim.datasets import ImageDataset, read_or_next
from kamim.malloc import keep_freed_memory

from .augment import crop_image, sample_crop, sample_seed, seeded
from .crop_codes import crop_meta
from .crop_select import cached_batch_points
from .device_decode import collate_jpegs, crop_row, read_jpeg
from .distributed import rank_share
from .masking import random_mask

MODES = ("simmim", "cached", "online", "device")
DECODES = ("worker", "device")  # where a sample's JPEG is decoded (train/device_decode.py)
ORDER_KEY = 2**40  # the "index" that seeds an epoch's order: beyond any sample index
POINT_PAD = 64  # pad the point count to a multiple of this: few distinct shapes for XLA


class PretrainSamples(Dataset):
    """Map-style: ``samples[(epoch, index)] -> dict`` (keys image, mask and points or map)."""

    def __init__(self, dataset: ImageDataset, mode: str, model_patch_size: int, seed: int, cache: Any = None,
                 detector: str = "fast", gray: str = "bgr", img_size: int = 192, decode: str = "worker") -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} not in {MODES}")
        if decode not in DECODES or (decode == "device" and mode == "online"):
            raise ValueError(f"decode {decode!r} with mode {mode!r}: online detection needs the crop in the worker")
        if mode == "cached" and cache is None:
            raise ValueError("cached mode needs a cache reader")
        self.dataset, self.mode, self.cache = dataset, mode, cache
        self.model_patch_size, self.seed, self.img_size = model_patch_size, seed, img_size
        self.detector, self.gray, self.decode = detector, gray, decode

    def __len__(self) -> int:
        return len(self.dataset)

    def usable_indices(self) -> np.ndarray:
        """Indices to train on: all of them, minus the samples the cache recorded as bad."""
        if self.cache is not None and hasattr(self.cache, "ok"):
            return np.flatnonzero(np.asarray(self.cache.ok, dtype=bool))
        return np.arange(len(self.dataset))

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        """A batch of samples (torch's DataLoader fetches a batch through this): the images first, then the
        batch's cached keypoints together (kamim.train.crop_select.cached_batch_points)."""
        keep_freed_memory()  # once per worker: big decode/SIFT buffers stop costing page faults
        samples, used, crops = [], [], []
        for epoch, index in keys:
            # A file that broke after the cache was built is dropped WITH its keypoints: the next readable
            # sample stands in for both (deterministic, so resume and any worker count substitute alike).
            jpeg = read_jpeg(self.dataset, index) if self.decode == "device" else None
            if jpeg is None:
                source, image = self._image(index)
                height, width = image.shape[:2]
            else:  # --decode device: the step decodes and crops it (same crop, drawn from the header's size)
                source, (data, height, width) = index, jpeg
            with seeded(sample_seed(self.seed, epoch, index)):
                crop = sample_crop(height, width, self.img_size)
                mask = random_mask(None, self.model_patch_size, self.img_size)
            if jpeg is None:
                sample = {"image": crop_image(image, crop, self.img_size), "mask": mask}
            else:
                sample = {"jpeg": data, "jpeg_crop": crop_row(crop, self.img_size, index), "mask": mask}
            if self.mode == "online":
                sample["map"] = torch.from_numpy(online_ring_map(sample["image"], self.detector, self.gray))
            samples.append(sample)
            used.append(source)
            crops.append(crop)
        if self.mode == "cached":
            for sample, fields in zip(samples, cached_batch_points(self.cache, used, crops, self.img_size), strict=True):
                sample.update(fields)
        return samples

    def _image(self, index: int) -> tuple[int, np.ndarray]:
        """(the index actually used, its image): ``index``, or the next readable sample the cache also
        holds as good (a warning names each bad file once per process)."""
        usable = None
        if self.cache is not None and hasattr(self.cache, "is_ok"):
            usable = self.cache.is_ok
        used, image, _ = read_or_next(self.dataset, index, usable)
        return used, image


def online_ring_map(crop: torch.Tensor, detector: str, gray: str = "bgr") -> np.ndarray:
    """The original's map for a uint8 [3,H,W] crop: detect on it as is, draw with OpenCV, sign()."""
    from kamim.preprocess.detect import detect_keypoints
    from kamim.preprocess.raster import ring_map_opencv

    hwc = np.ascontiguousarray(crop.permute(1, 2, 0).numpy())
    points = detect_keypoints(hwc, detector, gray=gray)
    return ring_map_opencv(points, hwc.shape[0]).astype(np.uint8)


def epoch_order(indices: np.ndarray, seed: int, epoch: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """This rank's share of epoch ``epoch``'s shuffled order (equal length on every rank; strided, so
    N ranks see exactly the batches of one process with an N times larger batch)."""
    generator = torch.Generator().manual_seed(sample_seed(seed, epoch, ORDER_KEY))
    order = np.asarray(indices)[torch.randperm(len(indices), generator=generator).numpy()]
    return order[rank_share(len(order), rank, world)]


class EpochBatches(Sampler):
    """Endless batches of ``(epoch, index)`` keys, starting at global batch ``start`` (for resume).

    Incomplete batches at the end of an epoch are dropped (fixed shapes, exact effective batch).
    """

    def __init__(self, indices: Sequence[int] | np.ndarray, batch_size: int, seed: int, start: int = 0,
                 rank: int = 0, world: int = 1) -> None:
        self.indices, self.batch_size, self.seed = np.asarray(indices), batch_size, seed
        self.start, self.rank, self.world = start, rank, world
        self.batches_per_epoch = (len(self.indices) // world) // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"{len(self.indices)} samples over {world} rank(s) cannot fill one batch of {batch_size}")

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, offset = divmod(self.start, self.batches_per_epoch)
        while True:
            order = epoch_order(self.indices, self.seed, epoch, self.rank, self.world)
            for b in range(offset, self.batches_per_epoch):
                chunk = order[b * self.batch_size:(b + 1) * self.batch_size]
                yield [(epoch, int(i)) for i in chunk]
            epoch, offset = epoch + 1, 0


def padded_width(counts: list[int]) -> int:
    """The batch's point axis: its largest count rounded up to a multiple of POINT_PAD."""
    return max(POINT_PAD, math.ceil(max(counts) / POINT_PAD) * POINT_PAD)


def padded_points(rows: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """float32 [B, P, 2] of each sample's [n, 2] points, zero padded (numpy: ~10x cheaper per row than
    torch), and the counts. numpy, pickled inline, for the reason given for codes in ``collate``."""
    counts = [len(r) for r in rows]
    points = np.zeros((len(rows), padded_width(counts), 2), dtype=np.float32)
    for row, values in enumerate(rows):
        points[row, : counts[row]] = values
    return points, counts


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor | np.ndarray]:
    """Stack images/masks/maps; pad crop points to [B, P, 2] with their counts [B], a webdataset sample's
    source points to [B, P, 2] with its count and crop in ``source_meta``, or a plain cache's codes to
    [B, 2, P] with each sample's count and crop map in ``code_meta`` (P a multiple of 64)."""
    batch = {"mask": torch.stack([s["mask"] for s in samples])}
    if any("jpeg" in s for s in samples):  # --decode device: rows the step fills (train/device_decode.py)
        size = int(next(s["jpeg_crop"] for s in samples if "jpeg" in s)[6])
        batch["image"] = torch.zeros(len(samples), 3, size, size, dtype=torch.uint8)
        for row, s in enumerate(samples):
            if "image" in s:  # decoded in the worker (not a JPEG the device takes)
                batch["image"][row] = s["image"]
        collate_jpegs(samples, batch)
    else:
        batch["image"] = torch.stack([s["image"] for s in samples])
    if "map" in samples[0]:
        batch["map"] = torch.stack([s["map"] for s in samples])
    if "points" in samples[0]:  # a selection cache's chosen crop points (train/crop_select.py)
        batch["points"], counts = padded_points([s["points"].numpy() for s in samples])
        batch["counts"] = np.array(counts, dtype=np.int64)
    if "source_points" in samples[0]:  # a webdataset sample's points as read: moved into the crop on the device
        batch["source_points"], counts = padded_points([s["source_points"] for s in samples])
        batch["source_meta"] = crop_meta([s["point_crop"] for s in samples], counts)
    if "codes" in samples[0]:  # a plain cache's stored codes: mapped into each crop on the device
        counts = [last - first for first, last in (s["code_rows"] for s in samples)]
        codes = np.zeros((len(samples), 2, padded_width(counts)), dtype=np.uint16)  # [B, (x, y), P]: row copies
        for row, s in enumerate(samples):
            stored, (first, last), half = s["codes"], s["code_rows"], len(s["codes"]) // 2
            codes[row, 0, : counts[row]] = stored[first:last]  # numpy: the x codes of the crop's rows
            codes[row, 1, : counts[row]] = stored[half + first : half + last]  # and their y codes
        # numpy, not tensors: a loader worker hands each tensor over through its own shared-memory segment
        # and a file-descriptor handshake with the main process, which cost 51 us an image at batch 32 for
        # these two (bench/scale_loader.py's hand_over); numpy arrays travel inside the batch's pickle for
        # 14. Device.to makes them tensors. The codes as stored (uint16 bits as int16: torch's uint16 lacks
        # kernels on some devices), half of int32's bytes.
        batch["codes"] = codes.view(np.int16)
        batch["code_meta"] = crop_meta([s["code_crop"] for s in samples], counts)
    return batch


class OneLineErrorLoader(torch.utils.data.DataLoader):
    """A DataLoader whose workers' UserErrors (a damaged shard or cache) reach the user as their own one line,
    not wrapped in torch's "Caught UserError in DataLoader worker" text with the worker's traceback."""

    def __iter__(self) -> Iterator:
        from kamim.errors import UserError

        batches = super().__iter__()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except UserError as error:
                text = error.format_message()
                marker = "UserError: "
                raise UserError(text.rsplit(marker, 1)[1] if marker in text else text) from None
            yield batch
