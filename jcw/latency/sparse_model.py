"""XNNPACK's sparse 1x1 kernel as a time ratio against dense, fit to published whole-network measurements.

Inside a sparse subgraph a 1x1 conv at density d costs  r(d) = a + (1 - a) d  of its dense time: `a` is the work that
does not shrink with the nonzeros (reading the activations, writing the outputs, the kernel's own overhead). A
published pair of dense and sparse times of one network then reads  sparse / dense = 1 - f (1 - a) (1 - d), where f
is the 1x1 convs' share of the network's dense time as the device's op model prices it. One unknown, fit by least
squares; the leave-one-out error on the published ratios is stored with it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from jcw.latency.ops import ONE_BY_ONE, Op, model_ops, op_features
from jcw.models.torchvision_import import torchvision

DATA = Path("xnnpack-sparse") / "published_sparse.csv"  # under latency_tables/reference/


def _separable(h: int, c_in: int, c_out: int, stride: int) -> list[Op]:
    return [op_features("conv", h, h, 3, stride, True, c_in, c_in),
            op_features("conv", -(-h // stride), -(-h // stride), 1, 1, False, c_in, c_out)]


def _tfmot_cifar_cnn() -> list[Op]:
    """The XNNPACK pruning guide's network: pad, 3x3/2 conv to 8, dw, 1x1 to 16, dw/2, 1x1 to 32, mean, dense."""
    return [op_features("conv", 32, 32, 3, 2, False, 3, 8), *_separable(16, 8, 16, 1), *_separable(16, 16, 32, 2),
            op_features("pool", 8, 8, 8, 8, True, 32, 32), op_features("linear", 1, 1, 1, 1, False, 32, 10)]


def _mobilenet_v1() -> list[Op]:
    ops, h, c = [op_features("conv", 224, 224, 3, 2, False, 3, 32)], 112, 32
    for stride, c_out in [(1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512), *[(1, 512)] * 5, (2, 1024),
                          (1, 1024)]:
        ops += _separable(h, c, c_out, stride)
        h, c = -(-h // stride), c_out
    return ops + [op_features("pool", 7, 7, 7, 7, True, 1024, 1024),
                  op_features("linear", 1, 1, 1, 1, False, 1024, 1000)]


NETWORKS = {
    "tfmot_cifar_cnn": _tfmot_cifar_cnn,
    "mobilenet_v1_1.0": _mobilenet_v1,
    "mobilenet_v2_1.0": lambda: model_ops(torchvision.models.MobileNetV2(width_mult=1.0), 224),
    "mobilenet_v2_2.0": lambda: model_ops(torchvision.models.MobileNetV2(width_mult=2.0), 224),
}


@dataclass
class SparseKernelModel:
    fixed_fraction: float  # a: the share of a 1x1 conv's dense time that sparsity does not remove
    fit: dict = field(default_factory=dict)

    def ratio(self, density: float | np.ndarray) -> float | np.ndarray:
        """Sparse over dense time of one 1x1 conv at `density` inside XNNPACK's sparse subgraph."""
        return self.fixed_fraction + (1 - self.fixed_fraction) * np.asarray(density)


def fit_xnnpack_kernel(op_ms, reference_dir: Path) -> SparseKernelModel:
    """Fit `a` to the published ratios; `op_ms(op)` is the device's dense op model, which sets each network's f."""
    rows = pd.read_csv(reference_dir / DATA)
    shares = {}
    for name in rows["model"].unique():
        ops = NETWORKS[name]()
        times = np.array([op_ms(op) for op in ops])
        shares[name] = float(times[[op.category in ONE_BY_ONE for op in ops]].sum() / times.sum())
    f = rows["model"].map(shares).to_numpy()
    measured = (rows["sparse_ms"] / rows["dense_ms"]).to_numpy()
    x, y = f * (1 - rows["density"].to_numpy()), 1 - measured  # y = (1 - a) x

    def solve(keep: np.ndarray) -> float:
        return float((x[keep] @ y[keep]) / (x[keep] @ x[keep]))

    k = solve(np.ones(len(x), bool))
    loo = np.array([abs(1 - x[i] * solve(np.arange(len(x)) != i) - measured[i]) / measured[i]
                    for i in range(len(x))])
    per_point = [{"model": r.model, "device": r.device, "density": r.density, "kind": r.kind.split(" (")[0],
                  "f_1x1_share": round(float(fi), 3), "published_ratio": round(float(m), 3),
                  "fit_ratio": round(float(1 - xi * k), 3), "loo_error_pct": round(100 * float(e), 1)}
                 for r, fi, m, xi, e in zip(rows.itertuples(), f, measured, x, loo)]
    clean = rows["kind"].str.startswith("measured pair").to_numpy()
    return SparseKernelModel(round(1 - k, 4), {
        "form": "r(d) = a + (1 - a) d per 1x1 conv in the sparse subgraph; whole network 1 - f (1 - a) (1 - d)",
        "data": str(DATA), "points": len(rows), "a": round(1 - k, 4),
        "loo_mape_pct": round(100 * float(loo.mean()), 1),
        "loo_mape_pct_measured_pairs": round(100 * float(loo[clean].mean()), 1),
        "shares_from": "each network's 1x1-conv share of dense time under this device's op model",
        "per_point": per_point})
