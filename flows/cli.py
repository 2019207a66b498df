"""The ``skinflow`` command line (typer). Heavy imports happen inside each verb so that
``skinflow --help`` answers at once."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from ml.data.config import DataConfig
from ml.gan.config import AugCheckConfig, ProGANConfig
from ml.interpret.config import InterpretConfig
from ml.monitor.config import MonitorConfig
from ml.robust.config import RobustnessConfig
from ml.train.config import LRFindConfig, SweepConfig, TrainConfig

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE, EXIT_SERVICE, EXIT_INTERNAL = 0, 1, 2, 3, 4
_HELP = """skinflow: rapid, robust fine-tuning workflows for small long-tailed image sets.

Exit codes: 0 ok; 1 critical findings (validation failures); 2 usage or input errors (one line,
no traceback); 3 a service (MLflow, S3, Prefect, Ray) did not answer after its retries; 4 an
unexpected error. --debug (anywhere on the line, or SKINFLOW_DEBUG=1) shows tracebacks."""


class _App(typer.Typer):
    """The console script calls ``app()``: that runs :func:`main` (one-line errors, exit codes,
    redaction); tests and other callers with arguments get typer's behaviour."""

    def __call__(self, *args, **kwargs):
        if args or kwargs:
            return super().__call__(*args, **kwargs)
        return main()


