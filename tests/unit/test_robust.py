"""Corruptions of the robustness study: exact pixel shares and colour ratio, kernel shapes and sums,
the ablation's plan and rows."""

from __future__ import annotations

import numpy as np
import pytest

from ml.robust.ablation import (
    CLEAN,
    SETTINGS,
    corrupt,
    evaluation_plan,
    metric_key,
    noise_curves,
    plot_confusion_difference,
    plot_noise_curves,
    score_rows,
    table,
    training_corruptions,
    training_split,
)
from ml.robust.config import Corruption, RobustnessConfig
from ml.robust.corruptions import (
    blur,
    default_kernel_size,
    directional_kernel,
    gaussian_kernel,
    impulse_counts,
    salt_and_pepper,
)


def _grey(n=5, h=20, w=20, value=128) -> np.ndarray:
    return np.full((n, h, w, 3), value, dtype=np.uint8)


@pytest.mark.parametrize("share", [0.01, 0.02, 0.03, 0.04, 0.05, 0.15, 0.5])
def test_salt_and_pepper_hits_an_exact_share_at_three_black_to_one_white(share):
    images = _grey(h=40, w=50)
    out = salt_and_pepper(images, share, seed=3)
    black_n, white_n = impulse_counts(40, 50, share)
    assert black_n + white_n == round(share * 2000)
    assert black_n == round(0.75 * (black_n + white_n))
    for img in out:
        black = (img == 0).all(-1).sum()
        white = (img == 255).all(-1).sum()
        changed = (img != 128).any(-1).sum()
        assert (black, white) == (black_n, white_n) and changed == black + white
    # 3:1 holds exactly whenever the count divides by 4 (here 4% of 2000 = 80 -> 60:20)
    if share == 0.04:
        assert (black_n, white_n) == (60, 20)
    assert (images == 128).all()  # the input is left alone


def test_salt_and_pepper_is_seeded_per_image_and_stream():
    images = np.random.default_rng(0).integers(0, 256, size=(6, 16, 16, 3), dtype=np.uint8)
    a = salt_and_pepper(images, 0.1, seed=(1, 0))
    assert np.array_equal(a, salt_and_pepper(images, 0.1, seed=(1, 0)))
    assert not np.array_equal(a, salt_and_pepper(images, 0.1, seed=(1, 2)))
    # an image's noise does not depend on which batch it is corrupted in
    assert np.array_equal(salt_and_pepper(images[:3], 0.1, seed=(1, 0)), a[:3])
    assert np.array_equal(salt_and_pepper(images, 0.0), images)
    with pytest.raises(ValueError):
        salt_and_pepper(images, 1.5)


def test_default_kernel_follows_the_thesis():
    assert [default_kernel_size(s) for s in (16, 32, 64, 96, 128, 224)] == [3, 3, 5, 5, 7, 7]


@pytest.mark.parametrize("size", [3, 5, 7])
def test_gaussian_kernel_shape_sum_and_symmetry(size):
    k = gaussian_kernel(size)
    assert k.shape == (size, size) and k.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.allclose(k, k.T) and np.allclose(k, k[::-1]) and np.allclose(k, k[:, ::-1])
    c = size // 2
    assert k[c, c] == k.max()
    # separable: rank one
    assert np.linalg.matrix_rank(k, tol=1e-12) == 1
    with pytest.raises(ValueError):
        gaussian_kernel(4)


