"""Data verbs: ``data synth|manifest|split|apply-decisions`` (the ``data`` group), ``validate`` and
``label-issues``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli import render
from flows.cli.errors import EXIT_FINDINGS, EXIT_SERVICE, EXIT_USAGE, fail
from flows.cli.options import (
    AllowOutsideRoot,
    ClassMap,
    Decisions,
    Size,
    TestFrac,
    ValFrac,
    config_option,
    rates,
    value_range,
)
from flows.cli.runner import build, check_policies, run_flow
from ml.data.config import DataConfig
from ml.quality.config import LabelIssuesConfig

group = typer.Typer(help="Dataset tools: synthetic data, manifests, splits.", no_args_is_help=True)
"""``skinflow data ...``"""
verbs = typer.Typer()
"""Top-level verbs of this area."""
DatasetSource = Annotated[str, typer.Argument(help="Dataset dir, CSV manifest or s3:// URI.")]


@group.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", help="Output ImageFolder directory.")],
    per_class: Annotated[int, typer.Option(help="Images per class (ignored with --long-tail or --priors).")] = 20,
    long_tail: Annotated[bool, typer.Option(help="SD-198-like long tail: 10-60 images per class.")] = False,
    priors: Annotated[
        str | None, typer.Option(help="Class priors for label shift, e.g. 'acne=0.5,ulcer=0.1,...'.")
    ] = None,
    total: Annotated[int | None, typer.Option(help="Total images when --priors is given.")] = None,
    size: Annotated[int, typer.Option(help="Image side in px.")] = 128,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 0,
    pen_rate: Annotated[
        str | None, typer.Option(help="Pen-mark rate: '0.1' or per class 'acne=0.9,tumor=0.1'.")
    ] = None,
    ruler_rate: Annotated[str | None, typer.Option(help="Ruler rate: '0.1' or per class.")] = None,
    gamma: Annotated[str, typer.Option(help="Illumination gamma range 'lo,hi' (>1 darkens).")] = "1.0,1.0",
    flash_rate: Annotated[float, typer.Option(help="Share of flash wash-out images.")] = 0.0,
    fov: Annotated[str, typer.Option(help="Lesion share of the frame 'lo,hi'.")] = "0.35,0.6",
    noise: Annotated[float, typer.Option(help="Impulse (salt-and-pepper) noise fraction.")] = 0.0,
    blur: Annotated[float, typer.Option(help="Gaussian blur sigma (px).")] = 0.0,
    skin_tones: Annotated[
        str | None, typer.Option(help="Weights over 6 tone bins light..dark, e.g. '1,1,1,0,0,0'.")
    ] = None,
    duplicate_rate: Annotated[float, typer.Option(help="Share of extra exact duplicates.")] = 0.0,
    near_duplicate_rate: Annotated[float, typer.Option(help="Share of extra near duplicates.")] = 0.0,
    corrupt: Annotated[int, typer.Option(help="Number of extra corrupt files.")] = 0,
    distractor_rate: Annotated[
        float, typer.Option(help="Share of images with a pen-mark look-alike (hair, lips, dark lesion, shadow).")
    ] = 0.0,
    fmt: Annotated[str, typer.Option(help="jpg or png.")] = "jpg",
):
    """Write an SD-198-style synthetic ImageFolder (acne, alopecia, blister, crust, erythema, leukoderma,
    macula, tumor, ulcer, wheal) with seeded knobs for confounders, illumination, noise and shift."""
    from ml.data.synth import SynthConfig, generate

    cfg = SynthConfig(
        per_class=per_class,
        long_tail=long_tail,
        class_priors=rates(priors) if priors else None,
        total=total,
        size=size,
        seed=seed,
        pen_rate=rates(pen_rate),
        ruler_rate=rates(ruler_rate),
        gamma=value_range(gamma),
        flash_rate=flash_rate,
        fov=value_range(fov),
        noise=noise,
        blur=blur,
        skin_tones=[float(x) for x in skin_tones.split(",")] if skin_tones else None,
        duplicate_rate=duplicate_rate,
        near_duplicate_rate=near_duplicate_rate,
        corrupt=corrupt,
        distractor_rate=distractor_rate,
        fmt=fmt,
    )
    render.echo_json(generate(out, cfg))


@group.command("manifest")
def data_manifest(
    source: Annotated[str, typer.Argument(help="ImageFolder dir, CSV manifest (path,label[,split]), local or s3://.")],
    out: Annotated[Path | None, typer.Option(help="Write the manifest CSV (+ .json summary) here.")] = None,
    class_map: ClassMap = None,
    allow_outside_root: Annotated[
        bool, typer.Option(help="Read CSV paths and symlinks outside the dataset's folder.")
    ] = False,
):
    """Build the manifest of a dataset: file digests, labels, bad files with reasons, version."""
    from ml.data.manifest import build_manifest, load_class_map

    _check_out_file(out)
    m = build_manifest(
        source,
        class_map=load_class_map(class_map) if class_map else None,
        progress=True,
        allow_outside_root=allow_outside_root,
    )
    if out:
        m.save(out)
    render.manifest_summary(m)


@group.command("split")
def data_split(
    source: Annotated[str, typer.Argument(help="ImageFolder dir, CSV manifest, or a saved manifest CSV.")],
    out: Annotated[Path, typer.Option(help="Write the split manifest CSV here.")],
    val_frac: ValFrac = None,
    test_frac: TestFrac = None,
    seed: Annotated[int | None, config_option(DataConfig, "seed")] = None,
    class_map: ClassMap = None,
    allow_outside_root: AllowOutsideRoot = None,
):
    """Stratified, duplicate-aware train/val(/test) split (duplicates never straddle splits)."""
    from ml.data.manifest import build_manifest, load_class_map
    from ml.data.split import split_manifest

    _check_out_file(out)
    data = build(
        DataConfig,
        source=source,
        val_frac=val_frac,
        test_frac=test_frac,
        seed=seed,
        class_map=class_map,
        allow_outside_root=allow_outside_root,
    )
    m = build_manifest(
        data.source,
        class_map=load_class_map(data.class_map) if data.class_map else None,
        progress=True,
        allow_outside_root=data.allow_outside_root,
    )
    m = split_manifest(m, val_frac=data.val_frac, test_frac=data.test_frac, seed=data.seed)
    m.save(out)
    render.manifest_summary(m)


def _check_out_file(out: Path | None) -> None:
    """``--out`` names a file to write (with a ``.json`` beside it), never a folder."""
    if out is not None and out.is_dir():
        fail(f"--out {out} is a directory: give a file path such as {out / 'manifest.csv'}")


@verbs.command("validate")
def validate(
    source: DatasetSource,
    class_map: ClassMap = None,
    decisions: Decisions = None,
    allow_outside_root: AllowOutsideRoot = None,
    policy: Annotated[
        Path | None, typer.Option(help="Validation policy YAML (default policies/validation.yaml).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Report folder (GX Data Docs, JSON).")] = Path("outputs/validate"),
):
    """Validate a dataset version with Great Expectations; exits 1 on critical failures, 3 when the
    results (printed either way) could not be recorded in MLflow or the store."""
    data = build(
        DataConfig, source=source, class_map=class_map, decisions=decisions, allow_outside_root=allow_outside_root
    )
    check_policies(validation=policy)
    from flows.validate import validate_flow

    report = run_flow(
        validate_flow, data=data, policy=str(policy) if policy else None, out_dir=str(out), fail_on_critical=False
    )
    render.validation(report)
    for line in report["not_written"]:  # a full or read-only disk: the user's to fix (exit 2)
        typer.secho(f"error: report pages not written: {line}", fg=typer.colors.RED, err=True)
    for line in report["not_recorded"]:
        typer.secho(f"error: {line}; the reports above are on disk", fg=typer.colors.RED, err=True)
    if report["not_written"]:
        raise typer.Exit(EXIT_USAGE)
    if not report["passed"]:
        raise typer.Exit(EXIT_FINDINGS)
    if report["not_recorded"]:
        raise typer.Exit(EXIT_SERVICE)


@verbs.command("label-issues")
def label_issues(
    source: DatasetSource,
    class_map: ClassMap = None,
    size: Size = None,
    decisions: Decisions = None,
    folds: Annotated[int | None, config_option(LabelIssuesConfig, "folds")] = None,
    out: Annotated[str | None, config_option(LabelIssuesConfig, "out_dir", "--out")] = None,
    allow_outside_root: AllowOutsideRoot = None,
):
    """Find images that probably carry the wrong label, copies under another label and outliers
    (cross-fitted probes on frozen ImageNet features, cleanlab). Writes label_issues.csv, an offline
    review page, the confused label pairs and decisions.csv to fill in; then `data apply-decisions`."""
    data = build(
        DataConfig,
        source=source,
        class_map=class_map,
        size=size,
        decisions=decisions,
        allow_outside_root=allow_outside_root,
    )
    cfg = build(LabelIssuesConfig, folds=folds, out_dir=out)
    from flows.label_issues import label_issues_flow

    render.echo_json(run_flow(label_issues_flow, data=data, issues=cfg))


@group.command("apply-decisions")
def apply_decisions(
    decisions: Annotated[Path, typer.Argument(help="The edited decisions.csv of `skinflow label-issues`.")],
    source: Annotated[str, typer.Argument(help="The dataset the decisions were made on.")],
    class_map: ClassMap = None,
    allow_outside_root: AllowOutsideRoot = None,
):
    """Make the new dataset version a person's label-review decisions describe (relabel, drop, keep;
    who and why recorded), beside the data root; originals are never modified. Train on it with
    --decisions (or data.decisions in the project file)."""
    from ml.data.decisions import DecisionError, read_decisions

    try:
        read_decisions(decisions)  # a broken file is one line before any work
    except DecisionError as exc:
        fail(str(exc))
    data = build(DataConfig, source=source, class_map=class_map, allow_outside_root=allow_outside_root)
    from ml.data.manifest import build_manifest, load_class_map
    from tasks.label_issues import apply_label_decisions

    manifest = build_manifest(
        data.source,
        class_map=load_class_map(data.class_map) if data.class_map else None,
        progress=True,
        allow_outside_root=data.allow_outside_root,
    )
    derived, path, counts = apply_label_decisions.fn(manifest, str(decisions))
    render.echo_json(
        {
            "parent_dataset_version": manifest.version,
            "dataset_version": derived.version,
            "decisions": counts,
            "manifest": str(path),
            "next": f"skinflow retrain --data {data.source} --decisions {decisions}",
        }
    )
