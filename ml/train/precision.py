"""Devices and mixed precision: where a run trains and in which autocast dtype."""

from __future__ import annotations

import torch


def resolve_device(spec: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else as torch names it."""
    if str(spec) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def amp_dtype_for(device: torch.device, amp: bool) -> torch.dtype | None:
    """Autocast dtype: None without AMP; CPU bfloat16; CUDA bfloat16 if supported else float16."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and torch.amp.is_autocast_available("cpu"):
        return torch.bfloat16
    raise ValueError(f"AMP is not supported on {device}")


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)



def precision_name(device: str | torch.device, amp: bool) -> str:
    """What a run computes in, for its name: ``fp32``, or the AMP dtype on ``device``
    (``bf16``/``fp16``)."""
    dtype = amp_dtype_for(resolve_device(device), amp)
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
