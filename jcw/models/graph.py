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
from jcw.models.handlers import Prunable
from jcw.space import DEFAULT_DENSITIES, ChannelGroup, Layer, SearchSpace, width_choices

ADD_OPS = {operator.add, operator.iadd, torch.add}
CAT_OPS = {torch.cat, "cat"}
POOL_MODULES = (nn.AdaptiveAvgPool2d, nn.MaxPool2d, nn.AvgPool2d)
POOL_FUNCTIONS = {F.adaptive_avg_pool2d, F.max_pool2d, F.avg_pool2d}
# activations a mobile runtime runs as ops of their own (ReLU and ReLU6 fold into the conv or add before them)
ACT_MODULES = (nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.SiLU)
ACT_FUNCTIONS = {F.hardswish, F.hardsigmoid, torch.sigmoid, F.silu, "sigmoid"}
MUL_OPS = {operator.mul, operator.imul, torch.mul, "mul"}


@dataclass
class TracedNode:
    """One node of a traced network, as every consumer of the graph sees it.

    kind is input | conv | linear | norm | pool | add | cat | act | mul (of two tensors) | other; `inputs` index
    earlier nodes of the trace; shapes are NCHW (or NC) at batch 1.
    """

    name: str  # the module's qualified name, or the fx node's name for functions
    kind: str
    inputs: list[int]
    in_shape: tuple[int, ...]  # of the first input; () for the image
    out_shape: tuple[int, ...]
    module: nn.Module | None = None
    kernel: int = 1  # pools: window and stride (a global pool has both equal to the input size)
    stride: int = 1


def _pool_window(node: fx.Node, module: nn.Module | None, h: int) -> tuple[int, int]:
    if module is None and node.target is F.adaptive_avg_pool2d or isinstance(module, nn.AdaptiveAvgPool2d):
        return h, h
    if module is not None:
        k, s = module.kernel_size, module.stride
    else:
        k = node.args[1] if len(node.args) > 1 else node.kwargs.get("kernel_size", h)
        s = node.args[2] if len(node.args) > 2 else node.kwargs.get("stride") or k
    k = k if isinstance(k, int) else k[0]
    s = s if isinstance(s, int) else s[0]
    return int(k), int(s)


def trace(model: nn.Module, input_size: int, in_channels: int, name: str = "the model") -> list[TracedNode]:
    """The network's nodes in execution order with their shapes: the one walk over a network's graph.

    The search space (which layers share a width) and whole-model latency pricing both read this list.
    """
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:
        raise JcwError(f"cannot trace {name} with torch.fx ({exc.__class__.__name__}: {exc}); use a traceable "
                       "CNN") from None
    was_training = model.training
    gm.eval()  # batch norm on a single image needs running statistics
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.zeros(1, in_channels, input_size, input_size))
    model.train(was_training)
    modules = dict(gm.named_modules())
    index: dict[fx.Node, int] = {}
    nodes: list[TracedNode] = []
    for node in gm.graph.nodes:
        if node.op == "output":
            continue
        args = [a for a in node.args if isinstance(a, fx.Node)]
        module = modules[node.target] if node.op == "call_module" else None
        if node.op == "placeholder":
            kind = "input"
        elif isinstance(module, nn.Conv2d):
            kind = "conv"
        elif isinstance(module, nn.Linear):
            kind = "linear"
        elif isinstance(module, nn.BatchNorm2d):
            kind = "norm"
        elif isinstance(module, POOL_MODULES) or (node.op == "call_function" and node.target in POOL_FUNCTIONS):
            kind = "pool"
        elif node.op == "call_function" and node.target in ADD_OPS:
            kind = "add"
        elif node.op in ("call_function", "call_method") and node.target in CAT_OPS:
            kind = "cat"
        elif isinstance(module, ACT_MODULES) or (node.op in ("call_function", "call_method")
                                                 and node.target in ACT_FUNCTIONS):
            kind = "act"
        elif node.op in ("call_function", "call_method") and node.target in MUL_OPS and len(args) == 2:
            kind = "mul"
        else:
            kind = "other"
        meta = node.meta.get("tensor_meta")
        out_shape = tuple(int(d) for d in meta.shape) if hasattr(meta, "shape") else ()
        in_shape = nodes[index[args[0]]].out_shape if args else ()
        traced = TracedNode(node.target if module is not None else node.name, kind, [index[a] for a in args],
                            in_shape, out_shape, module)
        if kind == "pool":
            traced.kernel, traced.stride = _pool_window(node, module, in_shape[-2])
        index[node] = len(nodes)
        nodes.append(traced)
    return nodes


