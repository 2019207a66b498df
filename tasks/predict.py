"""Prefect tasks of the predict flow: thin wrappers over ml/ (retries only on I/O)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ml.settings import get_settings
from tasks.common import IO_RETRY


@task(name="load-inputs", **IO_RETRY, cache_policy=NO_CACHE)
def load_inputs(source: str, allow_outside_root: bool = False):
    """Every file of ``source`` (folder, CSV of paths, s3:// prefix): the usable images and the
    files left out with their reasons (ml.monitor.batch, the same rules as the manifest)."""
    from ml.monitor.batch import load_batch

    batch = load_batch(source, allow_outside_root=allow_outside_root)
    logger = get_run_logger()
    for line in batch.report_lines():
        logger.info("%s", line)
    return batch


@task(name="predict-images", **IO_RETRY, cache_policy=NO_CACHE)
def predict_images(model_uri: str, local_paths: list[str], chunk: int) -> tuple[pd.DataFrame, list[str]]:
    """The served model's answers (the registered pyfunc itself: what serving answers) for each
    image, ``chunk`` at a time with a progress bar: calibrated class probabilities, and
    ``prediction_set`` / ``refer`` for a model with trust. Returns ``(answers, classes)``."""
    import mlflow
    from tqdm import tqdm

    from ml.tracking.runs import configure_mlflow

    configure_mlflow(get_settings().mlflow_tracking_uri)
    model = mlflow.pyfunc.load_model(model_uri)
    classes = list((model.metadata.metadata or {}).get("classes", []))
    parts = []
    for start in tqdm(range(0, len(local_paths), chunk), desc="predict", unit="chunk"):
        batch = pd.DataFrame({"path": local_paths[start : start + chunk]})
        parts.append(model.predict(batch, params={"allow_paths": True}))  # local files, read here
    answers = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=classes)
    return answers, classes


@task(name="explain-predictions", cache_policy=NO_CACHE)
def explain_predictions(model_uri: str, table: pd.DataFrame, local_paths: dict[str, str], folder: str) -> pd.Series:
    """A Grad-CAM overlay of each predicted image's label (ml.interpret.explain) written as PNG into
    ``folder`` (atomically, numbered by row); returns the overlay's path per row ('' for a file left out)."""
    import io

    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from ml.data.cache import resize_crop
    from ml.data.images import load_rgb
    from ml.interpret.explain import explain
    from ml.monitor.model import load_monitored_model
    from ml.storage import atomic_write

    model = load_monitored_model(model_uri)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = pd.Series("", index=table.index, dtype=object)
    rows = table.index[table["status"] == "predicted"]
    for start in tqdm(range(0, len(rows), 16), desc="explain", unit="batch"):
        chunk = rows[start : start + 16]
        images = np.stack(
            [np.asarray(resize_crop(load_rgb(local_paths[table.at[i, "path"]]), model.size)) for i in chunk]
        )
        targets = [model.classes.index(table.at[i, "label"]) for i in chunk]
        for i, overlay in zip(chunk, explain(model.module, model.arch, model.norm, images, targets), strict=True):
            name = f"{i:05d}_{Path(str(table.at[i, 'path'])).stem}_{table.at[i, 'label']}.png"
            buf = io.BytesIO()
            Image.fromarray(overlay).save(buf, format="PNG")
            atomic_write(out / name, buf.getvalue())
            written[i] = str(out / name)
    get_run_logger().info("%d Grad-CAM overlay(s) in %s", len(rows), out)
    return written


@task(name="write-predictions", cache_policy=NO_CACHE)
def write_predictions(table, out: str) -> Path:
    """The table at ``out`` (.csv or .parquet), written atomically."""
    from ml.storage import atomic_path

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False)
    return path


@task(name="log-predictions", **IO_RETRY, cache_policy=NO_CACHE)
def log_prediction_run(run_id, model_uri, source, table, counts, sha256, out) -> str:
    from ml.tracking.predictions import input_digest, log_predictions

    digest = input_digest(table, sha256)
    log_predictions(run_id, model_uri, source, table, counts, digest, Path(out))
    return digest
