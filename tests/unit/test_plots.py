"""Every plot writes a valid PNG, including edge cases (absent class, single epoch, one group)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ml.eval.plots import plot_confusion, plot_curves, plot_lr_finder, plot_roc, plot_schedule, save_image_grid
from ml.train.lr_finder import LRFinderResult, bracket_around, suggest
from ml.train.schedules import make_schedule

CLASSES = ["acne", "ulcer", "tumor"]


def _assert_png(path: Path, returned: Path) -> tuple[int, int]:
    assert returned == path and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        assert im.width > 100 and im.height > 100
        return im.size


def _finder_result(stopped_early: bool) -> LRFinderResult:
    lrs = list(np.geomspace(1e-6, 1.0, 40))
    x = np.log10(lrs)
    losses = list(2 - np.tanh(x + 3) + np.exp(3 * (x + 0.5)))
    raw = list(np.asarray(losses) + 0.05 * np.sin(np.arange(40)))
    s = suggest(lrs, losses)
    return LRFinderResult(lrs, losses, raw, s, s["valley"], bracket_around(s["valley"], lrs), stopped_early)


def test_plot_lr_finder(tmp_path):
    drawn = {}
    for stopped_early in (False, True):
        r = _finder_result(stopped_early)
        path = tmp_path / "plots" / f"lr_finder_{stopped_early}.png"
        _assert_png(
            path,
            plot_lr_finder(
                r.lrs,
                r.losses,
                path,
                bracket=r.bracket,
                chosen=r.chosen,
                raw_losses=r.raw_losses,
                suggestions=r.suggestions,
                stopped_early=stopped_early,
            ),
        )
        with Image.open(path) as im:
            drawn[stopped_early] = np.asarray(im.convert("L"), dtype=np.int16)
    # the title says "(stopped early)": the title band differs between the two
    diff = np.abs(drawn[True] - drawn[False]) > 0
    assert diff[: int(drawn[True].shape[0] * 0.12)].any()
    bare = tmp_path / "bare.png"  # arrays alone, no raw curve or suggestions
    _assert_png(bare, plot_lr_finder(r.lrs, r.losses, bare, bracket=r.bracket, chosen=r.chosen))


def test_plot_schedule_from_a_real_trace(tmp_path):
    s = make_schedule("sgdr_dlr_clm", [[torch.nn.Parameter(torch.zeros(1))] for _ in range(3)], 0.1, 5, 3)
    trace = []
    for _ in range(15):
        trace.append(s.lrs())
        s.optimizer.step()
        s.scheduler.step()
    path = tmp_path / "schedule.png"
    _assert_png(path, plot_schedule(trace, path, s.cycle_end_iters))
    single = tmp_path / "single.png"
    _assert_png(single, plot_schedule([[0.1], [0.0]], single))  # one group, a zero LR (linear axis)
    with pytest.raises(ValueError, match="non-empty"):
        plot_schedule([], tmp_path / "x.png")


def test_plot_curves_full_partial_and_single_epoch(tmp_path):
    history = [
        {
            "epoch": e,
            "train_loss": 1 / (e + 1),
            "val_loss": 1.2 / (e + 1),
            "val_accuracy": 0.5 + 0.1 * e,
            "val_balanced_accuracy": 0.4 + 0.1 * e,
            "val_macro_f1": 0.45 + 0.1 * e,
        }
        for e in range(4)
    ]
    path = tmp_path / "curves.png"
    _assert_png(path, plot_curves(history, path))
    partial = tmp_path / "partial.png"
    _assert_png(partial, plot_curves([{"train_loss": 0.9}], partial))
    with pytest.raises(ValueError, match="history is empty"):
        plot_curves([], tmp_path / "x.png")


@pytest.mark.parametrize("normalize", [True, False])
def test_plot_confusion_with_an_absent_class(tmp_path, normalize):
    cm = np.array([[5, 2, 0], [1, 3, 0], [0, 0, 0]])  # tumor absent: zero row
    path = tmp_path / f"cm_{normalize}.png"
    _assert_png(path, plot_confusion(cm, CLASSES, path, normalize=normalize))
    with pytest.raises(ValueError, match="does not match"):
        plot_confusion(cm, CLASSES[:2], path)


def test_plot_roc_with_an_absent_class(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=30)  # class 2 (tumor) never occurs
    probs = rng.dirichlet(np.ones(3), size=30)
    path = tmp_path / "roc.png"
    _assert_png(path, plot_roc(y, probs, CLASSES, path))
    with pytest.raises(ValueError, match="shape"):
        plot_roc(y, probs[:, :2], CLASSES, path)


def test_save_image_grid(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 16, 16, 3), dtype=np.uint8)
    path = tmp_path / "grid.png"
    wide = _assert_png(path, save_image_grid(images, [f"img {i}" for i in range(5)], path, ncols=3))
    gray = tmp_path / "gray.png"
    _assert_png(gray, save_image_grid(images[:1, ..., :1], None, gray))
    tall = tmp_path / "tall.png"
    narrow = _assert_png(tall, save_image_grid(images, None, tall, ncols=1))
    assert narrow[1] > narrow[0] and wide[0] > wide[1]  # the layout follows ncols
    with pytest.raises(ValueError, match="uint8"):
        save_image_grid(images.astype(np.float32), None, path)
    with pytest.raises(ValueError, match="titles"):
        save_image_grid(images, ["one"], path)


def test_tile_titles_are_wrapped_to_the_tile_width():
    from ml.eval.plots import TITLE_WIDTH, wrap_title

    caption = "actinic_keratosis (0.24) / pigmented_benign_keratosis (0.37)"
    wrapped = wrap_title(caption)
    lines = wrapped.split("\n")
    assert len(lines) > 1 and all(len(line) <= TITLE_WIDTH for line in lines)
    assert wrapped.replace("\n", " ").replace("_ ", "_") == caption  # nothing lost or reordered
    assert wrap_title("Grad-CAM: nevus") == "Grad-CAM: nevus"  # short titles stay on one line
    long_word = "a_" * 30
    assert all(len(line) <= TITLE_WIDTH for line in wrap_title(long_word).split("\n"))
    assert wrap_title("x" * 60, width=25).split("\n") == ["x" * 25, "x" * 25, "x" * 10]  # no underscore: cut


def test_image_grid_titles_do_not_overlap(tmp_path):
    """Drawn titles of neighbouring tiles stay apart (the gallery caption with long class names)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    import ml.eval.plots as plots

    figures: list[Figure] = []
    real_save = plots._save
    plots._save = lambda fig, path: (figures.append(fig), real_save(fig, path))[1]
    try:
        titles = [
            "actinic_keratosis (0.24) / pigmented_benign_keratosis (0.37)",
            "Grad-CAM: actinic_keratosis",
            "Grad-CAM: pigmented_benign_keratosis",
            "guided backprop: pigmented_benign_keratosis",
        ]
        plots.save_image_grid(np.zeros((4, 32, 32, 3), np.uint8), titles, tmp_path / "g.png", ncols=4)
    finally:
        plots._save = real_save
    (fig,) = figures
    renderer = FigureCanvasAgg(fig).get_renderer()
    boxes = sorted((ax.title.get_window_extent(renderer) for ax in fig.axes), key=lambda b: b.x0)
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:])), [(b.x0, b.x1) for b in boxes]
