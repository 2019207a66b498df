"""tasks.training.log_training_run records the precision a run trained in, and why, as MLflow
tags (and in its report), against a real sqlite tracking store; the CPU is simulated as an
AVX2-only one, so the answer does not depend on this machine."""

from __future__ import annotations

import json

from mlflow import MlflowClient

from ml.train import precision as prec
from tests.conftest import use_local_stores
from tests.unit.test_precision import AVX2_FLAGS, NO_BF16


def test_run_of_an_amp_request_on_an_avx2_cpu_is_tagged_fp32_with_the_reason(synth_small, tmp_path, monkeypatch):
    from ml.data.cache import build_cache
    from ml.data.manifest import build_manifest
    from ml.data.split import split_manifest
    from ml.train.config import TrainConfig
    from ml.train.loop import fit
    from ml.train.recipes import evaluate
    from tasks.mlflow_tasks import open_run
    from tasks.training import log_training_run

    use_local_stores(monkeypatch, tmp_path)
    monkeypatch.setattr(prec, "machine_cpu_flags", lambda: AVX2_FLAGS)
    monkeypatch.setattr(prec, "machine_cpu_capability", lambda: "AVX2")
    manifest = split_manifest(build_manifest(synth_small), val_frac=0.25, test_frac=0.0, seed=0)
    cache = build_cache(manifest, 32, tmp_path / "cache")
    cfg = TrainConfig(
        arch="resnet18", epochs=1, batch_size=16, lr=0.01, amp=True, snapshots=0, device="cpu", progress=False
    )
    result = fit(cache.subset("train"), cache.subset("val"), cache.classes, cfg)
    assert result.amp_dtype is None
    run_id, _ = open_run.fn("skinflow-train", "precision-tags")
    log_training_run.fn(
        run_id, result, evaluate(result, cache.subset("val")), "val", cache, manifest, str(tmp_path / "out")
    )

    run = MlflowClient().get_run(run_id)
    tags = run.data.tags
    assert (tags["amp"], tags["precision"], tags["precision_reason"]) == ("True", "fp32", NO_BF16)
    assert (run.data.params["amp"], run.data.params["force_amp"]) == ("True", "False")
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert (report["precision"], report["precision_reason"]) == ("fp32", NO_BF16)
