"""The training input pipeline: seeded (optionally inverse-frequency) sampling of uint8 batches,
normalisation and augmentation on the training device."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, WeightedRandomSampler

from ml.train.config import TrainConfig, arch_family
from ml.train.prefetch import prefetched
from ml.train.transforms import PRETRAINED_STATS, Stats, augment_batch, channel_stats, to_float_batch

Arrays = tuple[np.ndarray, np.ndarray]
_PREFETCH_DEPTH = 2


class _BatchDataset(Dataset):
    """Fetches a whole batch of uint8 images by index list (one fancy index, memmap friendly)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        order = np.asarray(idx)
        return torch.from_numpy(np.ascontiguousarray(self.images[order])), torch.from_numpy(self.labels[order])


def _train_loader(train: Arrays, num_classes: int, cfg: TrainConfig, generator: torch.Generator) -> DataLoader:
    """Shuffled (or inverse-frequency weighted) batches; drops a ragged last batch (BatchNorm)."""
    images, labels = train
    n = len(labels)
    if cfg.weighted_sampler:
        counts = np.bincount(labels, minlength=num_classes)
        weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.float64)
        sampler = WeightedRandomSampler(weights, n, replacement=True, generator=generator)
    else:
        sampler = RandomSampler(range(n), generator=generator)
    batches = BatchSampler(sampler, cfg.batch_size, drop_last=n >= cfg.batch_size)
    return DataLoader(
        _BatchDataset(images, labels),
        sampler=batches,
        batch_size=None,
        num_workers=cfg.num_workers,
        generator=generator,
    )


def normalisation_for(cfg: TrainConfig, train_images: np.ndarray) -> Stats:
    """With ImageNet weights, the normalisation those weights were trained with (it depends on the
    arch: `PRETRAINED_STATS`); else the statistics of the training split."""
    if cfg.weights == "imagenet":
        return PRETRAINED_STATS[arch_family(cfg.arch)]
    return channel_stats(train_images)


class TrainBatches:
    """The training input pipeline of `fit`: seeded sampling, then per-batch normalisation and
    augmentation on `device`. Yields ``(float NCHW inputs, labels)``; also fits `lr_range_test`."""

    def __init__(self, train: Arrays, num_classes: int, cfg: TrainConfig, norm: Stats, device: torch.device) -> None:
        self.generators = {
            "sampler": torch.Generator().manual_seed(cfg.seed),
            "augment": torch.Generator().manual_seed(cfg.seed + 1),
        }
        self.loader = _train_loader(train, num_classes, cfg, self.generators["sampler"])
        self.norm = norm
        self.device = device
        self.channels_last = cfg.channels_last
        # On CUDA the uint8 gather and the pinned copy of the next batches run on a thread while the
        # GPU works (both release the GIL); on the CPU the cores are busy with the step itself.
        self.prefetch = _PREFETCH_DEPTH if device.type == "cuda" and cfg.num_workers == 0 else 0

    def __len__(self) -> int:
        return len(self.loader)

    def _host_batch(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = batch
        if self.device.type == "cuda":  # page-locked, so the copy to the device is truly asynchronous
            images, labels = images.pin_memory(), labels.pin_memory()
        return images, labels

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        host = (
            prefetched(self.loader, self.prefetch, self._host_batch)
            if self.prefetch
            else map(self._host_batch, self.loader)
        )
        for images, labels in host:
            x = to_float_batch(images.to(self.device, non_blocking=True), *self.norm)
            x = augment_batch(x, self.generators["augment"])
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, labels.to(self.device, non_blocking=True)
