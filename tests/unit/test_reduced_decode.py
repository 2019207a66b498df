"""Large JPEGs are decoded at reduced size (DCT scaling) for the descriptors: values stay close to a
full decode, the reported size is the stored one, hashes of the bytes are exact, truncation still fails."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.data.duplicates import phash
from ml.data.images import inspect_image, load_rgb
from ml.quality.features import ANALYSIS_MAX_SIDE, image_features

SIZE = (1600, 1100)


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Synthetic photographs (one pen-marked, one on a drape, one with a watermark band) upscaled to 1600x1100."""
    from ml.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("large")
    generate(
        root / "ds",
        SynthConfig(per_class=1, size=160, seed=2, pen_rate={"acne": 1.0}, drape_rate=0.5, watermark_rate=0.3),
        progress=False,
    )
    out = []
    for src in sorted((root / "ds").glob("*/*.jpg"))[:4]:
        path = root / f"{src.stem}_large.jpg"
        Image.open(src).convert("RGB").resize(SIZE, Image.Resampling.BICUBIC).save(path, quality=90)
        out.append(path)
    return out


def test_reduced_decode_keeps_descriptors_close_and_the_true_size(large):
    close = ("mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b")
    for path in large:
        full, reduced = image_features(path, reduced=False), image_features(path)
        assert (reduced["width"], reduced["height"]) == SIZE == (full["width"], full["height"])
        assert reduced["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() == full["sha256"]
        assert reduced["decode_ok"] and reduced["mode"] == "RGB" and reduced["format"] == "JPEG"
        for key in close:
            assert reduced[key] == pytest.approx(full[key], abs=1.5), (path.name, key)
        for key in ("brightness", "contrast", "saturation"):
            assert reduced[key] == pytest.approx(full[key], abs=0.01), (path.name, key)
        assert reduced["sharpness"] == pytest.approx(full["sharpness"], rel=0.25), path.name
        assert reduced["exposure"] == full["exposure"]
        assert abs(reduced["confounder_score"] - full["confounder_score"]) < 0.002, path.name
        for kind in ("drape", "text_band"):
            assert abs(reduced[f"{kind}_share"] - full[f"{kind}_share"]) < 0.02, (path.name, kind)
        distance = bin(int(reduced["phash"], 16) ^ int(full["phash"], 16)).count("1")
        assert distance <= 2, path.name  # within the near-duplicate threshold (4) by a margin


def test_inspect_image_decodes_at_reduced_size_only_when_asked(large):
    check, img = inspect_image(large[0], max_side=ANALYSIS_MAX_SIDE)
    assert check.ok and (check.width, check.height) == SIZE
    assert ANALYSIS_MAX_SIDE <= max(img.size) < SIZE[0]  # 1/2 or 1/3 scale: long side still >= 512
    assert img.size == (800, 550)
    check, img = inspect_image(large[0])
    assert img.size == SIZE
    assert np.array_equal(np.asarray(img), np.asarray(load_rgb(large[0])))  # one decode, same pixels
    assert phash(img) == image_features(large[0], reduced=False)["phash"]


def test_reduced_decode_still_finds_truncated_and_rotated_files(large, tmp_path):
    data = large[0].read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    row = image_features(cut)
    assert not row["decode_ok"] and row["reason"] == "truncated"
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # a quarter turn: shown 1100 x 1600
    Image.open(large[0]).save(rotated, quality=90, exif=exif)
    row, full = image_features(rotated), image_features(rotated, reduced=False)
    assert (row["width"], row["height"]) == (SIZE[1], SIZE[0]) == (full["width"], full["height"])
    assert row["brightness"] == pytest.approx(full["brightness"], abs=0.01)


def test_small_images_decode_exactly_as_before(tmp_path):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    path = tmp_path / "small.jpg"
    img.save(path, quality=92)
    assert image_features(path) == image_features(path, reduced=False)
