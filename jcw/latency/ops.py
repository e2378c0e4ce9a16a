"""Op kinds as the latency model sees them: each kind's cost features and the micro-model that times it.

One registry serves the device-model fit (public block and whole-model measurements), table generation for a
search space, host measurement and phone bundles, so every path prices and runs an op the same way. Batch norm,
ReLU and ReLU6 are folded into the op before them, as mobile runtimes do; hard-swish, sigmoid and squeeze-excite's
multiply are not, and are priced as ops of their own.
"""
from __future__ import annotations

from dataclasses import dataclass
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
    activation_mbytes: float  # activations read and written, float32, in MB
    weight_mbytes: float  # weights read, float32, in MB


ONE_BY_ONE = ("conv1x1", "gemv")  # the categories of 1x1 convs, which XNNPACK's sparse kernel runs


# ---- cost features per kind, from the op's real shapes: (category, MACs, activation elements moved, weights read)
def _conv_cost(h, w, h_out, w_out, area, groups, c_in, c_out, density):
    depthwise = groups > 1 and groups == c_in
    # a grouped conv's output channel sees c_in / groups inputs, but every input channel is still read once
    weights = c_in / groups * c_out * area * (1.0 if depthwise else density)
    # a 1x1 conv on a 1x1 map (a feature-mix head, squeeze-excite) is a matrix-vector product ("gemv"), priced as a
    # linear layer is, but still a 1x1 conv to the sparse kernels
    category = "dwconv" if depthwise else "conv" if area > 1 else "gemv" if h_out * w_out == 1 else "conv1x1"
    return category, weights * h_out * w_out, c_in * h * w + c_out * h_out * w_out, weights


def _linear_cost(h, w, h_out, w_out, area, groups, c_in, c_out, density):
    weights = c_in * c_out * density
    return "linear", weights, c_in + c_out, weights


def _pool_cost(h, w, h_out, w_out, area, groups, c_in, c_out, density):
    return "pool", 0.0, c_in * h * w + c_out * h_out * w_out, 0.0


def _add_cost(h, w, h_out, w_out, area, groups, c_in, c_out, density):
    return "add", 0.0, 3 * c_out * h_out * w_out, 0.0  # two inputs read, one output written


def _concat_cost(h, w, h_out, w_out, area, groups, c_in, c_out, density):
    return "add", 0.0, 2 * c_out * h_out * w_out, 0.0  # the inputs together are as large as the output


ACT_OPS_PER_ELEMENT = 4  # XNNPACK's h-swish kernel: x * min(max(x / 6 + 1/2, 0), 1) is 4 vector ops, one an FMA


def _act_cost(h, w, h_out, w_out, area, groups, c_in, c_out, density):
    """An activation the runtime cannot fold: read once, written once, a few vector ops per element."""
    return "act", ACT_OPS_PER_ELEMENT * c_out * h_out * w_out, 2 * c_out * h_out * w_out, 0.0


def _mul_cost(h, w, h_out, w_out, area, groups, c_in, c_out, density):
    return "mul", 0.0, 2 * c_out * h_out * w_out + c_out, 0.0  # squeeze-excite's scale: the map times a vector


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


def _act_micro(layer: Layer, c_in: int, c_out: int, density: float, impl: str, gen: torch.Generator):
    return nn.Hardswish(), (torch.randn(1, c_out, layer.h, layer.w, generator=gen),)


class _ChannelScale(nn.Module):
    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return x * scale


def _mul_micro(layer: Layer, c_in: int, c_out: int, density: float, impl: str, gen: torch.Generator):
    return _ChannelScale(), (torch.randn(1, c_out, layer.h, layer.w, generator=gen),
                             torch.rand(1, c_out, 1, 1, generator=gen))


class _Concat(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b], dim=1)


def _concat_micro(layer: Layer, c_in: int, c_out: int, density: float, impl: str, gen: torch.Generator):
    half = c_out // 2
    return _Concat(), (torch.randn(1, half, layer.h, layer.w, generator=gen),
                       torch.randn(1, c_out - half, layer.h, layer.w, generator=gen))


class _GlobalPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)


