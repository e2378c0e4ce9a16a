"""Subnet files: a sliced subnet with its recalibrated batch norm and fixed sparsity masks, ready to fine-tune.

The file is an architecture config plus plain tensors (no pickled code): `load_subnet` rebuilds the base network,
shrinks its layers to the saved widths and loads the weights, so the module trains in any loop.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from jcw import __version__
from jcw.accelerator import CPU, Accelerator
from jcw.artifacts import load_torch_file
from jcw.errors import JcwError
from jcw.io import torch_save
from jcw.models import create_model
from jcw.models.graph import analyse
from jcw.supernet.accuracy import (CALIBRATION_IMAGES, TestScore, batch_norm_stats, calibrated_subnet, evaluate,
                                   folded_twin, load_batch_norm_stats)
from jcw.supernet.slicing import add_masks, shrink, subnet_from_supernet

FORMAT = "jcw-subnet/1"


def export_subnet(supernet, genome, path: str | Path, data=None, metadata: dict | None = None,
                  calibration_images: int = CALIBRATION_IMAGES, test: bool = False, accel: Accelerator = CPU,
                  tested: TestScore | None = None) -> Path:
    """Write a subnet file; with `data`, batch norm is recalibrated for this subnet first, and with `test` its top-1
    on the test split goes into the metadata too: a member chosen on validation images is overrated there, so its
    test top-1 is what it is worth. `tested` is both, already computed (by the search's scoring pool)."""
    small, arch = subnet_from_supernet(supernet, genome)
    metadata = dict(metadata or {})
    if tested is not None:
        load_batch_norm_stats(small, tested.batch_norm)
        metadata["test_top1"] = round(tested.top1, 4)
    elif data is not None:  # as the search scores: calibrated with masks baked in, tested on the folded twin (2.5x
        # faster than the masked network); the saved network keeps its masks
        twin = calibrated_subnet(supernet, genome, data, calibration_images, accel)
        load_batch_norm_stats(small, batch_norm_stats(twin))
        if test:
            metadata["test_top1"] = round(evaluate(folded_twin(twin), data, "test", accel=accel).top1, 4)
    meta = {"genome": [int(v) for v in np.asarray(genome)], **supernet.space.decode(genome),
            "supernet_hash": getattr(supernet, "hash", None), "jcw_version": __version__, **metadata}
    save_subnet(path, small, arch, meta)
    return Path(path)


def save_subnet(path: str | Path, model: nn.Module, arch: dict, metadata: dict) -> None:
    torch_save(path, {"format": FORMAT, "arch": arch, "state_dict": model.state_dict(), "metadata": metadata})


def read_subnet_metadata(path: str | Path) -> dict:
    """A subnet file's metadata (genome, scores, where it came from) without rebuilding the network."""
    return _read(path)["metadata"]


def _read(path: str | Path) -> dict:
    return load_torch_file(path, "subnet file", FORMAT, "make one with `jcw export RUN --id K`", "export it again")


def load_subnet(path: str | Path) -> nn.Module:
    """Rebuild an exported subnet as a plain nn.Module; `module.jcw_metadata` holds its genome and scores."""
    ckpt = _read(path)
    try:
        arch = ckpt["arch"]
        base = create_model(arch["model"], arch["num_classes"], arch["in_channels"])
        sc = arch["supernet_config"]
        info = analyse(base, arch["model"], arch["input_size"], arch["in_channels"], arch["num_classes"],
                       sc["min_ratio"], sc["width_step"], sc["divisor"], tuple(sc["densities"]))
        model = shrink(base, info, [torch.arange(w) for w in arch["widths"]])
        masks = {k.rsplit(".parametrizations.", 1)[0]: v for k, v in ckpt["state_dict"].items()
                 if k.endswith("parametrizations.weight.0.mask")}
        add_masks(model, {k: torch.ones_like(v) for k, v in masks.items()})
        model.load_state_dict(ckpt["state_dict"])
    except JcwError:
        raise
    except Exception as exc:
        raise JcwError(f"subnet file {path} is corrupt or truncated ({exc.__class__.__name__}); export it "
                       "again") from None
    model.jcw_metadata = ckpt["metadata"]
    model.jcw_arch = arch
    return model.eval()
