"""Analysis verbs: ``curation-ab``, ``robustness``, ``interpret`` and ``augcheck``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli import render
from flows.cli.errors import EXIT_FINDINGS
from flows.cli.options import (
    Amp,
    BatchSize,
    ClassMap,
    Data,
    Epochs,
    Lr,
    Model,
    Schedule,
    Seed,
    Size,
    Weights,
    config_option,
    csv_list,
    floats,
)
from flows.cli.runner import build, check_policies, data_and_training, run_flow
from ml.data.config import DataConfig
from ml.gan.config import AugCheckConfig, ProGANConfig
from ml.interpret.config import InterpretConfig
from ml.robust.config import RobustnessConfig
from ml.train.config import TrainConfig

verbs = typer.Typer()
"""Top-level verbs of this area."""


@verbs.command("curation-ab")
def curation_ab(
    data: Data = None,
    steps: Annotated[
        str, typer.Option(help="Comma-separated curation steps: remove_confounders, gamma, fov_crop.")
    ] = "remove_confounders",
    size: Size = None,
    test_frac: Annotated[
        float | None,
        config_option(DataConfig, "test_frac", help="Held-out share both models are compared on."),
    ] = None,
    model: Model = None,
    schedule: Schedule = None,
    lr: Lr = None,
    epochs: Epochs = None,
    seed: Seed = None,
    out: Annotated[Path, typer.Option()] = Path("outputs/curation_ab"),
):
    """Train the same model with and without a curation step on the same split; report the difference."""
    data_cfg = build(DataConfig, source=data, size=size, test_frac=test_frac, seed=seed)
    training = build(TrainConfig, arch=model, schedule=schedule, lr=lr, epochs=epochs, seed=seed)
    from flows.curation_ab import curation_ab_flow

    render.echo_json(
        run_flow(curation_ab_flow, data=data_cfg, training=training, steps=csv_list(steps), out_dir=str(out))
    )


@verbs.command("robustness")
def robustness(
    data: Data = None,
    class_map: ClassMap = None,
    size: Size = None,
    test_frac: Annotated[
        float | None, config_option(DataConfig, "test_frac", help="Held-out share the rows are scored on.")
    ] = None,
    model: Model = None,
    weights: Weights = None,
    schedule: Schedule = None,
    lr: Annotated[
        float | None,
        config_option(TrainConfig, "lr", help="LR of every model (else one range test on clean images)."),
    ] = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    amp: Amp = None,
    noise_levels: Annotated[
        str | None, config_option(RobustnessConfig, "noise_levels", help="Impulse-noise shares, comma-separated.")
    ] = None,
    blur_kernel: Annotated[int | None, config_option(RobustnessConfig, "blur_kernel")] = None,
    blur: Annotated[bool | None, config_option(RobustnessConfig, "blur", flag=True)] = None,
    train_per_class: Annotated[int | None, config_option(RobustnessConfig, "train_per_class")] = None,
    seed: Annotated[int | None, config_option(TrainConfig, "seed", help="Split, training and corruption seed.")] = None,
    out: Annotated[Path, typer.Option(help="Plots and reports.")] = Path("outputs/robustness"),
):
    """The Table 5.8 ablation: train clean/test noisy, train noisy/test clean, matched noise, train
    clean/test blurred (MLflow experiment skinflow-robustness, a child run per model)."""
    configs = data_and_training(
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
    )
    robustness_cfg = build(
        RobustnessConfig,
        noise_levels=floats(noise_levels),
        blur_kernel=blur_kernel,
        blur=blur,
        train_per_class=train_per_class,
        seed=seed,
    )
    from flows.robustness import robustness_flow

    render.echo_json(run_flow(robustness_flow, **configs, robustness=robustness_cfg, out_dir=str(out)))


@verbs.command("interpret")
def interpret(
    data: Data = None,
    class_map: ClassMap = None,
    size: Size = None,
    test_frac: Annotated[
        float | None, config_option(DataConfig, "test_frac", help="Held-out share the errors are counted on.")
    ] = None,
    model: Model = None,
    weights: Weights = None,
    schedule: Schedule = None,
    lr: Annotated[float | None, config_option(TrainConfig, "lr", help="LR of every fit (else one range test).")] = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    amp: Amp = None,
    seeds: Annotated[int | None, config_option(InterpretConfig, "seeds")] = None,
    top_pairs: Annotated[int | None, config_option(InterpretConfig, "top_pairs")] = None,
    per_pair: Annotated[int | None, config_option(InterpretConfig, "per_pair")] = None,
    guided_backprop: Annotated[bool | None, config_option(InterpretConfig, "guided_backprop", flag=True)] = None,
    confidence: Annotated[float | None, config_option(InterpretConfig, "confidence")] = None,
    train_per_class: Annotated[int | None, config_option(InterpretConfig, "train_per_class")] = None,
    seed: Annotated[int | None, config_option(TrainConfig, "seed", help="Split seed and the first fit's seed.")] = None,
    out: Annotated[Path, typer.Option(help="Plots and reports.")] = Path("outputs/interpret"),
):
    """Confused pairs over K seeded fits (mean +/- std), class distributions, Grad-CAM and guided
    backprop galleries, background test (MLflow experiment skinflow-interpret)."""
    configs = data_and_training(
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
    )
    interpret_cfg = build(
        InterpretConfig,
        seeds=seeds,
        top_pairs=top_pairs,
        per_pair=per_pair,
        guided_backprop=guided_backprop,
        confidence=confidence,
        train_per_class=train_per_class,
    )
    from flows.interpret import interpret_flow

    render.echo_json(run_flow(interpret_flow, **configs, interpret=interpret_cfg, out_dir=str(out)))


@verbs.command("augcheck")
def augcheck(
    data: Data = None,
    class_map: ClassMap = None,
    test_frac: Annotated[
        float | None,
        config_option(DataConfig, "test_frac", help="Held-out share (control, train-on-synthetic)."),
    ] = None,
    label_a: Annotated[str | None, config_option(AugCheckConfig, "label_a")] = None,
    label_b: Annotated[str | None, config_option(AugCheckConfig, "label_b")] = None,
    ratio: Annotated[float | None, config_option(AugCheckConfig, "ratio")] = None,
    n_synthetic: Annotated[int | None, config_option(AugCheckConfig, "n_synthetic")] = None,
    classifiers: Annotated[int | None, config_option(AugCheckConfig, "classifiers")] = None,
    epochs: Annotated[
        int | None, config_option(AugCheckConfig, "epochs", help="Epochs of each binary classifier.")
    ] = None,
    resolution: Annotated[int | None, config_option(ProGANConfig, "resolution")] = None,
    fade_iters: Annotated[int | None, config_option(ProGANConfig, "fade_iters")] = None,
    stable_iters: Annotated[int | None, config_option(ProGANConfig, "stable_iters")] = None,
    gan_batch_size: Annotated[int | None, config_option(ProGANConfig, "batch_size", "--gan-batch-size")] = None,
    amp: Annotated[bool | None, config_option(ProGANConfig, "amp", flag=True)] = None,
    checkpoint_dir: Annotated[
        str | None,
        config_option(
            ProGANConfig,
            "checkpoint_dir",
            help="GAN checkpoints per stage (default <out>/gan_checkpoints); run again to resume.",
        ),
    ] = None,
    seed: Annotated[
        int | None, config_option(AugCheckConfig, "seed", help="Split, pool, GAN and first classifier seed.")
    ] = None,
    policy: Annotated[Path | None, typer.Option(help="Verdict policy YAML (default policies/augcheck.yaml).")] = None,
    out: Annotated[Path, typer.Option(help="Plots, GAN checkpoints, report JSON.")] = Path("outputs/augcheck"),
):
    """Are ProGAN samples safe augmentation? Pool two labels at ratio r, train a ProGAN, let K binary
    classifiers estimate r on its samples; memorisation and train-on-synthetic checks; verdict
    (MLflow experiment skinflow-augcheck). Exits 1 when the verdict is "not safe"."""
    data_cfg = build(DataConfig, source=data, class_map=class_map, test_frac=test_frac, seed=seed)
    check = build(
        AugCheckConfig,
        label_a=label_a,
        label_b=label_b,
        ratio=ratio,
        n_synthetic=n_synthetic,
        classifiers=classifiers,
        epochs=epochs,
        seed=seed,
    )
    gan = build(
        ProGANConfig,
        resolution=resolution,
        fade_iters=fade_iters,
        stable_iters=stable_iters,
        batch_size=gan_batch_size,
        amp=amp,
        checkpoint_dir=checkpoint_dir,
        seed=seed,
    )
    check_policies(augcheck=policy)
    from flows.augcheck import augcheck_flow

    report = run_flow(
        augcheck_flow,
        data=data_cfg,
        check=check,
        gan=gan,
        policy_path=str(policy) if policy else None,
        out_dir=str(out),
    )
    render.echo_json(report)
    if not report["safe"]:
        raise typer.Exit(EXIT_FINDINGS)
