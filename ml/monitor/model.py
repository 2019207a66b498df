"""The monitored model: the real ``nn.Module`` rebuilt from its run's state dicts (not the pt2
graph, which has no named head to hook), its classes, input size and normalisation, and the
dataset and images it was trained on (the default reference)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ml.eval.trust import Trust
from ml.train.models import build_model, head_name
from ml.train.transforms import to_float_batch


class NoChampionError(ValueError):
    """The registered model has no version under the requested alias."""


@dataclass
class MonitoredModel:
    """A model to monitor with: ``states`` are its snapshot weights (one for a single model)."""

    arch: str
    classes: list[str]
    size: int
    norm: tuple[tuple[float, ...], tuple[float, ...]]
    states: list[dict[str, torch.Tensor]]
    uri: str = ""
    run_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    _module: nn.Module | None = None

    @property
    def module(self) -> nn.Module:
        """The real module with the last snapshot's weights (embeddings come from it)."""
        if self._module is None:
            self._module = build_model(self.arch, len(self.classes))
            self._module.load_state_dict(self.states[-1])
            self._module.eval()
        return self._module

    @torch.no_grad()
    def embed_and_predict(
        self, images: np.ndarray, batch_size: int = 64, progress: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(embeddings, probs)`` of uint8 NHWC ``images``: the input of the classification head
        (penultimate layer) of the last snapshot, and the mean softmax over the snapshots (what
        the served ensemble predicts, without TTA), calibrated by the model's stored temperature when it has
        one (BBSE, the confidence columns and the background test read calibrated probabilities).
        ``progress(done, total)`` is called per batch."""
        module = self.module
        head = getattr(module, head_name(self.arch))
        captured: list[torch.Tensor] = []
        hook = head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach().flatten(1)))
        embeddings, probs = [], []
        try:
            for start in range(0, len(images), batch_size):
                x = to_float_batch(
                    torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])), *self.norm
                )
                total = torch.zeros(())
                for i, state in enumerate(reversed(self.states)):  # the last snapshot first: its features
                    if i:
                        module.load_state_dict(state)
                    captured.clear()
                    total = total + torch.softmax(module(x).float(), dim=1)
                    if i == 0:
                        embeddings.append(captured[0].float().numpy())
                if len(self.states) > 1:
                    module.load_state_dict(self.states[-1])
                probs.append((total / len(self.states)).numpy())
                if progress is not None:
                    progress(min(start + batch_size, len(images)), len(images))
        finally:
            hook.remove()
        dim = getattr(head, "in_features", 0)
        mean = np.concatenate(probs).astype(np.float64) if probs else np.zeros((0, len(self.classes)))
        trust = Trust.from_meta(self.classes, self.meta.get("trust"))
        return (
            np.concatenate(embeddings) if embeddings else np.zeros((0, dim), np.float32),
            trust.calibrated(mean) if trust is not None else mean,  # what the served model answers
        )


def parse_model_uri(uri: str) -> tuple[str, str] | None:
    """``(name, alias)`` of ``models:/name@alias``, else None."""
    if uri.startswith("models:/") and "@" in uri:
        name, alias = uri.removeprefix("models:/").rstrip("/").split("@", 1)
        return name, alias
    return None


def load_monitored_model(uri: str) -> MonitoredModel:
    """The model behind a ``models:/name@alias``, ``models:/name/version`` or ``runs:/`` URI.
    No version under the alias raises :class:`NoChampionError` naming the model and alias."""
    from ml.tracking.models import load_model_states, source_run_id
    from ml.tracking.registry import get_alias_version

    named = parse_model_uri(uri)
    if named is not None and get_alias_version(*named) is None:
        name, alias = named
        raise NoChampionError(
            f"no version of registered model '{name}' has the alias '{alias}' ({uri}): train and "
            "promote one first (skinflow retrain), or name another model with --model"
        )
    states, meta = load_model_states(uri)
    norm = meta.get("norm") or [[0.5] * 3, [0.25] * 3]
    return MonitoredModel(
        arch=meta["arch"],
        classes=list(meta["classes"]),
        size=int(meta.get("size", 64)),
        norm=(tuple(norm[0]), tuple(norm[1])),
        states=states,
        uri=uri,
        run_id=source_run_id(uri),
        meta=meta,
    )


def training_reference(model: MonitoredModel) -> dict[str, Any]:
    """The dataset source and per-split image digests the model's run recorded:
    ``{"source", "dataset_version", "digests": {split: set}}`` (digests None when not recorded)."""
    import mlflow

    from ml.tracking.models import load_training_digests_by_split

    run = mlflow.MlflowClient().get_run(model.run_id)
    sources = [d.dataset.source for d in run.inputs.dataset_inputs if d.dataset.source]
    source = _source_uri(sources[0]) if sources else None
    return {
        "source": source,
        "dataset_version": run.data.tags.get("dataset_version"),
        "digests": load_training_digests_by_split(model.uri),
    }


def _source_uri(raw: str) -> str:
    """The path/URI inside an MLflow dataset source (JSON ``{"uri": ...}`` or plain text)."""
    import json

    try:
        parsed = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(parsed, dict):
        for key in ("uri", "url", "path"):
            if key in parsed:
                return str(parsed[key])
    return raw
