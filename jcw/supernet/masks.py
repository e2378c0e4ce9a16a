"""Weight masks, as torch parametrizations, so every forward pass sees the active subnet's weights.

A conv's effective weight is its shared weight times (kept rows x kept columns x magnitude mask). The magnitude mask
keeps the largest `density` fraction of the kept slice, recomputed from the current weights on every access, so
training moves it. Masking removed channels to exact zeros (weights and the batch-norm affine that follows) is
equivalent to removing them, which the export does physically.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from jcw.models.handlers import Prunable, keep_mask


class ActiveSubnet:
    """The subnet every mask reads: per-group channel masks and per-layer densities."""

    def __init__(self) -> None:
        self.channel_masks: list[torch.Tensor] = []
        self.densities: list[float] = []
        self.block = 1  # 1: unstructured; 4: blocks of 4 output channels at one input position


def magnitude_mask(weight: torch.Tensor, slice_mask: torch.Tensor, density: float, block: int = 1,
                   row_order: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the `density` fraction of the largest-magnitude weights inside `slice_mask` (0/1, same shape).

    With block=4, whole blocks of 4 consecutive kept output channels (in importance order) at one input position
    are kept or dropped together.
    """
    if density >= 1.0:
        return slice_mask
    if block > 1 and row_order is not None:
        rows_kept = int(slice_mask.flatten(1).amax(1).sum().item())
        if rows_kept % block == 0 and rows_kept > 0:
            order = row_order[:rows_kept]
            w = (weight.detach().abs() * slice_mask)[order]
            scores = w.reshape(rows_kept // block, block, *w.shape[1:]).sum(1).flatten()
            live = slice_mask[order].reshape(rows_kept // block, block, *w.shape[1:])[:, 0].flatten()
            n_live = int(live.sum().item())
            k = max(1, int(round(density * n_live)))
            scores = torch.where(live > 0, scores, torch.full_like(scores, -1.0))
            keep = torch.zeros_like(scores)
            keep[torch.topk(scores, k, sorted=False).indices] = 1.0
            keep = keep.reshape(rows_kept // block, 1, *w.shape[1:]).expand(-1, block, *w.shape[1:])
            mask = torch.zeros_like(slice_mask)
            mask[order] = keep.reshape(rows_kept, *w.shape[1:])
            return mask
    flat_mask = slice_mask.flatten()
    n_live = int(flat_mask.sum().item())
    k = max(1, int(round(density * n_live)))
    scores = torch.where(flat_mask > 0, weight.detach().abs().flatten(), torch.full_like(flat_mask, -1.0))
    mask = torch.zeros_like(flat_mask)
    mask[torch.topk(scores, k, sorted=False).indices] = 1.0
    return mask.view_as(slice_mask)


class ChannelMask(nn.Module):
    """Parametrization of one of a prunable module's tensors: zero the removed channels along each channel dimension."""

    def __init__(self, active: ActiveSubnet, prunable: Prunable, tensor: str):
        super().__init__()
        self.active = active
        self.prunable = prunable
        self.roles = prunable.handler.tensors[tensor]

    def slice_mask(self, value: torch.Tensor) -> torch.Tensor:
        return keep_mask(value, self.roles, self.prunable.per_role(self.active.channel_masks))

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        if not self.active.channel_masks:  # no subnet set: the full network
            return value
        return value * self.slice_mask(value)


class WeightMask(ChannelMask):
    """Parametrization of a sparse conv or linear weight: slice of kept channels x magnitude mask."""

    def __init__(self, active: ActiveSubnet, prunable: Prunable, row_order: torch.Tensor | None):
        super().__init__(active, prunable, "weight")
        self.row_order = row_order

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.active.channel_masks:
            return weight
        mask = magnitude_mask(weight, self.slice_mask(weight), self.active.densities[self.prunable.sparse],
                              self.active.block, self.row_order)
        return weight * mask
