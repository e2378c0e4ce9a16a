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
from jcw.models.handlers import take


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
    for p in info.prunable:
        _set_module(model, p.name, p.handler.shrink(modules[p.name], p.per_role(kept)))
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
    sparse = [p for p in supernet.info.prunable if p.sparse >= 0]
    with torch.no_grad():
        effective = {p.name: modules[p.name].weight.detach().clone() for p in sparse}  # masked by the genome
    groups = len(supernet.space.groups)
    kept = [supernet.kept_channels(g) for g in range(groups)]
    base = create_model(supernet.config.model, supernet.config.num_classes, supernet.config.in_channels)
    base.load_state_dict(supernet.raw_state_dict())
    small = shrink(base, supernet.info, kept)
    sliced_masks = {p.name: (take(effective[p.name], p.handler.tensors["weight"], p.per_role(kept)) != 0).float()
                    for p in sparse}
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
