"""Shipped artifacts and the one way jcw reads its own torch files.

Shipped artifacts live in the repository's top-level folders in a clone and as package data once installed. Every
jcw file written with torch.save (supernet, checkpoint, predictor, subnet) is a dict of plain tensors and values with
a "format" tag, read back with `weights_only=True`, so a bad or foreign file is one clear error, never a traceback.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import jcw
from jcw.errors import JcwError

KINDS = ("latency_tables", "predictors", "supernets")
DEFAULT_SUPERNET = "mbv2_small_56_fmnist_rgb_indep/supernet.pt"
DEFAULT_PREDICTOR = "mbv2_small_56_fmnist_rgb_indep"


def artifact_dir(kind: str) -> Path:
    package = Path(jcw.__file__).parent
    installed = package / f"_{kind}"
    return installed if installed.is_dir() else package.parent / kind


def default_supernet_path() -> Path:
    return artifact_dir("supernets") / DEFAULT_SUPERNET


def default_predictor_path() -> Path:
    return artifact_dir("predictors") / DEFAULT_PREDICTOR


def load_torch_file(path: str | Path, what: str, fmt: str | None, missing: str, remedy: str) -> dict[str, Any]:
    """Read a jcw torch file; `fmt` is the expected "format" tag (None: any dict).

    `what` names the file in errors ("supernet file"), `missing` says how to make one, `remedy` how to replace a
    corrupt one. A file of the same kind from another jcw version names both versions.
    """
    path = Path(path)
    if not path.is_file():
        raise JcwError(f"{what} {path} does not exist; {missing}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise JcwError(f"{what} {path} is corrupt or truncated ({exc.__class__.__name__}); {remedy}") from None
    if not isinstance(state, dict):
        raise JcwError(f"{what} {path} is corrupt or truncated (not a jcw file); {remedy}")
    found = state.get("format")
    if fmt is not None and found != fmt:
        family = fmt.split("/")[0]
        if isinstance(found, str) and found.startswith(family + "/"):
            raise JcwError(f"{what} {path} is {found}, from another jcw version, and this one reads {fmt}; {remedy}")
        raise JcwError(f"{path} is not a {what} (expected format {fmt}); {remedy}")
    return state
