"""The ``skinflow`` command line (typer). Heavy imports happen inside each verb so that
``skinflow --help`` answers at once."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="skinflow: rapid, robust fine-tuning workflows for small long-tailed image sets.",
                  no_args_is_help=True, add_completion=False)
data_app = typer.Typer(help="Dataset tools: synthetic data, manifests, splits.", no_args_is_help=True)
stack_app = typer.Typer(help="Start/stop the local service stack (S3, MLflow, Prefect, worker).", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(stack_app, name="stack")

_FLOW_VERBS = {"validate", "lr-find", "train", "pretrain", "tune", "retrain", "curation-ab", "demo"}


@app.callback()
def _main(ctx: typer.Context) -> None:
    """Flows run in this process: Prefect heartbeats only when a Prefect API is configured
    (see flows/runtime.py)."""
    if ctx.invoked_subcommand in _FLOW_VERBS:
        from flows.runtime import local_flow_settings

        ctx.with_resource(local_flow_settings())


def _parse_rates(value: Optional[str]) -> float | dict[str, float]:
    """``0.2`` or ``acne=0.8,ulcer=0.1`` -> float or per-class dict."""
    if not value:
        return 0.0
    if "=" not in value:
        return float(value)
    out = {}
    for part in value.split(","):
        k, _, v = part.partition("=")
        out[k.strip()] = float(v)
    return out


def _range(value: str) -> tuple[float, float]:
    lo, _, hi = value.partition(",")
    return (float(lo), float(hi or lo))


def _fail(msg: str, code: int = 2) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


# --------------------------------------------------------------------------- data
@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(..., "--out", help="Output ImageFolder directory."),
    per_class: int = typer.Option(20, help="Images per class (ignored with --long-tail or --priors)."),
    long_tail: bool = typer.Option(False, help="SD-198-like long tail: 10-60 images per class."),
    priors: Optional[str] = typer.Option(None, help="Class priors for label shift, e.g. 'acne=0.5,ulcer=0.1,...'."),
    total: Optional[int] = typer.Option(None, help="Total images when --priors is given."),
    size: int = typer.Option(128, help="Image side in px."),
    seed: int = typer.Option(0, help="Random seed (same seed, same bytes)."),
    pen_rate: Optional[str] = typer.Option(None, help="Pen-mark rate: '0.1' or per class 'acne=0.9,tumor=0.1'."),
    ruler_rate: Optional[str] = typer.Option(None, help="Ruler rate: '0.1' or per class."),
    gamma: str = typer.Option("1.0,1.0", help="Illumination gamma range 'lo,hi' (>1 darkens)."),
    flash_rate: float = typer.Option(0.0, help="Share of flash wash-out images."),
    fov: str = typer.Option("0.35,0.6", help="Lesion share of the frame 'lo,hi'."),
    noise: float = typer.Option(0.0, help="Impulse (salt-and-pepper) noise fraction."),
    blur: float = typer.Option(0.0, help="Gaussian blur sigma (px)."),
    skin_tones: Optional[str] = typer.Option(None, help="Weights over 6 tone bins light..dark, e.g. '1,1,1,0,0,0'."),
    duplicate_rate: float = typer.Option(0.0, help="Share of extra exact duplicates."),
    near_duplicate_rate: float = typer.Option(0.0, help="Share of extra near duplicates."),
    corrupt: int = typer.Option(0, help="Number of extra corrupt files."),
    fmt: str = typer.Option("jpg", help="jpg or png."),
):
    """Write an SD-198-style synthetic ImageFolder (acne, alopecia, blister, crust, erythema, leukoderma,
    macula, tumor, ulcer, wheal) with seeded knobs for confounders, illumination, noise and shift."""
    from ml.data.synth import SynthConfig, generate

    cfg = SynthConfig(
        per_class=per_class, long_tail=long_tail, class_priors=_parse_rates(priors) if priors else None,
        total=total, size=size, seed=seed, pen_rate=_parse_rates(pen_rate), ruler_rate=_parse_rates(ruler_rate),
        gamma=_range(gamma), flash_rate=flash_rate, fov=_range(fov), noise=noise, blur=blur,
        skin_tones=[float(x) for x in skin_tones.split(",")] if skin_tones else None,
        duplicate_rate=duplicate_rate, near_duplicate_rate=near_duplicate_rate, corrupt=corrupt, fmt=fmt,
    )
    summary = generate(out, cfg)
    typer.echo(json.dumps(summary, indent=2, default=str))


@data_app.command("manifest")
def data_manifest(
    source: str = typer.Argument(..., help="ImageFolder dir, CSV manifest (path,label[,split]), local or s3://."),
    out: Optional[Path] = typer.Option(None, help="Write the manifest CSV (+ .json summary) here."),
    class_map: Optional[str] = typer.Option(None, help="Class-map YAML path or shipped name (sd198_to_10)."),
):
    """Build the manifest of a dataset: file digests, labels, bad files with reasons, version."""
    from ml.data.manifest import build_manifest, load_class_map

    m = build_manifest(source, class_map=load_class_map(class_map) if class_map else None, progress=True)
    if out:
        m.save(out)
    _print_summary(m)


@data_app.command("split")
def data_split(
    source: str = typer.Argument(..., help="ImageFolder dir, CSV manifest, or a saved manifest CSV."),
    out: Path = typer.Option(..., help="Write the split manifest CSV here."),
    val_frac: float = typer.Option(1 / 6, help="Validation share (thesis: 5:1 train/validation)."),
    test_frac: float = typer.Option(0.0, help="Held-out test share."),
    seed: int = typer.Option(0, help="Split seed."),
    class_map: Optional[str] = typer.Option(None, help="Class-map YAML path or shipped name."),
):
    """Stratified, duplicate-aware train/val(/test) split (duplicates never straddle splits)."""
    from ml.data.manifest import build_manifest, load_class_map
    from ml.data.split import split_manifest

    m = build_manifest(source, class_map=load_class_map(class_map) if class_map else None, progress=True)
    try:
        m = split_manifest(m, val_frac=val_frac, test_frac=test_frac, seed=seed)
    except ValueError as exc:
        _fail(str(exc))
    m.save(out)
    _print_summary(m)


def _print_summary(m) -> None:
    s = m.summary()
    typer.echo(json.dumps(s, indent=2, default=str))
    if len(m.bad):
        typer.secho(f"{len(m.bad)} file(s) left out (see 'bad' above with reasons)", fg=typer.colors.YELLOW, err=True)


# --------------------------------------------------------------------------- training
@app.command("lr-find")
def lr_find(
    data: str = typer.Option(..., help="Dataset (ImageFolder, CSV, or s3://)."),
    model: str = typer.Option("resnet18", help="Architecture."),
    weights: str = typer.Option("none", help="none | imagenet | path | s3:// | models:/..."),
    size: int = typer.Option(64, help="Training resolution."),
    batch_size: int = typer.Option(64),
    schedule: str = typer.Option("sgdr_dlr_clm", help="Variant: DLR variants ramp groups keeping their ratios."),
    num_iter: int = typer.Option(100, help="Iterations of the ramp."),
    start_lr: float = typer.Option(1e-7),
    end_lr: float = typer.Option(10.0),
    out: Path = typer.Option(Path("outputs/lr_find"), help="Where the plot and JSON go."),
    seed: int = typer.Option(0),
):
    """LR range test: prints the suggestions and the log-scale bracket, saves the plot."""
    from flows.train import lr_find_flow

    res = lr_find_flow(data=data, arch=model, weights=weights, size=size, batch_size=batch_size,
                       schedule=schedule, num_iter=num_iter, start_lr=start_lr, end_lr=end_lr,
                       out_dir=str(out), seed=seed)
    typer.echo(json.dumps(res, indent=2))


@app.command("train")
def train(
    data: str = typer.Option(..., help="Dataset (ImageFolder, CSV, or s3://)."),
    model: str = typer.Option("resnet18", help="Architecture (resnet18..152, densenet121, resnext50_32x4d, resnext101_32x8d)."),
    schedule: str = typer.Option("sgdr_dlr_clm", help="sgd | adam | sgdr | sgdr_dlr | sgdr_dlr_clm"),
    lr: Optional[float] = typer.Option(None, help="Peak LR; default: found by an LR range test."),
    epochs: int = typer.Option(7, help="Epochs (sgdr_dlr_clm: 1+2+4 = 7 completes three cycles)."),
    size: int = typer.Option(64, help="Training resolution (px)."),
    batch_size: int = typer.Option(64),
    amp: bool = typer.Option(False, help="Mixed precision (bf16 on CPU, fp16/bf16 on CUDA)."),
    weights: str = typer.Option("none", help="none | imagenet | path | s3:// | models:/..."),
    snapshots: int = typer.Option(3, help="Snapshot-ensemble size (0 = off)."),
    weighted_sampler: bool = typer.Option(False, help="Inverse class-frequency sampling."),
    tta: bool = typer.Option(False, help="Test-time augmentation at evaluation."),
    val_frac: float = typer.Option(1 / 6),
    test_frac: float = typer.Option(0.0),
    seed: int = typer.Option(0),
    repeats: int = typer.Option(1, help="Fits with seeds seed..seed+n-1: mean +/- std and confused pairs."),
    out: Path = typer.Option(Path("outputs/train"), help="Plots, metrics JSON, model file."),
):
    """Train one configuration, evaluate it, log it to MLflow (experiment skinflow-train)."""
    from flows.train import train_flow

    summary = train_flow(data=data, arch=model, schedule=schedule, lr=lr, epochs=epochs, size=size,
                         batch_size=batch_size, amp=amp, weights=weights, snapshots=snapshots,
                         weighted_sampler=weighted_sampler, tta=tta, val_frac=val_frac, test_frac=test_frac,
                         seed=seed, out_dir=str(out), repeats=repeats)
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command("pretrain")
def pretrain(
    data: str = typer.Option(..., help="Source ImageFolder to pretrain a backbone on."),
    out: str = typer.Option(..., help="Where to store the weights (path or s3://); name it later as --weights."),
    model: str = typer.Option("resnet18"),
    epochs: int = typer.Option(5),
    size: int = typer.Option(64),
    amp: bool = typer.Option(True),
    seed: int = typer.Option(0),
):
    """Train a backbone on a source dataset and store it as reusable weights (offline transfer learning)."""
    from flows.train import pretrain_flow

    typer.echo(json.dumps(pretrain_flow(data=data, out=out, arch=model, epochs=epochs, size=size, amp=amp,
                                        seed=seed), indent=2, default=str))


@app.command("tune")
def tune(
    data: str = typer.Option(..., help="Dataset."),
    model: str = typer.Option("resnet18", help="Architecture (comma-separated to sweep several)."),
    schedules: str = typer.Option("sgd,adam,sgdr,sgdr_dlr,sgdr_dlr_clm", help="Variants to try."),
    amp: str = typer.Option("off,on", help="AMP settings to try: off, on or off,on."),
    num_samples: int = typer.Option(1, help="LR samples per (schedule, amp) cell, log-uniform in the bracket."),
    epochs: int = typer.Option(3),
    size: int = typer.Option(64),
    gpus_per_trial: Optional[float] = typer.Option(None, help="Default: 1 when CUDA is present, else 0."),
    cpus_per_trial: int = typer.Option(1),
    seed: int = typer.Option(0),
    checkpoint_interval: float = typer.Option(
        30.0, help="Seconds between a trial's checkpoints (one is always kept after its last epoch); 0 = every epoch."),
    name: Optional[str] = typer.Option(None, help="Tune experiment name: pass an interrupted one's to resume it."),
):
    """LR range test, then Ray Tune trials (ASHA) over the bracket x schedules x AMP."""
    from flows.tune import tune_flow

    res = tune_flow(data=data, archs=model.split(","), schedules=schedules.split(","),
                    amp=[a.strip() == "on" for a in amp.split(",")], num_samples=num_samples, epochs=epochs,
                    size=size, gpus_per_trial=gpus_per_trial, cpus_per_trial=cpus_per_trial, seed=seed,
                    checkpoint_interval_s=checkpoint_interval, name=name)
    typer.echo(json.dumps(res, indent=2, default=str))


@app.command("retrain")
def retrain(
    data: str = typer.Option("data/demo/synth", help="Dataset (default: the demo's synthetic set)."),
    tune: bool = typer.Option(True, help="Tune a sweep first (else train the given config)."),
    schedule: str = typer.Option("sgdr_dlr_clm"),
    epochs: int = typer.Option(3),
    size: int = typer.Option(48),
    num_samples: int = typer.Option(1),
    schedules: str = typer.Option("sgd,sgdr_dlr_clm"),
    seed: int = typer.Option(0),
):
    """Validate -> tune/train -> evaluate on held-out -> register -> promotion gate."""
    from flows.retrain import retrain_flow

    res = retrain_flow(data=data, tune=tune, schedule=schedule, epochs=epochs, size=size, num_samples=num_samples,
                       schedules=schedules.split(","), seed=seed)
    typer.echo(json.dumps(res, indent=2, default=str))


@app.command("validate")
def validate(
    source: str = typer.Argument(..., help="Dataset dir, CSV manifest or s3:// URI."),
    class_map: Optional[str] = typer.Option(None, help="Class-map YAML or shipped name."),
    policy: Optional[Path] = typer.Option(None, help="Validation policy YAML (default policies/validation.yaml)."),
    out: Path = typer.Option(Path("outputs/validate"), help="Report folder (GX Data Docs, JSON)."),
):
    """Validate a dataset version with Great Expectations; exits 1 on critical failures."""
    from flows.validate import validate_flow

    report = validate_flow(source=source, class_map=class_map, policy=str(policy) if policy else None,
                           out_dir=str(out), fail_on_critical=False)
    _print_validation(report)
    if not report["passed"]:
        raise typer.Exit(1)


def _print_validation(report: dict) -> None:
    rows = report["results"]
    w = max((len(r.get("check") or r["expectation"]) for r in rows), default=10)
    for r in rows:
        mark = "PASS" if r["success"] else ("FAIL" if r["severity"] == "critical" else "WARN")
        observed = f"{r['observed']:.4g}" if isinstance(r["observed"], float) else r["observed"]
        typer.echo(f"{mark:4}  {r['suite']:<18} {r.get('check') or r['expectation']:<{w}}  "
                   f"observed={observed}  threshold={r.get('threshold')}  ({r['expectation']})")
    typer.echo(f"dataset version {report.get('dataset_version')}; report: {report.get('summary_html')}; "
               f"data docs: {report.get('data_docs')}")


@app.command("curation-ab")
def curation_ab(
    data: str = typer.Option(..., help="Dataset (ImageFolder, CSV or s3://)."),
    steps: str = typer.Option("remove_confounders", help="Comma-separated curation steps (see ml.quality.curation.STEPS)."),
    model: str = typer.Option("resnet18"),
    schedule: str = typer.Option("sgdr_dlr_clm"),
    lr: float = typer.Option(1e-2),
    epochs: int = typer.Option(5),
    size: int = typer.Option(64),
    test_frac: float = typer.Option(0.2, help="Held-out share both models are compared on."),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("outputs/curation_ab")),
):
    """Train the same model with and without a curation step on the same split; report the difference."""
    from flows.curation_ab import curation_ab_flow

    res = curation_ab_flow(data=data, steps=steps.split(","), arch=model, schedule=schedule, lr=lr, epochs=epochs,
                           size=size, test_frac=test_frac, seed=seed, out_dir=str(out))
    typer.echo(json.dumps(res, indent=2, default=str))


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("data/demo"), help="Where the synthetic set and reports go."),
    full: bool = typer.Option(False, "--full", help="GPU profile: bigger images, more epochs and trials."),
):
    """The main job on the embedded default: synthetic set -> validate -> tune -> train -> register -> gate."""
    from flows.demo import run_demo

    sys.exit(run_demo(out, full=full))


# --------------------------------------------------------------------------- stack
@stack_app.command("up")
def stack_up():
    """Start moto S3, MLflow server, Prefect server and a process worker on 127.0.0.1."""
    _stack("up")


@stack_app.command("down")
def stack_down():
    """Stop everything `stack up` started."""
    _stack("down")


@stack_app.command("status")
def stack_status():
    """Show which stack services run and their URLs."""
    _stack("status")


def _stack(verb: str) -> None:
    import subprocess

    script = Path(__file__).resolve().parents[1] / "infra" / "stack.sh"
    raise typer.Exit(subprocess.call(["bash", str(script), verb]))


if __name__ == "__main__":
    app()
