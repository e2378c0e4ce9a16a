"""Export a subnet: channels physically removed, inherited weights, recalibrated batch norm, sparsity masks.

The file is an architecture config plus plain tensors (no pickled code): `load_subnet` rebuilds the base network,
shrinks its layers to the saved widths and loads the weights. Masks are fixed parametrizations, so masked weights stay
exactly zero through any optimizer, and the module trains in any loop.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from jcw import __version__
from jcw.errors import JcwError
from jcw.io import torch_save
from jcw.models import create_model
from jcw.models.graph import GraphInfo, analyse

FORMAT = "jcw-subnet/1"


class FixedMask(nn.Module):
    """weight * mask, with the mask a buffer saved in the state_dict."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def shrink(model: nn.Module, info: GraphInfo, kept: list[torch.Tensor]) -> nn.Module:
    """Replace every conv, batch norm and linear with one holding only the `kept` channels of each group."""
    modules = dict(model.named_modules())
    for name, layer in info.weight_layers.items():
        old = modules[name]
        rows = kept[layer.out_group] if layer.out_group >= 0 else torch.arange(old.weight.shape[0])
        if isinstance(old, nn.Linear):
            cols = kept[layer.in_group] if layer.in_group >= 0 else torch.arange(old.in_features)
            new = nn.Linear(len(cols), len(rows), bias=old.bias is not None)
            new.weight.data = old.weight.data[rows][:, cols].clone()
        elif layer.depthwise:
            new = nn.Conv2d(len(rows), len(rows), old.kernel_size, old.stride, old.padding, old.dilation,
                            groups=len(rows), bias=old.bias is not None)
            new.weight.data = old.weight.data[rows].clone()
        else:
            cols = kept[layer.in_group] if layer.in_group >= 0 else torch.arange(old.in_channels)
            new = nn.Conv2d(len(cols), len(rows), old.kernel_size, old.stride, old.padding, old.dilation,
                            bias=old.bias is not None)
            new.weight.data = old.weight.data[rows][:, cols].clone()
        if old.bias is not None:
            new.bias.data = old.bias.data[rows].clone()
        _set_module(model, name, new)
    for g, names in info.norms.items():
        for name in names:
            old = modules[name]
            idx = kept[g]
            new = nn.BatchNorm2d(len(idx), eps=old.eps, momentum=old.momentum)
            new.weight.data, new.bias.data = old.weight.data[idx].clone(), old.bias.data[idx].clone()
            new.running_mean.data, new.running_var.data = old.running_mean[idx].clone(), old.running_var[idx].clone()
            new.num_batches_tracked.data = old.num_batches_tracked.clone()
            _set_module(model, name, new)
    return model


def add_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    for name, mask in masks.items():
        module = model.get_submodule(name)
        module.weight.data *= mask  # masked weights start at exactly zero, not only after the parametrization
        parametrize.register_parametrization(module, "weight", FixedMask(mask))


def subnet_from_supernet(supernet, genome) -> tuple[nn.Module, dict]:
    """A physically smaller copy of the supernet's subnet (with its current batch-norm statistics)."""
    supernet.set_genome(np.asarray(genome))
    modules = dict(supernet.base.named_modules())
    masks = {}
    with torch.no_grad():
        for name, layer in supernet.info.weight_layers.items():
            if layer.sparse >= 0:
                masks[name] = modules[name].weight.detach().clone()  # effective (masked) weight
    groups = len(supernet.space.groups)
    kept = [supernet.kept_channels(g) for g in range(groups)]
    base = create_model(supernet.config.model, supernet.config.num_classes, supernet.config.in_channels)
    base.load_state_dict(supernet.raw_state_dict())
    small = shrink(base, supernet.info, kept)
    small_modules = dict(small.named_modules())
    sliced_masks = {}
    for name, effective in masks.items():
        layer = supernet.info.weight_layers[name]
        rows = kept[layer.out_group] if layer.out_group >= 0 else torch.arange(effective.shape[0])
        w = effective[rows]
        if layer.in_group >= 0:
            w = w[:, kept[layer.in_group]]
        sliced_masks[name] = (w != 0).float()
        assert sliced_masks[name].shape == small_modules[name].weight.shape
    add_masks(small, sliced_masks)
    arch = {"model": supernet.config.model, "num_classes": supernet.config.num_classes,
            "in_channels": supernet.config.in_channels, "input_size": supernet.config.input_size,
            "widths": [len(k) for k in kept], "supernet_config": supernet.checkpoint()["config"]}
    return small.eval(), arch


def export_subnet(supernet, genome, path: str | Path, data=None, metadata: dict | None = None,
                  calibration_images: int = 2000) -> Path:
    """Write a subnet file; with `data`, batch norm is recalibrated for this subnet first."""
    from jcw.supernet.evaluate import recalibrate_bn

    small, arch = subnet_from_supernet(supernet, genome)
    if data is not None:
        recalibrate_bn(small, data, calibration_images)
    space = supernet.space
    meta = {"genome": [int(v) for v in np.asarray(genome)], **space.decode(genome),
            "supernet_hash": getattr(supernet, "hash", None), "jcw_version": __version__, **(metadata or {})}
    torch_save(path, {"format": FORMAT, "arch": arch, "state_dict": small.state_dict(), "metadata": meta})
    return Path(path)


def load_subnet(path: str | Path) -> nn.Module:
    """Rebuild an exported subnet as a plain nn.Module; `module.jcw_metadata` holds its genome and scores."""
    path = Path(path)
    if not path.is_file():
        raise JcwError(f"subnet file {path} does not exist; make one with `jcw export RUN --id K`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if ckpt.get("format") != FORMAT:
            raise ValueError("format")
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


def export_from_run(run: str | Path, subnet_id: int, supernet=None, device: str | None = None,
                    out: str | Path | None = None, data_dir: str | None = None) -> Path:
    """Export front member `subnet_id` of a search run to RUN/subnets/ID.pt (or `out`)."""
    import pandas as pd

    from jcw.data import load_dataset
    from jcw.search.archive import genomes_from_column
    from jcw.search.plot import read_run
    from jcw.supernet.supernet import load_supernet

    history, pareto, config = read_run(run)
    row = history[history["id"] == subnet_id]
    if row.empty:
        raise JcwError(f"{run} has no subnet with id {subnet_id}; ids are in pareto.csv and history.csv")
    row = row.iloc[0]
    if supernet is None:
        supernet = load_supernet(config["resolved"]["supernet"])
    if supernet.hash != config["resolved"]["supernet_hash"]:
        raise JcwError(f"the supernet at {supernet.path} changed since the run (hash {supernet.hash}, run used "
                       f"{config['resolved']['supernet_hash']})")
    genome = genomes_from_column(pd.Series([row["genome"]]))[0]
    data = load_dataset(supernet.config.dataset, data_dir or config["options"].get("data_dir"))
    meta = {"id": int(subnet_id), "device": device or config["options"]["device"],
            "predicted_latency_ms": float(row["latency_ms"]),
            "val_top1": None if pd.isna(row["true_top1"]) else float(row["true_top1"]),
            "predicted_top1": None if pd.isna(row["predicted_top1"]) else float(row["predicted_top1"]),
            "run": str(Path(run).resolve())}
    out = Path(out) if out else Path(run) / "subnets" / f"{subnet_id}.pt"
    return export_subnet(supernet, genome, out, data=data, metadata=meta)
