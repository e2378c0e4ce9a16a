"""TFLite export of a subnet file, with its sparse 1x1 weights encoded for XNNPACK's sparse path.

The subnet runs in jcw's TFLite runtime (`jcw.latency.tflite_runtime`); the export checks its outputs against torch
in LiteRT's interpreter and reports, per layer, what XNNPACK will do with it (`jcw.xnnpack` holds the rules).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from jcw.errors import JcwError
from jcw.io import atomic_path, write_csv
from jcw.latency.host_runtime import cpu_runtime
from jcw.latency.tflite_runtime import convert, densified_convs, interpreter, run_tflite
from jcw.models.graph import analyse
from jcw.supernet.slicing import bake_masks
from jcw.supernet.subnet import load_subnet
from jcw.xnnpack import SPARSE_FRACTION, is_1x1, subgraph_sparsity

TOLERANCE = 1e-4


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
    weights = {name: module.weight for name, module in model.named_modules()
               if isinstance(module, (nn.Conv2d, nn.Linear))}
    density = {name: float((w != 0).float().mean()) for name, w in weights.items()}
    subgraph, zero_fraction, sparse = subgraph_sparsity(
        space.layers, arch["in_channels"], {name: w.numel() for name, w in weights.items()},
        {name: int((w != 0).sum()) for name, w in weights.items()})
    rows = []
    for index, layer in enumerate(space.layers):
        if layer.kind not in ("conv", "linear"):
            continue
        op = ("linear" if layer.kind == "linear" else "1x1 conv" if is_1x1(layer)
              else f"depthwise {layer.kernel}x{layer.kernel}" if layer.depthwise
              else f"{layer.kernel}x{layer.kernel} conv")
        in_subgraph = index in subgraph.convs
        in_file = any(name.startswith(f"{layer.name}/") or f";{layer.name}/" in name for name in stored)
        runs = in_subgraph and sparse and in_file
        if runs:
            why = "inside the NCHW subgraph, which is sparse enough"
        elif in_subgraph and sparse:
            why = "stored dense in the file: XNNPACK runs sparse only weights behind a DENSIFY op"
        elif in_subgraph:
            why = (f"the subgraph's 1x1 weights are {100 * zero_fraction:.0f}% zero; XNNPACK needs "
                   f"{100 * SPARSE_FRACTION:.0f}%")
        elif op == "1x1 conv":
            why = subgraph.reason or "outside the NCHW subgraph"
        else:
            why = "XNNPACK runs only 1x1 convs sparse"
        rows.append(LayerReport(layer.name, op, round(density[layer.name], 4), in_file,
                                "sparse" if runs else "dense", why))
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
    flatbuffer = convert(folded, [(1, arch["in_channels"], arch["input_size"], arch["input_size"])], sparse)
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