@dataclass
class GraphInfo:
    """The space plus what the supernet needs: which module plays which role in which group."""

    space: SearchSpace
    producers: dict[int, list[str]] = field(default_factory=dict)  # group -> convs whose output rows it owns
    weight_layers: dict[str, Layer] = field(default_factory=dict)  # conv/linear module name -> its layer
    prunable: list[Prunable] = field(default_factory=list)  # every module a subnet slices, batch norms included


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
    nodes = trace(model, input_size, in_channels, model_name)
    uf = _UnionFind()
    group_of: list[int | None] = []  # per traced node: raw group id (None: a fixed width, e.g. the image)
    raw_layers: list[tuple[dict, int | None, int | None]] = []
    raw_norms: list[tuple[str, int]] = []
    raw_producers: list[tuple[str, int]] = []

    def hw(shape: tuple[int, ...]) -> tuple[int, int]:
        return (shape[-2], shape[-1]) if len(shape) == 4 else (1, 1)

    for node in nodes:
        g_first = group_of[node.inputs[0]] if node.inputs else None
        group = g_first  # activations, dropout, flatten, pooling: channels pass through
        if node.kind == "conv":
            conv = node.module
            h, w = hw(node.in_shape)
            depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
            if conv.groups > 1 and not depthwise:
                raise JcwError(f"{model_name}: grouped conv {node.name} is not supported")
            if depthwise:
                if g_first is None:
                    raise JcwError(f"{model_name}: depthwise conv {node.name} on a fixed-width input")
            else:
                group = uf.new()
            raw_producers.append((node.name, group))
            raw_layers.append((dict(name=node.name, kind="conv", h=h, w=w, kernel=conv.kernel_size[0],
                                    stride=conv.stride[0], depthwise=depthwise, c_in=node.in_shape[1],
                                    c_out=conv.out_channels), g_first, group))
        elif node.kind == "linear":
            raw_layers.append((dict(name=node.name, kind="linear", h=1, w=1, c_in=node.module.in_features,
                                    c_out=node.module.out_features), g_first, None))
            group = None
        elif node.kind == "norm" and g_first is not None:
            raw_norms.append((node.name, g_first))
        elif node.kind == "pool":
            h, w = hw(node.in_shape)
            raw_layers.append((dict(name=node.name, kind="pool", h=h, w=w, kernel=node.kernel, stride=node.stride,
                                    depthwise=True, c_in=node.in_shape[1], c_out=node.in_shape[1]), g_first, g_first))
        elif node.kind in ("add", "mul") and len(node.inputs) == 2:
            # a residual add, or squeeze-excite's per-channel scale times the map: both couple their operands' widths
            a, b = group_of[node.inputs[0]], group_of[node.inputs[1]]
            if a is None or b is None:
                what = "residual add" if node.kind == "add" else "multiply"
                raise JcwError(f"{model_name}: {what} {node.name} mixes a fixed-width tensor")
            uf.union(a, b)
            h, w = hw(node.out_shape)
            raw_layers.append((dict(name=node.name, kind=node.kind, h=h, w=w, depthwise=True,
                                    c_in=node.out_shape[1], c_out=node.out_shape[1]), a, a))
            group = a
        elif node.kind == "act":
            h, w = hw(node.in_shape)
            raw_layers.append((dict(name=node.name, kind="act", h=h, w=w, depthwise=True, c_in=node.in_shape[1],
                                    c_out=node.in_shape[1]), g_first, g_first))
        elif node.kind == "cat":
            raise JcwError(f"{model_name}: channel concatenation ({node.name}) is not supported yet")
        group_of.append(group)

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
            kind = "depthwise" if layer.depthwise else spec["kind"]
            info.prunable.append(Prunable(layer.name, kind, layer.out_group, layer.in_group, layer.sparse))
        if spec["kind"] == "conv" and not group_names[layer.out_group]:
            group_names[layer.out_group] = spec["name"]
    for name, g in raw_producers:
        info.producers.setdefault(idx(g), []).append(name)
    for name, g in raw_norms:
        info.prunable.append(Prunable(name, "norm", idx(g), idx(g)))
    groups = [ChannelGroup(group_names[i], b, width_choices(b, min_ratio, step, divisor)) for i, b in enumerate(base)]
    info.space = SearchSpace(model=model_name, input_size=input_size, in_channels=in_channels,
                             num_classes=num_classes, groups=groups, layers=layers, sparse=sparse,
                             densities=tuple(densities))
    return info
