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
intact but whose body is damaged is decoded as far as libjpeg gets; if the decoder gives up, the run
stops with one line naming the image's index and ``--decode worker`` (which replaces such a file).
The cache's status excludes files that were unreadable when it was built.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from PIL import Image

from kamim.datasets import MIN_IMAGE_SIDE, BadSampleError, read_image_file
from kamim.errors import UserError

from .augment import CropParams, crop_image

JPEG_MAGIC, JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
DEVICE_MODES = ("RGB", "L")  # what decode_jpeg turns into the same RGB as PIL's convert("RGB")


def check_decode(decode: str, mode: str, streamed: bool, dataset, dataset_name: str, device_kind: str) -> None:  # noqa: ANN001
    """--decode device needs image files (a folder dataset, not CIFAR's arrays or a wds stream), a mode whose
    keypoints do not come from the worker's crop, and a device decode_jpeg runs on."""
    if decode != "device":
        return
    if mode == "online":
        raise UserError("--decode device: online detection needs the crop in the loader worker; use --keypoints "
                        "cached or device, or --decode worker")
    if streamed or not hasattr(dataset, "files"):
        what = "a webdataset stream" if streamed else f"--dataset {dataset_name} (arrays, not image files)"
        raise UserError(f"--decode device reads JPEG files; {what} has none: use --decode worker")
    if device_kind not in ("cuda", "cpu"):
        raise UserError(f"--decode device: decode_jpeg runs on cuda or the cpu, not {device_kind}; use --decode worker")


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


def decode_batch(batch: dict) -> dict:
    """Fill the batch's image rows that arrived as JPEG bytes: decode (one batched call), crop, flip.
    ``batch["image"]`` is already on the training device; the bytes and crops stay on the host."""
    jpegs, crops = batch.pop("jpeg", None), batch.pop("jpeg_crop", None)
    if jpegs is None:
        return batch
    rows = [row for row, data in enumerate(jpegs) if data is not None]
    if rows:
        from torchvision.io import ImageReadMode, decode_jpeg

        images = batch["image"]
        with warnings.catch_warnings():  # torchvision 0.29 warns on every call that TorchCodec will take over
            warnings.filterwarnings("ignore", "The image decoding and encoding capabilities", DeprecationWarning)
            try:
                decoded = decode_jpeg([jpegs[row] for row in rows], mode=ImageReadMode.RGB, device=images.device)
            except RuntimeError:
                raise_undecodable(jpegs, crops, rows, images.device)
                raise
        for row, picture in zip(rows, decoded, strict=True):
            top, left, height, width, vflip, hflip, size, _ = crops[row].tolist()
            images[row] = crop_image(picture, CropParams(top, left, height, width, bool(vflip), bool(hflip)), size)
    return batch


def raise_undecodable(jpegs: list, crops: torch.Tensor, rows: list[int], device: torch.device) -> None:
    """The batch failed to decode: find the first JPEG that fails alone and name it (a file damaged after the
    worker read its header, e.g. changed since the cache was built)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    for row in rows:
        try:
            decode_jpeg(jpegs[row], mode=ImageReadMode.RGB, device=device)
        except RuntimeError as error:
            reason = str(error).strip().splitlines()[-1].split(", ")[-1]
            raise UserError(f"--decode device: image {int(crops[row][-1])} of the dataset does not decode ({reason}); "
                            f"train with --decode worker, which replaces an unreadable image with the next "
                            f"readable one, or replace the file") from None
