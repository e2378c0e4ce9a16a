"""The TFLite runtime for exported subnets: what tflite-xnnpack tables price and `jcw export --tflite` writes.

A BN-folded network is rebuilt as a TensorFlow function, op by op from its torch.fx graph, in NHWC; TFLite's
converter then stores each weight that is sparse enough in its sparse format, behind a DENSIFY op, which is what
XNNPACK's delegate needs to run 1x1 convs sparse. LiteRT's interpreter runs it with XNNPACK, as phones do.
"""
from __future__ import annotations

import operator
import os

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from jcw.errors import JcwError

MISSING = ("TFLite export and tflite-xnnpack tables need TensorFlow and LiteRT, which jcw installs as an extra: "
           "pip install 'jcw[tflite]' "
           "(the README's setup does)")


def require_tflite() -> None:
    """One clear error, before any long work, where the tflite extra is missing (without importing it)."""
    from importlib.util import find_spec

    if find_spec("tensorflow") is None or find_spec("ai_edge_litert") is None:
        raise JcwError(MISSING)


def tensorflow():
    """TensorFlow, quiet, or one clear error where the tflite extra is not installed."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep its start-up notices out of jcw's output
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # and the oneDNN one: conversion runs no heavy kernel
    # torch._dynamo (which jcw's torchvision import defers) loads triton's library, which crashes the process if it
    # comes after TensorFlow's: a later torch.optim would load it there
    import torch._dynamo  # noqa: F401

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
        if isinstance(model, (nn.Conv2d, nn.Linear, nn.MaxPool2d)):  # a bare layer traces into its functional form
            model = nn.Sequential(model)
        self.graph = fx.symbolic_trace(model)
        self.modules = dict(self.graph.named_modules())

    def __call__(self, *inputs):
        env, placeholders = {}, iter(inputs)
        for node in self.graph.graph.nodes:
            args = list(fx.node.map_arg(node.args, lambda a: env[a]))  # nodes in lists too (a concat's inputs)
            if node.op == "placeholder":
                env[node] = next(placeholders)
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
            return self._hardswish(x)
        if isinstance(m, nn.Hardsigmoid):
            return tf.nn.relu6(x + 3.0) / 6.0
        if isinstance(m, nn.Sigmoid):
            return tf.sigmoid(x)
        if isinstance(m, nn.SiLU):
            return x * tf.sigmoid(x)
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

    def _hardswish(self, x):
        return x * self.tf.nn.relu6(x + 3.0) / 6.0  # the converter fuses this into one HARD_SWISH op

    def _function(self, node: fx.Node, args: list):
        tf, target = self.tf, node.target
        if target in (operator.add, operator.iadd, torch.add):
            return tf.add(args[0], args[1])
        if target in (operator.mul, operator.imul, torch.mul) or target == "mul":
            return tf.multiply(args[0], args[1])  # squeeze-excite's scale broadcasts over NHWC as over NCHW
        if target is F.hardswish:
            return self._hardswish(args[0])
        if target is F.hardsigmoid:
            return tf.nn.relu6(args[0] + 3.0) / 6.0
        if target in (torch.sigmoid, F.sigmoid) or target == "sigmoid":
            return tf.sigmoid(args[0])
        if target is torch.cat and node.kwargs.get("dim", args[1] if len(args) > 1 else 0) in (1, -3):
            return tf.concat(args[0], axis=-1)  # channels are NHWC's last axis
        if target in (F.relu, torch.relu) or target == "relu":
            return tf.nn.relu(args[0])
        if target in (torch.flatten, "flatten"):
            return self._flatten(args[0])
        if target is F.adaptive_avg_pool2d and args[1] in (1, (1, 1)):
            return tf.reduce_mean(args[0], axis=[1, 2], keepdims=True)
        raise JcwError(f"cannot export {node.op} {target} to TFLite")


def nhwc(shape: tuple[int, ...]) -> list[int]:
    return [shape[0], *shape[2:], shape[1]] if len(shape) == 4 else list(shape)


def convert(model: nn.Module, input_shapes: list[tuple[int, ...]], sparse: bool = True) -> bytes:
    """A TFLite flatbuffer of a BN-folded network whose inputs have these (torch, NCHW) shapes; `sparse` stores
    sparse-enough weights in sparse format."""
    tf = tensorflow()
    graph = _TensorFlowGraph(model)
    signature = [tf.TensorSpec(nhwc(tuple(s)), tf.float32) for s in input_shapes]
    fn = tf.function(graph, autograph=False, input_signature=signature)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    if sparse:
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    return converter.convert()


def interpreter(flatbuffer: bytes, threads: int = 1):
    """LiteRT's interpreter, with the XNNPACK delegate LiteRT applies by default."""
    runner = litert().Interpreter(model_content=flatbuffer, num_threads=threads)
    runner.allocate_tensors()
    return runner


def set_inputs(runner, *arrays: np.ndarray) -> None:
    """Feed torch-layout (NCHW) arrays to the interpreter's NHWC inputs."""
    for detail, x in zip(runner.get_input_details(), arrays):
        runner.set_tensor(detail["index"], (x.transpose(0, 2, 3, 1) if x.ndim == 4 else x).copy())


def run_tflite(runner, x_nchw: np.ndarray) -> np.ndarray:
    set_inputs(runner, x_nchw)
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
