"""cpu / cuda / xla behind one small interface: placement, autocast, optimiser step, sync, ranks.

torch_xla is imported only when ``xla`` is asked for. Multi-process runs come from torchrun (DDP over
nccl or gloo) or torch_xla's launcher; this module only reads the rank and world it was given.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kamim.errors import UserError

DEVICES = ("auto", "cpu", "cuda", "xla")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


HOST_KEYS = ("jpeg", "jpeg_offsets", "jpeg_crop")


@dataclass
class Device:
    kind: str  # cpu | cuda | xla
    device: torch.device
    precision: str  # bf16 | fp16 | fp32
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.kind, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A real scaler for fp16 only; disabled (a pass-through with a state dict) otherwise."""
        return torch.amp.GradScaler(self.kind if self.kind != "xla" else "cpu", enabled=self.precision == "fp16")

    def to(self, batch: dict[str, torch.Tensor | np.ndarray]) -> dict[str, torch.Tensor]:
        """The batch on this device; numpy arrays (a plain cache's codes, train.data.collate) become tensors."""
        non_blocking = self.kind == "cuda"
        # --decode device: the JPEG bytes and their crops stay on the host (decode_jpeg reads them there)
        return {k: v if k in HOST_KEYS else torch.as_tensor(v).to(self.device, non_blocking=non_blocking)
                for k, v in batch.items()}

    def reduce_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """XLA multi-process needs an explicit all-reduce before clipping (DDP does it in backward)."""
        if self.kind == "xla" and self.world > 1:
            import torch_xla.core.xla_model as xm

            xm.reduce_gradients(optimizer)

    def mark_step(self) -> None:
        """Cut the XLA graph (one per micro-batch, as the original did to bound memory)."""
        if self.kind == "xla":
            import torch_xla.core.xla_model as xm

            xm.mark_step()

    def synchronize(self) -> None:
        if self.kind == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.kind == "xla":
            import torch_xla.core.xla_model as xm

            xm.wait_device_ops()

    def barrier(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()


def to_host(obj: Any) -> Any:
    """Tensors (nested in dicts/lists) moved to the CPU, for checkpoints."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu")
    if isinstance(obj, dict):
        return {k: to_host(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_host(v) for v in obj)
    return obj


def resolve_device(name: str = "auto", precision: str = "auto") -> Device:
    """Pick the device (auto: cuda if present, else cpu) and precision (auto: bf16 on cuda/xla, fp32 on cpu),
    and join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    if name not in DEVICES:
        raise UserError(f"--device {name}: choose one of {', '.join(DEVICES)}")
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is visible; use --device cpu or auto")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif name == "xla":
        try:
            import torch_xla
            import torch_xla.runtime as xr
        except ImportError:
            raise UserError("--device xla needs torch_xla: pip install -e '.[xla]' (see the README)") from None
        device = torch_xla.device()
        rank, world = xr.global_ordinal(), xr.world_size()
    else:
        device = torch.device("cpu")
    if precision == "auto":
        precision = "fp32" if name == "cpu" else "bf16"
    if precision == "fp16" and name != "cuda":
        raise UserError(f"--precision fp16 needs --device cuda (use bf16 on {name})")
    if world > 1 and name != "xla" and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if name == "cuda" else "gloo")
    return Device(name, device, precision, rank, world)
