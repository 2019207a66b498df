"""What a flow run is called and tagged, and how its MLflow runs point back to it.

- Flow run names (``@flow(flow_run_name=run_namer("train"))``): the flow, the dataset (source
  name) and the recipe where the flow has one, e.g. ``retrain-isic9-efficientnet_lite0-sgdr_dlr_clm``;
  short, deterministic, built from the run's parameters only (:func:`flow_run_name`).
- Tags: ``skinflow`` and the flow's name (:func:`flow_tags`). Prefect 3's ``@flow`` takes no tags;
  Prefect documents two ways that fit: the deployment's ``tags`` in ``prefect.yaml`` (the server
  gives them to every flow run it creates from the deployment: the scheduled and triggered runs)
  and the ``prefect.tags(...)`` context, which tags the runs created inside it: each flow enters
  :func:`tagged` around its body, so its task runs carry the tags on any run, the CLI's too.
- MLflow: every MLflow run a flow opens carries ``prefect_flow_run_id`` (:func:`mlflow_tags`).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from ml.data.config import DataConfig
from ml.gan.config import AugCheckConfig
from ml.monitor.config import MonitorConfig
from ml.predict.config import PredictConfig
from ml.project import ProjectError, load_project
from ml.quality.config import LabelIssuesConfig
from ml.train.config import SweepConfig, TrainConfig
from tasks.curation import _dataset_name

TAG = "skinflow"
FLOW_RUN_ID_TAG = "prefect_flow_run_id"


def flow_tags(flow: str) -> tuple[str, str]:
    """The standard tags of ``flow``'s runs (the same in ``prefect.yaml``)."""
    return TAG, flow


def tagged(flow: str) -> AbstractContextManager:
    """``prefect.tags`` of ``flow``: the task runs created inside carry :func:`flow_tags`."""
    from prefect import tags

    return tags(*flow_tags(flow))


def mlflow_tags(**tags: Any) -> dict[str, str]:
    """``tags`` plus ``prefect_flow_run_id`` (the flow run opening the MLflow run) when inside one."""
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    return {**{k: str(v) for k, v in tags.items()}, **({FLOW_RUN_ID_TAG: str(run_id)} if run_id else {})}


def _get(params: Mapping[str, Any], name: str, cls: type, field: str) -> Any:
    """``params[name].<field>``: a config object or its mapping form (a deployment's parameters);
    where it is not given, the project file's value (as the flow will use), else the class default."""
    value = params.get(name)
    if hasattr(value, field) and field in value.model_fields_set:
        return getattr(value, field)
    if isinstance(value, Mapping) and field in value:
        return value[field]
    try:
        section = load_project().section_for(cls)
    except ProjectError:  # the flow itself reports it, in its first step
        section = {}
    if field in section:
        return section[field]
    if hasattr(value, field):
        return getattr(value, field)
    default = cls.model_fields[field]
    return default.get_default(call_default_factory=True)


def _slug(*parts: Any) -> str:
    words = [re.sub(r"\s+", "_", str(p).strip()) for p in parts if p not in (None, "")]
    return "-".join(w for w in words if w)


def _data(params: Mapping[str, Any], name: str = "data") -> str:
    return _dataset_name(_get(params, name, DataConfig, "source")) or "data"


def _recipe(params: Mapping[str, Any]) -> tuple[str, str]:
    return _get(params, "training", TrainConfig, "arch"), _get(params, "training", TrainConfig, "schedule")


def _sweep(params: Mapping[str, Any]) -> str:
    archs = "+".join(_get(params, "sweep", SweepConfig, "archs"))
    schedules = _get(params, "sweep", SweepConfig, "schedules")
    return f"{archs}-{len(schedules)}schedules" if len(schedules) > 1 else f"{archs}-{schedules[0]}"


def _monitor(params: Mapping[str, Any]) -> str:
    batch = _dataset_name(str(_get(params, "monitor", MonitorConfig, "batch") or "batch"))
    model = str(_get(params, "monitor", MonitorConfig, "model_uri") or "champion")
    return _slug("monitor", batch, model.rsplit("@", 1)[-1] if "@" in model else model.rstrip("/").rsplit("/", 1)[-1])


def _predict(params: Mapping[str, Any]) -> str:
    source = _dataset_name(str(_get(params, "predict", PredictConfig, "source") or "images"))
    model = str(_get(params, "predict", PredictConfig, "model_uri") or "champion")
    return _slug("predict", source, model.rsplit("@", 1)[-1] if "@" in model else model.rstrip("/").rsplit("/", 1)[-1])


def _augcheck(params: Mapping[str, Any]) -> str:
    a, b = (_get(params, "check", AugCheckConfig, f) for f in ("label_a", "label_b"))
    return _slug("augcheck", _data(params), f"{a}+{b}", f"r{_get(params, 'check', AugCheckConfig, 'ratio'):g}")


def flow_run_name(flow: str, parameters: Mapping[str, Any]) -> str:
    """The name of a run of ``flow`` with ``parameters`` (config objects or their mappings; a
    config not given takes its class defaults): ``<flow>-<dataset>[-<recipe>]``; the retrain
    flow's recipe is the sweep's when ``tune``."""
    p = parameters
    if flow == "monitor":
        return _monitor(p)
    if flow == "predict":
        return _predict(p)
    if flow == "augcheck":
        return _augcheck(p)
    if flow == "validate":
        return _slug(flow, _data(p))
    if flow == "label-issues":  # the backbone probed, not the training recipe
        return _slug(flow, _data(p), _get(p, "issues", LabelIssuesConfig, "arch"))
    if flow == "tune":
        return _slug(flow, _data(p), _sweep(p))
    if flow == "retrain" and p.get("tune"):
        return _slug(flow, _data(p), "tuned", _sweep(p))
    if flow == "curation-ab":
        return _slug(flow, _data(p), *_recipe(p), "+".join(p.get("steps") or []))
    return _slug(flow, _data(p), *_recipe(p))  # train, lr-find, pretrain, retrain, interpret, robustness


def run_namer(flow: str) -> Callable[[], str]:
    """``flow_run_name`` for ``@flow``: Prefect calls it without arguments inside the run, whose
    parameters ``prefect.runtime.flow_run.parameters`` holds."""

    def name() -> str:
        from prefect.context import FlowRunContext
        from prefect.runtime import flow_run

        try:
            ctx = FlowRunContext.get()
            fn = ctx.flow.fn if ctx is not None and ctx.flow is not None else None
            defaults = {  # the flow's own defaults, where its parameters were not validated
                k: v.default
                for k, v in (inspect.signature(fn).parameters.items() if fn else ())
                if v.default is not inspect.Parameter.empty
            }
            return flow_run_name(flow, {**defaults, **(flow_run.parameters or {})})
        except Exception:  # a name is no reason to fail a run: the flow's name then
            return flow

    name.__name__ = f"{flow.replace('-', '_')}_run_name"
    return name
