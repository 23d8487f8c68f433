"""The model file: a scikit-learn pipeline and its metadata in skops format (no pickle: loading
executes nothing but the allow-listed types below), and its model card next to it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import skops.io as sio
from sklearn.pipeline import Pipeline

from predictor.features import FEATURES

FORMAT = 1
# Types a model file may contain beyond skops' defaults; anything else is refused.
TRUSTED = ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]


class ModelError(ValueError):
    """A model file cannot be used (missing, corrupt, untrusted, or features differ)."""


@dataclass(frozen=True)
class LoadedModel:
    pipeline: Pipeline
    meta: dict[str, Any]
    path: Path

    @property
    def threshold(self) -> float:
        return float(self.meta.get("threshold", 0.6))

    @property
    def k(self) -> int:
        return int(self.meta.get("k", 3))

    @property
    def features(self) -> list[str]:
        """The features the model was trained on (FEATURES or a subset)."""
        return used_features(self.pipeline)

    def predict(self, rows: pd.DataFrame) -> pd.DataFrame:
        """p_healthy, p_degraded, p_failing for each row."""
        proba = self.pipeline.predict_proba(rows[self.features])
        out = pd.DataFrame(proba, columns=[f"p_{c}" for c in self.pipeline.classes_],
                           index=rows.index)
        for cls in ("healthy", "degraded", "failing"):
            if f"p_{cls}" not in out:
                out[f"p_{cls}"] = 0.0
        return out


def used_features(pipeline: Pipeline) -> list[str]:
    return [str(n) for n in getattr(pipeline, "feature_names_in_", [])]


def save(pipeline: Pipeline, meta: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sio.dump({"format": FORMAT, "pipeline": pipeline, "meta_json": json.dumps(meta)}, path)


def load(path: Path | str) -> LoadedModel:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    try:
        untrusted = set(sio.get_untrusted_types(file=path)) - set(TRUSTED)
    except Exception as exc:  # any parse failure means: not a model file
        raise ModelError(f"model file {path} is not a readable skops file: {exc}") from exc
    if untrusted:
        raise ModelError(f"model file {path} holds untrusted types: {sorted(untrusted)}")
    try:
        obj = sio.load(path, trusted=TRUSTED)
        meta = json.loads(obj["meta_json"])
        pipeline = obj["pipeline"]
    except Exception as exc:  # whatever skops raises, the file is unusable
        raise ModelError(f"model file {path} cannot be loaded: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ModelError(f"model file {path} has format {obj.get('format')!r}, "
                         f"this version reads {FORMAT}")
    if not isinstance(pipeline, Pipeline) or not hasattr(pipeline, "classes_"):
        raise ModelError(f"model file {path} holds no fitted pipeline")
    names = used_features(pipeline)
    unknown = sorted(set(names) - set(FEATURES))
    if unknown or not names:
        raise ModelError(f"model file {path} was trained on other features "
                         f"(unknown {unknown or 'none named'})")
    return LoadedModel(pipeline, meta, path)
