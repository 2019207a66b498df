"""Checkpoint pieces shared by the training loops (the classifier's ``ml.train.loop`` and the
GAN's ``ml.gan.train``): seeding, CPU copies of state dicts, RNG states that load with
``weights_only``, atomic checksummed writes and verified reads, a resume that refuses another
run's checkpoint, the progress bar."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ml.storage import IntegrityError, atomic_write, checksum_path, verify_file

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
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": random.getstate(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached"],
        )
    )
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
    """Write a checkpoint whole or not at all (``ml.storage.atomic_write``), with its SHA-256
    beside it (``<path>.sha256``); a full disk raises ``StorageFullError`` naming ``path`` and
    leaves the previous checkpoint in place."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # through Python's file: a full disk raises OSError (ENOSPC, EFBIG)
            try:
                torch.save(obj, f)
            except RuntimeError as exc:  # torch's zip writer fails closing after the OSError: keep that one
                if isinstance(exc.__context__, OSError):
                    raise exc.__context__ from None
                raise

    atomic_write(path, write, checksum=True)


def checkpoint_files(path: Path) -> tuple[Path, Path]:
    """The files one checkpoint is made of (the file and its checksum), e.g. to copy it."""
    return Path(path), checksum_path(path)


def load_verified(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_atomic` (``weights_only``) after checking it
    against its checksum: a truncated, corrupt or unchecksummed file raises ``IntegrityError``
    naming the path (delete it to start over) and is never loaded."""
    verify_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError) as exc:  # pragma: no cover - the checksum matched
        raise IntegrityError(f"checkpoint {path} cannot be read: {exc}") from exc


def load_checkpoint(path: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (None when there is none), refused (ValueError) when its
    ``config`` entry differs from ``config``: a resumed run continues the same run only."""
    if not Path(path).is_file():
        return None
    ckpt = load_verified(path)
    if ckpt["config"] != config:
        raise ValueError(f"checkpoint {path} was written with another config: {ckpt['config']}")
    return ckpt


def progress_bar(total: int, desc: str, enabled: bool) -> tqdm:
    """The training loops' progress bar (one per epoch or GAN stage; cleared when it closes)."""
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)
