"""How each kind of prunable module is sliced: conv, depthwise conv, linear, batch norm.

A handler per module kind, as in Torch-Pruning: which dimension of each of the module's tensors holds its output
channels and which its input channels, and how to build the module anew at smaller widths. The masked supernet, its
sliced forward pass, the physical shrink and the exported masks all read this one table, so a kind's rule is written
once and a new kind is one more row.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

OUT, IN = "out", "in"  # the channel role a tensor dimension plays


def _conv(old: nn.Conv2d, n_out: int, n_in: int) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, old.kernel_size, old.stride, old.padding, old.dilation, bias=old.bias is not None)


def _depthwise(old: nn.Conv2d, n_out: int, n_in: int) -> nn.Conv2d:
    return nn.Conv2d(n_out, n_out, old.kernel_size, old.stride, old.padding, old.dilation, groups=n_out,
                     bias=old.bias is not None)


def _linear(old: nn.Linear, n_out: int, n_in: int) -> nn.Linear:
    return nn.Linear(n_in, n_out, bias=old.bias is not None)


def _norm(old: nn.BatchNorm2d, n_out: int, n_in: int) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(n_out, eps=old.eps, momentum=old.momentum)
    new.num_batches_tracked.data = old.num_batches_tracked.clone()  # its one tensor without channels
    return new


@dataclass(frozen=True)
class Handler:
    """One module kind's rule: where its channels lie in each tensor, and how to build it at other widths."""

    tensors: dict[str, tuple[str, ...]]  # tensor name -> the role (OUT or IN) of each of its leading dimensions
    rebuild: Callable[[nn.Module, int, int], nn.Module]  # (module, out width, in width) -> a fresh one of those widths

    def shrink(self, old: nn.Module, kept: dict[str, torch.Tensor | None]) -> nn.Module:
        """A fresh module holding only the `kept` channels of `old`'s tensors, copied."""
        sliced = {name: take(getattr(old, name).data, roles, kept) for name, roles in self.tensors.items()
                  if getattr(old, name) is not None}
        width = {role: sliced[name].shape[dim] for name in sliced for dim, role in enumerate(self.tensors[name])}
        new = self.rebuild(old, width[OUT], width.get(IN, width[OUT]))  # depthwise and norm: one channel axis
        for name, value in sliced.items():
            getattr(new, name).data = value.clone()
        return new


HANDLERS = {
    "conv": Handler({"weight": (OUT, IN), "bias": (OUT,)}, _conv),
    "depthwise": Handler({"weight": (OUT,), "bias": (OUT,)}, _depthwise),
    "linear": Handler({"weight": (OUT, IN), "bias": (OUT,)}, _linear),
    "norm": Handler({"weight": (OUT,), "bias": (OUT,), "running_mean": (OUT,), "running_var": (OUT,)}, _norm),
}


def take(t: torch.Tensor, roles: tuple[str, ...], kept: dict[str, torch.Tensor | None]) -> torch.Tensor:
    """`t` with only the kept channels along each of its channel dimensions; a role kept as None keeps them all
    (and `t` itself, not a copy, where no dimension is sliced)."""
    for dim, role in enumerate(roles):
        if kept[role] is not None:
            t = t.index_select(dim, kept[role])
    return t


def keep_mask(t: torch.Tensor, roles: tuple[str, ...], masks: dict[str, torch.Tensor | None]) -> torch.Tensor:
    """0/1 of `t`'s shape: 1 where the channel of every channel dimension is kept (a None mask keeps them all)."""
    mask = torch.ones_like(t)
    for dim, role in enumerate(roles):
        if masks[role] is not None:
            shape = [1] * t.dim()
            shape[dim] = -1
            mask = mask * masks[role].view(shape)
    return mask


@dataclass(frozen=True)
class Prunable:
    """A module whose channels a subnet slices: its kind and the channel group of each role (-1: a fixed width)."""

    name: str
    kind: str  # a key of HANDLERS
    out_group: int
    in_group: int
    sparse: int = -1  # its weight's density gene; -1: always dense

    @property
    def handler(self) -> Handler:
        return HANDLERS[self.kind]

    def group(self, role: str) -> int:
        return self.out_group if role == OUT else self.in_group

    def per_role(self, per_group: list) -> dict[str, object]:
        """Each role's entry of a per-group list (kept indices, channel masks); None for a fixed width."""
        return {role: per_group[self.group(role)] if self.group(role) >= 0 else None for role in (OUT, IN)}
