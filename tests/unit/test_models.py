"""ml.train.models: architectures, layer groups, weight loading; ml.train.transforms: augmentation and TTA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ml.train.models import (
    ARCHS,
    WeightsMismatchError,
    WeightsNotFoundError,
    build_model,
    head_name,
    layer_groups,
    load_model_file,
    load_weights,
    save_checkpoint_file,
)
from ml.train.transforms import IMAGENET_STATS, augment_batch, channel_stats, to_float_batch, tta_view


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
    same = build_model("resnet18", num_classes=4, weights="models:/skin-lesion-classifier@champion",
                       fetch=fetch_weights)
    assert torch.equal(same.fc.weight, source.fc.weight)
