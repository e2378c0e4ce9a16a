"""Weight masks, as torch parametrizations, so every forward pass sees the active subnet's weights.

A conv's effective weight is its shared weight times (kept rows x kept columns x magnitude mask). The magnitude mask
keeps the largest `density` fraction of the kept slice, recomputed from the current weights on every access, so
training moves it. Masking removed channels to exact zeros (weights and the batch-norm affine that follows) is
equivalent to removing them, which the export does physically.
"""
from __future__ import annotations

import torch
import torch.nn as nn


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


class WeightMask(nn.Module):
    """Parametrization of a conv or linear weight: slice of kept channels x magnitude mask."""

    def __init__(self, active: ActiveSubnet, in_group: int, out_group: int, sparse: int, depthwise: bool,
                 row_order: torch.Tensor | None):
        super().__init__()
        self.active = active
        self.in_group, self.out_group, self.sparse, self.depthwise = in_group, out_group, sparse, depthwise
        self.row_order = row_order

    def slice_mask(self, weight: torch.Tensor) -> torch.Tensor:
        shape = [1] * weight.dim()
        mask = torch.ones_like(weight)
        if self.out_group >= 0:
            rows = self.active.channel_masks[self.out_group]
            mask = mask * rows.view(-1, *shape[1:])
        if self.in_group >= 0 and not self.depthwise:
            cols = self.active.channel_masks[self.in_group]
            mask = mask * cols.view(1, -1, *shape[2:])
        return mask

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.active.channel_masks:  # no subnet set: the full network
            return weight
        mask = self.slice_mask(weight)
        if self.sparse >= 0:
            mask = magnitude_mask(weight, mask, self.active.densities[self.sparse], self.active.block,
                                  self.row_order)
        return weight * mask


class ChannelMask(nn.Module):
    """Parametrization of a batch norm's weight or bias (or a conv bias): zero the removed channels."""

    def __init__(self, active: ActiveSubnet, group: int):
        super().__init__()
        self.active = active
        self.group = group

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        if not self.active.channel_masks:
            return value
        return value * self.active.channel_masks[self.group]
