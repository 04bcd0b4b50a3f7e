"""``--decode device``: the loader ships each sample's JPEG bytes and its crop; the step decodes on the device.

On a GPU box the JPEG decode is most of a loader worker's time (3-4 ms for an ImageNet-sized photo, the
keypoints ~15 us), so the workers can starve the step. With ``--decode device`` a worker only reads
the file, parses its header for the size the crop is drawn from, and draws the crop and the mask as
before (same seeds, same crops, same masks). The step decodes the batch's JPEGs with
``torchvision.io.decode_jpeg`` on the training device (nvJPEG, batched, on CUDA; libjpeg on the CPU)
and resizes and flips each crop there with ``augment.crop_image``, the loader's own function.

Faithful: on the CPU the pixels are the loader's bit for bit (decode_jpeg and PIL share libjpeg-turbo's
default IDCT and upsampling; tests/train/test_device_decode.py checks it). nvJPEG and CUDA's uint8
resize may round differently from them; bench/gpu.py measures the difference where a GPU is lent.

What stays in the worker: a file that is not a JPEG the device can decode as RGB (PNG, CMYK JPEG,
unreadable header, too small) is decoded and cropped in the worker as before, and a file that cannot be
read at all or is cut off (no end marker) is replaced by the next readable one exactly as
``read_or_next`` does, so a batch mixes both kinds freely. A JPEG whose header and end marker are
intact but whose body is damaged is decoded as far as libjpeg gets; if the decoder gives up (on a GPU,
after libjpeg on the CPU has also failed: nvJPEG refuses some valid JPEGs, such as arithmetic-coded
ones), the step raises ``UndecodableJpeg`` and the run stops with one line naming the file and the
command that continues with ``--decode worker`` (which replaces such a file). The cache's status
excludes files that were unreadable when it was built.

A batch carries its JPEGs as one uint8 tensor plus row offsets, not a tensor per image: each tensor
crossing a worker's queue holds its own shared-memory file handle, and thousands per batch exhaust a
common 1,024 open-file limit.
"""

from __future__ import annotations

import io
import itertools
import warnings
from pathlib import Path

import torch
from PIL import Image

from kamim.datasets import MIN_IMAGE_SIDE, BadSampleError, read_image_file
from kamim.errors import UserError

from .augment import CropParams, crop_image

JPEG_MAGIC, JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
DEVICE_MODES = ("RGB", "L")  # what decode_jpeg turns into the same RGB as PIL's convert("RGB")


class UndecodableJpeg(Exception):
    """A JPEG the worker sent to the device fails to decode there (and, on a GPU, on the CPU too)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"image {index} of the dataset does not decode ({reason})")
        self.index, self.reason = index, reason
        self.saved: int | None = None  # the newest checkpoint known finite, set by the training loop

    def user_error(self, path: Path, intact: str, resume: str) -> UserError:
        """One line: the file, what is safe, and the command that goes on with --decode worker (resuming
        only when a checkpoint was saved)."""
        how = (f"continue with `{resume} --decode worker`" if self.saved is not None
               else "run the same command with --decode worker")
        return UserError(f"--decode device: {path} (image {self.index}) does not decode ({self.reason}); {intact}: "
                         f"{how}, which replaces an unreadable image with the next readable one, or replace the file")


def check_decode(decode: str, mode: str, streamed: bool, dataset, dataset_name: str, device: torch.device,  # noqa: ANN001
                 detector: str = "fast", resuming: bool = False) -> None:
    """--decode device needs image files (a folder dataset, not CIFAR's arrays or a wds stream), a mode whose
    keypoints do not come from the worker's crop, and a device decode_jpeg runs on (tried on a tiny JPEG)."""
    if decode != "device":
        return
    if mode == "online":
        others = "" if resuming else (" or --keypoints cached or device" if detector == "fast"
                                      else " or --keypoints cached (after `kamim cache`)")
        raise UserError(f"--decode device: online detection needs the crop in the loader worker; use --decode "
                        f"worker{others}")
    if streamed or not hasattr(dataset, "files"):
        what = "a webdataset stream" if streamed else f"--dataset {dataset_name} (arrays, not image files)"
        raise UserError(f"--decode device reads JPEG files; {what} has none: use --decode worker")
    if device.type not in ("cuda", "cpu"):
        raise UserError(f"--decode device: decode_jpeg runs on cuda or the cpu, not {device.type}; use --decode worker")
    check_decoder(device)


def check_decoder(device: torch.device) -> None:
    """Decode a tiny JPEG on ``device`` before training, so a torchvision without a decoder there (no nvJPEG)
    is named as such, not blamed on the first image."""
    from torchvision.io import ImageReadMode

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 90)).save(buffer, format="JPEG")
    try:
        _decode([torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)], ImageReadMode.RGB, device)
    except RuntimeError as error:
        raise UserError(f"--decode device: torchvision cannot decode JPEGs on {device} ({_reason(error)}); "
                        f"use --decode worker") from None


