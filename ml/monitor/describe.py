"""What the monitor compares, per image: descriptors (from :mod:`ml.quality.features`, the same
table validation uses), penultimate-layer embeddings of the real module, and predictions
(class, max probability, entropy).

Each image is decoded once (as :func:`ml.data.images.load_rgb` decodes it): its descriptors and the
model's input both come from that decode. A batch image's decode is the one that checks it when the
batch is loaded (:class:`DecodedImages` as ``load_batch``'s ``on_image``); others are decoded by
:func:`describe`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image

from ml.data.cache import resize_crop
from ml.data.images import inspect_image
from ml.monitor.model import MonitoredModel
from ml.quality.features import analysis_array, pixel_features

# descriptor columns the drift tests use (computed by ml.quality.features, aspect ratio added here)
DESCRIPTORS = (
    "brightness",
    "contrast",
    "saturation",
    "sharpness",
    "mean_r",
    "mean_g",
    "mean_b",
    "std_r",
    "std_g",
    "std_b",
    "confounder_score",
    "width",
    "height",
    "aspect_ratio",
)
PREDICTION_COLUMNS = ("pred_class", "max_prob", "entropy")


@dataclass
class Described:
    """One image set as the monitor sees it: ``table`` (one row per image: path, label,
    descriptors, predictions), ``embeddings`` (N, D) and ``probs`` (N, C) in row order."""

    table: pd.DataFrame
    embeddings: np.ndarray
    probs: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.table)

    def subset(self, mask: np.ndarray) -> Described:
        mask = np.asarray(mask)
        return Described(self.table[mask].reset_index(drop=True), self.embeddings[mask], self.probs[mask], self.classes)

    def label_indices(self) -> np.ndarray:
        """Class index of each row, -1 where unlabelled or not one of the model's classes."""
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index.get(str(lab), -1) for lab in self.table["label"]], dtype=int)


@dataclass(frozen=True)
class Decoded:
    """What the monitor keeps of one image's decode: its :data:`DESCRIPTORS` and its pixels at the
    model's input size (uint8 ``(size, size, 3)``, resized and centre-cropped as the model's cache does)."""

    descriptors: dict[str, float]
    pixels: np.ndarray
    tone: str = "unknown"  # the skin-tone group (ITA) of the image: ml.quality.skin_tone


def decoded(rgb: Image.Image, size: int) -> Decoded:
    """:class:`Decoded` of a decoded 8-bit RGB image (EXIF-rotated, as :func:`ml.data.images.load_rgb`
    gives it): the descriptors as :mod:`ml.quality.features` computes them (on its analysis copy), the
    displayed width and height, and the model's input."""
    width, height = rgb.size
    row = pixel_features(analysis_array(rgb)) | {"width": width, "height": height, "aspect_ratio": width / height}
    return Decoded(
        {d: row[d] for d in DESCRIPTORS}, np.asarray(resize_crop(rgb, size)), str(row.get("ita_group") or "unknown")
    )


def decode(path: str, size: int) -> Decoded | None:
    """:func:`decoded` of the file at ``path`` from one decode; None when it gives no image (a
    decodable file in a format outside the allowed set still gives one, as ``load_rgb`` decodes it)."""
    _, rgb = inspect_image(path)
    return None if rgb is None else decoded(rgb, size)


class DecodedImages(Mapping[str, Decoded]):
    """An ``on_image`` for :func:`ml.monitor.batch.load_batch`: keeps :class:`Decoded` of each image, by
    path, from the decode that checks it, so that :func:`describe` decodes no batch image again. Called
    from worker threads (one key per call). Not a ``dict``: Prefect passes it between tasks as it is."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._by_path: dict[str, Decoded] = {}

    def __call__(self, path: str, rgb: Image.Image) -> None:
        self._by_path[path] = decoded(rgb, self.size)

    def __getitem__(self, path: str) -> Decoded:
        return self._by_path[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_path)

    def __len__(self) -> int:
        return len(self._by_path)


def prediction_table(probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Predicted class, max probability and entropy (nats) of each row of ``probs``."""
    p = np.clip(probs, 1e-12, 1.0)
    return pd.DataFrame(
        {
            "pred_class": np.asarray(classes, dtype=object)[probs.argmax(axis=1)],
            "max_prob": probs.max(axis=1),
            "entropy": -(p * np.log(p)).sum(axis=1),
        }
    )


def describe(
    records: pd.DataFrame,
    model: MonitoredModel,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    images: Mapping[str, Decoded] | None = None,
) -> Described:
    """Descriptors, embeddings and predictions of every record (``path``, ``local_path``,
    ``label``); records that do not decode are dropped. Each image is decoded once: ``images``
    (e.g. the :class:`DecodedImages` the batch was loaded with) gives what was kept of earlier
    decodes by ``path``; the others are decoded here (``local_path`` when present, else ``path``),
    in ``workers`` threads."""
    images = images or {}
    src = records["local_path"] if "local_path" in records else records["path"]

    def of(path: str, local: str) -> Decoded | None:
        return images[path] if path in images else decode(local, model.size)

    pairs = [(str(p), str(s)) for p, s in zip(records["path"], src, strict=True)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        found = list(pool.map(lambda pair: of(*pair), pairs))
    ok = np.array([d is not None for d in found], dtype=bool)
    kept = [d for d in found if d is not None]
    pixels = np.stack([d.pixels for d in kept]) if kept else np.empty((0, model.size, model.size, 3), dtype=np.uint8)
    emb, probs = model.embed_and_predict(pixels, progress=progress)
    table = pd.concat(
        [
            records[ok][["path", "label"]].reset_index(drop=True),
            pd.DataFrame([d.descriptors for d in kept], columns=list(DESCRIPTORS)),
            pd.DataFrame({"ita_group": [d.tone for d in kept]}),
            prediction_table(probs, model.classes),
        ],
        axis=1,
    )
    return Described(table, emb, probs, list(model.classes))


def tone_shares(reference: Described, batch: Described) -> list[dict[str, float | int | str]]:
    """Per skin-tone group (ITA; the six groups, then ``unknown``): its share of the reference and
    of the batch, and the batch's image count, for the report page (the drift rules do not read it)."""
    from ml.quality.skin_tone import GROUP_NAMES, UNKNOWN

    ref = reference.table.get("ita_group", pd.Series(dtype=str)).astype(str).value_counts()
    cur = batch.table.get("ita_group", pd.Series(dtype=str)).astype(str).value_counts()
    n_ref, n_cur = max(int(ref.sum()), 1), max(int(cur.sum()), 1)
    return [
        {
            "group": g,
            "reference_share": float(ref.get(g, 0) / n_ref),
            "batch_share": float(cur.get(g, 0) / n_cur),
            "batch_images": int(cur.get(g, 0)),
        }
        for g in (*GROUP_NAMES, UNKNOWN)
    ]
