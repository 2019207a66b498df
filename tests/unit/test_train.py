"""ml.train.loop: learning, snapshots and their ensemble, resume, AMP, early stopping, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ml.train.batches import TrainBatches, normalisation_for
from ml.train.config import TrainConfig
from ml.train.loop import Callback, TrainState, fit
from ml.train.models import build_model, load_weights
from ml.train.precision import resolve_device
from ml.train.pretrain import pretrain
from ml.train.schedules import make_schedule
from ml.train.transforms import to_float_batch

CLASSES = ["red", "green", "blue"]
SIZE = 32


def squares(per_class: int, seed: int, n_classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images tinted with the class's colour, with a square of that colour at a random place."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    images = rng.integers(40, 110, size=(len(labels), SIZE, SIZE, 3), dtype=np.uint8)
    for img, c in zip(images, labels):
        y, x = rng.integers(0, SIZE - 20, size=2)
        img[..., c] += 60
        img[y : y + 20, x : x + 20, c] = 240
    return images, labels.astype(np.int64)


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"train": squares(8, seed=0), "val": squares(4, seed=1)}


def tiny(**overrides) -> TrainConfig:
    base = dict(arch="resnet18", epochs=3, batch_size=8, lr=0.05, device="cpu", progress=False, snapshots=0)
    return TrainConfig(**{**base, **overrides})


def states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


class Recorder(Callback):
    def __init__(self) -> None:
        self.begun = 0
        self.rows: list[dict] = []
        self.states: dict[int, dict[str, torch.Tensor]] = {}
        self.snapshots: list[tuple[int, int, dict[str, torch.Tensor]]] = []
        self.result = None

    def on_train_begin(self, state: TrainState) -> None:
        self.begun += 1

    def on_epoch_end(self, epoch: int, metrics: dict, state: TrainState) -> None:
        self.rows.append(dict(metrics))
        self.states[epoch] = {k: v.clone() for k, v in state.model.state_dict().items()}

    def on_snapshot(self, index: int, iteration: int, state: TrainState) -> None:
        self.snapshots.append((index, iteration, {k: v.clone() for k, v in state.model.state_dict().items()}))

    def on_train_end(self, result) -> None:
        self.result = result


class InterruptAfter(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, metrics: dict, state: TrainState) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_fit_learns_separable_colours_and_reports_history_to_callbacks(data) -> None:
    rec = Recorder()
    result = fit(data["train"], data["val"], CLASSES, tiny(epochs=3, schedule="sgdr_dlr_clm"), callbacks=[rec])
    assert result.val_metrics["accuracy"] >= 0.75, result.history  # chance is 1/3
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]

    n_groups = 6
    expected = {
        "epoch",
        "train_loss",
        "val_loss",
        "val_accuracy",
        "val_balanced_accuracy",
        "val_macro_f1",
        "val_auroc_macro",
        "epoch_seconds",
    } | {f"lr_group_{i}" for i in range(n_groups)}
    assert [set(r) for r in rec.rows] == [expected] * 3
    assert [r["epoch"] for r in rec.rows] == [1, 2, 3]
    assert rec.rows == result.history
    assert rec.begun == 1 and rec.result is result
    # discriminative LRs: the stem's rate is below the head's
    assert rec.rows[0]["lr_group_0"] < rec.rows[0]["lr_group_5"]
    assert result.epochs_run == 3 and not result.stopped_early
    assert len(result.lr_trace) == 3 * 3 and len(result.lr_trace[0]) == n_groups
    assert result.predict_proba(data["val"][0]).shape == (len(data["val"][1]), 3)


def test_snapshots_match_cycle_ends_and_ensemble_is_mean_softmax(data) -> None:
    cfg = tiny(epochs=3, schedule="sgdr", snapshots=2)
    rec = Recorder()
    result = fit(data["train"], data["val"], CLASSES, cfg, callbacks=[rec])
    steps = len(data["train"][1]) // cfg.batch_size
    cycle_ends = make_schedule("sgdr", [[torch.nn.Parameter(torch.zeros(1))]], 0.1, steps, cfg.epochs).cycle_end_iters
    assert len(cycle_ends) == 3
    assert [i for _, i, _ in rec.snapshots] == cycle_ends
    assert len(result.snapshots) == min(cfg.snapshots, len(cycle_ends))
    assert result.snapshot_iterations == cycle_ends[-2:]
    for kept, (_, _, seen) in zip(result.snapshots, rec.snapshots[-2:]):
        assert states_equal(kept, seen)
    # the last cycle ends with the last iteration: the last snapshot is the final model
    assert states_equal(result.snapshots[-1], result.model.state_dict())

    images = data["val"][0]
    expected = np.zeros((len(images), 3))
    for state in result.snapshots:
        model = build_model("resnet18", 3)
        model.load_state_dict(state)
        model.eval()
        with torch.no_grad():
            logits = model(to_float_batch(torch.from_numpy(images), *result.norm))
        expected += torch.softmax(logits, 1).double().numpy() / len(result.snapshots)
    np.testing.assert_allclose(result.predict_proba(images), expected, atol=1e-5)
    single = result.snapshots[0]
    assert not np.allclose(expected, _softmax_of(single, images, result.norm), atol=1e-5), "ensemble must mix"


def _softmax_of(state, images, norm) -> np.ndarray:
    model = build_model("resnet18", 3)
    model.load_state_dict(state)
    with torch.no_grad():
        return torch.softmax(model.eval()(to_float_batch(torch.from_numpy(images), *norm)), 1).double().numpy()


def test_clm_snapshot_count_is_completed_cycles(data) -> None:
    # cycles of 1 and 2 epochs complete in 3 epochs; a third snapshot slot stays empty
    result = fit(data["train"], data["val"], CLASSES, tiny(epochs=3, schedule="sgdr_dlr_clm", snapshots=3))
    assert result.snapshot_iterations == [3, 9]


def test_resume_after_interrupt_is_bit_identical(data, tmp_path) -> None:
    cfg = dict(epochs=3, schedule="sgdr_dlr_clm", snapshots=2, weighted_sampler=True, early_stopping_patience=5)
    full = fit(data["train"], data["val"], CLASSES, tiny(checkpoint_dir=str(tmp_path / "a"), **cfg))

    resumed_cfg = tiny(checkpoint_dir=str(tmp_path / "b"), **cfg)
    with pytest.raises(KeyboardInterrupt):
        fit(data["train"], data["val"], CLASSES, resumed_cfg, callbacks=[InterruptAfter(1)])
    assert (tmp_path / "b" / "last.pt").is_file()
    rec = Recorder()
    resumed = fit(data["train"], data["val"], CLASSES, resumed_cfg, callbacks=[rec])

    assert [r["epoch"] for r in rec.rows] == [2, 3], "epoch 1 must not be retrained"
    assert states_equal(full.model.state_dict(), resumed.model.state_dict())
    assert len(full.snapshots) == len(resumed.snapshots) == 2
    for a, b in zip(full.snapshots, resumed.snapshots):
        assert states_equal(a, b)
    drop = "epoch_seconds"
    assert [{k: v for k, v in r.items() if k != drop} for r in full.history] == [
        {k: v for k, v in r.items() if k != drop} for r in resumed.history
    ]
    assert full.lr_trace == resumed.lr_trace


class CheckpointEpochs(Callback):
    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_epoch_end(self, epoch: int, metrics: dict, state: TrainState) -> None:
        self.seen.append(state.checkpoint_epoch)


def test_checkpoint_interval_skips_epochs_but_always_writes_the_last(data, tmp_path) -> None:
    every, sparse = CheckpointEpochs(), CheckpointEpochs()
    fit(data["train"], data["val"], CLASSES, tiny(epochs=3, checkpoint_dir=str(tmp_path / "a")), callbacks=[every])
    assert every.seen == [1, 2, 3]
    cfg = tiny(epochs=3, checkpoint_dir=str(tmp_path / "b"), checkpoint_interval_s=3600)
    with pytest.raises(KeyboardInterrupt):  # interrupted before any interval elapsed: nothing to resume
        fit(data["train"], data["val"], CLASSES, cfg, callbacks=[InterruptAfter(2)])
    assert not (tmp_path / "b" / "last.pt").exists()
    rec = Recorder()
    fit(data["train"], data["val"], CLASSES, cfg, callbacks=[sparse, rec])
    assert sparse.seen == [0, 0, 3] and [r["epoch"] for r in rec.rows] == [1, 2, 3]
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["epoch"] == 3


def test_a_callback_stop_is_checkpointed_despite_the_interval(data, tmp_path) -> None:
    class StopAfterFirst(Callback):
        def on_epoch_end(self, epoch: int, metrics: dict, state: TrainState) -> None:
            state.stop_requested = True

    cfg = tiny(epochs=3, checkpoint_dir=str(tmp_path), checkpoint_interval_s=3600)
    result = fit(data["train"], data["val"], CLASSES, cfg, callbacks=[StopAfterFirst()])
    assert result.epochs_run == 1
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 1


def test_checkpoint_interval_may_change_on_resume(data, tmp_path) -> None:
    with pytest.raises(KeyboardInterrupt):
        fit(
            data["train"],
            data["val"],
            CLASSES,
            tiny(epochs=3, checkpoint_dir=str(tmp_path)),
            callbacks=[InterruptAfter(1)],
        )
    rec = Recorder()
    fit(
        data["train"],
        data["val"],
        CLASSES,
        tiny(epochs=3, checkpoint_dir=str(tmp_path), checkpoint_interval_s=60),
        callbacks=[rec],
    )
    assert [r["epoch"] for r in rec.rows] == [2, 3]


def test_resume_refuses_another_config(data, tmp_path) -> None:
    with pytest.raises(KeyboardInterrupt):
        fit(
            data["train"],
            data["val"],
            CLASSES,
            tiny(epochs=2, checkpoint_dir=str(tmp_path)),
            callbacks=[InterruptAfter(1)],
        )
    with pytest.raises(ValueError, match="another config"):
        fit(data["train"], data["val"], CLASSES, tiny(epochs=2, lr=0.1, checkpoint_dir=str(tmp_path)))


def test_same_seed_same_weights_other_seed_other_weights(data) -> None:
    a = fit(data["train"], data["val"], CLASSES, tiny(epochs=1, seed=3))
    b = fit(data["train"], data["val"], CLASSES, tiny(epochs=1, seed=3))
    c = fit(data["train"], data["val"], CLASSES, tiny(epochs=1, seed=4))
    assert states_equal(a.model.state_dict(), b.model.state_dict())
    assert not states_equal(a.model.state_dict(), c.model.state_dict())


def test_forced_amp_on_cpu_runs_in_bfloat16_channels_last_and_learns(data) -> None:
    # forced, so that the bf16 path runs on every CPU; at 16 px even a CPU without native bf16
    # (24x slower there) trains these 9 steps in seconds
    small = {k: (images[:, ::2, ::2].copy(), labels) for k, (images, labels) in data.items()}
    model = build_model("resnet18", 3)
    seen: set[torch.dtype] = set()
    model.fc.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
    cfg = tiny(epochs=3, lr=0.02, amp=True, force_amp=True, channels_last=True)
    result = fit(small["train"], small["val"], CLASSES, cfg, model=model)
    assert seen == {torch.bfloat16}
    assert result.amp_dtype == "bfloat16" and result.precision.name == "bf16"
    # it learns the training set; bf16 on the CPU is not run-to-run deterministic and 12 val images
    # at 16 px after 9 steps are too few to ask more of it
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < 0.5 * losses[0] and np.isfinite(result.val_metrics["loss"]), result.history


def test_early_stopping_stops_and_keeps_the_best_state(data) -> None:
    # 3 val images give 4 accuracy levels, so accuracy cannot rise 4 epochs running:
    # with patience 1 the run must stop by epoch 5 of 8.
    val = (data["val"][0][::4], data["val"][1][::4])
    rec = Recorder()
    cfg = tiny(epochs=8, lr=0.02, early_stopping_patience=1, monitor="val_accuracy")
    result = fit(data["train"], val, CLASSES, cfg, callbacks=[rec])
    assert result.stopped_early and result.epochs_run < cfg.epochs
    accs = [r["val_accuracy"] for r in result.history]
    assert result.best_epoch == int(np.argmax(accs)) + 1
    assert result.epochs_run == result.best_epoch + 1
    assert result.best_metrics == result.history[result.best_epoch - 1]
    assert states_equal(result.model.state_dict(), rec.states[result.best_epoch])


def test_training_batches_are_augmented_and_the_weighted_sampler_balances_a_long_tail(data) -> None:
    images, labels = data["train"]
    keep = np.concatenate([np.flatnonzero(labels == c)[:n] for c, n in ((0, 8), (1, 8), (2, 2))])
    tail = (images[keep], labels[keep])
    norm = normalisation_for(tiny(), tail[0])

    def drawn(weighted: bool) -> np.ndarray:
        batches = TrainBatches(tail, 3, tiny(weighted_sampler=weighted, batch_size=6), norm, torch.device("cpu"))
        return np.concatenate([y.numpy() for _ in range(60) for _, y in batches])

    share = np.bincount(drawn(True), minlength=3) / len(drawn(True))
    assert np.all(np.abs(share - 1 / 3) < 0.06), share
    plain = np.bincount(drawn(False), minlength=3) / len(drawn(False))
    assert plain[2] < 0.15, plain  # 2 of 18 without weighting

    x, y = next(iter(TrainBatches(tail, 3, tiny(batch_size=6), norm, torch.device("cpu"))))
    assert x.shape == (6, 3, SIZE, SIZE) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(float(x.mean())) < 1.0  # normalised


def test_pretrained_backbone_transfers_to_new_classes(data, tmp_path) -> None:
    path = tmp_path / "backbone.pt"
    source = pretrain(*data["train"], CLASSES, tiny(epochs=1), path)
    target = build_model("resnet18", 2)
    report = load_weights(target, str(path), "resnet18")
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"]
    assert torch.equal(target.layer4[1].conv2.weight, source.model.layer4[1].conv2.weight.cpu())
    two = CLASSES[:2]
    keep = data["train"][1] < 2
    result = fit(
        (data["train"][0][keep], data["train"][1][keep]),
        (data["val"][0][data["val"][1] < 2], data["val"][1][data["val"][1] < 2]),
        two,
        tiny(epochs=1, weights=str(path)),
    )
    assert sorted(result.weights_report["skipped"]) == ["fc.bias", "fc.weight"]


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_bad_inputs_are_rejected(data) -> None:
    with pytest.raises(ValueError, match="monitor"):
        fit(data["train"], data["val"], CLASSES, tiny(monitor="val_precision"))
    images, labels = data["train"]
    with pytest.raises(ValueError, match="uint8"):
        fit((images.astype(np.float32), labels), data["val"], CLASSES, tiny())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_on_cuda_with_amp(data) -> None:
    result = fit(data["train"], data["val"], CLASSES, tiny(epochs=3, amp=True, device="auto", snapshots=2))
    assert result.device.startswith("cuda")
    assert result.amp_dtype in ("bfloat16", "float16")
    assert result.val_metrics["accuracy"] >= 0.75


def test_divergence_stops_fit_with_the_iteration(data) -> None:
    with pytest.raises(FloatingPointError, match=r"non-finite training loss at iteration \d+"):
        fit(data["train"], data["val"], CLASSES, tiny(epochs=2, schedule="sgd", lr=1e8))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_divergence_on_cuda_is_caught_without_a_sync_per_step(data) -> None:
    """On CUDA the loss is read back every few steps, not every step; divergence still stops fit."""
    with pytest.raises(FloatingPointError, match=r"non-finite training loss (by|at) iteration \d+"):
        fit(data["train"], data["val"], CLASSES, tiny(epochs=2, schedule="sgd", lr=1e8, device="cuda"))


def test_prefetched_keeps_order_and_reraises_errors() -> None:
    import threading

    from ml.train.prefetch import prefetched

    assert list(prefetched(range(50), 2, lambda i: i * i)) == [i * i for i in range(50)]

    def broken():
        yield 1
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        list(prefetched(broken(), 3))
    with pytest.raises(ZeroDivisionError):
        list(prefetched([1, 0], 1, lambda i: 1 / i))
    stream = prefetched(range(10_000), 2)
    assert next(stream) == 0
    stream.close()  # the consumer stops early (a break, an ASHA stop): the thread ends too
    assert not [t for t in threading.enumerate() if t.name == "skinflow-prefetch"]


def test_prefetching_pipeline_yields_the_same_batches_and_generator_states(data) -> None:
    from ml.train.batches import TrainBatches, normalisation_for

    cfg = tiny(batch_size=4)
    norm = normalisation_for(cfg, data["train"][0])
    plain = TrainBatches(data["train"], len(CLASSES), cfg, norm, torch.device("cpu"))
    ahead = TrainBatches(data["train"], len(CLASSES), cfg, norm, torch.device("cpu"))
    assert plain.prefetch == 0  # CPU default
    ahead.prefetch = 2
    for _ in range(2):  # two epochs: the sampler state carries over
        for (xa, ya), (xb, yb) in zip(plain, ahead, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for name in plain.generators:
        assert torch.equal(plain.generators[name].get_state(), ahead.generators[name].get_state())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_pipeline_prefetches_pinned_batches_in_the_same_order(data) -> None:
    from ml.train.batches import TrainBatches, normalisation_for

    cfg = tiny(batch_size=4, device="cuda")
    norm = normalisation_for(cfg, data["train"][0])
    ahead = TrainBatches(data["train"], len(CLASSES), cfg, norm, torch.device("cuda"))
    plain = TrainBatches(data["train"], len(CLASSES), cfg, norm, torch.device("cuda"))
    assert ahead.prefetch == 2
    plain.prefetch = 0
    for (xa, ya), (xb, yb) in zip(plain, ahead, strict=True):
        assert xa.is_cuda and torch.equal(xa, xb) and torch.equal(ya, yb)


def test_a_budget_inside_a_clm_cycle_trains_the_last_whole_cycle(data, caplog) -> None:
    """2 epochs of sgdr_dlr_clm would stop 1 epoch into the 2-epoch cycle (mid-cosine, no
    snapshot): fit trains 1 epoch, says so once, and the result shows the budget it trained."""
    import logging

    caplog.set_level(logging.WARNING, logger="ml.train")
    result = fit(data["train"], data["val"], CLASSES, tiny(epochs=2, schedule="sgdr_dlr_clm", snapshots=2))
    notes = [r.getMessage() for r in caplog.records if r.name == "ml.train" and "inside a cycle" in r.getMessage()]
    assert len(notes) == 1 and "training 1 epoch," in notes[0], notes
    assert result.epochs_run == 1 and len(result.history) == 1 and result.config["epochs"] == 1
    assert len(result.snapshots) == 1, "the one cycle it completed is a snapshot"


class Clocks(Callback):
    def __init__(self, score) -> None:
        self.score, self.seen = score, []

    def on_epoch_end(self, epoch: int, metrics: dict, state: TrainState) -> None:
        self.seen.append((epoch, self.score.at_cycle_end, self.score.clock, self.score.value))


def test_cycle_end_score_is_the_final_models_ensemble_and_moves_only_at_cycle_ends(data, tmp_path) -> None:
    from ml.eval.metrics import classification_metrics
    from ml.train.cycle_score import CycleEndScore

    # clm, 3 epochs: cycles end at epochs 1 and 3; the run hands over the ensemble of both
    score = CycleEndScore(data["val"][1], snapshots=3)
    clocks = Clocks(score)
    result = fit(
        data["train"],
        data["val"],
        CLASSES,
        tiny(epochs=3, schedule="sgdr_dlr_clm", snapshots=3),
        callbacks=[score, clocks],
    )
    assert [(e, end, clock) for e, end, clock, _ in clocks.seen] == [(1, True, 2), (2, False, 2), (3, True, 4)]
    assert clocks.seen[1][3] == clocks.seen[0][3], "held between cycle ends"
    final = result.predict_proba(data["val"][0])
    np.testing.assert_allclose(score.ensemble_probs(), final, atol=1e-6)
    assert score.value == pytest.approx(classification_metrics(data["val"][1], final, CLASSES)["balanced_accuracy"])
    saved = CycleEndScore(data["val"][1], snapshots=3)
    score.save(tmp_path / "score.npz")
    saved.load(tmp_path / "score.npz")
    assert (saved.value, saved.cycle_epoch, len(saved.probs)) == (score.value, 3, 2)

    # step decay: every epoch is a rung, and the model it would hand over is itself
    score = CycleEndScore(data["val"][1], snapshots=3)
    clocks = Clocks(score)
    result = fit(
        data["train"], data["val"], CLASSES, tiny(epochs=2, schedule="sgd", snapshots=3), callbacks=[score, clocks]
    )
    assert [clock for _, _, clock, _ in clocks.seen] == [2, 3]
    np.testing.assert_allclose(score.ensemble_probs(), result.predict_proba(data["val"][0]), atol=1e-6)
    assert score.value == pytest.approx(result.history[-1]["val_balanced_accuracy"])
