"""TFLite export of a subnet file, with its sparse 1x1 weights encoded for XNNPACK's sparse path.

The subnet is rebuilt as a TensorFlow function, op by op from its torch.fx graph, in NHWC with batch norm folded;
TFLite's converter then stores each weight that is sparse enough in its sparse format, behind a DENSIFY op, which is
what XNNPACK's delegate needs to run the 1x1 convs sparse. The export checks its outputs against torch in LiteRT's
interpreter and reports, per layer, what XNNPACK will do with it (`jcw.latency.xnnpack` holds the rules).
"""
from __future__ import annotations

import operator
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from jcw.errors import JcwError
from jcw.io import atomic_path, write_csv
from jcw.latency.host_runtime import cpu_runtime
from jcw.latency.xnnpack import SPARSE_FRACTION, is_1x1, runs_sparse, sparse_subgraph
from jcw.models.graph import analyse
from jcw.supernet.slicing import bake_masks
from jcw.supernet.subnet import load_subnet

TOLERANCE = 1e-4
MISSING = ("TFLite export needs TensorFlow and LiteRT, which jcw installs as an extra: pip install 'jcw[tflite]' "
           "(the README's setup does)")


def tensorflow():
    """TensorFlow, quiet, or one clear error where the tflite extra is not installed."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep its start-up notices out of jcw's output
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # and the oneDNN one: conversion runs no heavy kernel
    try:
        import tensorflow as tf  # heavy optional runtime: only a TFLite export or table loads it
    except ImportError:
        raise JcwError(MISSING) from None
    return tf


def litert():
    """LiteRT's interpreter module, or one clear error."""
    try:
        from ai_edge_litert import interpreter  # heavy optional runtime
    except ImportError:
        raise JcwError(MISSING) from None
    return interpreter


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


class _TensorFlowGraph:
    """The torch.fx graph of a BN-folded network, replayed with TensorFlow ops on NHWC tensors."""

    def __init__(self, model: nn.Module):
        self.tf = tensorflow()
        self.graph = fx.symbolic_trace(model)
        self.modules = dict(self.graph.named_modules())

    def __call__(self, x):
        env = {}
        for node in self.graph.graph.nodes:
            args = [env[a] if isinstance(a, fx.Node) else a for a in node.args]
            if node.op == "placeholder":
                env[node] = x
            elif node.op == "output":
                return args[0]
            elif node.op == "call_module":
                with self.tf.name_scope(node.target):
                    env[node] = self._module(self.modules[node.target], args[0], node.target)
            else:
                env[node] = self._function(node, args)
        raise JcwError("the traced network has no output")

    def _module(self, m: nn.Module, x, name: str):
        tf = self.tf
        if isinstance(m, nn.Conv2d):
            return self._conv(m, x, name)
        if isinstance(m, nn.Linear):
            y = tf.matmul(x, _numpy(m.weight).T)
            return y if m.bias is None else y + _numpy(m.bias)
        if isinstance(m, nn.BatchNorm2d):  # one that follows no conv, so was not folded
            scale = _numpy(m.weight / torch.sqrt(m.running_var + m.eps))
            return x * scale + (_numpy(m.bias) - _numpy(m.running_mean) * scale)
        if isinstance(m, nn.ReLU6):
            return tf.nn.relu6(x)
        if isinstance(m, nn.ReLU):
            return tf.nn.relu(x)
        if isinstance(m, nn.Hardswish):
            return x * tf.nn.relu6(x + 3.0) / 6.0
        if isinstance(m, (nn.Identity, nn.Dropout)):
            return x
        if isinstance(m, nn.Flatten):
            return self._flatten(x)
        if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
            return tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        if isinstance(m, nn.MaxPool2d):
            k, s, p = (v if isinstance(v, int) else v[0] for v in (m.kernel_size, m.stride, m.padding))
            x = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], constant_values=-np.inf) if p else x
            return tf.nn.max_pool2d(x, k, s, "VALID")
        raise JcwError(f"cannot export layer {name} ({m.__class__.__name__}) to TFLite")

    def _conv(self, m: nn.Conv2d, x, name: str):
        tf = self.tf
        if m.dilation != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise JcwError(f"cannot export conv {name} to TFLite: only zero padding without dilation")
        w = _numpy(m.weight)  # (out, in / groups, kh, kw)
        (ph, pw), stride = m.padding, m.stride[0]
        if (ph, pw) != (0, 0):  # padded explicitly, as torch pads: XNNPACK's sparse path rejects TF's SAME padding
            x = tf.pad(x, [[0, 0], [ph, ph], [pw, pw], [0, 0]])
        if m.groups == 1:
            y = tf.nn.conv2d(x, w.transpose(2, 3, 1, 0), stride, "VALID")
        elif m.groups == m.in_channels == m.out_channels:
            y = tf.nn.depthwise_conv2d(x, w.transpose(2, 3, 0, 1), [1, stride, stride, 1], "VALID")
        else:
            raise JcwError(f"cannot export grouped conv {name} to TFLite")
        return y if m.bias is None else y + _numpy(m.bias)

    def _flatten(self, x):
        tf = self.tf
        if len(x.shape) == 4 and (x.shape[1], x.shape[2]) != (1, 1):
            x = tf.transpose(x, [0, 3, 1, 2])  # torch flattens channels first
        return tf.reshape(x, [x.shape[0], -1])

    def _function(self, node: fx.Node, args: list):
        tf, target = self.tf, node.target
        if target in (operator.add, operator.iadd, torch.add):
            return tf.add(args[0], args[1])
        if target in (F.relu, torch.relu) or target == "relu":
            return tf.nn.relu(args[0])
        if target in (torch.flatten, "flatten"):
            return self._flatten(args[0])
        if target is F.adaptive_avg_pool2d and args[1] in (1, (1, 1)):
            return tf.reduce_mean(args[0], axis=[1, 2], keepdims=True)
        raise JcwError(f"cannot export {node.op} {target} to TFLite")


