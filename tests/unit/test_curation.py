"""Curation: pen-mark removal, dark-lesion skip, gamma, FOV crop, balance plans, new dataset (quarantine:
test_quarantine.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from ml.quality.curation import (
    curate_dataset,
    fov_crop,
    gamma_correct,
    remove_confounders,
)
from ml.quality.features import confounder_mask, luma
from ml.quality.validation import load_policy

SKIN = (224, 172, 140)
LESION = (140, 90, 60)


def _skin(size: int = 64, lesion: tuple[int, int, int] = LESION, radius: float = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(np.clip(np.array(SKIN) + rng.normal(0, 4, (size, size, 3)), 0, 255).astype(np.uint8))
    c = size / 2
    ImageDraw.Draw(img).ellipse([c - radius, c - radius * 0.8, c + radius, c + radius * 0.8], fill=lesion)
    return np.asarray(img)


def _inked(img: np.ndarray, colour: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``img`` with two pen strokes around the lesion, and the stroke mask."""
    layer = Image.new("L", img.shape[1::-1], 0)
    draw = ImageDraw.Draw(layer)
    draw.arc([10, 12, 54, 52], 190, 350, fill=255, width=3)
    draw.line([(6, 58), (22, 40)], fill=255, width=3)
    strokes = np.asarray(layer) > 0
    out = img.copy()
    out[strokes] = colour
    return out, strokes


def _score(img: np.ndarray) -> float:
    return float(confounder_mask(img).mean())


@pytest.mark.parametrize("colour", [(40, 60, 200), (120, 40, 160), (30, 150, 60), (20, 20, 25)])
def test_remove_confounders_erases_ink_and_restores_skin(colour):
    clean = _skin()
    marked, strokes = _inked(clean, colour)
    cleaned, info = remove_confounders(marked)
    assert info["skipped"] is None and info["patches"] >= 1
    assert _score(cleaned) <= 0.2 * _score(marked) and _score(marked) > 0.01
    repaired = np.abs(cleaned[strokes].astype(int) - clean[strokes].astype(int)).mean()
    assert repaired < 30  # painted with the patch's dominant (skin/lesion) colour, not left as ink
    away = ~ndimage.binary_dilation(strokes, iterations=2)
    assert np.array_equal(cleaned[away], marked[away])  # only the strokes and their halo change


def test_remove_confounders_leaves_unmarked_images_alone():
    for seed in range(3):
        clean = _skin(seed=seed)
        cleaned, info = remove_confounders(clean)
        assert np.abs(cleaned.astype(int) - clean.astype(int)).mean() < 0.5
        assert info["masked_share"] < 0.002


def test_remove_confounders_skips_dark_lesions():
    dark = _skin(lesion=(60, 40, 90), radius=16)  # a dark bluish naevus that the ink rule matches
    out, info = remove_confounders(dark)
    assert info["skipped"] == "dark_lesion" and info["masked_share"] > 0.05
    assert np.array_equal(out, dark) and out is not dark


def test_gamma_brightens_under_exposed_images():
    dark = (_skin().astype(np.float64) * 0.3).astype(np.uint8)
    bright = gamma_correct(dark, 1.5)
    assert luma(bright).mean() > luma(dark).mean() + 0.05
    assert np.array_equal(gamma_correct(dark, 1.0), dark)
    flat = np.argsort(dark[..., 0].ravel(), kind="stable")
    assert np.all(np.diff(bright[..., 0].ravel()[flat].astype(int)) >= 0)  # monotone


def test_fov_crop_frames_the_lesion_at_the_target_share():
    img = _skin(size=128, radius=10)
    lesion = np.all(img == LESION, axis=2)
    crop = fov_crop(img, target_share=0.5)
    share = np.all(crop == LESION, axis=2).mean()
    assert crop.shape[0] == crop.shape[1] < 128
    assert 0.35 <= share <= 0.65
    assert np.all(crop == LESION, axis=2).sum() == lesion.sum()  # the whole lesion stays in frame
    big = _skin(size=64, radius=30)
    assert np.array_equal(fov_crop(big), big)


@pytest.fixture
def dataset(tmp_path: Path) -> pd.DataFrame:
    src = tmp_path / "src"
    (src / "acne").mkdir(parents=True)
    (src / "ulcer").mkdir()
    marked, _ = _inked(_skin(), (40, 60, 200))
    files = {
        "acne/marked.png": marked,
        "acne/dark.png": (_skin(seed=1).astype(np.float64) * 0.3).astype(np.uint8),
        "ulcer/clean.png": _skin(seed=2),
    }
    for rel, arr in files.items():
        Image.fromarray(arr).save(src / rel)
    (src / "ulcer" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    paths = [str(src / rel) for rel in [*files, "ulcer/broken.jpg"]]
    return pd.DataFrame({"path": paths, "label": [Path(p).parent.name for p in paths], "split": "train"})


def test_curate_dataset_writes_a_new_dataset_and_never_touches_sources(dataset, tmp_path):
    before = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in dataset["path"]}
    out = tmp_path / "curated"
    log = curate_dataset(dataset, out, ["remove_confounders", "gamma"], load_policy()).set_index("path")
    assert {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in dataset["path"]} == before
    marked, dark, clean, broken = dataset["path"]
    assert log.loc[marked, "status"] == "curated" and log.loc[marked, "steps"] == "remove_confounders"
    assert _score(np.asarray(Image.open(log.loc[marked, "out_path"]))) < 0.2 * _score(np.asarray(Image.open(marked)))
    assert log.loc[dark, "steps"] == "gamma"
    assert luma(np.asarray(Image.open(log.loc[dark, "out_path"]))).mean() > luma(np.asarray(Image.open(dark))).mean()
    assert log.loc[clean, "status"] == "copied"
    assert Path(log.loc[clean, "out_path"]).read_bytes() == Path(clean).read_bytes()
    assert log.loc[broken, "status"] == "unreadable" and json.loads(log.loc[broken, "details"])["reason"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "acne/dark.png",
        "acne/marked.png",
        "ulcer/clean.png",
    ]
    assert pd.read_csv(out / "curation_log.csv").shape[0] == 4


def test_curate_dataset_refuses_existing_output_and_unknown_steps(dataset, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(FileExistsError):
        curate_dataset(dataset, tmp_path / "full", ["gamma"], load_policy())
    with pytest.raises(ValueError, match="unknown curation steps"):
        curate_dataset(dataset, tmp_path / "new", ["sharpen"], load_policy())