def read_jpeg(dataset, index: int) -> tuple[bytes, int, int] | None:  # noqa: ANN001
    """(bytes, height, width) of sample ``index`` if the device can decode it, else None (the worker does)."""
    files = getattr(dataset, "files", None)
    if files is None:
        return None
    path = Path(files[index])
    try:
        data = read_image_file(path, str(path))
    except BadSampleError:
        return None
    if not data.startswith(JPEG_MAGIC) or not data.endswith(JPEG_END):  # a cut-off file: the worker replaces it
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # the header only: no pixels are decoded
                if image.format != "JPEG" or image.mode not in DEVICE_MODES:
                    return None
                width, height = image.size
    except Exception:  # noqa: BLE001 - any header PIL rejects: the worker path reports or replaces it
        return None
    if min(height, width) < MIN_IMAGE_SIDE:
        return None
    return data, height, width


CROP_ROW = 8


def crop_row(crop: CropParams, size: int, index: int) -> torch.Tensor:
    """int64 [8]: the crop (top, left, height, width, vflip, hflip), the output size and the sample's
    dataset index (named if its JPEG fails to decode), for collate."""
    return torch.tensor([crop.top, crop.left, crop.height, crop.width, int(crop.vflip), int(crop.hflip), size, index])


def collate_jpegs(samples: list[dict], batch: dict) -> None:
    """Into ``batch``: ``jpeg`` (uint8 [total bytes], the rows' JPEGs end to end), ``jpeg_offsets`` (int64 [B+1];
    a row the worker decoded has none) and ``jpeg_crop`` (int64 [B, 8])."""
    lengths = [len(s["jpeg"]) if "jpeg" in s else 0 for s in samples]
    joined = bytearray().join(s["jpeg"] for s in samples if "jpeg" in s)  # one copy of the batch's bytes, writable
    batch["jpeg"] = torch.frombuffer(joined, dtype=torch.uint8)
    batch["jpeg_offsets"] = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int64)
    empty = torch.zeros(CROP_ROW, dtype=torch.int64)
    batch["jpeg_crop"] = torch.stack([s.get("jpeg_crop", empty) for s in samples])


def decode_batch(batch: dict) -> dict:
    """Fill the batch's image rows that arrived as JPEG bytes: decode (one batched call), crop, flip.
    ``batch["image"]`` is already on the training device; the bytes and crops stay on the host."""
    data, offsets, crops = batch.pop("jpeg", None), batch.pop("jpeg_offsets", None), batch.pop("jpeg_crop", None)
    if data is None:
        return batch
    bounds = offsets.tolist()
    rows = [row for row in range(len(bounds) - 1) if bounds[row + 1] > bounds[row]]
    if rows:
        from torchvision.io import ImageReadMode

        images = batch["image"]
        jpegs = [data[bounds[row] : bounds[row + 1]] for row in rows]
        try:
            decoded = _decode(jpegs, ImageReadMode.RGB, images.device)
        except RuntimeError:
            decoded = [_decode_alone(jpeg, images.device, int(crops[row][-1])) for row, jpeg in zip(rows, jpegs,
                                                                                                   strict=True)]
        for row, picture in zip(rows, decoded, strict=True):
            top, left, height, width, vflip, hflip, size, _ = crops[row].tolist()
            images[row] = crop_image(picture, CropParams(top, left, height, width, bool(vflip), bool(hflip)), size)
    return batch


def _decode(jpegs: list[torch.Tensor], mode, device: torch.device) -> list[torch.Tensor]:  # noqa: ANN001
    from torchvision.io import decode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29 warns on every call that TorchCodec will take over
        warnings.filterwarnings("ignore", "The image decoding and encoding capabilities", DeprecationWarning)
        return decode_jpeg(jpegs, mode=mode, device=device)


def _decode_alone(jpeg: torch.Tensor, device: torch.device, index: int) -> torch.Tensor:
    """One JPEG of a batch that failed as a whole: on the device, else (a GPU decoder refusing a JPEG
    libjpeg reads) on the CPU, else ``UndecodableJpeg`` naming its dataset index."""
    from torchvision.io import ImageReadMode

    places = [device] if device.type == "cpu" else [device, torch.device("cpu")]
    for place in places:
        try:
            return _decode([jpeg], ImageReadMode.RGB, place)[0].to(device)
        except RuntimeError as error:
            failure = error
    raise UndecodableJpeg(index, _reason(failure))


def _reason(error: Exception) -> str:
    return str(error).strip().splitlines()[-1].split(", ")[-1]
