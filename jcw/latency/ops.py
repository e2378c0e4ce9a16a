"""Operations as a latency model sees them: a category, multiply-accumulates and bytes moved.

Shared by the device-model fit (public block and whole-model measurements) and by table generation for a search
space, so both price an op the same way. Batch norm and activations are folded into the conv before them, as
mobile runtimes do.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from jcw.errors import JcwError

CATEGORIES = ("conv", "conv1x1", "dwconv", "linear", "pool", "add")


@dataclass(frozen=True)
class Op:
    category: str
    macs: float  # multiply-accumulates
    mbytes: float  # activations in + out + weights, float32, in MB


def op_features(kind: str, h: int, w: int, kernel: int, stride: int, depthwise: bool, c_in: float,
                c_out: float, density: float = 1.0, kernel_area: int | None = None) -> Op:
    """Cost features of one layer at dense width; `density` scales weights and MACs of sparse layers.

    `kernel_area` overrides kernel*kernel for non-square kernels (1x7, 7x1)."""
    h_out, w_out = -(-h // stride), -(-w // stride)
    area = kernel_area if kernel_area is not None else kernel * kernel
    if kind == "conv":
        if depthwise:
            weights = c_out * area
            category = "dwconv"
        else:
            weights = c_in * c_out * area * density
            category = "conv1x1" if area == 1 else "conv"
        macs = weights * h_out * w_out
        elems = c_in * h * w + c_out * h_out * w_out + weights
    elif kind == "linear":
        weights = c_in * c_out * density
        category, macs, elems = "linear", weights, c_in + c_out + weights
    elif kind == "pool":
        category, macs, elems = "pool", 0.0, c_in * h * w + c_out * h_out * w_out
    elif kind == "add":
        category, macs, elems = "add", 0.0, 3 * c_in * h * w
    else:
        raise ValueError(f"unknown op kind {kind!r}")
    return Op(category, float(macs), float(elems) * 4 / 1e6)


def model_ops(model: nn.Module, input_size: int, in_channels: int = 3) -> list[Op]:
    """Every priced op of a traceable classification CNN, for whole-model prediction."""
    model = model.eval()
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:
        raise JcwError(f"cannot trace the model with torch.fx ({exc.__class__.__name__}); only traceable CNNs "
                       "can be priced") from None
    ShapeProp(gm).propagate(torch.zeros(1, in_channels, input_size, input_size))
    modules = dict(gm.named_modules())
    ops: list[Op] = []

    def shape(node) -> tuple[int, ...]:
        return tuple(node.meta["tensor_meta"].shape)

    for node in gm.graph.nodes:
        args = [a for a in node.args if isinstance(a, fx.Node)]
        mod = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(mod, nn.Conv2d):
            _, c, h, w = shape(args[0])
            dw = mod.groups > 1
            area = mod.kernel_size[0] * mod.kernel_size[1]
            if dw and mod.groups != c:  # grouped conv: price as dense convs on each group
                ops.append(op_features("conv", h, w, mod.kernel_size[0], mod.stride[0], False,
                                       c / mod.groups, mod.out_channels, kernel_area=area))
            else:
                ops.append(op_features("conv", h, w, mod.kernel_size[0], mod.stride[0], dw, c, mod.out_channels,
                                       kernel_area=area))
        elif isinstance(mod, nn.Linear):
            ops.append(op_features("linear", 1, 1, 1, 1, False, mod.in_features, mod.out_features))
        elif isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)) or (
                node.op == "call_function" and node.target in (F.adaptive_avg_pool2d, F.max_pool2d, F.avg_pool2d)):
            s_in, s_out = shape(args[0]), shape(node)
            ops.append(Op("pool", 0.0, (_numel(s_in) + _numel(s_out)) * 4 / 1e6))
        elif node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add, torch.cat):
            ops.append(Op("add", 0.0, 2 * _numel(shape(node)) * 4 / 1e6))
    return ops


def _numel(s: tuple[int, ...]) -> int:
    n = 1
    for d in s:
        n *= int(d)
    return n