app = _App(help=_HELP, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Dataset tools: synthetic data, manifests, splits.", no_args_is_help=True)
stack_app = typer.Typer(help="Start/stop the local service stack (S3, MLflow, Prefect, worker).", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(stack_app, name="stack")

_FLOW_VERBS = {
    "validate",
    "lr-find",
    "train",
    "pretrain",
    "tune",
    "retrain",
    "curation-ab",
    "demo",
    "robustness",
    "interpret",
    "drift",
    "augcheck",
}


@app.callback()
def _main(ctx: typer.Context) -> None:
    """Flows run in this process: Prefect heartbeats only when a Prefect API is configured
    (see flows/runtime.py)."""
    if ctx.invoked_subcommand in _FLOW_VERBS:
        from flows.runtime import local_flow_settings

        ctx.with_resource(local_flow_settings())


def _parse_rates(value: str | None) -> float | dict[str, float]:
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


# Options default to None: an option left out takes the config class's default, the one place
# each default lives (ml/data/config.py, ml/train/config.py); --help shows it from there.


def _opt(cls, field: str, *names: str, help: str | None = None, flag: bool = False):
    """A typer option for ``cls.field`` whose help and shown default come from the class."""
    info = cls.model_fields[field]
    default = info.get_default(call_default_factory=True)
    shown = ",".join(map(str, default)) if isinstance(default, list) else default
    if isinstance(default, list) and default and isinstance(default[0], bool):
        shown = ",".join("on" if v else "off" for v in default)
    text = (help or info.description or "") + ("" if default is None else f" (default: {shown})")
    if flag:
        names = names or (f"--{field.replace('_', '-')}/--no-{field.replace('_', '-')}",)
    return typer.Option(None, *names, help=text, show_default=False)


def _build(cls, **given):
    """``cls`` from the options that were given; a bad value is one clear line and exit 2."""
    from pydantic import ValidationError

    try:
        cfg = cls(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or cls.__name__}: {e['msg']}" for e in exc.errors())
        _fail(f"invalid {cls.__name__}: {problems}")
    if cls is DataConfig and "://" not in cfg.source:  # a local source is listed before any flow starts
        from ml.data.manifest import check_source

        try:
            check_source(cfg.source, allow_outside_root=cfg.allow_outside_root)
        except (ValueError, OSError) as exc:
            _fail(str(exc))
    return cfg


def _csv(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _on_off(value: str | None) -> list[bool] | None:
    words = _csv(value)
    if words is None:
        return None
    bad = [w for w in words if w not in ("on", "off")]
    if bad:
        _fail(f"--amp takes on, off or off,on; got {value!r}")
    return [w == "on" for w in words]


def _run(module: str, flow: str, **parameters):
    """Import ``module`` and run its ``flow``: the options became config objects (and a bad one
    was refused) before the heavy imports start."""
    import importlib

    return getattr(importlib.import_module(module), flow)(**parameters)


def _echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


# --------------------------------------------------------------------------- data
@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(..., "--out", help="Output ImageFolder directory."),
    per_class: int = typer.Option(20, help="Images per class (ignored with --long-tail or --priors)."),
    long_tail: bool = typer.Option(False, help="SD-198-like long tail: 10-60 images per class."),
    priors: str | None = typer.Option(None, help="Class priors for label shift, e.g. 'acne=0.5,ulcer=0.1,...'."),
    total: int | None = typer.Option(None, help="Total images when --priors is given."),
    size: int = typer.Option(128, help="Image side in px."),
    seed: int = typer.Option(0, help="Random seed (same seed, same bytes)."),
    pen_rate: str | None = typer.Option(None, help="Pen-mark rate: '0.1' or per class 'acne=0.9,tumor=0.1'."),
    ruler_rate: str | None = typer.Option(None, help="Ruler rate: '0.1' or per class."),
    gamma: str = typer.Option("1.0,1.0", help="Illumination gamma range 'lo,hi' (>1 darkens)."),
    flash_rate: float = typer.Option(0.0, help="Share of flash wash-out images."),
    fov: str = typer.Option("0.35,0.6", help="Lesion share of the frame 'lo,hi'."),
    noise: float = typer.Option(0.0, help="Impulse (salt-and-pepper) noise fraction."),
    blur: float = typer.Option(0.0, help="Gaussian blur sigma (px)."),
    skin_tones: str | None = typer.Option(None, help="Weights over 6 tone bins light..dark, e.g. '1,1,1,0,0,0'."),
    duplicate_rate: float = typer.Option(0.0, help="Share of extra exact duplicates."),
    near_duplicate_rate: float = typer.Option(0.0, help="Share of extra near duplicates."),
    corrupt: int = typer.Option(0, help="Number of extra corrupt files."),
    fmt: str = typer.Option("jpg", help="jpg or png."),
):
    """Write an SD-198-style synthetic ImageFolder (acne, alopecia, blister, crust, erythema, leukoderma,
    macula, tumor, ulcer, wheal) with seeded knobs for confounders, illumination, noise and shift."""
    from ml.data.synth import SynthConfig, generate

    cfg = SynthConfig(
        per_class=per_class,
        long_tail=long_tail,
        class_priors=_parse_rates(priors) if priors else None,
        total=total,
        size=size,
        seed=seed,
        pen_rate=_parse_rates(pen_rate),
        ruler_rate=_parse_rates(ruler_rate),
        gamma=_range(gamma),
        flash_rate=flash_rate,
        fov=_range(fov),
        noise=noise,
        blur=blur,
        skin_tones=[float(x) for x in skin_tones.split(",")] if skin_tones else None,
        duplicate_rate=duplicate_rate,
        near_duplicate_rate=near_duplicate_rate,
        corrupt=corrupt,
        fmt=fmt,
    )
    summary = generate(out, cfg)
    typer.echo(json.dumps(summary, indent=2, default=str))


@data_app.command("manifest")
def data_manifest(
    source: str = typer.Argument(..., help="ImageFolder dir, CSV manifest (path,label[,split]), local or s3://."),
    out: Path | None = typer.Option(None, help="Write the manifest CSV (+ .json summary) here."),
    class_map: str | None = typer.Option(None, help="Class-map YAML path or shipped name (sd198_to_10)."),
    allow_outside_root: bool = typer.Option(False, help="Read CSV paths and symlinks outside the dataset's folder."),
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
    _print_summary(m)


@data_app.command("split")
def data_split(
    source: str = typer.Argument(..., help="ImageFolder dir, CSV manifest, or a saved manifest CSV."),
    out: Path = typer.Option(..., help="Write the split manifest CSV here."),
    val_frac: float | None = _opt(DataConfig, "val_frac"),
    test_frac: float | None = _opt(DataConfig, "test_frac"),
    seed: int | None = _opt(DataConfig, "seed"),
    class_map: str | None = _opt(DataConfig, "class_map"),
    allow_outside_root: bool | None = _opt(DataConfig, "allow_outside_root", flag=True),
):
    """Stratified, duplicate-aware train/val(/test) split (duplicates never straddle splits)."""
    from ml.data.manifest import build_manifest, load_class_map
    from ml.data.split import split_manifest

    _check_out_file(out)
    data = _build(
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
    _print_summary(m)


def _check_out_file(out: Path | None) -> None:
    """``--out`` names a file to write (with a ``.json`` beside it), never a folder."""
    if out is not None and out.is_dir():
        _fail(f"--out {out} is a directory: give a file path such as {out / 'manifest.csv'}")


def _print_summary(m) -> None:
    """The summary as JSON on stdout; the library's warnings (empty or missing classes, the files
    left out with their reasons) reach stderr through the ``ml`` logger (see :func:`main`)."""
    typer.echo(json.dumps(m.summary(), indent=2, default=str))


# --------------------------------------------------------------------------- training
@app.command("lr-find")
def lr_find(
    data: str | None = _opt(DataConfig, "source", "--data"),
    class_map: str | None = _opt(DataConfig, "class_map"),
    size: int | None = _opt(DataConfig, "size"),
    model: str | None = _opt(TrainConfig, "arch", "--model"),
    weights: str | None = _opt(TrainConfig, "weights"),
    batch_size: int | None = _opt(TrainConfig, "batch_size"),
    schedule: str | None = _opt(
        TrainConfig, "schedule", help="Variant: DLR variants ramp groups keeping their ratios."
    ),
    num_iter: int | None = _opt(LRFindConfig, "num_iter"),
    start_lr: float | None = _opt(LRFindConfig, "start_lr"),
    end_lr: float | None = _opt(LRFindConfig, "end_lr"),
    seed: int | None = _opt(TrainConfig, "seed", help="Split and training seed."),
    out: Path = typer.Option(Path("outputs/lr_find"), help="Where the plot and JSON go."),
):
    """LR range test: prints the suggestions and the log-scale bracket, saves the plot."""
    _echo_json(
        _run(
            "flows.train",
            "lr_find_flow",
            data=_build(DataConfig, source=data, class_map=class_map, size=size, seed=seed),
            training=_build(
                TrainConfig, arch=model, weights=weights, batch_size=batch_size, schedule=schedule, seed=seed
            ),
            lr_find=_build(LRFindConfig, num_iter=num_iter, start_lr=start_lr, end_lr=end_lr),
            out_dir=str(out),
        )
    )


@app.command("train")
def train(
    data: str | None = _opt(DataConfig, "source", "--data"),
    class_map: str | None = _opt(DataConfig, "class_map"),
    size: int | None = _opt(DataConfig, "size"),
    val_frac: float | None = _opt(DataConfig, "val_frac"),
    test_frac: float | None = _opt(DataConfig, "test_frac"),
    model: str | None = _opt(TrainConfig, "arch", "--model"),
    schedule: str | None = _opt(TrainConfig, "schedule", help="sgd | adam | sgdr | sgdr_dlr | sgdr_dlr_clm."),
    lr: float | None = _opt(TrainConfig, "lr"),
    epochs: int | None = _opt(TrainConfig, "epochs"),
    batch_size: int | None = _opt(TrainConfig, "batch_size"),
    amp: bool | None = _opt(TrainConfig, "amp", flag=True),
    force_amp: bool | None = _opt(TrainConfig, "force_amp", flag=True),
    weights: str | None = _opt(TrainConfig, "weights"),
    snapshots: int | None = _opt(TrainConfig, "snapshots"),
    weighted_sampler: bool | None = _opt(TrainConfig, "weighted_sampler", flag=True),
    tta: bool | None = _opt(TrainConfig, "tta", flag=True),
    seed: int | None = _opt(TrainConfig, "seed", help="Split and training seed."),
    repeats: int = typer.Option(1, min=1, help="Fits with seeds seed..seed+n-1: mean +/- std and confused pairs."),
    out: Path = typer.Option(Path("outputs/train"), help="Plots, metrics JSON, model file."),
    checkpoint_dir: str | None = _opt(TrainConfig, "checkpoint_dir"),
):
    """Train one configuration, evaluate it (on the test split; val when there is none), log it to
    MLflow (experiment skinflow-train)."""
    _echo_json(
        _run(
            "flows.train",
            "train_flow",
            data=_build(
                DataConfig,
                source=data,
                class_map=class_map,
                size=size,
                val_frac=val_frac,
                test_frac=test_frac,
                seed=seed,
            ),
            training=_build(
                TrainConfig,
                arch=model,
                schedule=schedule,
                lr=lr,
                epochs=epochs,
                batch_size=batch_size,
                amp=amp,
                force_amp=force_amp,
                weights=weights,
                snapshots=snapshots,
                weighted_sampler=weighted_sampler,
                tta=tta,
                seed=seed,
                checkpoint_dir=checkpoint_dir,
            ),
            repeats=repeats,
            out_dir=str(out),
        )
    )


@app.command("pretrain")
def pretrain(
    data: str | None = _opt(DataConfig, "source", "--data", help="Source ImageFolder to pretrain a backbone on."),
    out: str = typer.Option(..., help="Where to store the weights (path or s3://); name it later as --weights."),
    size: int | None = _opt(DataConfig, "size"),
    model: str | None = _opt(TrainConfig, "arch", "--model"),
    schedule: str | None = _opt(TrainConfig, "schedule"),
    lr: float | None = _opt(TrainConfig, "lr"),
    epochs: int | None = _opt(TrainConfig, "epochs"),
    amp: bool | None = _opt(TrainConfig, "amp", flag=True),
    seed: int | None = _opt(TrainConfig, "seed", help="Split and training seed."),
):
    """Train a backbone on a source dataset and store it as reusable weights (offline transfer learning)."""
    _echo_json(
        _run(
            "flows.train",
            "pretrain_flow",
            out=out,
            data=_build(DataConfig, source=data, size=size, seed=seed),
            training=_build(TrainConfig, arch=model, schedule=schedule, lr=lr, epochs=epochs, amp=amp, seed=seed),
        )
    )


@app.command("tune")
def tune(
    data: str | None = _opt(DataConfig, "source", "--data"),
    class_map: str | None = _opt(DataConfig, "class_map"),
    size: int | None = _opt(DataConfig, "size"),
    model: str | None = _opt(SweepConfig, "archs", "--model", help="Architectures to sweep (comma-separated)."),
    schedules: str | None = _opt(SweepConfig, "schedules", help="Variants to try (comma-separated)."),
    amp: str | None = _opt(SweepConfig, "amp", help="AMP settings to try: off, on or off,on."),
    num_samples: int | None = _opt(SweepConfig, "num_samples"),
    epochs: int | None = _opt(SweepConfig, "epochs"),
    batch_size: int | None = _opt(TrainConfig, "batch_size"),
    gpus_per_trial: float | None = _opt(SweepConfig, "gpus_per_trial"),
    cpus_per_trial: int | None = _opt(SweepConfig, "cpus_per_trial"),
    checkpoint_interval: float | None = _opt(SweepConfig, "checkpoint_interval_s", "--checkpoint-interval"),
    name: str | None = _opt(SweepConfig, "name"),
    seed: int | None = _opt(TrainConfig, "seed", help="Split and training seed."),
):
    """LR range test, then Ray Tune trials (ASHA) over the bracket x schedules x AMP."""
    _echo_json(
        _run(
            "flows.tune",
            "tune_flow",
            data=_build(DataConfig, source=data, class_map=class_map, size=size, seed=seed),
            sweep=_build(
                SweepConfig,
                archs=_csv(model),
                schedules=_csv(schedules),
                amp=_on_off(amp),
                num_samples=num_samples,
                epochs=epochs,
                gpus_per_trial=gpus_per_trial,
                cpus_per_trial=cpus_per_trial,
                checkpoint_interval_s=checkpoint_interval,
                name=name,
            ),
            training=_build(TrainConfig, batch_size=batch_size, seed=seed),
        )
    )


@app.command("retrain")
def retrain(
    data: str | None = _opt(DataConfig, "source", "--data"),
    class_map: str | None = _opt(DataConfig, "class_map"),
    size: int | None = _opt(DataConfig, "size"),
    test_frac: float | None = _opt(DataConfig, "test_frac"),
    tune: bool = typer.Option(True, "--tune/--no-tune", help="Tune a sweep first (else train the given config)."),
    schedule: str | None = _opt(TrainConfig, "schedule", help="Schedule without --tune."),
    lr: float | None = _opt(TrainConfig, "lr", help="LR without --tune (else an LR range test)."),
    epochs: int | None = _opt(TrainConfig, "epochs", help="Epochs of the final model."),
    amp: bool | None = _opt(TrainConfig, "amp", flag=True),
    schedules: str | None = _opt(SweepConfig, "schedules", help="Variants the sweep tries (comma-separated)."),
    tune_epochs: int | None = _opt(SweepConfig, "epochs", "--tune-epochs"),
    num_samples: int | None = _opt(SweepConfig, "num_samples"),
    seed: int | None = _opt(TrainConfig, "seed", help="Split and training seed."),
    validate_data: bool = typer.Option(True, "--validate/--no-validate", help="Validate the data first."),
    policy: Path | None = typer.Option(None, help="Promotion policy YAML (default policies/promotion.yaml)."),
    out: Path = typer.Option(Path("outputs/retrain"), help="Plots and reports."),
):
    """Validate -> tune/train -> evaluate on held-out -> register -> promotion gate."""
    _echo_json(
        _run(
            "flows.retrain",
            "retrain_flow",
            data=_build(DataConfig, source=data, class_map=class_map, size=size, test_frac=test_frac, seed=seed),
            training=_build(TrainConfig, schedule=schedule, lr=lr, epochs=epochs, amp=amp, seed=seed),
            sweep=_build(SweepConfig, schedules=_csv(schedules), epochs=tune_epochs, num_samples=num_samples),
            tune=tune,
            validate_data=validate_data,
            policy=str(policy) if policy else None,
            out_dir=str(out),
        )
    )


@app.command("validate")
def validate(
    source: str = typer.Argument(..., help="Dataset dir, CSV manifest or s3:// URI."),
    class_map: str | None = _opt(DataConfig, "class_map"),
    allow_outside_root: bool | None = _opt(DataConfig, "allow_outside_root", flag=True),
    policy: Path | None = typer.Option(None, help="Validation policy YAML (default policies/validation.yaml)."),
    out: Path = typer.Option(Path("outputs/validate"), help="Report folder (GX Data Docs, JSON)."),
):
    """Validate a dataset version with Great Expectations; exits 1 on critical failures, 3 when the
    results (printed either way) could not be recorded in MLflow or the store."""
    data = _build(DataConfig, source=source, class_map=class_map, allow_outside_root=allow_outside_root)
    report = _run(
        "flows.validate",
        "validate_flow",
        data=data,
        policy=str(policy) if policy else None,
        out_dir=str(out),
        fail_on_critical=False,
    )
    _print_validation(report)
    for line in report["not_recorded"]:
        typer.secho(f"error: {line}; the reports above are on disk", fg=typer.colors.RED, err=True)
    if not report["passed"]:
        raise typer.Exit(EXIT_FINDINGS)
    if report["not_recorded"]:
        raise typer.Exit(EXIT_SERVICE)


def _print_validation(report: dict) -> None:
    rows = report["results"]
    w = max((len(r.get("check") or r["expectation"]) for r in rows), default=10)
    from ml.quality.validation import details_lines

    for r in rows:
        mark = "PASS" if r["success"] else ("FAIL" if r["severity"] == "critical" else "WARN")
        observed = f"{r['observed']:.4g}" if isinstance(r["observed"], float) else r["observed"]
        typer.echo(
            f"{mark:4}  {r['suite']:<18} {r.get('check') or r['expectation']:<{w}}  "
            f"observed={observed}  threshold={r.get('threshold')}  ({r['expectation']})"
        )
        if not r["success"]:  # what the check found, by name
            for line in details_lines(r.get("details") or {}):
                typer.echo(f"      {line}")
    _print_findings(report)
    typer.echo(
        f"dataset version {report.get('dataset_version')}; report: {report.get('summary_html')}; "
        f"data docs: {report.get('data_docs')}"
    )


def _print_findings(report: dict) -> None:
    """What the counts above are made of: the files not used with their reasons, the duplicate groups
    with their paths (bounded, "and N more") and the confounder kinds flagged per kind."""
    from ml.quality.validation import MAX_EXAMPLES, MAX_PATHS, bounded

    bad = report.get("bad_files") or []
    if bad:
        typer.echo(f"files not used ({len(bad)}):")
        for line in bounded([f"{b['path']}: {b['reason']}" for b in bad], MAX_EXAMPLES):
            typer.echo(f"      {line}")
    groups = report.get("duplicate_groups") or []
    if groups:
        typer.echo(f"duplicate groups ({len(groups)}):")
        lines = [
            f"group {g['group']} ({g['kind']}, {g['n']} images, split {', '.join(x or 'none' for x in g['splits'])}): "
            + "; ".join(bounded(g["paths"], MAX_PATHS))
            for g in groups
        ]
        for line in bounded(lines, MAX_EXAMPLES):
            typer.echo(f"      {line}")
    by_class = report.get("confounders_by_class") or []
    if by_class:
        kinds = [k for k in by_class[0] if k not in ("label", "images")]
        totals = {k: sum(int(row[k]) for row in by_class) for k in kinds}
        typer.echo("confounder kinds (images flagged): " + ", ".join(f"{k}={n}" for k, n in totals.items()))


@app.command("curation-ab")
def curation_ab(
    data: str | None = _opt(DataConfig, "source", "--data"),
    steps: str = typer.Option(
        "remove_confounders", help="Comma-separated curation steps: remove_confounders, gamma, fov_crop."
    ),
    size: int | None = _opt(DataConfig, "size"),
    test_frac: float | None = _opt(DataConfig, "test_frac", help="Held-out share both models are compared on."),
    model: str | None = _opt(TrainConfig, "arch", "--model"),
    schedule: str | None = _opt(TrainConfig, "schedule"),
    lr: float | None = _opt(TrainConfig, "lr"),
    epochs: int | None = _opt(TrainConfig, "epochs"),
    seed: int | None = _opt(TrainConfig, "seed", help="Split and training seed."),
    out: Path = typer.Option(Path("outputs/curation_ab")),
):
    """Train the same model with and without a curation step on the same split; report the difference."""
    _echo_json(
        _run(
            "flows.curation_ab",
            "curation_ab_flow",
            data=_build(DataConfig, source=data, size=size, test_frac=test_frac, seed=seed),
            training=_build(TrainConfig, arch=model, schedule=schedule, lr=lr, epochs=epochs, seed=seed),
            steps=_csv(steps),
            out_dir=str(out),
        )
    )


def _floats(value: str | None) -> list[float] | None:
    words = _csv(value)
    try:
        return None if words is None else [float(w) for w in words]
    except ValueError:
        _fail(f"expected comma-separated numbers, got {value!r}")


def _data_and_training(source, class_map, size, test_frac, seed, **training) -> dict:
    """The ``data`` and ``training`` parameters of the analysis verbs (robustness, interpret)."""
    return {
        "data": _build(DataConfig, source=source, class_map=class_map, size=size, test_frac=test_frac, seed=seed),
        "training": _build(TrainConfig, seed=seed, **training),
    }


@app.command("robustness")
def robustness(
    data: str | None = _opt(DataConfig, "source", "--data"),
    class_map: str | None = _opt(DataConfig, "class_map"),
    size: int | None = _opt(DataConfig, "size"),
    test_frac: float | None = _opt(DataConfig, "test_frac", help="Held-out share the rows are scored on."),
    model: str | None = _opt(TrainConfig, "arch", "--model"),
    weights: str | None = _opt(TrainConfig, "weights"),
    schedule: str | None = _opt(TrainConfig, "schedule"),
    lr: float | None = _opt(TrainConfig, "lr", help="LR of every model (else one range test on clean images)."),
    epochs: int | None = _opt(TrainConfig, "epochs"),
    batch_size: int | None = _opt(TrainConfig, "batch_size"),
    amp: bool | None = _opt(TrainConfig, "amp", flag=True),
    noise_levels: str | None = _opt(RobustnessConfig, "noise_levels", help="Impulse-noise shares, comma-separated."),
    blur_kernel: int | None = _opt(RobustnessConfig, "blur_kernel"),
    blur: bool | None = _opt(RobustnessConfig, "blur", flag=True),
    train_per_class: int | None = _opt(RobustnessConfig, "train_per_class"),
    seed: int | None = _opt(TrainConfig, "seed", help="Split, training and corruption seed."),
    out: Path = typer.Option(Path("outputs/robustness"), help="Plots and reports."),
):
    """The Table 5.8 ablation: train clean/test noisy, train noisy/test clean, matched noise, train
    clean/test blurred (MLflow experiment skinflow-robustness, a child run per model)."""
    _echo_json(
        _run(
            "flows.robustness",
            "robustness_flow",
            **_data_and_training(
                data,
                class_map,
                size,
                test_frac,
                seed,
                arch=model,
                weights=weights,
                schedule=schedule,
                lr=lr,
                epochs=epochs,
                batch_size=batch_size,
                amp=amp,
            ),
            robustness=_build(
                RobustnessConfig,
                noise_levels=_floats(noise_levels),
                blur_kernel=blur_kernel,
                blur=blur,
                train_per_class=train_per_class,
                seed=seed,
            ),
            out_dir=str(out),
        )
    )


@app.command("interpret")
def interpret(
    data: str | None = _opt(DataConfig, "source", "--data"),
    class_map: str | None = _opt(DataConfig, "class_map"),
    size: int | None = _opt(DataConfig, "size"),
    test_frac: float | None = _opt(DataConfig, "test_frac", help="Held-out share the errors are counted on."),
    model: str | None = _opt(TrainConfig, "arch", "--model"),
    weights: str | None = _opt(TrainConfig, "weights"),
    schedule: str | None = _opt(TrainConfig, "schedule"),
    lr: float | None = _opt(TrainConfig, "lr", help="LR of every fit (else one range test)."),
    epochs: int | None = _opt(TrainConfig, "epochs"),
    batch_size: int | None = _opt(TrainConfig, "batch_size"),
    amp: bool | None = _opt(TrainConfig, "amp", flag=True),
    seeds: int | None = _opt(InterpretConfig, "seeds"),
    top_pairs: int | None = _opt(InterpretConfig, "top_pairs"),
    per_pair: int | None = _opt(InterpretConfig, "per_pair"),
    guided_backprop: bool | None = _opt(InterpretConfig, "guided_backprop", flag=True),
    confidence: float | None = _opt(InterpretConfig, "confidence"),
    train_per_class: int | None = _opt(InterpretConfig, "train_per_class"),
    seed: int | None = _opt(TrainConfig, "seed", help="Split seed and the first fit's seed."),
    out: Path = typer.Option(Path("outputs/interpret"), help="Plots and reports."),
):
    """Confused pairs over K seeded fits (mean +/- std), class distributions, Grad-CAM and guided
    backprop galleries, background test (MLflow experiment skinflow-interpret)."""
    _echo_json(
        _run(
            "flows.interpret",
            "interpret_flow",
            **_data_and_training(
                data,
                class_map,
                size,
                test_frac,
                seed,
                arch=model,
                weights=weights,
                schedule=schedule,
                lr=lr,
                epochs=epochs,
                batch_size=batch_size,
                amp=amp,
            ),
            interpret=_build(
                InterpretConfig,
                seeds=seeds,
                top_pairs=top_pairs,
                per_pair=per_pair,
                guided_backprop=guided_backprop,
                confidence=confidence,
                train_per_class=train_per_class,
            ),
            out_dir=str(out),
        )
    )


@app.command("augcheck")
def augcheck(
    data: str | None = _opt(DataConfig, "source", "--data"),
    class_map: str | None = _opt(DataConfig, "class_map"),
    test_frac: float | None = _opt(DataConfig, "test_frac", help="Held-out share (control, train-on-synthetic)."),
    label_a: str | None = _opt(AugCheckConfig, "label_a"),
    label_b: str | None = _opt(AugCheckConfig, "label_b"),
    ratio: float | None = _opt(AugCheckConfig, "ratio"),
    n_synthetic: int | None = _opt(AugCheckConfig, "n_synthetic"),
    classifiers: int | None = _opt(AugCheckConfig, "classifiers"),
    epochs: int | None = _opt(AugCheckConfig, "epochs", help="Epochs of each binary classifier."),
    resolution: int | None = _opt(ProGANConfig, "resolution"),
    fade_iters: int | None = _opt(ProGANConfig, "fade_iters"),
    stable_iters: int | None = _opt(ProGANConfig, "stable_iters"),
    gan_batch_size: int | None = _opt(ProGANConfig, "batch_size", "--gan-batch-size"),
    amp: bool | None = _opt(ProGANConfig, "amp", flag=True),
    checkpoint_dir: str | None = _opt(
        ProGANConfig,
        "checkpoint_dir",
        help="GAN checkpoints per stage (default <out>/gan_checkpoints); run again to resume.",
    ),
    seed: int | None = _opt(AugCheckConfig, "seed", help="Split, pool, GAN and first classifier seed."),
    policy: Path | None = typer.Option(None, help="Verdict policy YAML (default policies/augcheck.yaml)."),
    out: Path = typer.Option(Path("outputs/augcheck"), help="Plots, GAN checkpoints, report JSON."),
):
    """Are ProGAN samples safe augmentation? Pool two labels at ratio r, train a ProGAN, let K binary
    classifiers estimate r on its samples; memorisation and train-on-synthetic checks; verdict
    (MLflow experiment skinflow-augcheck). Exits 1 when the verdict is "not safe"."""
    report = _run(
        "flows.augcheck",
        "augcheck_flow",
        data=_build(DataConfig, source=data, class_map=class_map, test_frac=test_frac, seed=seed),
        check=_build(
            AugCheckConfig,
            label_a=label_a,
            label_b=label_b,
            ratio=ratio,
            n_synthetic=n_synthetic,
            classifiers=classifiers,
            epochs=epochs,
            seed=seed,
        ),
        gan=_build(
            ProGANConfig,
            resolution=resolution,
            fade_iters=fade_iters,
            stable_iters=stable_iters,
            batch_size=gan_batch_size,
            amp=amp,
            checkpoint_dir=checkpoint_dir,
            seed=seed,
        ),
        policy_path=str(policy) if policy else None,
        out_dir=str(out),
    )
    _echo_json(report)
    if not report["safe"]:
        raise typer.Exit(EXIT_FINDINGS)


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("data/demo"), help="Where the synthetic set and reports go."),
    full: bool = typer.Option(False, "--full", help="GPU profile: bigger images, more epochs and trials."),
):
    """The main job on the embedded default: synthetic set -> validate -> tune -> train -> register -> gate."""
    from flows.demo import run_demo

    sys.exit(run_demo(out, full=full))


@app.command("drift")
def drift(
    batch: str = typer.Argument(
        ..., help="Batch: ImageFolder (SD-198 layout), unlabelled folder, CSV or s3:// prefix."
    ),
    class_map: str | None = _opt(MonitorConfig, "class_map"),
    model: str | None = _opt(MonitorConfig, "model_uri", "--model"),
    reference: str | None = _opt(MonitorConfig, "reference"),
    reference_version: str | None = _opt(MonitorConfig, "reference_version"),
    reference_class_map: str | None = _opt(MonitorConfig, "reference_class_map"),
    max_reference: int | None = _opt(MonitorConfig, "max_reference"),
    policy: Path | None = typer.Option(None, help="Drift policy YAML (default policies/drift.yaml)."),
    apprise_secret: str | None = _opt(MonitorConfig, "apprise_secret"),
    out: str | None = _opt(MonitorConfig, "out_dir", "--out"),
    fail_on_drift: bool = typer.Option(False, "--fail-on-drift", help="Exit 1 when the batch drifted (CI use)."),
):
    """Compare a batch with the monitored model's reference (Evidently report, BBSE priors); on
    drift write the alert, emit skinflow.drift.detected and notify. Exit 1 on drift with
    --fail-on-drift."""
    cfg = _build(
        MonitorConfig,
        batch=batch,
        class_map=class_map,
        model_uri=model,
        reference=reference,
        reference_version=reference_version,
        reference_class_map=reference_class_map,
        max_reference=max_reference,
        policy=str(policy) if policy else None,
        apprise_secret=apprise_secret,
        out_dir=out,
    )
    if "://" not in batch and not Path(batch).exists():
        _fail(f"batch {batch} does not exist")
    summary = _run("flows.monitor", "monitor_flow", monitor=cfg)
    _print_drift(summary)
    if fail_on_drift and summary["verdict"] == "drift":
        raise typer.Exit(EXIT_FINDINGS)


def _print_drift(summary: dict) -> None:
    cov, emb, lab = summary["covariate"], summary["embedding"], summary["label_shift"]
    bbse = lab.get("bbse") or {}
    rows = [
        (
            "covariate",
            cov["drifted"],
            f"drifted share {cov['drifted_share']:.2f} of {cov['n_tested']} columns "
            f"(threshold {cov['share_threshold']}); Holm-significant: "
            f"{', '.join(cov['holm_significant']) or 'none'}",
        ),
        (
            "embeddings",
            emb["drifted"],
            f"model AUC {emb['model_auc']:.3f} (threshold {emb['model_auc_threshold']:.3f}), "
            f"MMD {emb['mmd']:.4f} (threshold {emb['mmd_threshold']})",
        ),
        ("predicted classes", lab["predicted"]["drifted"], f"chi-square p={lab['predicted']['p_value']:.3g}"),
    ]
    if lab.get("true_labels"):
        rows.append(("true labels", lab["true_labels"]["drifted"], f"chi-square p={lab['true_labels']['p_value']:.3g}"))
    if bbse:
        rows.append(
            (
                "BBSE priors",
                bbse["drifted"],
                f"max change {bbse['max_prior_change']:.3f}; expected accuracy "
                f"{bbse['expected_accuracy']:.3f} (reference "
                f"{bbse['reference_accuracy']:.3f})",
            )
        )
    typer.echo(
        f"DRIFT VERDICT: {summary['verdict'].upper()}  ({summary['n_batch']} batch vs "
        f"{summary['n_reference']} reference images)"
    )
    for name, drifted, text in rows:
        typer.echo(f"{'DRIFT' if drifted else 'ok':5}  {name:<17} {text}")
    if summary["top_drifted"]:
        typer.echo("top drifted features: " + ", ".join(summary["top_drifted"]))
    if bbse:
        typer.echo(
            "BBSE priors: "
            + ", ".join(
                f"{c} {p:.2f} [{bbse['interval_low'][c]:.2f}, {bbse['interval_high'][c]:.2f}]"
                for c, p in bbse["priors"].items()
            )
        )
    inputs = summary.get("inputs", {})
    for k, n in sorted((inputs.get("out_of_map") or {}).items()):
        typer.echo(f"out of map (kept as unlabelled): {k}: {n} image(s)")
    for bad in inputs.get("bad_files", []):
        typer.echo(f"skipped: {bad['path']}: {bad['reason']}")
    for group in inputs.get("duplicate_groups", []):
        typer.echo("duplicates: " + ", ".join(group))
    typer.echo(f"report: {summary['report_html']}; MLflow run {summary['mlflow_run_id']} (skinflow-monitor)")
    typer.echo(f"event: {summary['event']}")
    if summary.get("prefect_api") == "ephemeral":
        typer.echo(
            "note: no PREFECT_API_URL: flows ran on the in-process ephemeral Prefect API, where events do "
            "nothing (no automation starts a retrain); point PREFECT_API_URL at a Prefect server for that"
        )
    typer.echo(f"notification: {summary['notification']}")


# --------------------------------------------------------------------------- stack
@stack_app.command("up")
def stack_up(
    db: str = typer.Option(
        "sqlite",
        "--db",
        help="sqlite (one worker) or postgres (the team topology: PostgreSQL, "
        "two-node Ray, two workers; infra/README.md).",
    ),
):
    """Start moto S3, MLflow server, Prefect server and process worker(s) on 127.0.0.1."""
    if db not in ("sqlite", "postgres"):
        raise ValueError(f"--db must be sqlite or postgres, not {db!r}")
    _stack("up", "--db", db)


@stack_app.command("down")
def stack_down():
    """Stop everything `stack up` started."""
    _stack("down")


@stack_app.command("status")
def stack_status():
    """Show which stack services run and their URLs."""
    _stack("status")


def _stack(*args: str) -> None:
    import subprocess

    script = Path(__file__).resolve().parents[1] / "infra" / "stack.sh"
    raise typer.Exit(subprocess.call(["bash", str(script), *args]))


# --------------------------------------------------------------------------- entry point
def _classify(exc: BaseException) -> tuple[int, str]:
    """Exit code and the one line a user sees for an exception a verb raised."""
    from pydantic import ValidationError

    from ml.storage import StorageError
    from ml.tracking.runs import ServiceUnavailableError

    try:
        from prefect.exceptions import ParameterTypeError
    except ImportError:  # pragma: no cover - prefect is a dependency
        ParameterTypeError = ValidationError
    from flows.validate import ValidationFailed

    if isinstance(exc, ValidationFailed):
        return EXIT_FINDINGS, str(exc)
    if isinstance(exc, (ServiceUnavailableError, ConnectionError, TimeoutError)) or (
        isinstance(exc, StorageError) and not isinstance(exc, FileNotFoundError)
    ):
        return EXIT_SERVICE, str(exc)
    if isinstance(exc, (ValidationError, ParameterTypeError)):
        return EXIT_USAGE, " ".join(str(exc).split())
    if isinstance(exc, (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return EXIT_USAGE, str(exc)
    return EXIT_INTERNAL, f"{type(exc).__name__}: {exc} (rerun with --debug for the traceback)"


def _prefect_logs_without_tracebacks() -> None:
    """Prefect's engines log a failed task or flow run with its traceback; a user error then
    filled the screen with several. Outside --debug, records of Prefect's loggers keep their
    one-line message (the exception's repr) and drop the traceback; skinflow prints the error
    itself as one line. Applied through the log record factory, as Prefect attaches its
    handlers only when the first flow run starts."""
    import logging

    base = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = base(*args, **kwargs)
        if record.exc_info and record.name.startswith("prefect"):
            record.exc_info, record.exc_text = None, None
        return record

    logging.setLogRecordFactory(factory)


def _library_warnings_to_stderr() -> None:
    """skinflow's library (logger ``ml``) reports what it left out and why as warnings: shown on
    stderr as ``warning: ...`` lines."""
    import logging

    lib = logging.getLogger("ml")
    if not any(getattr(h, "_skinflow", False) for h in lib.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        handler._skinflow = True
        lib.addHandler(handler)


def main(argv: list[str] | None = None) -> None:
    """The ``skinflow`` console script: the typer app, with user errors as one line and an exit
    code scripts can rely on (see ``skinflow --help``), secrets redacted from every log record."""
    import os
    import traceback

    from ml.settings import install_log_redaction, redact_text

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("SKINFLOW_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    install_log_redaction()
    _library_warnings_to_stderr()
    if not debug and any(a in _FLOW_VERBS for a in args[:1]):
        _prefect_logs_without_tracebacks()
    try:
        code = typer.Typer.__call__(app, args=args, prog_name="skinflow", standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        typer.secho("aborted", err=True)
        code = 130
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        code = 130
    except Exception as exc:
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            code = exc.exit_code
        else:
            code, line = _classify(exc)
            if debug:
                traceback.print_exception(exc)
            typer.secho(f"error: {redact_text(line)}", fg=typer.colors.RED, err=True)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