def convert(model: nn.Module, input_size: int, in_channels: int, sparse: bool = True) -> bytes:
    """A TFLite flatbuffer of a BN-folded network; `sparse` stores sparse-enough weights in sparse format."""
    tf = tensorflow()
    graph = _TensorFlowGraph(model)
    fn = tf.function(graph, input_signature=[tf.TensorSpec([1, input_size, input_size, in_channels], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    if sparse:
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    return converter.convert()


def interpreter(flatbuffer: bytes):
    """LiteRT's interpreter, with the XNNPACK delegate LiteRT applies by default, on one thread."""
    runner = litert().Interpreter(model_content=flatbuffer, num_threads=1)
    runner.allocate_tensors()
    return runner


def run_tflite(runner, x_nchw: np.ndarray) -> np.ndarray:
    runner.set_tensor(runner.get_input_details()[0]["index"], x_nchw.transpose(0, 2, 3, 1).copy())
    runner.invoke()
    return runner.get_tensor(runner.get_output_details()[0]["index"])


def densified_convs(flatbuffer: bytes) -> list[str]:
    """Names of the conv and fully-connected ops whose weights come through a DENSIFY op (stored sparse)."""
    lite = litert()
    runner = lite.Interpreter(model_content=flatbuffer, experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=lite.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    ops = runner._get_ops_details()
    tensors = {t["index"]: t["name"] for t in runner.get_tensor_details()}
    densified = {int(o) for op in ops if op["op_name"] == "DENSIFY" for o in op["outputs"]}
    return [tensors[int(op["outputs"][0])] for op in ops
            if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED") and int(op["inputs"][1]) in densified]


@dataclass
class LayerReport:
    name: str
    op: str  # "1x1 conv", "3x3 conv", "depthwise 3x3", "linear"
    density: float  # nonzero weights / weights
    stored_sparse: bool  # behind a DENSIFY op in the file
    xnnpack: str  # "sparse" or "dense"
    why: str


def xnnpack_report(model: nn.Module, arch: dict, flatbuffer: bytes) -> list[LayerReport]:
    """Per weight layer: its density, whether the file stores it sparse, and whether XNNPACK will run it sparse."""
    space = analyse(model, arch["model"], arch["input_size"], arch["in_channels"], arch["num_classes"]).space
    stored = densified_convs(flatbuffer)
    subgraph = sparse_subgraph(space.layers, arch["in_channels"])
    weights = {name: module.weight for name, module in model.named_modules()
               if isinstance(module, (nn.Conv2d, nn.Linear))}
    density = {name: float((w != 0).float().mean()) for name, w in weights.items()}
    total = sum(weights[space.layers[i].name].numel() for i in subgraph.convs)
    nonzero = sum(density[space.layers[i].name] * weights[space.layers[i].name].numel() for i in subgraph.convs)
    sparse = subgraph.possible and bool(runs_sparse(total, nonzero))
    rows = []
    for index, layer in enumerate(space.layers):
        if layer.kind not in ("conv", "linear"):
            continue
        op = ("linear" if layer.kind == "linear" else "1x1 conv" if is_1x1(layer)
              else f"depthwise {layer.kernel}x{layer.kernel}" if layer.depthwise else f"{layer.kernel}x{layer.kernel} conv")
        in_subgraph = index in subgraph.convs
        if in_subgraph and sparse:
            why = "inside the NCHW subgraph, which is sparse enough"
        elif in_subgraph:
            why = (f"the subgraph's 1x1 weights are {100 * (1 - nonzero / total):.0f}% zero; XNNPACK needs "
                   f"{100 * SPARSE_FRACTION:.0f}%")
        elif op == "1x1 conv":
            why = subgraph.reason or "outside the NCHW subgraph"
        else:
            why = "XNNPACK runs only 1x1 convs sparse"
        rows.append(LayerReport(layer.name, op, round(density[layer.name], 4),
                                any(name.startswith(f"{layer.name}/") or f";{layer.name}/" in name
                                    for name in stored),
                                "sparse" if in_subgraph and sparse else "dense", why))
    return rows


def summarise(rows: list[LayerReport]) -> str:
    """One line: how many 1x1 convs XNNPACK runs sparse, or why it runs none."""
    convs = [r for r in rows if r.op == "1x1 conv"]
    n_sparse = sum(r.xnnpack == "sparse" for r in convs)
    if n_sparse:
        return f"XNNPACK will run {n_sparse} of {len(convs)} 1x1 convs sparse"
    return f"XNNPACK will run nothing sparse: {convs[0].why if convs else 'the network has no 1x1 conv'}"


def deployable(path: str | Path) -> tuple[nn.Module, nn.Module, dict]:
    """A subnet file's module with masks baked in, its BN-folded CPU form, and its architecture."""
    loaded = load_subnet(path)
    arch = loaded.jcw_arch
    baked = bake_masks(loaded)
    folded = cpu_runtime(load_subnet(path))
    return baked, folded, arch


def export_tflite(subnet_path: str | Path, out: str | Path, sparse: bool = True) -> tuple[Path, Path]:
    """A .tflite of an exported subnet, checked against torch in LiteRT, and its XNNPACK report (.xnnpack.csv)."""
    baked, folded, arch = deployable(subnet_path)
    flatbuffer = convert(folded, arch["input_size"], arch["in_channels"], sparse)
    x = torch.randn(1, arch["in_channels"], arch["input_size"], arch["input_size"],
                    generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = baked(x).numpy()
    got = run_tflite(interpreter(flatbuffer), x.numpy())
    if not np.allclose(expected, got, atol=TOLERANCE, rtol=TOLERANCE):
        raise JcwError(f"TFLite output differs from torch by {np.abs(expected - got).max():.2e}")
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.write_bytes(flatbuffer)
    report = out.with_suffix(".xnnpack.csv")
    write_csv(report, pd.DataFrame([asdict(r) for r in xnnpack_report(baked, arch, flatbuffer)]))
    return out, report


def read_report(path: str | Path) -> list[LayerReport]:
    return [LayerReport(**row) for row in pd.read_csv(path).to_dict("records")]
