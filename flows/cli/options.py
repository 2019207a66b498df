"""The options the verbs share, each declared once, and the parsers of option values.

Options backed by a config class default to None: an option left out takes the class's default,
the one place each default lives (ml/data/config.py, ml/train/config.py, ...); ``--help`` shows
it from there (:func:`config_option`). Only the config classes are imported here (pydantic, no
torch, Prefect or MLflow), so that ``--help`` answers at once and touches nothing."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli.errors import fail
from ml.data.config import DataConfig
from ml.train.config import LRFindConfig, SweepConfig, TrainConfig


def config_option(cls, field: str, *names: str, help: str | None = None, flag: bool = False):
    """A typer option for ``cls.field`` (for ``Annotated``) whose help and shown default come from
    the class; ``names`` default to ``--field-name`` (``--field/--no-field`` for a ``flag``)."""
    info = cls.model_fields[field]
    default = info.get_default(call_default_factory=True)
    shown = ",".join(map(str, default)) if isinstance(default, list) else default
    if isinstance(default, list) and default and isinstance(default[0], bool):
        shown = ",".join("on" if v else "off" for v in default)
    text = (help or info.description or "") + ("" if default is None else f" (default: {shown})")
    dashed = field.replace("_", "-")
    names = names or ((f"--{dashed}/--no-{dashed}",) if flag else (f"--{dashed}",))
    return typer.Option(*names, help=text, show_default=False)


# --------------------------------------------------------------------------- data (DataConfig)
Data = Annotated[str | None, config_option(DataConfig, "source", "--data")]
ClassMap = Annotated[str | None, config_option(DataConfig, "class_map")]
Size = Annotated[int | None, config_option(DataConfig, "size")]
ValFrac = Annotated[float | None, config_option(DataConfig, "val_frac")]
TestFrac = Annotated[float | None, config_option(DataConfig, "test_frac")]
Decisions = Annotated[str | None, config_option(DataConfig, "decisions")]
AllowOutsideRoot = Annotated[bool | None, config_option(DataConfig, "allow_outside_root", flag=True)]

# --------------------------------------------------------------------------- training (TrainConfig)
Model = Annotated[str | None, config_option(TrainConfig, "arch", "--model")]
Weights = Annotated[str | None, config_option(TrainConfig, "weights")]
BatchSize = Annotated[int | None, config_option(TrainConfig, "batch_size")]
Schedule = Annotated[str | None, config_option(TrainConfig, "schedule")]
Lr = Annotated[float | None, config_option(TrainConfig, "lr")]
Epochs = Annotated[int | None, config_option(TrainConfig, "epochs")]
Amp = Annotated[bool | None, config_option(TrainConfig, "amp", flag=True)]
ReuseLrTest = Annotated[bool | None, config_option(LRFindConfig, "reuse", "--reuse-lr-test/--fresh-lr-test")]
Seed = Annotated[int | None, config_option(TrainConfig, "seed", help="Split and training seed.")]

# --------------------------------------------------------------------------- sweeps (SweepConfig)
NumSamples = Annotated[int | None, config_option(SweepConfig, "num_samples")]


# --------------------------------------------------------------------------- option values
def csv_list(value: str | None) -> list[str] | None:
    """``a, b,c`` -> ``["a", "b", "c"]``; None stays None (the class default)."""
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def on_off(value: str | None) -> list[bool] | None:
    """``off,on`` -> ``[False, True]`` (the AMP settings a sweep tries)."""
    words = csv_list(value)
    if words is None:
        return None
    bad = [w for w in words if w not in ("on", "off")]
    if bad:
        fail(f"--amp takes on, off or off,on; got {value!r}")
    return [w == "on" for w in words]


def floats(value: str | None) -> list[float] | None:
    """``0.05,0.1`` -> ``[0.05, 0.1]``."""
    words = csv_list(value)
    try:
        return None if words is None else [float(w) for w in words]
    except ValueError:
        fail(f"expected comma-separated numbers, got {value!r}")


def rates(value: str | None) -> float | dict[str, float]:
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


def value_range(value: str) -> tuple[float, float]:
    """``lo,hi`` (or ``x`` for ``x,x``) -> ``(lo, hi)``."""
    lo, _, hi = value.partition(",")
    return (float(lo), float(hi or lo))
