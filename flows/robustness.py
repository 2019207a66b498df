"""robustness: the thesis's Table 5.8 ablation as a tracked flow.

Train clean / test corrupted, train corrupted / test clean, matched corruption levels, and train
clean / test blurred (isotropic and 45-degree anisotropic). One clean model serves every
clean-trained row; one model per noise level serves that level's two rows. Each model is a child
run of one ``skinflow-robustness`` parent run that holds the table, the accuracy-vs-noise plot and
the blur tests' confusion matrices (and their difference from clean).
"""

from __future__ import annotations

from prefect import flow

from flows.naming import mlflow_tags, run_namer, tagged
from flows.train import eval_split_of, prepare_data, with_lr
from ml.data.config import DataConfig
from ml.project import with_project
from ml.robust.ablation import training_corruptions
from ml.robust.config import RobustnessConfig
from ml.tracking.runs import run_name
from ml.train.config import LRFindConfig, TrainConfig
from tasks.common import publish_table
from tasks.mlflow_tasks import tracked_run
from tasks.robustness import fit_and_score, log_robustness

EXPERIMENT = "skinflow-robustness"


@flow(name="robustness", flow_run_name=run_namer("robustness"))
def robustness_flow(
    data: DataConfig = DataConfig(),
    training: TrainConfig = TrainConfig(),
    robustness: RobustnessConfig = RobustnessConfig(),
    lr_find: LRFindConfig = LRFindConfig(),
    out_dir: str = "outputs/robustness",
) -> dict:
    """Data -> LR (range test on the clean training split unless given; the same LR for every
    model) -> the clean model and its rows -> one model per noise level and its rows -> table,
    plots, Prefect artifact."""
    with tagged("robustness"):
        data, training, lr_find = with_project(data, training, lr_find)  # the project file under what was given
        _, cache = prepare_data(data)
        eval_split = eval_split_of(cache)
        with tracked_run(
            EXPERIMENT,
            run_name("robustness", training, data=cache.version),
            tags=mlflow_tags(dataset_version=cache.version),
        ) as (parent, _):
            cfg, _ = with_lr(cache, training, lr_find, out_dir, parent)
            rows = []
            for train_c in training_corruptions(robustness):
                name = run_name("robustness", train=train_c.label.replace(" ", ""), seed=cfg.seed)
                with tracked_run(
                    EXPERIMENT, name, parent_run_id=parent, tags=mlflow_tags(dataset_version=cache.version)
                ) as (child, _):
                    rows += fit_and_score(cache, cfg, robustness, train_c, eval_split, child)
            logged = log_robustness(parent, rows, cache.classes, eval_split, out_dir)
        publish_table(
            "robustness-summary",
            logged["table"],
            f"skinflow robustness on {eval_split} ({len(cache.subset(eval_split)[1])} images), MLflow run {parent}",
        )
        return {
            "run_id": parent,
            "dataset_version": cache.version,
            "eval_split": eval_split,
            "lr": cfg.lr,
            "table": logged["table"],
            "plots": logged["plots"],
            "models": len(training_corruptions(robustness)),
        }
