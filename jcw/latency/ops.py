"""Op kinds as the latency model sees them: each kind's cost features and the micro-model that times it.

One registry serves the device-model fit (public block and whole-model measurements), table generation for a
search space, host measurement and phone bundles, so every path prices and runs an op the same way. Batch norm and
activations are folded into the conv before them, as mobile runtimes do.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from jcw.latency.host_runtime import SparseConv1x1
from jcw.models.graph import trace
from jcw.space import Layer

@dataclass(frozen=True)
class Op:
    category: str
    macs: float  # multiply-accumulates
    mbytes: float  # activations in + out + weights, float32, in MB


# ---- cost features: (category, MACs, elements moved) per kind -----------------------------------------------------
def _conv_cost(h, w, h_out, w_out, area, depthwise, c_in, c_out, density):
    if depthwise:
        weights, category = c_out * area, "dwconv"
    else:
        weights, category = c_in * c_out * area * density, "conv1x1" if area == 1 else "conv"
    return category, weights * h_out * w_out, c_in * h * w + c_out * h_out * w_out + weights


def _linear_cost(h, w, h_out, w_out, area, depthwise, c_in, c_out, density):
    weights = c_in * c_out * density
    return "linear", weights, c_in + c_out + weights


def _pool_cost(h, w, h_out, w_out, area, depthwise, c_in, c_out, density):
    return "pool", 0.0, c_in * h * w + c_out * h_out * w_out


def _add_cost(h, w, h_out, w_out, area, depthwise, c_in, c_out, density):
    return "add", 0.0, 3 * c_in * h * w


# ---- micro-models: the module and inputs that run one table entry -------------------------------------------------
def sparse_weight(c_out: int, c_in: int, density: float, gen: torch.Generator, *kernel: int) -> torch.Tensor:
    """A random weight with exactly round(density x size) nonzeros, placed at random."""
    w = torch.randn(c_out, c_in, *kernel, generator=gen)
    k = max(1, int(round(density * w.numel())))
    mask = torch.zeros(w.numel())
    mask[torch.randperm(w.numel(), generator=gen)[:k]] = 1
    return w * mask.view_as(w)


def _conv_micro(layer: Layer, c_in: int, c_out: int, density: float, impl: str, gen: torch.Generator):
    x = torch.randn(1, c_in, layer.h, layer.w, generator=gen)
    if impl == "sparse_csr":
        op = SparseConv1x1(sparse_weight(c_out, c_in, density, gen), torch.zeros(c_out), layer.stride)
        return nn.Sequential(op, nn.ReLU6()), (x,)
    groups = c_in if layer.depthwise else 1
    conv = nn.Conv2d(c_in, c_out, layer.kernel, layer.stride, (layer.kernel - 1) // 2, groups=groups)
    if density < 1.0 and not layer.depthwise:  # the zeros travel with the model; a dense kernel ignores them
        conv.weight.data = sparse_weight(c_out, c_in, density, gen, layer.kernel, layer.kernel)
    return nn.Sequential(conv, nn.ReLU6()), (x,)


def _linear_micro(layer: Layer, c_in: int, c_out: int, density: float, impl: str, gen: torch.Generator):
    x = torch.randn(1, c_in, generator=gen)
    if impl == "sparse_csr":
        return SparseConv1x1(sparse_weight(c_out, c_in, density, gen), torch.zeros(c_out), spatial=False), (x,)
    linear = nn.Linear(c_in, c_out)
    if density < 1.0:
        linear.weight.data = sparse_weight(c_out, c_in, density, gen)
    return linear, (x,)


class _TwoInputAdd(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


def _add_micro(layer: Layer, c_in: int, c_out: int, density: float, impl: str, gen: torch.Generator):
    shape = (1, c_out, layer.h, layer.w)
    return _TwoInputAdd(), (torch.randn(*shape, generator=gen), torch.randn(*shape, generator=gen))


class _GlobalPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)


def _pool_micro(layer: Layer, c_in: int, c_out: int, density: float, impl: str, gen: torch.Generator):
    pool = (_GlobalPool() if layer.kernel >= layer.h
            else nn.MaxPool2d(layer.kernel, layer.stride, (layer.kernel - 1) // 2))
    return pool, (torch.randn(1, c_out, layer.h, layer.w, generator=gen),)


@dataclass(frozen=True)
class OpKind:
    cost: Callable[..., tuple[str, float, float]]
    micro_model: Callable[..., tuple[nn.Module, tuple]]
    sparse_kernel: Callable[[Layer], bool]  # whether torch's CSR kernel can run this layer sparse


OP_KINDS: dict[str, OpKind] = {
    "conv": OpKind(_conv_cost, _conv_micro, lambda layer: layer.sparse >= 0 and layer.kernel == 1),
    "linear": OpKind(_linear_cost, _linear_micro, lambda layer: layer.sparse >= 0),
    "pool": OpKind(_pool_cost, _pool_micro, lambda layer: False),
    "add": OpKind(_add_cost, _add_micro, lambda layer: False),
}


def _kind(kind: str) -> OpKind:
    if kind not in OP_KINDS:
        raise ValueError(f"unknown op kind {kind!r}")
    return OP_KINDS[kind]


def op_features(kind: str, h: int, w: int, kernel: int, stride: int, depthwise: bool, c_in: float,
                c_out: float, density: float = 1.0, kernel_area: int | None = None) -> Op:
    """Cost features of one layer at dense width; `density` scales weights and MACs of sparse layers.

    `kernel_area` overrides kernel*kernel for non-square kernels (1x7, 7x1)."""
    h_out, w_out = -(-h // stride), -(-w // stride)
    area = kernel_area if kernel_area is not None else kernel * kernel
    category, macs, elems = _kind(kind).cost(h, w, h_out, w_out, area, depthwise, c_in, c_out, density)
    return Op(category, float(macs), float(elems) * 4 / 1e6)


def micro_model(layer: Layer, c_in: int, c_out: int, density: float, impl: str = "dense",
                gen: torch.Generator | None = None) -> tuple[nn.Module, tuple]:
    """The module and example inputs for one table entry, as an exported subnet runs it (impl dense or sparse_csr)."""
    gen = gen if gen is not None else torch.Generator().manual_seed(0)
    module, inputs = _kind(layer.kind).micro_model(layer, c_in, c_out, density, impl, gen)
    return module.eval(), inputs


def has_sparse_kernel(layer: Layer) -> bool:
    return _kind(layer.kind).sparse_kernel(layer)


def model_ops(model: nn.Module, input_size: int, in_channels: int = 3) -> list[Op]:
    """Every priced op of a traceable classification CNN, for whole-model prediction."""
    return [op for _, op in named_model_ops(model, input_size, in_channels)]


def named_model_ops(model: nn.Module, input_size: int, in_channels: int = 3) -> list[tuple[str, Op]]:
    """`model_ops` with each op's module (or fx node) name, to price a layer's own weight density."""
    ops: list[tuple[str, Op]] = []
    for node in trace(model.eval(), input_size, in_channels):
        mod = node.module
        if node.kind == "conv":
            _, c, h, w = node.in_shape
            area = mod.kernel_size[0] * mod.kernel_size[1]
            if mod.groups > 1 and mod.groups != c:  # grouped conv: each output channel sees c / groups inputs
                per_group = op_features("conv", h, w, mod.kernel_size[0], mod.stride[0], False, c / mod.groups,
                                        mod.out_channels, kernel_area=area)
                h_out, w_out = node.out_shape[-2:]
                weights = c / mod.groups * mod.out_channels * area  # but every input channel is read once
                moved = c * h * w + mod.out_channels * h_out * w_out + weights
                ops.append((node.name, Op(per_group.category, per_group.macs, moved * 4 / 1e6)))
            else:
                ops.append((node.name, op_features("conv", h, w, mod.kernel_size[0], mod.stride[0], mod.groups > 1,
                                                   c, mod.out_channels, kernel_area=area)))
        elif node.kind == "linear":
            ops.append((node.name, op_features("linear", 1, 1, 1, 1, False, mod.in_features, mod.out_features)))
        elif node.kind == "pool":
            ops.append((node.name, Op("pool", 0.0, (prod(node.in_shape) + prod(node.out_shape)) * 4 / 1e6)))
        elif node.kind in ("add", "cat"):
            ops.append((node.name, Op("add", 0.0, 2 * prod(node.out_shape) * 4 / 1e6)))
    return ops
