"""predict: new images -> the files used and those left out (with reasons) -> the registered
model's probabilities (the served pyfunc itself) -> one row per file (CSV or Parquet) -> MLflow
(skinflow-predict) and a Prefect table artifact; with ``explain``, a Grad-CAM overlay per image."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.naming import mlflow_tags, run_namer, tagged
from ml.predict.config import PredictConfig
from ml.predict.table import prediction_table, summary
from ml.tracking.runs import run_name
from tasks.common import publish_table
from tasks.mlflow_tasks import tracked_run
from tasks.predict import explain_predictions, load_inputs, log_prediction_run, predict_images, write_predictions


@flow(name="predict", flow_run_name=run_namer("predict"))
def predict_flow(predict: PredictConfig = PredictConfig()) -> dict:
    """Predict every image of ``predict.source`` with ``predict.model()`` (default: the champion);
    returns the counts, the table's path and the MLflow run id."""
    with tagged("predict"):
        if not predict.source:
            raise ValueError("no images to predict: name a folder, a CSV of paths or an s3:// prefix")
        model_uri = predict.model()
        batch = load_inputs(predict.source, predict.allow_outside_root)
        records = batch.records
        with tracked_run("skinflow-predict", run_name("predict", model=model_uri), tags=mlflow_tags()) as (run_id, _):
            answers, classes = predict_images(model_uri, records["local_path"].tolist(), predict.chunk)
            table = prediction_table(records["path"].tolist(), answers, classes, batch.bad, predict.top_k)
            if predict.explain:  # where the model looked, per predicted image
                local = dict(zip(records["path"], records["local_path"], strict=True))
                table.insert(6, "explanation", explain_predictions(model_uri, table, local, predict.explain))
            counts = summary(table)
            out = write_predictions(table, predict.out)
            sha = dict(zip(records["path"], records["sha256"], strict=True))
            log_prediction_run(run_id, model_uri, batch.source, table, counts, sha, str(out))
        publish_table(
            "predict-summary",
            {"model": model_uri, "out": str(out), **{k: v for k, v in counts.items() if not isinstance(v, dict)}},
        )
        get_run_logger().info(
            "%d image(s) predicted (%d to refer to a person), %d file(s) left out: %s",
            counts["n_predicted"],
            counts["n_referred"],
            counts["n_left_out"],
            out,
        )
        return {"model_uri": model_uri, "out": str(out), "mlflow_run_id": run_id, **counts}
