"""interpret: why the classifier confuses what it confuses (the thesis's chapter 4).

K fits with seeds seed..seed+K-1 give the confused pairs with mean +/- std error counts (each
unordered pair counted both ways: Table 4.2) and the predicted-vs-true class distribution. On the
first fit's model (the real nn.Module, fp32): a gallery per top pair (images captioned "actual (p)
/ predicted (p)", Grad-CAM for the true and the predicted class, guided backpropagation) and the
background test (a black centre patch on confident correct images). One ``skinflow-interpret``
run with a child run per fit; PNG grids and JSON.
"""

from __future__ import annotations

from prefect import flow

from flows.naming import mlflow_tags, run_namer, tagged
from flows.train import eval_split_of, prepare_data, with_lr
from ml.data.config import DataConfig
from ml.interpret.config import InterpretConfig
from ml.project import with_project
from ml.tracking.runs import run_name
from ml.train.config import LRFindConfig, TrainConfig
from tasks.common import publish_table
from tasks.interpret import explain_errors, fit_and_evaluate
from tasks.mlflow_tasks import tracked_run

EXPERIMENT = "skinflow-interpret"


@flow(name="interpret", flow_run_name=run_namer("interpret"))
def interpret_flow(
    data: DataConfig = DataConfig(),
    training: TrainConfig = TrainConfig(),
    interpret: InterpretConfig = InterpretConfig(),
    lr_find: LRFindConfig = LRFindConfig(),
    out_dir: str = "outputs/interpret",
) -> dict:
    """Data -> LR (range test unless given) -> K seeded fits -> confused pairs, class
    distribution, galleries, background test -> MLflow and a Prefect artifact."""
    with tagged("interpret"):
        data, training, lr_find = with_project(data, training, lr_find)  # the project file under what was given
        _, cache = prepare_data(data)
        eval_split = eval_split_of(cache)
        with tracked_run(
            EXPERIMENT,
            run_name("interpret", training, seeds=interpret.seeds, data=cache.version),
            tags=mlflow_tags(dataset_version=cache.version),
        ) as (parent, _):
            cfg, _ = with_lr(cache, training, lr_find, out_dir, parent)
            fits = []
            for k in range(interpret.seeds):
                seed_cfg = cfg.model_copy(update={"seed": cfg.seed + k})
                with tracked_run(
                    EXPERIMENT,
                    run_name("interpret", seed_cfg),
                    parent_run_id=parent,
                    tags=mlflow_tags(dataset_version=cache.version),
                ) as (child, _):
                    fits.append(fit_and_evaluate(cache, seed_cfg, interpret, eval_split, child))
            report = explain_errors(fits, cache, eval_split, interpret, out_dir, parent)
        bg = report["background_test"]
        rows = [{"confused pair": p["text"]} for p in report["confused_pairs"][:8]] or [{"confused pair": "none"}]
        publish_table(
            "interpret-summary",
            rows,
            f"{interpret.seeds} fits, errors per run on {eval_split}; background "
            f"test: {bg['n_confident']} confident images, change rate {bg['change_rate']}; MLflow run {parent}",
        )
        return {
            "run_id": parent,
            "dataset_version": cache.version,
            "eval_split": eval_split,
            "lr": cfg.lr,
            "seeds": report["seeds"],
            "confused_pairs": [p["text"] for p in report["confused_pairs"][:8]],
            "class_distribution": report["class_distribution"],
            "background_test": bg,
            "cam_layer": report["cam_layer"],
            "plots": report["plots"],
            "galleries": [g["png"] for g in report["galleries"] if g["png"]],
        }
