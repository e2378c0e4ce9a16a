"""Where shipped artifacts live: the repository's top-level folders in a clone, package data once installed."""
from __future__ import annotations

from pathlib import Path

import jcw

KINDS = ("latency_tables", "predictors", "supernets")
DEFAULT_SUPERNET = "mbv2_small_fmnist/supernet.pt"
DEFAULT_PREDICTOR = "mbv2_small_fmnist"


def artifact_dir(kind: str) -> Path:
    package = Path(jcw.__file__).parent
    installed = package / f"_{kind}"
    return installed if installed.is_dir() else package.parent / kind


def default_supernet_path() -> Path:
    return artifact_dir("supernets") / DEFAULT_SUPERNET


def default_predictor_path() -> Path:
    return artifact_dir("predictors") / DEFAULT_PREDICTOR
