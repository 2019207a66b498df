"""Measured behaviour of the synthetic SD-198-style generator (ml/synth.py)."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image

from ml.data.synth import LABELS, LONG_TAIL_RANGE, SynthConfig, class_counts, generate

SMALL = {"per_class": 3, "size": 32, "fmt": "png"}


def _gen(tmp_path: Path, name: str, **kw) -> Path:
    out = tmp_path / name
    generate(out, SynthConfig(**{**SMALL, **kw}), progress=False)
    return out


def _meta(out: Path) -> list[dict[str, str]]:
    with (out / "synth_meta.csv").open() as fh:
        return list(csv.DictReader(fh))


def _pixels(out: Path, rel: str) -> np.ndarray:
    return np.asarray(Image.open(out / rel), dtype=np.float64)


def _hashes(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def _luma(img: np.ndarray) -> np.ndarray:
    return img @ np.array([0.299, 0.587, 0.114])


def _ink(img: np.ndarray) -> np.ndarray:
    """Saturated cool-hue (green/blue/purple) pixels: what marker ink looks like on skin."""
    hsv = np.asarray(Image.fromarray(img.astype(np.uint8)).convert("HSV"), dtype=np.float64)
    hue_deg = hsv[..., 0] * 360 / 255
    return (hsv[..., 1] > 0.4 * 255) & (hue_deg > 80) & (hue_deg < 300)


def _sharpness(img: np.ndarray) -> float:
    g = _luma(img)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]
    return float(lap.var())


def _images(rows: list[dict[str, str]], **where: str) -> list[str]:
    return [r["path"] for r in rows if r["kind"] == "image" and all(r[k] == v for k, v in where.items())]


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    knobs = dict(
        fmt="jpg",
        pen_rate=0.5,
        ruler_rate=0.5,
        flash_rate=0.3,
        gamma=(1.0, 1.4),
        noise=0.02,
        duplicate_rate=0.4,
        near_duplicate_rate=0.4,
        corrupt=3,
    )
    a, b = _hashes(_gen(tmp_path, "a", **knobs)), _hashes(_gen(tmp_path, "b", **knobs))
    c = _hashes(_gen(tmp_path, "c", seed=1, **knobs))
    assert a == b
    assert a.keys() == c.keys()
    image_files = [k for k in a if k.endswith(".jpg") and a[k] != hashlib.sha256(b"").hexdigest()]
    changed = sum(a[k] != c[k] for k in image_files)
    assert changed >= len(image_files) - 3  # all but the seed-independent corrupt files


def test_per_class_counts_folders_and_meta(tmp_path: Path) -> None:
    out = tmp_path / "pc"
    summary = generate(out, SynthConfig(per_class=2, size=32), progress=False)
    for label in LABELS:
        names = sorted(p.name for p in (out / label).iterdir())
        assert names == [f"{label}_0000.jpg", f"{label}_0001.jpg"]
    rows = _meta(out)
    assert len(rows) == 20 and summary["total"] == 20 and summary["images"] == 20
    assert summary["counts"] == dict.fromkeys(LABELS, 2)
    assert {r["path"] for r in rows} == {str(p.relative_to(out)) for p in out.rglob("*.jpg")}


def test_long_tail_counts_are_sd198_like(tmp_path: Path) -> None:
    lo, hi = LONG_TAIL_RANGE
    draws = [class_counts(SynthConfig(long_tail=True, seed=s)) for s in range(5)]
    for counts in draws:
        assert list(counts) == list(LABELS)
        assert all(lo <= n <= hi for n in counts.values())
        assert len(set(counts.values())) > 3
    assert draws[0] != draws[1]
    out = tmp_path / "lt"
    summary = generate(out, SynthConfig(long_tail=True, size=16, seed=3), progress=False)
    assert summary["counts"] == draws[3]
    assert {label: len(list((out / label).iterdir())) for label in LABELS} == draws[3]


def test_class_priors_give_rounded_proportional_counts(tmp_path: Path) -> None:
    counts = class_counts(SynthConfig(class_priors={"acne": 2.0, "wheal": 1.0}, total=10))
    assert counts == {"acne": 7, "wheal": 3}  # 6.67 and 3.33 rounded
    out = tmp_path / "prior"
    priors = {"ulcer": 0.5, "tumor": 0.3, "macula": 0.2}
    summary = generate(out, SynthConfig(class_priors=priors, total=20, size=16), progress=False)
    assert summary["counts"] == {"macula": 4, "tumor": 6, "ulcer": 10}
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["macula", "tumor", "ulcer"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"class_priors": {"acne": 1.0, "psoriasis": 1.0}, "total": 5}, "psoriasis"),
        ({"class_priors": {"acne": 1.0}}, "total"),
        ({"long_tail": True, "class_priors": {"acne": 1.0}, "total": 5}, "long_tail"),
        ({"pen_rate": {"ulcers": 1.0}}, "ulcers"),
        ({"pen_rate": 1.5}, "pen_rate"),
        ({"skin_tones": [1, 1, 1]}, "skin_tones"),
        ({"gamma": (1.5, 1.0)}, "gamma"),
        ({"fmt": "gif"}, "fmt"),
        ({"per_class": 0}, "per_class"),
    ],
)
def test_bad_config_names_the_problem(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SynthConfig(**kwargs)


def test_refuses_non_empty_out_dir(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(FileExistsError, match="empty"):
        generate(tmp_path, SynthConfig(per_class=1, size=16), progress=False)


def test_pen_rate_per_class_marks_only_that_class_with_ink(tmp_path: Path) -> None:
    kw = dict(per_class=6, size=64, seed=2)
    marked = _gen(tmp_path, "pen", pen_rate={"acne": 1.0}, **kw)
    clean = _gen(tmp_path, "clean", **kw)
    rows = _meta(marked)
    assert all(r["pen_mark"] == ("1" if r["label"] == "acne" else "0") for r in rows)
    acne, others = _images(rows, label="acne"), _images(rows, pen_mark="0")
    ink_marked = np.mean([_ink(_pixels(marked, p)).mean() for p in acne])
    ink_unmarked = np.mean([_ink(_pixels(marked, p)).mean() for p in others])
    assert ink_marked > 0.01 and ink_marked > 5 * ink_unmarked
    # The pen has its own random stream: only ink pixels change, and they are ink-coloured or dark.
    for p in others:
        assert np.array_equal(_pixels(marked, p), _pixels(clean, p))
    for p in acne:
        img = _pixels(marked, p)
        changed = np.abs(img - _pixels(clean, p)).max(axis=2) > 40
        inky = _ink(img) | (img.max(axis=2) < 70)
        assert changed.any() and inky[changed].mean() > 0.6


def test_skin_tones_shift_background_brightness(tmp_path: Path) -> None:
    kw = dict(per_class=2, fov=(0.05, 0.08))
    light = _gen(tmp_path, "light", skin_tones=[1, 0, 0, 0, 0, 0], **kw)
    dark = _gen(tmp_path, "dark", skin_tones=[0, 0, 0, 0, 0, 1], **kw)
    assert {r["skin_tone"] for r in _meta(light)} == {"0"}
    assert {r["skin_tone"] for r in _meta(dark)} == {"5"}

    def background(out: Path) -> float:  # the lesion covers < 10%: the median pixel is skin
        return float(np.mean([np.median(_luma(_pixels(out, r["path"]))) for r in _meta(out)]))

    assert background(light) > background(dark) + 80


def test_gamma_above_one_darkens_by_the_power_law(tmp_path: Path) -> None:
    base = _gen(tmp_path, "g1")
    dark = _gen(tmp_path, "g15", gamma=(1.5, 1.5))
    assert {r["gamma"] for r in _meta(dark)} == {"1.5"}
    for p in _images(_meta(base)):
        x, y = _pixels(base, p), _pixels(dark, p)
        assert y.mean() < x.mean()
        assert np.abs(y - 255 * (x / 255) ** 1.5).max() <= 2  # closed form up to 8-bit rounding


def test_flash_brightens_and_washes_out_detail(tmp_path: Path) -> None:
    base = _gen(tmp_path, "f0", size=64)
    flash = _gen(tmp_path, "f1", size=64, flash_rate=1.0)
    assert {r["flash"] for r in _meta(flash)} == {"1"}
    for p in _images(_meta(base)):
        x, y = _pixels(base, p), _pixels(flash, p)
        assert y.mean() > x.mean()
        assert _sharpness(y) < _sharpness(x)  # local contrast (detail) is washed out


def test_noise_is_salt_and_pepper_at_the_requested_share(tmp_path: Path) -> None:
    clean = _gen(tmp_path, "n0", size=64)
    noisy = _gen(tmp_path, "n5", size=64, noise=0.05)
    for p in _images(_meta(clean))[:10]:
        x, y = _pixels(clean, p), _pixels(noisy, p)
        hit = (x != y).any(axis=2)
        black = (y[hit] == 0).all(axis=1).sum()
        white = (y[hit] == 255).all(axis=1).sum()
        assert black + white == hit.sum()  # every changed pixel is pure black or pure white
        assert abs(hit.sum() / (64 * 64) - 0.05) < 0.002
        assert abs(black / max(white, 1) - 3.0) < 0.2


def test_blur_lowers_laplacian_sharpness(tmp_path: Path) -> None:
    sharp = _gen(tmp_path, "b0", size=64)
    blurred = _gen(tmp_path, "b2", size=64, blur=2.0)
    for p in _images(_meta(sharp)):
        assert _sharpness(_pixels(blurred, p)) < 0.5 * _sharpness(_pixels(sharp, p))


def test_ruler_lies_along_one_edge(tmp_path: Path) -> None:
    clean = _gen(tmp_path, "r0", size=64)
    ruled = _gen(tmp_path, "r1", size=64, ruler_rate=1.0)
    assert {r["ruler"] for r in _meta(ruled)} == {"1"}
    for p in _images(_meta(clean)):
        ys, xs = np.nonzero((_pixels(clean, p) != _pixels(ruled, p)).any(axis=2))
        depth = min(ys.max() + 1, 64 - ys.min(), xs.max() + 1, 64 - xs.min())
        assert 5 <= depth <= 0.13 * 64 + 1  # a strip of the ruler's depth touching one edge


def test_fov_sets_lesion_share(tmp_path: Path) -> None:
    small = _gen(tmp_path, "fov1", size=64, fov=(0.1, 0.1))
    large = _gen(tmp_path, "fov5", size=64, fov=(0.5, 0.5))

    def share(out):
        return np.mean([float(r["lesion_share"]) for r in _meta(out)])

    assert share(small) == pytest.approx(0.1, rel=0.25)
    assert share(large) == pytest.approx(0.5, rel=0.25)


def test_duplicates_copy_bytes_and_near_duplicates_stay_close(tmp_path: Path) -> None:
    out = _gen(tmp_path, "dup", per_class=4, size=64, fmt="jpg", duplicate_rate=0.5, near_duplicate_rate=0.5)
    rows = _meta(out)
    dups = [r for r in rows if r["kind"] == "duplicate"]
    nears = [r for r in rows if r["kind"] == "near_duplicate"]
    assert len(dups) == len(nears) == 2 * len(LABELS)
    for r in dups:
        assert r["duplicate_of"].startswith(r["label"] + "/")
        assert (out / r["path"]).read_bytes() == (out / r["duplicate_of"]).read_bytes()

    def phash(rel):
        return imagehash.phash(Image.open(out / rel))

    for r in nears:
        src = phash(r["duplicate_of"])
        others = [p for p in _images(rows, label=r["label"]) if p != r["duplicate_of"]]
        assert (out / r["path"]).read_bytes() != (out / r["duplicate_of"]).read_bytes()
        assert phash(r["path"]) - src <= 10 < min(phash(p) - src for p in others)


def test_corrupt_files_fail_to_decode(tmp_path: Path) -> None:
    out = _gen(tmp_path, "bad", per_class=1, corrupt=4, fmt="jpg")
    bad = [r for r in _meta(out) if r["kind"].startswith("corrupt:")]
    assert [r["kind"] for r in bad] == [
        "corrupt:zero_bytes",
        "corrupt:truncated",
        "corrupt:not_an_image",
        "corrupt:zero_bytes",
    ]
    assert (out / bad[0]["path"]).stat().st_size == 0
    for r in bad:
        with pytest.raises(OSError):
            with Image.open(out / r["path"]) as im:
                im.load()


def test_all_written_images_are_rgb_of_the_requested_size(tmp_path: Path) -> None:
    out = _gen(tmp_path, "rgb", size=48, fmt="jpg", pen_rate=0.5, ruler_rate=0.5, near_duplicate_rate=0.5)
    rows = [r for r in _meta(out) if not r["kind"].startswith("corrupt")]
    assert len(rows) == 10 * 3 + 10 * 2
    for r in rows:
        with Image.open(out / r["path"]) as im:
            assert (im.mode, im.size, im.format) == ("RGB", (48, 48), "JPEG")


@pytest.mark.parametrize(("size", "per_class"), [(32, 12), (64, 12), (128, 4)])
def test_every_pen_mark_leaves_visible_ink_in_the_frame(tmp_path: Path, size: int, per_class: int) -> None:
    # Regression: the pen used to be drawn off-frame for lesions near the border, so images with
    # pen_mark=1 were byte-identical to the unmarked render. Every marked image of every label must
    # now differ from it by ink: >= 0.3 % of the pixels changed AND ink-coloured or dark.
    kw = dict(per_class=per_class, size=size, seed=0)
    marked = _gen(tmp_path, "pen", pen_rate=1.0, **kw)
    clean = _gen(tmp_path, "clean", **kw)
    rows = _images(_meta(marked))
    assert len(rows) == 10 * per_class and {r["pen_mark"] for r in _meta(marked)} == {"1"}
    shares = {}
    for p in rows:
        img = _pixels(marked, p)
        changed = np.abs(img - _pixels(clean, p)).max(axis=2) > 40
        inky = _ink(img) | (img.max(axis=2) < 70)
        shares[p] = float((changed & inky).mean())
    invisible = {p: s for p, s in shares.items() if s < 0.003}
    assert not invisible, f"pen_mark=1 without visible ink: {invisible}"


def test_reported_off_frame_pen_marks_are_now_drawn(tmp_path: Path) -> None:
    # The exact setting (JPEG, 64 px, seed 0): acne_0002/0006/0008/0009 were unchanged.
    kw = dict(per_class=12, size=64, seed=0, fmt="jpg")
    marked = _gen(tmp_path, "pen", pen_rate={"acne": 1.0}, **kw)
    clean = _gen(tmp_path, "clean", **kw)
    acne = _images(_meta(marked), label="acne")
    assert len(acne) == 12
    for p in acne:
        assert (marked / p).read_bytes() != (clean / p).read_bytes(), p
        assert (np.abs(_pixels(marked, p) - _pixels(clean, p)).max(axis=2) > 40).mean() >= 0.003, p
