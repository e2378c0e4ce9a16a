"""Find coupled channels by tracing a network, and derive its search space.

One pass over the torch.fx graph follows, for every tensor, which channel group its channels belong to: a
non-depthwise conv starts a new group, a depthwise conv and batch norm keep their input's, and an add merges the
groups of its operands (union-find). This graph is the one source of truth for which layers must share a width.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from jcw.errors import JcwError
from jcw.space import DEFAULT_DENSITIES, ChannelGroup, Layer, SearchSpace, width_choices

ADD_OPS = {operator.add, operator.iadd, torch.add}
POOL_FUNCTIONS = {F.adaptive_avg_pool2d}


@dataclass
class GraphInfo:
    """The space plus what the supernet needs: which module plays which role in which group."""

    space: SearchSpace
    producers: dict[int, list[str]] = field(default_factory=dict)  # group -> convs whose output rows it owns
    norms: dict[int, list[str]] = field(default_factory=dict)  # group -> batch norms over its channels
    weight_layers: dict[str, Layer] = field(default_factory=dict)  # conv/linear module name -> its layer


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def new(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(b)] = self.find(a)


def analyse(model: nn.Module, model_name: str, input_size: int, in_channels: int, num_classes: int,
            min_ratio: float = 0.25, step: float = 1 / 8, divisor: int = 8,
            densities: tuple[float, ...] = DEFAULT_DENSITIES) -> GraphInfo:
    """Trace `model` and return its search space and the role of each module."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:
        raise JcwError(f"cannot trace {model_name} with torch.fx ({exc}); use a traceable CNN") from None
    was_training = model.training
    gm.eval()  # batch norm on a single image needs running statistics
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.zeros(1, in_channels, input_size, input_size))
    model.train(was_training)
    modules = dict(gm.named_modules())
    uf = _UnionFind()
    group_of: dict[fx.Node, int | None] = {}  # tensor -> raw group id (None: a fixed width, e.g. the image)
    raw_layers: list[tuple[dict, int | None, int | None]] = []
    raw_norms: list[tuple[str, int]] = []
    raw_producers: list[tuple[str, int]] = []

    def src(node) -> int | None:
        return group_of.get(node) if isinstance(node, fx.Node) else None

    def hw(node: fx.Node) -> tuple[int, int]:
        shape = node.meta["tensor_meta"].shape
        return (int(shape[-2]), int(shape[-1])) if len(shape) == 4 else (1, 1)

    def channels(node: fx.Node) -> int:
        return int(node.meta["tensor_meta"].shape[1])

    for node in gm.graph.nodes:
        args = [a for a in node.args if isinstance(a, fx.Node)]
        first = args[0] if args else None
        if node.op == "placeholder":
            group_of[node] = None
        elif node.op == "call_module" and isinstance(modules[node.target], nn.Conv2d):
            conv = modules[node.target]
            g_in = src(first)
            h, w = hw(first)
            depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
            if conv.groups > 1 and not depthwise:
                raise JcwError(f"{model_name}: grouped conv {node.target} is not supported")
            if depthwise:
                if g_in is None:
                    raise JcwError(f"{model_name}: depthwise conv {node.target} on a fixed-width input")
                g_out = g_in
            else:
                g_out = uf.new()
            raw_producers.append((node.target, g_out))
            raw_layers.append((dict(name=node.target, kind="conv", h=h, w=w, kernel=conv.kernel_size[0],
                                    stride=conv.stride[0], depthwise=depthwise, c_in=channels(first),
                                    c_out=conv.out_channels), g_in, g_out))
            group_of[node] = g_out
        elif node.op == "call_module" and isinstance(modules[node.target], nn.Linear):
            lin = modules[node.target]
            raw_layers.append((dict(name=node.target, kind="linear", h=1, w=1, c_in=lin.in_features,
                                    c_out=lin.out_features), src(first), None))
            group_of[node] = None
        elif node.op == "call_module" and isinstance(modules[node.target], nn.BatchNorm2d):
            g = src(first)
            if g is not None:
                raw_norms.append((node.target, g))
            group_of[node] = g
        elif node.op == "call_module" and isinstance(modules[node.target], (nn.AdaptiveAvgPool2d, nn.MaxPool2d,
                                                                            nn.AvgPool2d)):
            h, w = hw(first)
            k = modules[node.target].kernel_size if hasattr(modules[node.target], "kernel_size") else h
            k = k if isinstance(k, int) else k[0]
            s = getattr(modules[node.target], "stride", 1)
            s = s if isinstance(s, int) else s[0]
            raw_layers.append((dict(name=node.target, kind="pool", h=h, w=w, kernel=k, stride=s,
                                    depthwise=True, c_in=channels(first), c_out=channels(first)), src(first), src(first)))
            group_of[node] = src(first)
        elif node.op == "call_function" and node.target in POOL_FUNCTIONS:
            h, w = hw(first)
            raw_layers.append((dict(name=node.name, kind="pool", h=h, w=w, kernel=h, stride=h, depthwise=True,
                                    c_in=channels(first), c_out=channels(first)), src(first), src(first)))
            group_of[node] = src(first)
        elif node.op == "call_function" and node.target in ADD_OPS and len(args) == 2:
            a, b = src(args[0]), src(args[1])
            if a is None or b is None:
                raise JcwError(f"{model_name}: residual add {node.name} mixes a fixed-width tensor")
            uf.union(a, b)
            h, w = hw(args[0])
            raw_layers.append((dict(name=node.name, kind="add", h=h, w=w, depthwise=True, c_in=channels(args[0]),
                                    c_out=channels(args[0])), a, a))
            group_of[node] = a
        elif node.op in ("call_function", "call_method") and node.target in (torch.cat, "cat"):
            raise JcwError(f"{model_name}: channel concatenation ({node.name}) is not supported yet")
        elif node.op == "output":
            continue
        else:  # activations, dropout, flatten, pooling functions: channels pass through
            group_of[node] = src(first)

    # Number the merged groups in order of first appearance.
    root_index: dict[int, int] = {}
    base: list[int] = []
    for spec, _, g_out in raw_layers:
        if spec["kind"] == "conv" and g_out is not None:
            r = uf.find(g_out)
            if r not in root_index:
                root_index[r] = len(base)
                base.append(spec["c_out"])
    idx = lambda g: -1 if g is None else root_index[uf.find(g)]

    group_names: list[str] = [""] * len(base)
    info = GraphInfo(space=None)  # type: ignore[arg-type]
    layers: list[Layer] = []
    sparse: list[str] = []
    for spec, g_in, g_out in raw_layers:
        sparse_index = -1
        if spec["kind"] == "linear" or (spec["kind"] == "conv" and not spec["depthwise"]):
            sparse_index = len(sparse)
            sparse.append(spec["name"])
        layer = Layer(**spec, in_group=idx(g_in), out_group=idx(g_out), sparse=sparse_index)
        layers.append(layer)
        if spec["kind"] in ("conv", "linear"):
            info.weight_layers[spec["name"]] = layer
        if spec["kind"] == "conv" and not group_names[layer.out_group]:
            group_names[layer.out_group] = spec["name"]
    for name, g in raw_producers:
        info.producers.setdefault(idx(g), []).append(name)
    for name, g in raw_norms:
        info.norms.setdefault(idx(g), []).append(name)
    groups = [ChannelGroup(group_names[i], b, width_choices(b, min_ratio, step, divisor)) for i, b in enumerate(base)]
    info.space = SearchSpace(model=model_name, input_size=input_size, in_channels=in_channels,
                             num_classes=num_classes, groups=groups, layers=layers, sparse=sparse,
                             densities=tuple(densities))
    return info