@pytest.mark.parametrize("size", [3, 5, 7])
def test_directional_kernel_lies_along_45_degrees(size):
    k = directional_kernel(size, 45.0)
    assert k.shape == (size, size) and k.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.allclose(k, k[::-1, ::-1])  # point symmetric about the centre
    # 45 degrees counter-clockwise, rows pointing down: the anti-diagonal (bottom-left to top-right)
    anti = np.fliplr(k)
    centre = k[size // 2, size // 2]
    assert np.trace(anti) > 0.5 and np.trace(anti) - centre > 5 * (np.trace(k) - centre)
    # principal axis of the weights' second moments at 45 degrees, strongly anisotropic
    r = np.arange(size) - size // 2
    x, y = np.meshgrid(r, -r)
    cov = np.array([[(k * x * x).sum(), (k * x * y).sum()], [(k * x * y).sum(), (k * y * y).sum()]])
    vals, vecs = np.linalg.eigh(cov)
    major = vecs[:, 1]
    assert abs(abs(major[0]) - abs(major[1])) < 1e-9 and major[0] * major[1] > 0
    assert vals[1] > (2 if size == 3 else 4) * vals[0]  # a 3x3 grid limits the elongation


def test_blur_preserves_a_constant_image_and_spreads_an_impulse_like_the_kernel():
    flat = _grey(2, 9, 9, 77)
    assert np.array_equal(blur(flat, gaussian_kernel(5)), flat)
    img = np.zeros((1, 9, 9, 3), dtype=np.uint8)
    img[0, 4, 4] = 255
    k = directional_kernel(5)
    out = blur(img, k)[0, 2:7, 2:7, 0]
    assert np.abs(out.astype(float) - np.round(255 * k)).max() <= 1
    assert out.shape == (5, 5)


def test_ablation_plan_uses_one_clean_model_for_every_clean_trained_row():
    cfg = RobustnessConfig(noise_levels=[0.05, 0.01])
    trains = training_corruptions(cfg)
    assert trains[0] == CLEAN and [c.level for c in trains[1:]] == [0.01, 0.05]
    clean_rows = evaluation_plan(CLEAN, cfg)
    assert [s for s, _ in clean_rows] == [SETTINGS[0], SETTINGS[1], SETTINGS[1], SETTINGS[4], SETTINGS[4]]
    assert [c.kind for _, c in clean_rows[3:]] == ["gaussian_blur", "directional_blur"]
    noisy_rows = evaluation_plan(cfg.noise(0.05), cfg)
    assert [(s, c.level) for s, c in noisy_rows] == [(SETTINGS[2], 0.0), (SETTINGS[3], 0.05)]
    with pytest.raises(ValueError):
        RobustnessConfig(noise_levels=[0.0])
    with pytest.raises(ValueError):
        RobustnessConfig(blur_kernel=4)


def test_corrupt_keeps_splits_apart_and_fills_the_kernel_by_size():
    cfg = RobustnessConfig()
    images = _grey(3, 32, 32)
    noisy_train = corrupt(images, cfg.noise(0.1), cfg, "train")
    noisy_test = corrupt(images, cfg.noise(0.1), cfg, "test")
    assert not np.array_equal(noisy_train, noisy_test)
    assert corrupt(images, CLEAN, cfg, "test") is images
    assert Corruption(kind="gaussian_blur", kernel=3).label == "blur (isotropic 3x3)"
    assert cfg.noise(0.05).label == "noise 5%"


def test_rows_table_curves_and_plots(tmp_path):
    cfg = RobustnessConfig(noise_levels=[0.05, 0.15])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(12) % 3
    classes = ["a", "b", "c"]

    def predict(x):  # a "model" that reads the mean brightness of the image
        m = x.reshape(len(x), -1).mean(1)
        p = np.stack([m < 110, (m >= 110) & (m < 140), m >= 140], 1).astype(float)
        return (p + 0.01) / (p + 0.01).sum(1, keepdims=True)

    rows = score_rows(predict, (images, labels), classes, CLEAN, cfg)
    rows += score_rows(predict, (images, labels), classes, cfg.noise(0.05), cfg)
    assert len(rows) == 1 + 2 + 2 + 2
    for r in rows:
        pred = predict(
            corrupt(
                images,
                cfg.noise(r["noise_level"])
                if r["corruption"] == "salt_and_pepper"
                else Corruption(kind=r["corruption"]),
                cfg,
                "test",
            )
        ).argmax(1)
        assert r["top1"] == pytest.approx((pred == labels).mean())
        assert np.asarray(r["confusion_matrix"]).sum() == 12
    t = table(rows)
    assert list(t[0]) == ["train status", "test status", "top-1", "balanced accuracy", "macro-F1"]
    assert (t[0]["train status"], t[0]["test status"]) == ("clean", "clean")
    assert t[3]["test status"] == "blur (isotropic 3x3)"
    keys = [metric_key(r, "top1") for r in rows]
    assert keys == [
        "test_top1_clean",
        "test_top1_noise_5",
        "test_top1_noise_15",
        "test_top1_blur_isotropic",
        "test_top1_blur_anisotropic",
        "test_top1_clean",
        "test_top1_matched",
    ]
    curves = noise_curves(rows)
    assert curves[SETTINGS[1]][0] == (0.0, rows[0]["top1"]) and [x for x, _ in curves[SETTINGS[1]]] == [0, 0.05, 0.15]
    assert [x for x, _ in curves[SETTINGS[3]]] == [0, 0.05]
    assert plot_noise_curves(rows, tmp_path / "noise.png").stat().st_size > 1000
    png = plot_confusion_difference(
        rows[3]["confusion_matrix"], rows[0]["confusion_matrix"], classes, tmp_path / "diff.png", "blur - clean"
    )
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_training_split_caps_each_class():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 7)
    images = np.zeros((20, 4, 4, 3), dtype=np.uint8)
    _, sub = training_split((images, labels), RobustnessConfig(train_per_class=4))
    assert np.bincount(sub).tolist() == [4, 3, 4]
    assert len(training_split((images, labels), RobustnessConfig())[1]) == 20
