"""Per-op latency models of phones we cannot reach, fit to public measurements.

An op costs  fixed + activation MB x ms_per_mb_activations + weight MB x ms_per_mb_weights
+ MMACs x ms_per_mmac[rate]  (a linear roofline-style model, fit by non-negative least squares).
- Activations and weights have rates of their own: on Pixel 1 a megabyte of feature map costs 35 times a megabyte
  of weights streamed, and one rate for both missed its 112 and 56 px blocks by 25-60%.
- A k x k conv shares the 1x1 conv's matrix-multiply rate, and a linear layer (a matrix-vector product, bound by its
  weights) is priced by its weights alone.
- Weight sparsity follows one of two kernels: XNNPACK's (the default; only 1x1 convs, and only where `jcw.xnnpack`'s
  rules let them run sparse; `jcw.latency.sparse_model` fits its time ratio to published measurements), or JCW's own
  unnamed ARM kernel (every conv and linear layer, the density-to-time curve the JCW authors measured).

Every number this produces is derived, and the fit's leave-one-out error is stored beside it.
"""
from __future__ import annotations

import copy
import functools
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch.nn as nn
import yaml
from scipy.optimize import nnls

from jcw.artifacts import artifact_dir
from jcw.errors import JcwError, JcwWarning
from jcw.latency.ops import ONE_BY_ONE, Op, model_ops, named_model_ops, op_features
from jcw.latency.sparse_model import DATA as SPARSE_DATA
from jcw.latency.sparse_model import NETWORKS, SparseKernelModel, fit_xnnpack_kernel
from jcw.models.graph import analyse
from jcw.models.torchvision_import import torchvision
from jcw.xnnpack import subgraph_sparsity

COMPUTE = ("gemm", "dwconv")
# a k x k conv runs the 1x1 conv's matrix multiply over an im2col (or indirection) buffer, and an activation's vector
# ops per element run at the depthwise conv's rate (both are multiply-adds without weight reuse); a linear layer and a
# 1x1 conv on a 1x1 map (matrix-vector products, one multiply-add per weight read) have no compute rate: their
# weight traffic prices them
RATE_OF = {"conv": "gemm", "conv1x1": "gemm", "act": "dwconv"}
PARAMS = ("fixed_ms", "ms_per_mb_activations", "ms_per_mb_weights", *(f"ms_per_mmac_{c}" for c in COMPUTE))
SPARSE_KERNELS = {"xnnpack": "tflite-xnnpack", "jcw-arm": "jcw-arm"}  # --sparse-kernel -> the runtime a table prices


def reference_dir() -> Path:
    return artifact_dir("latency_tables") / "reference"


@dataclass
class DeviceModel:
    device: str
    processor: str
    runtime: str
    threads: int
    params: dict[str, float]
    sparse_kernel: str  # "xnnpack" or "jcw-arm"
    sparse_curve: list[float]  # time ratio at densities 0.0, 0.1, ..., 1.0 (1.0 at density 1)
    fit: dict = field(default_factory=dict)

    def op_ms(self, op: Op, density: float = 1.0) -> float:
        """An op's time; at density < 1, its time inside a sparse subgraph where the kernel runs it sparse."""
        p = self.params
        t = (p["fixed_ms"] + op.activation_mbytes * p["ms_per_mb_activations"]
             + op.weight_mbytes * p["ms_per_mb_weights"])
        rate = RATE_OF.get(op.category, op.category)
        if rate in COMPUTE:
            t += op.macs / 1e6 * p[f"ms_per_mmac_{rate}"]
        sparse_ops = ONE_BY_ONE if self.sparse_kernel == "xnnpack" else ("conv", *ONE_BY_ONE, "linear")
        if density < 1.0 and op.category in sparse_ops:
            t *= float(np.interp(density, np.linspace(0, 1, len(self.sparse_curve)), self.sparse_curve))
        return t

    def model_ms(self, ops: list[Op]) -> float:
        return float(sum(self.op_ms(op) for op in ops))

    def module_ms(self, model: nn.Module, input_size: int, in_channels: int = 3) -> float:
        """A built network's time, whoever pruned it (masks baked in), with each weight layer's own density priced
        only where this runtime runs it sparse: under XNNPACK, the 1x1 convs of a subgraph that is sparse enough.
        One ruler for jcw's subnets and other pruners' networks alike."""
        layers = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        nonzeros = {name: int((m.weight != 0).sum()) for name, m in layers.items()}
        density = {name: nonzeros[name] / m.weight.numel() for name, m in layers.items()}
        if self.sparse_kernel == "xnnpack":
            space = analyse(model, "module", input_size, in_channels, 1).space
            subgraph, _, sparse = subgraph_sparsity(space.layers, in_channels,
                                                    {n: m.weight.numel() for n, m in layers.items()}, nonzeros)
            runs_sparse = {space.layers[i].name for i in subgraph.convs} if sparse else set()
            density = {name: d if name in runs_sparse else 1.0 for name, d in density.items()}
        return float(sum(self.op_ms(op, density.get(name, 1.0))
                         for name, op in named_model_ops(model, input_size, in_channels)))


