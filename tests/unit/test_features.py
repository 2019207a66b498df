"""Per-image features: decode status, hashes, exposure, sharpness, confounder score; parallel and cached runs."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageFilter

from ml.quality.features import (
    FEATURES_REVISION,
    compute_features,
    compute_features_cached,
    features_path,
    image_features,
)

SKIN = (224, 172, 140)


def _skin(seed: int = 0, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(np.clip(np.array(SKIN) + rng.normal(0, 4, (size, size, 3)), 0, 255).astype(np.uint8))
    c = size / 2
    ImageDraw.Draw(img).ellipse([c - 12, c - 9, c + 12, c + 9], fill=(140, 90, 60))
    return img


def _ink(img: Image.Image, colour: tuple[int, int, int], width: int = 3) -> Image.Image:
    img = img.copy()
    draw = ImageDraw.Draw(img)
    draw.line([(4, 6), (58, 20)], fill=colour, width=width)
    draw.arc([10, 10, 54, 54], 200, 340, fill=colour, width=width)
    return img


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("imgs")
    skin = _skin()
    made = {
        "clean": skin,
        "blue": _ink(skin, (40, 60, 200)),
        "purple": _ink(skin, (120, 40, 160)),
        "green": _ink(skin, (30, 150, 60)),
        "black": _ink(skin, (20, 20, 25), width=1),
        "dark": Image.fromarray((np.asarray(skin) * 0.3).astype(np.uint8)),
        "flash": Image.fromarray(np.full((64, 64, 3), 252, np.uint8)),
        "blurred": skin.filter(ImageFilter.GaussianBlur(2)),
    }
    paths = {}
    for name, img in made.items():
        paths[name] = d / f"{name}.jpg"
        img.save(paths[name], quality=92)
    paths["grey_png"] = d / "grey.png"
    skin.convert("L").save(paths["grey_png"])
    paths["bmp"] = d / "odd.bmp"
    skin.save(paths["bmp"])
    paths["truncated"] = d / "truncated.jpg"
    paths["truncated"].write_bytes(paths["clean"].read_bytes()[:-300])
    paths["empty"] = d / "empty.jpg"
    paths["empty"].write_bytes(b"")
    return paths


def test_clean_image_features(images):
    f = image_features(images["clean"])
    assert (f["width"], f["height"], f["mode"], f["format"]) == (64, 64, "RGB", "JPEG")
    assert f["decode_ok"] and f["reason"] == ""
    assert f["sha256"] == hashlib.sha256(images["clean"].read_bytes()).hexdigest()
    assert f["bytes"] == images["clean"].stat().st_size
    assert len(f["phash"]) == 16 and int(f["phash"], 16) >= 0
    arr = np.asarray(Image.open(images["clean"]).convert("RGB"), dtype=np.float64)
    assert f["mean_r"] == pytest.approx(arr[..., 0].mean()) and f["std_b"] == pytest.approx(arr[..., 2].std())
    assert f["exposure"] == "ok" and f["confounder_score"] == 0.0


@pytest.mark.parametrize("ink", ["blue", "purple", "green", "black"])
def test_marker_ink_and_dark_strokes_raise_the_confounder_score(images, ink):
    assert image_features(images[ink])["confounder_score"] > 0.01
    assert image_features(images["clean"])["confounder_score"] < 0.001


def test_exposure_sharpness_and_modes(images):
    assert image_features(images["dark"])["exposure"] == "under"
    assert image_features(images["flash"])["exposure"] == "washed_out"
    assert image_features(images["blurred"])["sharpness"] < 0.5 * image_features(images["clean"])["sharpness"]
    assert image_features(images["dark"])["brightness"] < image_features(images["clean"])["brightness"]
    grey = image_features(images["grey_png"])
    assert (grey["mode"], grey["format"], grey["saturation"]) == ("L", "PNG", 0.0)
    bmp = image_features(images["bmp"])
    assert bmp["decode_ok"] and bmp["format"] == "BMP"  # a format clinics export: decoded like a JPEG


def test_broken_files_are_reported_not_raised(images, tmp_path):
    trunc, empty = image_features(images["truncated"]), image_features(images["empty"])
    assert not trunc["decode_ok"] and trunc["reason"] == "truncated" and trunc["phash"] is None
    assert np.isnan(trunc["brightness"]) and trunc["bytes"] == images["clean"].stat().st_size - 300
    assert (empty["decode_ok"], empty["reason"], empty["bytes"]) == (False, "zero_bytes", 0)
    missing = image_features(tmp_path / "nope.jpg")
    assert not missing["decode_ok"] and missing["sha256"] is None


def _records(images: dict[str, Path]) -> pd.DataFrame:
    names = ["clean", "blue", "black", "dark", "truncated", "grey_png"]
    return pd.DataFrame(
        {
            "path": [str(images[n]) for n in names],
            "label": names,
            "split": "train",
            "skin_tone": range(len(names)),
            "sha256": "stale",
            "bytes": -1,
        }
    )


def test_compute_features_parallel_matches_serial_and_keeps_metadata(images):
    records = _records(images)
    serial = compute_features(records, workers=1)
    parallel = compute_features(records, workers=2)
    pd.testing.assert_frame_equal(serial, parallel)
    assert list(serial["label"]) == list(records["label"]) and list(serial["skin_tone"]) == list(range(6))
    assert (serial["sha256"] != "stale").all() and (serial["bytes"] > 0).all()
    assert list(serial["confounder_flag"]) == [False, True, True, False, False, False]
    assert not compute_features(records, workers=1, confounder_threshold=0.5)["confounder_flag"].any()


def test_local_path_is_read_when_present(images, tmp_path):
    records = pd.DataFrame({"path": ["s3://bucket/a.jpg"], "local_path": [str(images["blue"])], "label": ["x"]})
    feats = compute_features(records, workers=1)
    assert feats.loc[0, "path"] == "s3://bucket/a.jpg" and feats.loc[0, "decode_ok"]


def test_cache_is_keyed_by_version_and_reused(images, tmp_path):
    work = tmp_path / "data"
    work.mkdir()
    for name in ("clean", "blue"):
        shutil.copy(images[name], work / images[name].name)
    records = pd.DataFrame({"path": [str(p) for p in sorted(work.iterdir())], "label": ["b", "c"], "split": "val"})
    first = compute_features_cached(records, "v1", tmp_path / "cache", workers=1)
    path = features_path("v1", tmp_path / "cache", records)
    assert path.parent == tmp_path / "cache" / "v1" and path.name.startswith(f"features-r{FEATURES_REVISION}-")
    assert path.is_file()
    shutil.rmtree(work)  # a cache hit must not touch the images
    again = compute_features_cached(records, "v1", tmp_path / "cache", workers=1)
    pd.testing.assert_frame_equal(first, again)
    assert compute_features_cached(records, "v2", tmp_path / "cache", workers=1)["decode_ok"].sum() == 0


def test_ray_path_matches_local(images):
    records = _records(images)
    ray_feats = compute_features(records, ray_address="local")
    pd.testing.assert_frame_equal(ray_feats, compute_features(records, workers=1))


def test_magenta_blobs_are_not_ink_but_magenta_strokes_are():
    """A red-purple vascular-lesion-like blob (hue ~325) is tissue; a thin stroke of the same
    colour (purple ink after JPEG chroma smearing) is still ink."""
    from ml.quality.features import confounder_mask, hsv

    skin = np.full((128, 128, 3), (224, 180, 160), np.uint8)
    magenta = np.array([170, 40, 110], np.uint8)
    assert 315 < float(hsv(magenta.reshape(1, 1, 3))[0][0, 0]) < 335
    blob = skin.copy()
    yy, xx = np.mgrid[:128, :128]
    blob[(yy - 64) ** 2 + (xx - 64) ** 2 < 30**2] = magenta
    assert confounder_mask(blob).mean() < 0.005
    stroke = skin.copy()
    stroke[20:23, 10:118] = magenta
    assert confounder_mask(stroke)[20:23, 10:118].mean() > 0.9


def test_magenta_rim_of_a_red_lesion_is_not_ink():
    """A red blob whose edge shades into magenta (as vascular lesions do) has no ink pixels."""
    from ml.quality.features import ink_mask

    skin = np.full((128, 128, 3), (224, 180, 160), np.uint8)
    yy, xx = np.mgrid[:128, :128]
    r2 = (yy - 64) ** 2 + (xx - 64) ** 2
    img = skin.copy()
    img[r2 < 34**2] = (170, 40, 110)  # magenta rim (hue ~325)
    img[r2 < 30**2] = (190, 40, 50)  # red core (hue ~356)
    assert ink_mask(img).mean() < 0.002


def test_exif_rotated_image_records_its_displayed_size(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    path = tmp_path / "rot.jpg"
    _skin(size=64).crop((0, 0, 64, 40)).save(path, quality=92, exif=exif.tobytes())
    assert Image.open(path).size == (64, 40)
    f = image_features(path)
    assert f["decode_ok"] and (f["width"], f["height"]) == (40, 64)


def test_left_out_rows_keep_their_reason_and_refused_files_are_never_opened(images, tmp_path, monkeypatch):
    import ml.quality.features as features_module
    from ml.quality.features import usable_mask

    opened: list[str] = []
    real = features_module.image_features
    monkeypatch.setattr(features_module, "image_features", lambda p: opened.append(str(p)) or real(p))
    outside = tmp_path / "secret.jpg"
    shutil.copy(images["clean"], outside)
    records = pd.DataFrame(
        {
            "path": [str(images["clean"]), str(images["bmp"]), str(outside), str(tmp_path / "gone.jpg")],
            "label": ["a", "a", "a", "a"],
            "reason": ["", "unsupported_format", "outside_root", "broken_symlink"],
        }
    )
    feats = compute_features(records, workers=1)
    assert opened == [str(images["clean"]), str(images["bmp"])]
    assert feats["left_out"].tolist() == ["", "unsupported_format", "outside_root", "broken_symlink"]
    assert feats["reason"].tolist() == ["", "", "outside_root", "broken_symlink"]
    assert feats["decode_ok"].tolist() == [True, True, False, False] and feats["sha256"].iloc[2] is None
    assert usable_mask(feats).tolist() == [True, False, False, False]
    assert usable_mask(feats.drop(columns="left_out")).tolist() == [True, True, False, False]


def test_cache_answers_only_for_the_same_rows_bad_files_included(images, tmp_path):
    """The dataset version hashes only usable records: a bad file added after a first validation
    (same version) must not be answered from the cache."""
    work = tmp_path / "data"
    work.mkdir()
    shutil.copy(images["clean"], work / "a.jpg")
    records = pd.DataFrame({"path": [str(work / "a.jpg")], "label": ["b"], "split": "train"})
    first = compute_features_cached(records, "v1", tmp_path / "cache", workers=1)
    (work / "broken.jpg").write_bytes(b"\xff")
    bad = pd.DataFrame({"path": [str(work / "broken.jpg")], "label": ["b"], "reason": ["truncated"]})
    with_bad = pd.concat([records, bad], ignore_index=True)
    again = compute_features_cached(with_bad, "v1", tmp_path / "cache", workers=1)
    assert len(first) == 1 and len(again) == 2
    assert list(again["left_out"]) == ["", "truncated"]


def test_a_file_listed_many_times_is_decoded_once(images, monkeypatch):
    import ml.quality.features as features

    calls = []
    real = features._run_local
    monkeypatch.setattr(
        features, "_run_local", lambda paths, *a, **k: calls.append(list(paths)) or real(paths, *a, **k)
    )
    records = pd.DataFrame(
        {"path": [str(images["clean"])] * 50 + [str(images["blue"])], "label": "b", "split": "train"}
    )
    feats = compute_features(records, workers=1)
    assert calls == [[str(images["clean"]), str(images["blue"])]]
    assert len(feats) == 51 and feats["decode_ok"].all()
    assert feats.loc[0, "sha256"] == feats.loc[49, "sha256"] != feats.loc[50, "sha256"]


def _sigint_ignored(pid: int) -> bool:
    """Whether process ``pid`` ignores SIGINT (its SigIgn mask in /proc, bit 2 - 1)."""
    mask = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("SigIgn"))
    return bool(int(mask.split()[1], 16) & (1 << (signal.SIGINT - 1)))


def test_feature_workers_ignore_ctrl_c_from_birth_and_the_parent_keeps_its_handler() -> None:
    """A Ctrl-C reaches only the parent: the pool's workers are born with SIGINT ignored (no
    traceback from a worker interrupted while it imports, no broken pool), from the moment they
    exist, while the parent's handler is what it was before and after the start."""
    import time

    from ml.quality import features

    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = features._QuietSpawnContext().Process(target=time.sleep, args=(3,))
        proc.start()
        try:
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
            assert not _sigint_ignored(os.getpid())
            assert _sigint_ignored(proc.pid)  # at once, before the child's Python has started
            time.sleep(1.0)
            assert _sigint_ignored(proc.pid) and proc.is_alive()  # and after its imports
            os.kill(proc.pid, signal.SIGINT)
            time.sleep(0.3)
            assert proc.is_alive(), "a Ctrl-C stopped the worker"
        finally:
            proc.terminate()
            proc.join(10)
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_ctrl_c_while_feature_workers_start_is_raised_once_they_have_started() -> None:
    """A Ctrl-C that lands while the pool starts its workers is held and raised right after: this
    process still stops (the guard used to ignore it, and a slow start lost it)."""
    import os
    import signal
    import time

    from ml.quality import features

    after, before = [], signal.getsignal(signal.SIGINT)  # xdist workers ignore SIGINT: whatever it was
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with pytest.raises(KeyboardInterrupt):
        with features._interrupts_held_while_workers_start():
            os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C while the workers start
            time.sleep(0.3)
            after.append("the start went on")
    try:
        assert after == ["the start went on"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the handler is put back"
    finally:
        signal.signal(signal.SIGINT, before)
