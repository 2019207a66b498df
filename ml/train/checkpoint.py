"""Checkpoint pieces shared by the training loops (the classifier's ``ml.train.loop`` and the
GAN's ``ml.gan.train``): seeding, CPU copies of state dicts, RNG states that load with
``weights_only``, atomic writes, a resume that refuses another run's checkpoint, the progress bar."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

StateDict = dict[str, torch.Tensor]


def cpu_state(state: nn.Module | dict[str, torch.Tensor]) -> StateDict:
    """A detached CPU copy of a module's (or a state dict's) tensors; the source is untouched."""
    tensors = state.state_dict() if isinstance(state, nn.Module) else state
    return {k: v.detach().to("cpu", copy=True) for k, v in tensors.items()}


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """RNG states as tensors, tuples and numbers only, so that `weights_only` loading works."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached"]))
    random.setstate(state["python"])
    for name, g in generators.items():
        g.set_state(state["generators"][name])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])



def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (None when there is none), refused (ValueError) when its
    ``config`` entry differs from ``config``: a resumed run continues the same run only."""
    if not Path(path).is_file():
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt["config"] != config:
        raise ValueError(f"checkpoint {path} was written with another config: {ckpt['config']}")
    return ckpt


def progress_bar(total: int, desc: str, enabled: bool) -> tqdm:
    """The training loops' progress bar (one per epoch or GAN stage; cleared when it closes)."""
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)