def features(ops: list[Op]) -> np.ndarray:
    """The linear model's design row for a group of ops (a block or a whole model)."""
    row = np.zeros(len(PARAMS))
    for op in ops:
        row[0] += 1
        row[1] += op.activation_mbytes
        row[2] += op.weight_mbytes
        rate = RATE_OF.get(op.category, op.category)
        if rate in COMPUTE:
            row[3 + COMPUTE.index(rate)] += op.macs / 1e6
    return row


# ---- public measurements -------------------------------------------------------------------------------------
_BLOCK = re.compile(r"expanded_conv-input:(\d+)x(\d+)x(\d+)-output:(\d+)x(\d+)x(\d+)-expand:(\d+)-kernel:(\d+)"
                    r"-stride:(\d+)-idskip:(\d)(?:-se:(\d)-hs:(\d))?")
_LAYER = re.compile(r"(\w+)-input:(\d+)x(\d+)x(\d+)-output:(?:(\d+)x(\d+)x)?(\d+)")


def _se_mid(channels: int) -> int:
    """Squeeze-excite's reduced width in Once-for-All's MobileNetV3: a quarter, rounded to a multiple of 8."""
    quarter = channels // 4
    rounded = max(8, int(quarter + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * quarter else rounded


def block_ops(key: str, expand_is_ratio: bool, hswish_layers: bool = False) -> list[Op] | None:
    """Ops of one MobileNet-style lookup-table key; None for keys this model does not cover.

    A block's `-se:1` adds squeeze-excite after the depthwise conv (pool, two 1x1 convs on the pooled vector,
    h-sigmoid, multiply) and `-hs:1` an h-swish after its expand and depthwise convs, as Once-for-All's MobileNetV3
    builds them; `hswish_layers` says its stem, final expand and feature-mix convs end in h-swish too."""
    m = _BLOCK.fullmatch(key)
    if m:
        h, _, c, ho, _, co, e, k, s, skip, se, hs = m.groups()
        h, c, ho, co, e, k, s = (int(v) for v in (h, c, ho, co, e, k, s))
        mid = c * e if expand_is_ratio else e
        hswish = bool(hs and int(hs))
        ops = [op_features("conv", h, h, 1, 1, False, c, mid)] if mid != c else []
        ops += [op_features("act", h, h, 1, 1, True, mid, mid)] if ops and hswish else []
        ops.append(op_features("conv", h, h, k, s, True, mid, mid))
        ops += [op_features("act", ho, ho, 1, 1, True, mid, mid)] if hswish else []
        if se and int(se):
            squeezed = _se_mid(mid)
            ops += [op_features("pool", ho, ho, ho, ho, True, mid, mid),
                    op_features("conv", 1, 1, 1, 1, False, mid, squeezed),
                    op_features("conv", 1, 1, 1, 1, False, squeezed, mid),
                    op_features("act", 1, 1, 1, 1, True, mid, mid),
                    op_features("mul", ho, ho, 1, 1, True, mid, mid)]
        ops.append(op_features("conv", ho, ho, 1, 1, False, mid, co))
        if int(skip):
            ops.append(op_features("add", ho, ho, 1, 1, True, co, co))
        return ops
    m = _LAYER.fullmatch(key)
    if not m:
        return None
    name, h, _, c, ho, _, co = m.groups()
    h, c, co = int(h), int(c), int(co)
    ho = int(ho) if ho else 1
    act = [op_features("act", ho, ho, 1, 1, True, co, co)] if hswish_layers else []
    if name == "Conv":
        return [op_features("conv", h, h, 3, h // ho, False, c, co)] + act
    if name in ("Conv_1", "Conv_2"):
        return [op_features("conv", h, h, 1, 1, False, c, co)] + act
    if name == "AvgPool2D":
        return [op_features("pool", h, h, h, h, True, c, c)]
    if name == "Logits":
        return ([op_features("pool", h, h, h, h, True, c, c)] if h > 1 else []) + \
            [op_features("linear", 1, 1, 1, 1, False, c, co)]
    return None


def load_blocks(device: str) -> list[tuple[str, list[Op], float]]:
    """(key, ops, mean ms) for every block measured on `device` that the model covers."""
    ref = reference_dir()
    if device == "pixel1":
        files, ratio = [ref / "proxylessnas-pixel1" / "mobile_trim_part.yaml"], True
    elif device == "note10":
        files, ratio = sorted((ref / "ofa-note10").glob("*_lookup_table.yaml")), False
    else:
        return []
    out = []
    for path in files:
        for key, entry in yaml.safe_load(path.read_text()).items():
            ops = block_ops(key.rstrip(":"), ratio, hswish_layers=device == "note10")
            if ops:
                out.append((f"{path.stem}:{key}", ops, float(entry["mean"])))
    return out


def torchvision_model(name: str):
    """An untrained torchvision classifier in the form whole-model pricing traces."""
    kwargs = {"aux_logits": False, "init_weights": False} if name == "inception_v3" else {}
    return getattr(torchvision.models, name)(weights=None, **kwargs)


@functools.cache
def _torchvision_ops(name: str, input_size: int) -> tuple[Op, ...]:
    """Tracing densenet161 or inception_v3 takes seconds; every fit in a process shares one trace."""
    return tuple(model_ops(torchvision_model(name), input_size))


def load_whole_models(device: str, threads: int = 1, source: Path | None = None
                      ) -> tuple[list[tuple[str, list[Op], float]], dict[str, str]]:
    """Published whole-model latencies of torchvision models on `device` at `threads`, with their ops, and the
    models left out because they cannot be built or traced (name -> reason), which the fit report lists."""
    table = pd.read_csv(source or reference_dir() / "published_whole_model.csv")
    rows = table[(table.device == device) & (table.threads == threads) & table.model.str.startswith("torchvision ")]
    out, skipped = [], {}
    for row in rows.itertuples():
        name = row.model.split(" ", 1)[1]
        try:
            ops = list(_torchvision_ops(name, int(row.input)))
        except Exception as exc:  # torch.fx raises many kinds; each one leaves the model out, loudly
            skipped[name] = f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
            warnings.warn(f"{device} device model: left out torchvision {name}, which cannot be built or traced "
                          f"({skipped[name]})", JcwWarning, stacklevel=2)
            continue
        out.append((f"torchvision {name}@{row.input}", ops, float(row.latency_ms)))
    return out, skipped


def jcw_sparse_curve() -> list[float]:
    """Time ratio of JCW's ARM sparse conv against density, averaged over ResNet-18's convs at full width."""
    runtime = np.load(reference_dir() / "jcw-arm-resnet18" / "runtime.npy")  # (layer, c_out pt, c_in pt, density)
    full = runtime[:, -1, -1, :]
    full = full[full[:, -1] > 0]
    ratio = full / full[:, -1:]
    return [round(float(v), 4) for v in ratio.mean(axis=0)]


# ---- fitting ---------------------------------------------------------------------------------------------------
def _solve(rows: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative error, so small ops count as much as big ones."""
    w = 1.0 / times
    theta, _ = nnls(rows * w[:, None], times * w)
    return theta


def _loo_errors(rows: np.ndarray, times: np.ndarray, offset: np.ndarray | float = 0.0) -> np.ndarray:
    """Signed relative error on each sample's whole time (`times` + `offset`, the part not fit) of a fit made
    without it."""
    offset = np.broadcast_to(offset, times.shape)
    errors = []
    for i in range(len(times)):
        keep = np.arange(len(times)) != i
        whole = times[i] + offset[i]
        errors.append((rows[i] @ _solve(rows[keep], times[keep]) + offset[i] - whole) / whole)
    return np.array(errors)


def fit_linear(samples: list[tuple[str, list[Op], float]]) -> tuple[np.ndarray, dict]:
    """A full fit to a device's own blocks, with every block's measured time, fit and leave-one-out error."""
    rows = np.array([features(ops) for _, ops, _ in samples])
    times = np.array([t for _, _, t in samples])
    theta = _solve(rows, times)
    signed = _loo_errors(rows, times)
    loo = np.abs(signed)
    per_point = [{"block": name, "measured_ms": round(t, 4), "fit_ms": round(float(r @ theta), 4),
                  "loo_error_pct": round(100 * float(e), 1)} for (name, _, t), r, e in zip(samples, rows, signed)]
    return theta, {"samples": len(samples), "train_mape_pct": _mape(rows @ theta, times),
                   "loo_mape_pct": round(100 * float(np.mean(loo)), 2),
                   "loo_within_10pct": round(float(np.mean(loo <= 0.10)), 3), "per_point": per_point}


def _mape(pred: np.ndarray, true: np.ndarray) -> float:
    return round(100 * float(np.mean(np.abs(pred - true) / true)), 2)


def fit_scaled(prior: np.ndarray, samples: list[tuple[str, list[Op], float]], fixed_ms: float
               ) -> tuple[np.ndarray, dict]:
    """Too few points for a full fit: rescale a prior device's terms (3 unknowns: activation traffic, weight
    traffic, and compute), with the per-op cost `fixed_ms` given, not fit."""
    rows = np.array([features(ops) for _, ops, _ in samples])
    fixed = rows[:, 0] * fixed_ms  # the per-op part, given
    times = np.array([t for _, _, t in samples]) - fixed
    parts = np.stack([rows[:, 1] * prior[1], rows[:, 2] * prior[2], rows[:, 3:] @ prior[3:]], axis=1)

    def scale(k: np.ndarray) -> np.ndarray:
        return np.concatenate([[fixed_ms, prior[1] * k[0], prior[2] * k[1]], prior[3:] * k[2]])

    k = _solve(parts, times)
    loo = np.abs(_loo_errors(parts, times, fixed))
    predicted, times = parts @ k + fixed, times + fixed
    per_model = {name: {"reference_ms": t, "predicted_ms": round(float(p), 2),
                        "error_pct": round(100 * float((p - t) / t), 1)}
                 for (name, _, t), p in zip(samples, predicted)}
    return scale(k), {"samples": len(samples), "scales": [round(float(v), 4) for v in k],
                      "train_mape_pct": _mape(predicted, times), "loo_mape_pct": round(100 * float(np.mean(loo)), 2),
                      "loo_within_10pct": round(float(np.mean(loo <= 0.10)), 3), "per_model": per_model}


DEVICES = {
    "pixel1": dict(processor="Snapdragon 821 big core (Kryo)", runtime="TFLite (ProxylessNAS lookup table)",
                   threads=1, data="measured ProxylessNAS Pixel 1 blocks"),
    "note10": dict(processor="Exynos 9825 / Snapdragon 855 CPU", runtime="TFLite (Once-for-All lookup tables)",
                   threads=1, data="measured Once-for-All Note10 blocks"),
    "pixel4": dict(processor="Cortex-A76 big core (Snapdragon 855)", runtime="TFLite 2.1 benchmark_model "
                   "(fit to nn-Meter's Pixel 4 predictions)", threads=1,
                   data="nn-Meter predictions (not measurements) of torchvision models on Pixel 4"),
}


def small_network_fixed_ms(device: str, dense_op_ms) -> tuple[float, dict]:
    """The per-op cost from the one tiny network timed dense on `device`: what its time leaves after its ops' work.

    Whole-model times of networks that take 100-1700 ms cannot tell a microsecond per op from zero (the fit put it
    at 0 ms); a network of 7 ops that takes 17 us can. Where the ops' modelled work alone exceeds that time (pixel4:
    35 us), the cost is 0 and the report keeps the gap."""
    rows = pd.read_csv(reference_dir() / SPARSE_DATA)
    row = rows[(rows.device == device) & (rows.model == "tfmot_cifar_cnn")].iloc[0]
    ops = NETWORKS[row.model]()
    work = float(sum(dense_op_ms(op) for op in ops))
    fixed = max(0.0, (float(row.dense_ms) - work) / len(ops))
    return fixed, {"network": row.model, "measured_ms": float(row.dense_ms), "ops": len(ops),
                   "ops_work_ms": round(work, 5), "upper_bound_ms": round(float(row.dense_ms) / len(ops), 5),
                   "note": "0 where the ops' work alone already exceeds the measured time",
                   "source": row.source.split(":")[0]}


def fit_device(device: str, sparse_kernel: str = "xnnpack") -> DeviceModel:
    """Fit `device`'s op model to the public data in latency_tables/reference/, with its sparse kernel's model.

    A fit takes seconds (pixel4 traces seven torchvision models and refits for every left-out one), so a process
    fits each device once, and each caller gets its own copy."""
    if device not in DEVICES:
        raise JcwError(f"no device model for {device!r}; derived models exist for {', '.join(DEVICES)}")
    if sparse_kernel not in SPARSE_KERNELS:
        raise JcwError(f"unknown sparse kernel {sparse_kernel!r}; choose {' or '.join(SPARSE_KERNELS)}")
    return copy.deepcopy(_fit_device(device, sparse_kernel, reference_dir()))


@functools.cache
def _fit_device(device: str, sparse_kernel: str, reference: Path) -> DeviceModel:
    """`reference` is part of the key: a process that points jcw at other reference data fits again."""
    if device in ("pixel1", "note10"):
        samples = load_blocks(device)
        theta, report = fit_linear(samples)
        report["data"] = ("ProxylessNAS Pixel 1 block lookup table" if device == "pixel1"
                          else "Once-for-All Note10 block lookup tables (squeeze-excite and h-swish blocks included)")
    else:
        prior, _ = fit_linear(load_blocks("pixel1"))
        samples, skipped = load_whole_models("pixel4", threads=1)
        theta, _ = fit_scaled(prior, samples, 0.0)
        unfixed = DeviceModel(device, "", "", 1, dict(zip(PARAMS, theta)), "xnnpack", [1.0] * 11)
        fixed_ms, fixed_report = small_network_fixed_ms(device, unfixed.op_ms)
        theta, report = fit_scaled(prior, samples, fixed_ms)
        report["fixed_ms_from"] = fixed_report
        report["skipped_models"] = skipped
        report["data"] = "fit to nn-Meter's predictions (its predictor, not measurements) of torchvision models on " \
                         "the Pixel 4 CPU; op mix from the Pixel 1 block fit, with its memory and compute terms " \
                         "rescaled; per-op cost bounded by a measured 17 us network (0 where the ops' modelled work "\
                         "already exceeds it; see fixed_ms_from)"
    params = dict(zip(PARAMS, (round(float(v), 6) for v in theta)))
    if sparse_kernel == "xnnpack":
        dense = DeviceModel(device, "", "", 1, params, sparse_kernel, [1.0] * 11)
        kernel: SparseKernelModel = fit_xnnpack_kernel(dense.op_ms, reference_dir())
        curve = [round(float(kernel.ratio(0.1 * i)), 4) for i in range(11)]
        report["sparse_kernel"] = {"name": "XNNPACK sparse 1x1 (SpMM in the NCHW subgraph)", **kernel.fit}
    else:
        curve = jcw_sparse_curve()
        report["sparse_kernel"] = {"name": "JCW's ARM sparse conv (an alternative: the authors never named or "
                                           "released it)",
                                   "data": "jcw-anonymous/JCW convinfos/resnet18/runtime.npy"}
    info = {k: v for k, v in DEVICES[device].items() if k != "data"}
    report["error_data"] = DEVICES[device]["data"]
    return DeviceModel(device=device, params=params, sparse_kernel=sparse_kernel, sparse_curve=curve, fit=report,
                       **info)


def predict_model(device: str, model: str, input_size: int = 224) -> dict:
    """Whole-model latency of a torchvision CNN (`torchvision:NAME`) on `device`, from its fit device model."""
    if not model.startswith("torchvision:"):
        raise JcwError("--model must look like torchvision:NAME, e.g. torchvision:mobilenet_v2")
    name = model.split(":", 1)[1]
    if not hasattr(torchvision.models, name):
        raise JcwError(f"torchvision has no model {name!r}")
    fitted = fit_device(device)
    ms = fitted.model_ms(list(_torchvision_ops(name, input_size)))
    return {"device": device, "model": name, "input": input_size, "latency_ms": round(ms, 3), "source": "derived",
            "loo_mape_pct": fitted.fit["loo_mape_pct"], "loo_on": fitted.fit["error_data"]}
