"""A fitted predictor: top-1 of a subnet from its genome in microseconds instead of seconds, saved and loaded.

A predictor is tied to the supernet it was fit on, by the supernet file's hash.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jcw.artifacts import default_predictor_path, load_torch_file
from jcw.errors import JcwError
from jcw.io import torch_save
from jcw.predictor.features import GenomeFeatures
from jcw.predictor.models import KINDS, Standardizer, apply_model
from jcw.space import SearchSpace

FORMAT = "jcw-predictor/2"


class Predictor:
    def __init__(self, space: SearchSpace, model: dict, x_norm: Standardizer, y_mean: float, y_std: float,
                 supernet_hash: str, report: dict | None = None):
        self.space, self.model, self.x_norm = space, model, x_norm
        self.y_mean, self.y_std = y_mean, y_std
        self.supernet_hash = supernet_hash
        self.report = report or {}
        self.folder: Path | None = None  # where it was loaded from; its dataset.csv holds the scored subnets
        self.features = GenomeFeatures(space)

    def predict(self, genomes: np.ndarray) -> np.ndarray:
        """Predicted validation top-1 (percent) of each genome."""
        x = self.x_norm(self.features(genomes))
        return apply_model(self.model, x) * self.y_std + self.y_mean

    def check_supernet(self, supernet_hash: str) -> None:
        if supernet_hash != self.supernet_hash:
            raise JcwError(f"this predictor was fit on supernet {self.supernet_hash}, not on {supernet_hash}; "
                           "fit one with `jcw predictor fit --supernet S` or use --evaluator supernet")

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        model = dict(self.model)
        state = {"format": FORMAT, "space": self.space.to_dict(), "model": json.dumps(_to_lists(model)),
                 "x_mean": self.x_norm.mean.tolist(), "x_std": self.x_norm.std.tolist(), "y_mean": self.y_mean,
                 "y_std": self.y_std, "supernet_hash": self.supernet_hash, "report": json.dumps(self.report)}
        torch_save(folder / "predictor.pt", state)
        return folder / "predictor.pt"


def _to_lists(obj):
    if isinstance(obj, np.ndarray):
        return {"__array__": obj.tolist()}
    if isinstance(obj, (list, tuple)):
        return [_to_lists(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _to_lists(v) for k, v in obj.items()}
    return obj


def _from_lists(obj):
    if isinstance(obj, dict):
        if "__array__" in obj:
            return np.array(obj["__array__"])
        return {k: _from_lists(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_lists(o) for o in obj]
    return obj


def load_predictor(path: str | Path | None = None) -> Predictor:
    """Load a predictor folder (or its predictor.pt); with no path, the shipped default."""
    path = Path(path) if path else default_predictor_path()
    file = path / "predictor.pt" if path.is_dir() else path
    state = load_torch_file(file, "predictor file", FORMAT, "fit one with `jcw predictor fit` or use --evaluator "
                            "supernet", "refit it with `jcw predictor fit`")
    try:
        model = _from_lists(json.loads(state["model"]))
        if model.get("kind") not in KINDS:
            raise JcwError(f"predictor {file} keeps a {model.get('kind')!r} model, which this jcw version does not "
                           "have; refit it with `jcw predictor fit`")
        predictor = Predictor(SearchSpace.from_dict(state["space"]), model,
                              Standardizer(np.array(state["x_mean"]), np.array(state["x_std"])),
                              float(state["y_mean"]), float(state["y_std"]), state["supernet_hash"],
                              json.loads(state["report"]))
    except JcwError:
        raise
    except Exception as exc:
        raise JcwError(f"predictor file {file} is corrupt or truncated ({exc.__class__.__name__}); refit it with "
                       "`jcw predictor fit`") from None
    predictor.folder = file.parent
    return predictor