def _pool_micro(layer: Layer, c_in: int, c_out: int, density: float, impl: str, gen: torch.Generator):
    pool = (_GlobalPool() if layer.kernel >= layer.h
            else nn.MaxPool2d(layer.kernel, layer.stride, (layer.kernel - 1) // 2))
    return pool, (torch.randn(1, c_out, layer.h, layer.w, generator=gen),)


@dataclass(frozen=True)
class OpKind:
    cost: Callable[..., tuple[str, float, float, float]]
    micro_model: Callable[..., tuple[nn.Module, tuple]]
    sparse_kernel: Callable[[Layer], bool]  # whether torch's CSR kernel can run this layer sparse


OP_KINDS: dict[str, OpKind] = {
    "conv": OpKind(_conv_cost, _conv_micro, lambda layer: layer.sparse >= 0 and layer.kernel == 1),
    "linear": OpKind(_linear_cost, _linear_micro, lambda layer: layer.sparse >= 0),
    "pool": OpKind(_pool_cost, _pool_micro, lambda layer: False),
    "add": OpKind(_add_cost, _add_micro, lambda layer: False),
    "concat": OpKind(_concat_cost, _concat_micro, lambda layer: False),
    "act": OpKind(_act_cost, _act_micro, lambda layer: False),
    "mul": OpKind(_mul_cost, _mul_micro, lambda layer: False),
}


def _kind(kind: str) -> OpKind:
    if kind not in OP_KINDS:
        raise ValueError(f"unknown op kind {kind!r}")
    return OP_KINDS[kind]


def op_cost(kind: str, h: int, w: int, h_out: int, w_out: int, kernel_area: int, groups: int, c_in: float,
            c_out: float, density: float = 1.0) -> Op:
    """An op's cost features from its real shapes: the one pricing rule per kind that every path shares."""
    category, macs, activations, weights = _kind(kind).cost(h, w, h_out, w_out, kernel_area, groups, c_in, c_out,
                                                            density)
    return Op(category, float(macs), float(activations) * 4 / 1e6, float(weights) * 4 / 1e6)


def op_features(kind: str, h: int, w: int, kernel: int, stride: int, depthwise: bool, c_in: float,
                c_out: float, density: float = 1.0) -> Op:
    """Cost features of one layer of a search space or a lookup-table key, at 'same' padding; `density` scales
    weights and MACs of sparse layers."""
    h_out, w_out = -(-h // stride), -(-w // stride)
    groups = int(c_in) if depthwise and kind == "conv" else 1
    return op_cost(kind, h, w, h_out, w_out, kernel * kernel, groups, c_in, c_out, density)


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


def _chw(shape: tuple[int, ...]) -> tuple[int, int, int]:
    return (shape[1], shape[2], shape[3]) if len(shape) == 4 else (shape[-1], 1, 1)


def named_model_ops(model: nn.Module, input_size: int, in_channels: int = 3) -> list[tuple[str, Op]]:
    """`model_ops` with each op's module (or fx node) name, to price a layer's own weight density."""
    ops: list[tuple[str, Op]] = []
    nodes = trace(model.eval(), input_size, in_channels)
    for node in nodes:
        mod = node.module
        if node.kind not in ("conv", "linear", "pool", "add", "cat", "act", "mul"):
            continue
        # an elementwise op is priced by its output (a concat's first argument is a list, with no shape)
        c_out, h_out, w_out = _chw(node.out_shape)
        c, h, w = _chw(node.in_shape) if node.kind in ("conv", "linear", "pool") else (c_out, h_out, w_out)
        if node.kind == "conv":
            op = op_cost("conv", h, w, h_out, w_out, mod.kernel_size[0] * mod.kernel_size[1], mod.groups, c, c_out)
        elif node.kind == "linear":
            op = op_cost("linear", 1, 1, 1, 1, 1, 1, mod.in_features, mod.out_features)
        else:
            kind = {"cat": "concat"}.get(node.kind, node.kind)
            if kind == "mul" and all(nodes[i].out_shape == node.out_shape for i in node.inputs):
                kind = "add"  # two whole maps multiplied move what an add moves
            op = op_cost(kind, h, w, h_out, w_out, 1, 1, c, c_out)
        ops.append((node.name, op))
    return ops
