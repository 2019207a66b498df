"""Grad-CAM and guided backpropagation with the grad-cam package, on the real ``nn.Module``.

Grad-CAM hooks the target layer's forward activations and backward gradients, so it needs the
original module (an MLflow pt2 model loads back as a torch.fx graph whose block hooks never fire),
fp32, and gradients (never under ``torch.no_grad``). The target layer is chosen by
:func:`ml.train.models.cam_target_layer` for the architecture and input size.
``GuidedBackpropReLUModel`` rewrites ReLUs in place and answers for batch index 0 only: it gets a
deep copy of the model and one image at a time. EfficientNet-Lite uses ReLU6, which the package
does not rewrite: the copy's ReLU6 modules become a guided ReLU6 first.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ml.train.transforms import Stats, to_float_batch


def inputs(images: np.ndarray, norm: Stats, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 NHWC images -> normalised fp32 NCHW tensor (what the model saw in training)."""
    return to_float_batch(torch.from_numpy(np.ascontiguousarray(images)).to(device), *norm)


def fp32_eval_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in fp32, contiguous memory format, eval mode (on its device)."""
    out = copy.deepcopy(model).float().to(memory_format=torch.contiguous_format).eval()
    for p in out.parameters():
        p.requires_grad_(True)
    return out


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def probabilities(model: nn.Module, images: np.ndarray, norm: Stats, batch_size: int = 64) -> np.ndarray:
    """fp32 softmax probabilities of ``model`` on uint8 NHWC ``images``."""
    device = model_device(model)
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = inputs(images[start : start + batch_size], norm, device)
            out.append(torch.softmax(model(x).float(), 1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def gradcam_maps(model: nn.Module, layer: nn.Module, x: torch.Tensor, targets: list[int]) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] at the input's spatial size, one per image of ``x`` for
    the class in ``targets`` (same length)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if len(targets) != len(x):
        raise ValueError(f"{len(targets)} targets for {len(x)} images")
    with torch.enable_grad(), GradCAM(model=model, target_layers=[layer]) as cam:
        maps = cam(input_tensor=x.float(), targets=[ClassifierOutputTarget(int(t)) for t in targets])
    return np.asarray(maps, dtype=np.float32)


class _GuidedReLU6(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(0, 6)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ((x > 0) & (x < 6)).to(grad.dtype) * (grad > 0).to(grad.dtype)


class GuidedReLU6(nn.Module):
    """ReLU6 whose backward pass lets only positive gradients through where the input was active."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _GuidedReLU6.apply(x)


def _guide_relu6(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU6):
            setattr(module, name, GuidedReLU6())
        else:
            _guide_relu6(child)


def guided_backprop(model: nn.Module, x: torch.Tensor, targets: list[int]) -> np.ndarray:
    """Guided-backpropagation maps (N, H, W, 3), raw gradients, one image at a time on a deep copy."""
    from pytorch_grad_cam import GuidedBackpropReLUModel

    if len(targets) != len(x):
        raise ValueError(f"{len(targets)} targets for {len(x)} images")
    guided = fp32_eval_copy(model)
    for p in guided.parameters():  # only the input's gradient is wanted
        p.requires_grad_(False)
    _guide_relu6(guided)
    gb = GuidedBackpropReLUModel(guided, device=model_device(guided))
    out = []
    with torch.enable_grad():
        for i, target in enumerate(targets):
            image = x[i : i + 1].detach().clone().float()  # it calls requires_grad_ on what it gets
            out.append(np.array(gb(image, target_category=int(target)), copy=True))  # shared with .grad
    return np.stack(out) if out else np.zeros((0,) + tuple(x.shape[2:]) + (3,), dtype=np.float32)


def cam_overlay(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """uint8 RGB heat-map overlay of a [0, 1] ``cam`` (H, W) on a uint8 RGB image (H, W, 3)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(image.astype(np.float32) / 255.0, cam, use_rgb=True)


def guided_image(grad: np.ndarray) -> np.ndarray:
    """uint8 view of a guided-backpropagation map (the package's ``deprocess_image``)."""
    from pytorch_grad_cam.utils.image import deprocess_image

    return deprocess_image(grad)
