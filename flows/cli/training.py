"""Training verbs: ``lr-find``, ``train``, ``pretrain``, ``tune``, ``retrain`` and ``demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli import render
from flows.cli.options import (
    Amp,
    BatchSize,
    ClassMap,
    Data,
    Decisions,
    Epochs,
    Lr,
    Model,
    NumSamples,
    ReuseLrTest,
    Schedule,
    Seed,
    Size,
    TestFrac,
    ValFrac,
    Weights,
    config_option,
    csv_list,
    on_off,
)
from flows.cli.runner import build, check_policies, run_flow
from ml.data.config import DataConfig
from ml.train.config import LRFindConfig, SweepConfig, TrainConfig

verbs = typer.Typer()
"""Top-level verbs of this area."""


@verbs.command("lr-find")
def lr_find(
    data: Data = None,
    class_map: ClassMap = None,
    size: Size = None,
    model: Model = None,
    weights: Weights = None,
    batch_size: BatchSize = None,
    schedule: Annotated[
        str | None,
        config_option(TrainConfig, "schedule", help="Variant: DLR variants ramp groups keeping their ratios."),
    ] = None,
    num_iter: Annotated[int | None, config_option(LRFindConfig, "num_iter")] = None,
    start_lr: Annotated[float | None, config_option(LRFindConfig, "start_lr")] = None,
    end_lr: Annotated[float | None, config_option(LRFindConfig, "end_lr")] = None,
    seed: Seed = None,
    out: Annotated[Path, typer.Option(help="Where the plot and JSON go.")] = Path("outputs/lr_find"),
):
    """LR range test: prints the suggestions and the log-scale bracket, saves the plot."""
    data_cfg = build(DataConfig, source=data, class_map=class_map, size=size, seed=seed)
    training = build(TrainConfig, arch=model, weights=weights, batch_size=batch_size, schedule=schedule, seed=seed)
    lr_find_cfg = build(LRFindConfig, num_iter=num_iter, start_lr=start_lr, end_lr=end_lr)
    from flows.train import lr_find_flow

    render.echo_json(run_flow(lr_find_flow, data=data_cfg, training=training, lr_find=lr_find_cfg, out_dir=str(out)))


@verbs.command("train")
def train(
    data: Data = None,
    class_map: ClassMap = None,
    decisions: Decisions = None,
    size: Size = None,
    val_frac: ValFrac = None,
    test_frac: TestFrac = None,
    model: Model = None,
    schedule: Annotated[
        str | None, config_option(TrainConfig, "schedule", help="sgd | adam | sgdr | sgdr_dlr | sgdr_dlr_clm.")
    ] = None,
    lr: Lr = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    amp: Amp = None,
    force_amp: Annotated[bool | None, config_option(TrainConfig, "force_amp", flag=True)] = None,
    weights: Weights = None,
    reuse_lr_test: ReuseLrTest = None,
    snapshots: Annotated[int | None, config_option(TrainConfig, "snapshots")] = None,
    weighted_sampler: Annotated[bool | None, config_option(TrainConfig, "weighted_sampler", flag=True)] = None,
    tta: Annotated[bool | None, config_option(TrainConfig, "tta", flag=True)] = None,
    seed: Seed = None,
    repeats: Annotated[
        int, typer.Option(min=1, help="Fits with seeds seed..seed+n-1: mean +/- std and confused pairs.")
    ] = 1,
    out: Annotated[Path, typer.Option(help="Plots, metrics JSON, model file.")] = Path("outputs/train"),
    checkpoint_dir: Annotated[str | None, config_option(TrainConfig, "checkpoint_dir")] = None,
):
    """Train one configuration, evaluate it (on the test split; val when there is none), log it to
    MLflow (experiment skinflow-train)."""
    data_cfg = build(
        DataConfig,
        source=data,
        class_map=class_map,
        decisions=decisions,
        size=size,
        val_frac=val_frac,
        test_frac=test_frac,
        seed=seed,
    )
    training = build(
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
    )
    lr_find_cfg = build(LRFindConfig, reuse=reuse_lr_test)
    from flows.train import train_flow

    render.echo_json(
        run_flow(train_flow, data=data_cfg, training=training, lr_find=lr_find_cfg, repeats=repeats, out_dir=str(out))
    )


@verbs.command("pretrain")
def pretrain(
    data: Annotated[
        str | None,
        config_option(DataConfig, "source", "--data", help="Source ImageFolder to pretrain a backbone on."),
    ] = None,
    out: Annotated[
        str, typer.Option(help="Where to store the weights (path or s3://); name it later as --weights.")
    ] = ...,
    size: Size = None,
    model: Model = None,
    schedule: Schedule = None,
    lr: Lr = None,
    epochs: Epochs = None,
    amp: Amp = None,
    seed: Seed = None,
):
    """Train a backbone on a source dataset and store it as reusable weights (offline transfer learning)."""
    data_cfg = build(DataConfig, source=data, size=size, seed=seed)
    training = build(TrainConfig, arch=model, schedule=schedule, lr=lr, epochs=epochs, amp=amp, seed=seed)
    from flows.train import pretrain_flow

    render.echo_json(run_flow(pretrain_flow, out=out, data=data_cfg, training=training))


@verbs.command("tune")
def tune(
    data: Data = None,
    class_map: ClassMap = None,
    size: Size = None,
    model: Annotated[
        str | None, config_option(SweepConfig, "archs", "--model", help="Architectures to sweep (comma-separated).")
    ] = None,
    schedules: Annotated[
        str | None, config_option(SweepConfig, "schedules", help="Variants to try (comma-separated).")
    ] = None,
    amp: Annotated[
        str | None, config_option(SweepConfig, "amp", help="AMP settings to try: off, on or off,on.")
    ] = None,
    num_samples: NumSamples = None,
    epochs: Annotated[int | None, config_option(SweepConfig, "epochs")] = None,
    batch_size: BatchSize = None,
    weights: Weights = None,
    gpus_per_trial: Annotated[float | None, config_option(SweepConfig, "gpus_per_trial")] = None,
    cpus_per_trial: Annotated[int | None, config_option(SweepConfig, "cpus_per_trial")] = None,
    checkpoint_interval: Annotated[
        float | None, config_option(SweepConfig, "checkpoint_interval_s", "--checkpoint-interval")
    ] = None,
    name: Annotated[str | None, config_option(SweepConfig, "name")] = None,
    seed: Seed = None,
):
    """LR range test, then Ray Tune trials (ASHA) over the bracket x schedules x AMP."""
    data_cfg = build(DataConfig, source=data, class_map=class_map, size=size, seed=seed)
    sweep = build(
        SweepConfig,
        archs=csv_list(model),
        schedules=csv_list(schedules),
        amp=on_off(amp),
        num_samples=num_samples,
        epochs=epochs,
        gpus_per_trial=gpus_per_trial,
        cpus_per_trial=cpus_per_trial,
        checkpoint_interval_s=checkpoint_interval,
        name=name,
    )
    training = build(TrainConfig, batch_size=batch_size, weights=weights, seed=seed)
    from flows.tune import tune_flow

    render.echo_json(run_flow(tune_flow, data=data_cfg, sweep=sweep, training=training))


@verbs.command("retrain")
def retrain(
    data: Data = None,
    class_map: ClassMap = None,
    decisions: Decisions = None,
    size: Size = None,
    test_frac: TestFrac = None,
    model: Annotated[
        str | None,
        config_option(TrainConfig, "arch", "--model", help="Backbone (with --tune, the one the sweep tries)."),
    ] = None,
    weights: Weights = None,
    batch_size: BatchSize = None,
    tune: Annotated[
        bool, typer.Option("--tune/--no-tune", help="Tune a sweep first (else train the given config).")
    ] = True,
    schedule: Annotated[str | None, config_option(TrainConfig, "schedule", help="Schedule without --tune.")] = None,
    lr: Annotated[
        float | None, config_option(TrainConfig, "lr", help="LR without --tune (else an LR range test).")
    ] = None,
    epochs: Annotated[int | None, config_option(TrainConfig, "epochs", help="Epochs of the final model.")] = None,
    amp: Amp = None,
    reuse_lr_test: ReuseLrTest = None,
    schedules: Annotated[
        str | None, config_option(SweepConfig, "schedules", help="Variants the sweep tries (comma-separated).")
    ] = None,
    tune_epochs: Annotated[int | None, config_option(SweepConfig, "epochs", "--tune-epochs")] = None,
    num_samples: NumSamples = None,
    seed: Seed = None,
    validate_data: Annotated[bool, typer.Option("--validate/--no-validate", help="Validate the data first.")] = True,
    policy: Annotated[
        Path | None, typer.Option(help="Promotion policy YAML (default: promotion.yaml in the policies folder).")
    ] = None,
    validation_policy: Annotated[
        Path | None, typer.Option(help="Validation policy YAML (default: validation.yaml in the policies folder).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Plots and reports.")] = Path("outputs/retrain"),
):
    """Validate -> tune/train -> evaluate on held-out -> register -> promotion gate."""
    data_cfg = build(
        DataConfig, source=data, class_map=class_map, decisions=decisions, size=size, test_frac=test_frac, seed=seed
    )
    training = build(
        TrainConfig,
        arch=model,
        weights=weights,
        batch_size=batch_size,
        schedule=schedule,
        lr=lr,
        epochs=epochs,
        amp=amp,
        seed=seed,
    )
    sweep = build(
        SweepConfig,
        archs=[model] if model else None,
        schedules=csv_list(schedules),
        epochs=tune_epochs,
        num_samples=num_samples,
    )
    lr_find_cfg = build(LRFindConfig, reuse=reuse_lr_test)
    check_policies(promotion=policy, **({"validation": validation_policy} if validate_data else {}))
    from flows.retrain import retrain_flow

    render.echo_json(
        run_flow(
            retrain_flow,
            data=data_cfg,
            training=training,
            sweep=sweep,
            lr_find=lr_find_cfg,
            tune=tune,
            validate_data=validate_data,
            policy=str(policy) if policy else None,
            validation_policy=str(validation_policy) if validation_policy else None,
            out_dir=str(out),
        )
    )


@verbs.command("demo")
def demo(
    out: Annotated[Path, typer.Option(help="Where the synthetic set and reports go.")] = Path("data/demo"),
    full: Annotated[bool, typer.Option("--full", help="GPU profile: bigger images, more epochs and trials.")] = False,
):
    """The main job on the embedded default: synthetic set -> validate -> tune -> train -> register -> gate."""
    from flows.demo import run_demo

    raise typer.Exit(run_flow(run_demo, out, full=full))
