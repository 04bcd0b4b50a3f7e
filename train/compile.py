"""Speed switches shared by pretrain, finetune and feature extraction: torch.compile and the AdamW
implementation.

``compile_module`` compiles a module in place (``nn.Module.compile``): its ``state_dict`` keys stay
those of the eager module (no ``_orig_mod.`` prefix), so checkpoints, exports and resume are the same
with or without ``--compile``. The weighting and loss (elementwise over every pixel) are compiled as
functions, and so is the cached path's ring raster (kamim.preprocess.raster: one dynamic graph for every
point count, its index arithmetic fused into the fill, equal to the eager maps bit for bit; 0.72x the
eager time for a real FAST batch on the CPU, ``python -m bench.step``). Device FAST stays eager: inductor
took minutes to compile it and then ran it far slower on the CPU. The eager functions remain the
reference the compiled ones are tested against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from kamim.errors import UserError

COMPILE_KINDS = ("cpu", "cuda")  # torch_xla compiles whole graphs itself


def check_compile(enabled: bool, device_kind: str) -> None:
    if enabled and device_kind not in COMPILE_KINDS:
        raise UserError(f"--compile works on cpu and cuda, not {device_kind} (XLA already compiles the step); "
                        f"drop --compile")


def compile_module(module: nn.Module, enabled: bool) -> nn.Module:
    """The same module, its forward compiled in place when ``enabled``; state_dict keys unchanged."""
    if enabled:
        module.compile(dynamic=False)
    return module


def compiled(fn: Callable, enabled: bool) -> Callable:
    """``fn`` compiled (static shapes) when ``enabled``, else ``fn`` itself."""
    return torch.compile(fn, dynamic=False) if enabled else fn


def optimizer_impl(device_kind: str) -> dict[str, bool]:
    """AdamW's implementation per device: one fused kernel on CUDA, the multi-tensor loop on CPU; XLA's
    default (its own graph)."""
    if device_kind == "cuda":
        return {"fused": True}
    if device_kind == "cpu":
        return {"foreach": True}
    return {}


def adamw(params: Iterable, device_kind: str, **kwargs) -> torch.optim.AdamW:  # noqa: ANN003
    """torch.optim.AdamW with the device's fastest implementation (same update rule, same state_dict)."""
    return torch.optim.AdamW(params, **kwargs, **optimizer_impl(device_kind))


def restore_optimizer_impl(optimizer: torch.optim.Optimizer, device_kind: str) -> None:
    """After load_state_dict: the saved param groups carry the saving device's fused/foreach flags, so
    a checkpoint written on a GPU would ask for the fused kernel on another device; use this device's."""
    wanted = optimizer_impl(device_kind)
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = wanted.get("fused"), wanted.get("foreach")
