"""Prefect tasks of the augmentation check: thin wrappers over ml.gan (the ProGAN, the synthetic
dataset version, the binary classifiers and their estimates) and the MLflow/Prefect reporting.
No ML logic here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ml.gan import check as gan_check
from ml.gan.augcheck import AugCheckPolicy, pair_grid
from ml.gan.config import AugCheckConfig, ProGANConfig
from ml.gan.train import GanResult, train_progan
from ml.settings import get_settings
from ml.tracking import studies as tracked_studies
from tasks.common import IO_RETRY, markdown_table, publish_markdown, publish_table


@task(name="train-progan", cache_policy=NO_CACHE)
def train_gan(images: np.ndarray, cfg: ProGANConfig, sample_dir: str, grid_images: int) -> GanResult:
    """Train the ProGAN on the pool (per-stage grids in ``sample_dir``; resumes from ``cfg.checkpoint_dir``)."""
    result = train_progan(images, cfg, sample_dir=sample_dir, grid_images=grid_images)
    get_run_logger().info(
        "ProGAN to %d px on %d images in %.0fs (%s)%s",
        result.resolution,
        len(images),
        result.wall_seconds,
        result.precision.name,
        f", resumed after stage {result.resumed_from_stage}" if result.resumed_from_stage is not None else "",
    )
    return result


@task(name="write-synthetic-version", cache_policy=NO_CACHE)
def write_synthetic(gan: GanResult, n: int, seed: int, dataset_name: str, meta: dict[str, Any]):
    """N samples of the EMA generator as a NEW dataset version under
    ``<data_root>/datasets/<name>-augcheck/<key>/`` (never mixed into the originals)."""
    key = gan_check.synthetic_key({**meta, "n": n, "sample_seed": seed})
    dest = get_settings().data_root / "datasets" / f"{dataset_name}-augcheck" / key
    images = gan.sample(n, seed)
    version = gan_check.write_synthetic_version(images, dest, {**meta, "n": n, "sample_seed": seed})
    get_run_logger().info(
        "synthetic version %s (%s): %d images", version.root, "reused" if version.reused else "written", n
    )
    return version


@task(name="train-binary-classifiers", cache_policy=NO_CACHE)
def train_classifiers(train, val, classes: list[str], check: AugCheckConfig):
    """K binary classifiers on the real images (ml.train.loop.fit)."""
    results = gan_check.train_classifiers(train, val, classes, check)
    get_run_logger().info(
        "binary classifiers: val accuracy %s", ", ".join(f"{r.val_metrics['accuracy']:.3f}" for r in results)
    )
    return results


@task(name="estimate-ratio", cache_policy=NO_CACHE)
def estimate_runs(results, images: np.ndarray) -> list[dict[str, Any]]:
    return gan_check.estimate_runs(results, images)


@task(name="estimator-control", cache_policy=NO_CACHE)
def estimator_control(results, heldout, ratio: float, seed: int, estimate: str) -> dict[str, Any]:
    return gan_check.control(results, heldout, ratio, seed, estimate)


@task(name="memorisation-test", cache_policy=NO_CACHE)
def memorisation(
    result, synthetic: np.ndarray, train_images: np.ndarray, policy: AugCheckPolicy, closest: int, out_dir: str
):
    """The NN-distance test; the closest synthetic/training pairs side by side as a PNG."""
    from ml.eval.plots import save_image_grid

    memo = gan_check.memorisation(result, synthetic, train_images, policy, closest)
    images, titles = pair_grid(synthetic, train_images, memo)
    png = save_image_grid(images, titles, Path(out_dir) / "plots" / "closest_pairs.png", ncols=2)
    return memo, str(png)


@task(name="train-on-synthetic", cache_policy=NO_CACHE)
def train_on_synthetic(synthetic, results, val, test, classes: list[str], check: AugCheckConfig) -> dict[str, Any]:
    labels = gan_check.pseudo_labels(results, synthetic)
    return gan_check.train_on_synthetic(synthetic, labels, val, test, classes, check, results)


@task(name="log-augcheck", **IO_RETRY, cache_policy=NO_CACHE)
def log_augcheck(parent_run_id: str, report: dict[str, Any], gan: GanResult, plots: list[str], out_dir: str) -> str:
    """Report JSON, the parent run's params/metrics/tags/artifacts (GAN grids per stage, the
    per-run table, the verdict) and the ``augcheck-summary`` Prefect artifacts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "augcheck.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    tracked_studies.log_augcheck_run(parent_run_id, report, gan, plots)
    publish_table(
        "augcheck-summary",
        report["table"],
        f"{report['check']['label_a']} vs {report['check']['label_b']} pooled at r={report['ratio']:g}: "
        f"estimates of {report['check']['classifiers']} binary classifiers on "
        f"{report['synthetic']['n_images']} ProGAN samples",
    )
    publish_markdown("augcheck-verdict", verdict_markdown(report), f"augcheck verdict: {report['verdict']['verdict']}")
    return str(path)


def verdict_markdown(report: dict[str, Any]) -> str:
    v, s, m = report["verdict"], report["summary"], report["memorisation"]
    lines = [f"# Verdict: {v['verdict']}", ""]
    lines += [f"- {r}" for r in v["reasons"]] or ["- all rules of policies/augcheck.yaml hold"]
    lines += [
        "",
        f"r = {report['ratio']:g}; mean estimate {s['mean']:.3f} (std {s['std']:.3f}, range "
        f"{s['min']:.3f}..{s['max']:.3f}); memorised share {m['memorised_share']:.1%}; control "
        f"{report['control']['mixed']['mean']:.3f}; train-on-synthetic accuracy "
        f"{report['train_on_synthetic']['tstr_accuracy']:.3f} (real-trained "
        f"{report['train_on_synthetic']['trtr_accuracy']:.3f})",
        "",
        markdown_table(report["table"]),
    ]
    return "\n".join(lines)
