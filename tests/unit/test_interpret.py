"""Grad-CAM, guided backpropagation and the background test on a model whose answer is known by
construction (a red lesion means class 0, a blue one class 1, none class 2), and Grad-CAM's layer
choice by resolution on the real architectures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ml.interpret import cam as cams
from ml.interpret.background import background_test, centre_patch, occlude_centre
from ml.interpret.config import InterpretConfig
from ml.interpret.errors import background, caption, class_distribution, pair_errors, pair_gallery
from ml.train.models import build_model, cam_target_layer

UNIT = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # inputs = pixels / 255
CLASSES = ["red", "blue", "plain"]


class ColourNet(nn.Module):
    """logit_red = 64 * mean(relu(R - G)), logit_blue = 64 * mean(relu(B - G)), logit_plain = 1."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU())
        self.fc = nn.Linear(2, 3)
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor([[1.0, -1.0, 0.0], [0.0, -1.0, 1.0]]).view(2, 3, 1, 1))
            self.features[0].bias.zero_()
            self.fc.weight.copy_(torch.tensor([[64.0, 0.0], [0.0, 64.0], [0.0, 0.0]]))
            self.fc.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def _lesion_images(size: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Grey skin; image 0 a red centre lesion, 1 a blue one (both inside the centre third), 2 none."""
    images = np.full((3, size, size, 3), 140, dtype=np.uint8)
    c, r = size // 2, size // 8  # lesion side 2r = size/4 < the patch's size/3
    images[0, c - r : c + r, c - r : c + r] = (230, 40, 40)
    images[1, c - r : c + r, c - r : c + r] = (40, 40, 230)
    return images, np.array([0, 1, 2])


def test_the_constructed_model_reads_the_lesion_colour():
    images, labels = _lesion_images()
    probs = cams.probabilities(ColourNet(), images, UNIT)
    assert probs.argmax(1).tolist() == labels.tolist() and probs[[0, 1], [0, 1]].min() > 0.7


def test_background_test_flips_predictions_whose_lesion_the_patch_covers():
    images, labels = _lesion_images()
    rows, cols = centre_patch(24)
    assert (rows.stop - rows.start, cols.stop - cols.start) == (8, 8)
    covered = occlude_centre(images)
    assert (covered[:, rows, cols] == 0).all() and (covered[:, : rows.start] == images[:, : rows.start]).all()
    model = ColourNet()
    res = background_test(lambda x: cams.probabilities(model, x, UNIT), images, labels, confidence=0.7)
    # the red and blue lesions are confidently right and fully covered: their predictions must change;
    # the plain image is not confident (its class has only a constant logit) and is not tested
    assert res["indices"] == [0, 1] and res["n_confident"] == 2
    assert res["change_rate"] == 1.0 and res["pred_after"] == [2, 2]
    assert res["prob_drop"] > 0.6 and res["prob_after"] < 0.25  # logits (0, 0, 1) after: 1 / (2 + e)
    # a patch that misses the lesion (one pixel wide) changes nothing
    small = background_test(lambda x: cams.probabilities(model, x, UNIT), images, labels, confidence=0.7, frac=1 / 24)
    assert small["change_rate"] == 0.0
    none = background_test(lambda x: cams.probabilities(model, x, UNIT), images, labels, confidence=0.999)
    assert none["n_confident"] == 0 and none["change_rate"] is None


def test_background_png_and_summary(tmp_path):
    images, labels = _lesion_images()
    res = background(ColourNet(), UNIT, images, labels, CLASSES, InterpretConfig(), tmp_path / "bg.png")
    assert res["change_rate"] == 1.0 and (tmp_path / "bg.png").read_bytes()[:4] == b"\x89PNG"


def test_gradcam_maps_have_input_size_are_not_constant_and_differ_between_the_pair():
    size = 24
    image = np.full((1, size, size, 3), 140, dtype=np.uint8)
    image[0, 4:10, 2:8] = (230, 40, 40)  # red on the left
    image[0, 14:20, 16:22] = (40, 40, 230)  # blue on the right
    model = ColourNet()
    x = cams.inputs(np.repeat(image, 2, 0), UNIT)
    maps = cams.gradcam_maps(model, model.features, x, [0, 1])
    assert maps.shape == (2, size, size)
    assert maps[0].std() > 0.1 and maps[1].std() > 0.1
    assert np.abs(maps[0] - maps[1]).mean() > 0.1
    # each class's map lights its own lesion
    assert maps[0][4:10, 2:8].mean() > 0.9 > 0.1 > maps[0][14:20, 16:22].mean()
    assert maps[1][14:20, 16:22].mean() > 0.9 > 0.1 > maps[1][4:10, 2:8].mean()
    overlay = cams.cam_overlay(image[0], maps[0])
    assert overlay.shape == (size, size, 3) and overlay.dtype == np.uint8


def test_guided_backprop_works_on_a_copy_one_image_at_a_time():
    images, _ = _lesion_images()
    model = ColourNet()
    x = cams.inputs(images, UNIT)
    before = x.clone()
    grads = cams.guided_backprop(model, x, [0, 1, 0])
    assert grads.shape == (3, 24, 24, 3)
    assert torch.equal(x, before) and not x.requires_grad
    assert isinstance(model.features[1], nn.ReLU)  # the model itself is not rewritten
    c, r = 12, 3
    inside = np.abs(grads[0, c - r : c + r, c - r : c + r]).sum()
    assert inside > 0 and np.abs(grads[0]).sum() == pytest.approx(inside)  # only where red is active
    assert np.abs(grads[2]).sum() == 0  # no red anywhere: guided ReLUs pass nothing
    assert cams.guided_image(grads[0]).dtype == np.uint8


@pytest.mark.parametrize(
    "arch, size, expected",
    [
        ("resnet18", 32, "layer2.1"),
        ("resnet18", 64, "layer3.1"),
        ("resnet18", 128, "layer4.1"),
        ("efficientnet_lite0", 128, "head_act"),
        ("efficientnet_lite0", 64, "_blocks.10"),
        ("densenet121", 64, "features.denseblock3"),
    ],
)
def test_cam_layer_by_resolution_has_at_least_four_pixels(arch, size, expected):
    model = build_model(arch, 3).eval()
    layer = cam_target_layer(model, arch, input_size=size)
    assert next(n for n, m in model.named_modules() if m is layer) == expected
    seen = []
    layer.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))
    assert seen[0][-1] >= 4 and (seen[0][-1] < 8 or expected.endswith(("layer2.1", "head_act", "layer4.1")))


def test_gradcam_on_a_resnet_at_32px_gives_input_sized_varied_maps():
    torch.manual_seed(0)
    model = build_model("resnet18", 3).eval()
    x = torch.randn(2, 3, 32, 32)
    layer = cam_target_layer(model, "resnet18", input_size=32)
    a = cams.gradcam_maps(model, layer, x, [0, 0])
    b = cams.gradcam_maps(model, layer, x, [1, 1])
    assert a.shape == b.shape == (2, 32, 32)
    assert all(m.std() > 0 for m in a) and np.abs(a - b).max() > 0.05


def test_pair_errors_captions_distribution_and_gallery(tmp_path):
    labels = np.array([0, 0, 1, 1, 2, 0])
    pred = np.array([1, 1, 0, 1, 2, 1])
    assert pair_errors(labels, pred, 0, 1, 10).tolist() == [0, 2, 1, 5]
    assert pair_errors(labels, pred, 0, 1, 2).tolist() == [0, 2]
    assert caption(CLASSES, 0, 1, np.array([0.2, 0.7, 0.1])) == "red (0.20) / blue (0.70)"
    dist = class_distribution(labels, [pred, labels], CLASSES)
    assert dist[0]["true_share"] == pytest.approx(0.5) and dist[1]["predicted_share_mean"] == pytest.approx(
        (4 / 6 + 2 / 6) / 2
    )
    assert sum(d["bias"] for d in dist) == pytest.approx(0.0)
    # a red lesion with a blue rim the model calls blue: one red/blue error for the gallery
    images, labels = _lesion_images()
    images[0, 2:22, 2:22] = (40, 40, 230)
    images[0, 10:14, 10:14] = (230, 40, 40)
    out = pair_gallery(
        ColourNet(),
        lambda m: m.features,
        UNIT,
        images,
        labels,
        CLASSES,
        (0, 1),
        InterpretConfig(),
        tmp_path / "pair.png",
    )
    assert [(e["actual"], e["predicted"]) for e in out["images"]] == [("red", "blue")]
    assert out["png"] and (tmp_path / "pair.png").read_bytes()[:4] == b"\x89PNG"
