"""augcheck: are ProGAN samples safe to add to a small medical training set? (thesis ch. 5)

Pool two co-occurring labels at a known share r of label 1 -> train a ProGAN on the pool ->
N samples as a new dataset version -> K binary classifiers on the real images (different seeds)
-> each estimates r on the samples -> the thesis's table, mean and spread, error against r ->
memorisation test, train-on-synthetic / test-on-real, the estimator's control on real held-out
images -> verdict from policies/augcheck.yaml. The whole check runs at the GAN's resolution
(32 px on a CPU, 64 px with CUDA): the classifiers see real images at the size of the samples.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.naming import mlflow_tags, run_namer, tagged
from ml.data.config import DataConfig
from ml.gan.augcheck import AugCheckPolicy, binary_subset, decide, estimate_summary, estimate_table, pool_indices
from ml.gan.check import load_synthetic_images
from ml.gan.config import AugCheckConfig, ProGANConfig
from ml.project import with_project
from ml.train.precision import resolve_device
from tasks.augcheck import (
    estimate_runs,
    estimator_control,
    log_augcheck,
    memorisation,
    train_classifiers,
    train_gan,
    train_on_synthetic,
    write_synthetic,
)
from tasks.curation import _dataset_name
from tasks.data import build_image_cache, build_manifest, split_dataset
from tasks.mlflow_tasks import tracked_run

EXPERIMENT = "skinflow-augcheck"


@flow(name="augcheck", flow_run_name=run_namer("augcheck"))
def augcheck_flow(
    data: DataConfig = DataConfig(),
    check: AugCheckConfig = AugCheckConfig(),
    gan: ProGANConfig = ProGANConfig(),
    policy_path: str | None = None,
    out_dir: str = "outputs/augcheck",
) -> dict:
    """Pool -> ProGAN -> synthetic version -> K classifiers -> estimates, memorisation, TSTR,
    control -> verdict. ``gan.checkpoint_dir`` defaults to ``<out_dir>/gan_checkpoints``: run
    the same command again after an interruption and the GAN continues from its last stage."""
    with tagged("augcheck"):
        (data,) = with_project(data)  # the project file under what was given
        logger = get_run_logger()
        policy = AugCheckPolicy.load(policy_path)
        if data.test_frac <= 0:
            raise ValueError(
                f"data.test_frac must be in (0, 1), got {data.test_frac}: the control and the "
                "train-on-synthetic score need held-out real images"
            )
        out = Path(out_dir)
        if gan.checkpoint_dir is None:
            gan = gan.model_copy(update={"checkpoint_dir": str(out / "gan_checkpoints")})
        resolution = gan.target_resolution(resolve_device(gan.device).type == "cuda")

        # 1. the data at the GAN's resolution, one duplicate-aware split; the two labels
        manifest = build_manifest(data.source, data.class_map, allow_outside_root=data.allow_outside_root)
        missing = [c for c in (check.label_a, check.label_b) if c not in manifest.classes]
        if missing:
            raise ValueError(f"labels {missing} are not in {data.source} (classes: {manifest.classes})")
        manifest = split_dataset(manifest, data.val_frac, data.test_frac, data.seed)
        cache = build_image_cache(manifest, resolution)
        a, b = cache.classes.index(check.label_a), cache.classes.index(check.label_b)
        classes = [check.label_a, check.label_b]
        splits = {s: cache.subset(s) for s in ("train", "val", "test")}
        train, val, test = (binary_subset(*splits[s], a, b) for s in ("train", "val", "test"))
        for name, (_, y) in (("train", train), ("val", val), ("test", test)):
            if len(set(y.tolist())) < 2:
                raise ValueError(f"the {name} split lacks {check.label_a} or {check.label_b} images")

        # 2. the pool at ratio r (training images only) and the GAN
        pool = pool_indices(train[1], 0, 1, check.ratio, check.seed)
        pool_images = train[0][pool]
        tags = mlflow_tags(
            dataset_version=manifest.version, labels=f"{check.label_a}+{check.label_b}", ratio=f"{check.ratio:g}"
        )
        name = f"{check.label_a}+{check.label_b} r={check.ratio:g} {resolution}px s{check.seed} [augcheck]"
        with tracked_run(EXPERIMENT, name, tags=tags) as (parent, _):
            gan_result = train_gan(pool_images, gan, str(out / "plots" / "gan"), check.grid_images)
            meta = {
                "source_dataset_version": manifest.version,
                "labels": classes,
                "ratio": check.ratio,
                "pool_size": len(pool),
                "pool_counts": [int((train[1][pool] == k).sum()) for k in (0, 1)],
                "gan": gan.identity(),
                "resolution": resolution,
            }
            version = write_synthetic(
                gan_result, check.n_synthetic, check.seed + 1, _dataset_name(manifest.source), meta
            )
            synthetic_manifest = build_manifest(str(version.manifest_csv))
            synthetic = load_synthetic_images(version)

            # 3-4. K binary classifiers on real images; each estimates r on the samples
            results = train_classifiers(train, val, classes, check)
            runs = estimate_runs(results, synthetic)
            values = [r[policy.estimate] for r in runs]
            summary = estimate_summary(values, check.ratio)
            control = estimator_control(results, test, check.ratio, check.seed, policy.estimate)

            # 5. memorisation and train-on-synthetic / test-on-real
            memo, pairs_png = memorisation(results[0], synthetic, pool_images, policy, check.closest_pairs, str(out))
            tstr = train_on_synthetic(synthetic, results, val, test, classes, check)

            # 6. the verdict
            verdict = decide(check.ratio, summary, memo.summary(), policy, control)
            report = {
                "check": check.to_dict(),
                "ratio": check.ratio,
                "labels": classes,
                "estimate": policy.estimate,
                "policy": policy.__dict__,
                "dataset_version": manifest.version,
                "resolution": resolution,
                "pool": {"size": len(pool), "counts": dict(zip(classes, meta["pool_counts"]))},
                "gan": gan_result.summary(),
                "gan_grids": gan_result.grids,
                "synthetic": {
                    "dir": str(version.root),
                    "manifest": str(version.manifest_csv),
                    "dataset_version": synthetic_manifest.version,
                    "n_images": len(synthetic),
                    "reused": version.reused,
                },
                "runs": runs,
                "table": estimate_table(runs, check.label_a, check.label_b, policy.estimate),
                "summary": summary,
                "summary_share_predicted": estimate_summary([r["share_predicted"] for r in runs], check.ratio),
                "summary_mean_posterior": estimate_summary([r["mean_posterior"] for r in runs], check.ratio),
                "control": control,
                "memorisation": memo.summary(),
                "closest_pairs_png": pairs_png,
                "train_on_synthetic": tstr,
                "verdict": verdict.to_dict(),
                "parent_run_id": parent,
                "config": {"check": check.to_dict(), "gan": gan.to_dict(), "data": data.model_dump(mode="json")},
            }
            report_path = log_augcheck(parent, report, gan_result, [pairs_png], str(out))
        for row in report["table"]:
            logger.info("run %s: %s", row["run"], row)
        logger.info("augcheck verdict: %s %s", verdict.text, "; ".join(verdict.reasons))
        return {
            "parent_run_id": parent,
            "verdict": verdict.text,
            "safe": verdict.safe,
            "reasons": verdict.reasons,
            "ratio": check.ratio,
            "table": report["table"],
            "summary": summary,
            "control": control,
            "memorisation": report["memorisation"],
            "train_on_synthetic": tstr,
            "synthetic_dir": str(version.root),
            "synthetic_dataset_version": synthetic_manifest.version,
            "gan": report["gan"],
            "gan_grids": gan_result.grids,
            "closest_pairs_png": pairs_png,
            "report": report_path,
        }
