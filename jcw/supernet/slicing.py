"""Slice a subnet out of the supernet: channels physically removed, weights inherited, sparsity masks fixed.

Training (`Supernet.forward_sliced`), scoring, host measurement and export all run the sliced subnet rather than the
masked supernet, which costs what the largest subnet costs. Masks on a sliced subnet are fixed parametrizations, so
masked weights stay exactly zero through any optimizer.
"""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from jcw.models import create_model
from jcw.models.graph import GraphInfo


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
            "widths": [len(k) for k in kept], "supernet_config": asdict(supernet.config)}
    return small.eval(), arch


def bake_masks(model: nn.Module) -> nn.Module:
    """Turn the mask parametrizations into plain (zero-holding) weights, in place.

    In place on purpose: a deepcopy shares torch's generated Parametrized* classes, so removing a parametrization
    from the copy would strip it from the original too.
    """
    model.eval()
    for module in list(model.modules()):  # removal edits the module tree: iterate over a snapshot
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model
