"""Devices and mixed precision: where a run trains and in which autocast dtype.

AMP is a request, not an order: :func:`choose_precision` grants it where it helps. On CUDA
that is bfloat16 (float16 without bf16 support). On a CPU, bfloat16 autocast is a large win
only with native bf16 units (``avx512_bf16`` or ``amx_bf16``): on an AVX2-only AMD EPYC a
ResNet-18 step was 24x slower under bf16 autocast than in fp32, so there AMP trains in fp32
unless forced. Depthwise convolutions (EfficientNet-Lite) gain nothing from ``avx512_bf16`` alone:
on an AMD EPYC with it and no AMX, a channels_last Lite0 step at 128 px took 0.30 s in fp32 and
0.41 s under bf16 autocast (ResNet-18: 0.40 s and 0.23 s; ``make bench-step``), so such archs need
AMX for bf16 on a CPU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from ml.train.config import arch_family

log = logging.getLogger("ml.train")

# CPU flags (as /proc/cpuinfo and torch.cpu.get_capabilities() spell them) of native bf16 units.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# arch families built on depthwise convolutions: bf16 autocast on a CPU pays for them only with AMX
DEPTHWISE_FAMILIES = frozenset({"efficientnet_lite"})
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below its bf16 kernels: convolutions then emulate bf16.
_ONEDNN_BELOW_BF16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"})
_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
_logged: set[str] = set()  # reasons already logged by this process (one line each)


@dataclass(frozen=True)
class Precision:
    """The autocast dtype a run uses (None: fp32) and why."""

    dtype: torch.dtype | None
    reason: str

    @property
    def name(self) -> str:
        """``fp32``, ``bf16`` or ``fp16``."""
        return _NAMES[self.dtype]

    @property
    def dtype_name(self) -> str | None:
        """torch's name of the autocast dtype (``bfloat16``, ``float16``), None for fp32."""
        return str(self.dtype).removeprefix("torch.") if self.dtype else None

    def tags(self) -> dict[str, str]:
        """The MLflow tags of a run trained at this precision."""
        return {"precision": self.name, "precision_reason": self.reason}


def resolve_device(spec: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else as torch names it."""
    if str(spec) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


@cache
def machine_cpu_flags() -> frozenset[str]:
    """This CPU's feature flags: /proc/cpuinfo's ``flags`` line on Linux, else the features
    torch's cpuinfo reports (``torch.cpu.get_capabilities()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset(k for k, v in torch.cpu.get_capabilities().items() if v is True)


def machine_cpu_capability() -> str:
    """The vector ISA torch's CPU kernels dispatch to (``AVX512``, ``AVX2``, ``DEFAULT``, ...)."""
    return torch.backends.cpu.get_cpu_capability()


def onednn_isa_cap() -> str | None:
    """The ISA oneDNN (torch's CPU convolutions) is capped at by ``ONEDNN_MAX_CPU_ISA`` (or
    ``DNNL_MAX_CPU_ISA``) when that is below its bf16 kernels, else None."""
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        value = os.environ.get(var, "").strip().upper()
        if value:
            return value if value in _ONEDNN_BELOW_BF16 else None
    return None


def choose_precision(
    device: torch.device,
    amp: bool,
    force: bool = False,
    cpu_flags: Iterable[str] | None = None,
    capability: str | None = None,
    arch: str | None = None,
) -> Precision:
    """The precision a run of ``arch`` on ``device`` trains in when ``amp`` is (not) requested.

    CUDA: bfloat16 if supported, else float16. CPU: bfloat16 only with native bf16 units
    (``NATIVE_BF16_FLAGS`` in ``cpu_flags``), torch's AVX512 kernels (``capability``) and
    oneDNN not capped below bf16 (:func:`onednn_isa_cap`), and for an arch of
    ``DEPTHWISE_FAMILIES`` only with AMX (``amx_bf16``); otherwise fp32, logged once per
    process on logger ``ml.train``, unless ``force``. ``arch`` None: no arch rule.
    ``cpu_flags`` and ``capability`` default to this machine's (tests inject them)."""
    if not amp:
        return Precision(None, "amp off")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, "amp on CUDA with bf16 support")
        return Precision(torch.float16, "amp on CUDA without bf16 support: fp16")
    if device.type != "cpu" or not torch.amp.is_autocast_available("cpu"):
        raise ValueError(f"AMP is not supported on {device}")
    flags = machine_cpu_flags() if cpu_flags is None else frozenset(cpu_flags)
    capability = machine_cpu_capability() if capability is None else capability
    native = " + ".join(sorted(NATIVE_BF16_FLAGS & flags))
    capped = onednn_isa_cap()
    if not native:
        why = f"this CPU ({capability}) has no native bf16"
    elif capability != "AVX512":
        why = f"torch's CPU kernels run {capability}, not AVX512 (the CPU has {native})"
    elif capped:
        why = f"oneDNN is capped at {capped} by ONEDNN_MAX_CPU_ISA, below its bf16 kernels (the CPU has {native})"
    elif arch is not None and arch_family(arch) in DEPTHWISE_FAMILIES and "amx_bf16" not in flags:
        why = f"without AMX, {arch}'s depthwise convolutions run faster in fp32 (channels_last) than in bf16 (the CPU has {native})"
    else:
        return Precision(torch.bfloat16, f"amp on a CPU with native bf16 ({native})")
    if force:
        return _logged_once(
            Precision(
                torch.bfloat16, f"amp forced (force_amp) although {why}: bf16 autocast may be much slower than fp32"
            )
        )
    return _logged_once(Precision(None, f"amp requested but {why}: training in fp32; force with force_amp"))


def precision_for(cfg: Any) -> Precision:
    """The precision a run of ``cfg`` (a :class:`~ml.train.config.TrainConfig`) trains in on this
    machine: what ``fit`` chooses, for everything that must agree with it (the LR range test,
    Tune trials' tags, run names). The depthwise rule applies to channels_last runs (measured so)."""
    arch = cfg.arch if cfg.channels_last else None
    return choose_precision(resolve_device(cfg.device), cfg.amp, cfg.force_amp, arch=arch)


def _logged_once(precision: Precision) -> Precision:
    if precision.reason not in _logged:
        _logged.add(precision.reason)
        log.warning(precision.reason)
    return precision


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` on ``device``'s type; off for None (fp32)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """The gradient scaler of a run at autocast ``dtype`` on ``device``: enabled for fp16 on CUDA
    only (bf16 has fp32's range and needs none)."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16 and device.type == "cuda")
