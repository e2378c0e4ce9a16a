"""Derived tables: price a space's layers with a device model fit to public measurements."""
from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

from jcw import __version__
from jcw.errors import JcwError
from jcw.latency.device_model import DEVICES, SPARSE_KERNELS, DeviceModel, fit_device
from jcw.latency.grid import merge_entries, space_entries
from jcw.latency.ops import op_features
from jcw.latency.table import LatencyTable, known_devices, load_table, user_table_dir
from jcw.space import SearchSpace
from jcw.supernet.supernet import load_supernet
from jcw.xnnpack import SOURCE as XNNPACK_RULES


def table_name(device: str, sparse_kernel: str = "xnnpack") -> str:
    """pixel4 prices XNNPACK's sparse kernel; the JCW-kernel alternative is pixel4-jcw-arm."""
    return device if sparse_kernel == "xnnpack" else f"{device}-{sparse_kernel}"


def derive_table(device: str, spaces: list[SearchSpace], command: str = "", sparse_kernel: str = "xnnpack",
                 out_dir: str | Path | None = None) -> LatencyTable:
    """Fit `device`'s op model and price every layer of `spaces`, keeping what the existing table covers.

    At density < 1 an entry holds the layer's time where the kernel runs it sparse: for XNNPACK, 1x1 convs only
    (the lookup decides per genome whether the sparse subgraph runs), for JCW's kernel every conv and linear layer."""
    model: DeviceModel = fit_device(device, sparse_kernel)
    sparse_impl = "sparse_xnnpack" if sparse_kernel == "xnnpack" else "sparse_simd"

    def price(layer, c_in, c_out, d):
        op = op_features(layer.kind, layer.h, layer.w, layer.kernel, layer.stride, layer.depthwise, c_in, c_out)
        ms = model.op_ms(op, d if layer.sparse >= 0 else 1.0)
        return round(ms, 6), 0.0, 0, sparse_impl if ms < model.op_ms(op) else "dense"

    name = table_name(device, sparse_kernel)
    old, old_meta = None, {}
    if name in known_devices(out_dir):  # a table that exists but does not load is an error, not a fresh start
        previous = load_table(name, out_dir)
        old, old_meta = previous.entries, previous.meta
    entries = merge_entries(old, space_entries(spaces, price, old))
    meta = {
        "device": name, "processor": model.processor, "runtime": SPARSE_KERNELS[sparse_kernel],
        "runtime_detail": model.runtime if sparse_kernel == "xnnpack" else
        f"dense layers as {model.runtime}; sparse layers at JCW's ARM kernel's measured speed-ups (a kernel its "
        "authors never released)", "runtime_version": "see fit.data", "threads": model.threads, "batch": 1,
        # the table keeps the rows of the spaces priced before, so it still covers their models
        "input_sizes": sorted({s.input_size for s in spaces} | set(old_meta.get("input_sizes", []))),
        "models": sorted({s.model for s in spaces} | set(old_meta.get("models", []))),
        "source": "derived",
        "made": {"command": command or f"jcw latency derive --device {device}",
                 "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": platform.node(),
                 "jcw": __version__, "python": sys.version.split()[0]},
        "model": {"params": model.params, "sparse_curve_density": [round(0.1 * i, 1) for i in range(11)],
                  "sparse_curve_ratio": model.sparse_curve},
        "sparse_rules": (XNNPACK_RULES if sparse_kernel == "xnnpack" else
                         "every conv and linear layer runs sparse at its density (JCW's kernel)"),
        "fit": model.fit,
        "error": {"kind": f"leave-one-out on the {model.fit['samples']} {model.fit['error_data']} the dense model "
                          f"was fit to" + (f"; sparse 1x1 kernel {model.fit['sparse_kernel']['loo_mape_pct']}% on "
                                           f"{model.fit['sparse_kernel']['points']} published sparse/dense ratios"
                                           if sparse_kernel == "xnnpack" else ""),
                  "mape_pct": model.fit["loo_mape_pct"], "within_10pct": model.fit["loo_within_10pct"],
                  "sparse_kernel_loo_mape_pct": model.fit["sparse_kernel"].get("loo_mape_pct")},
        "caveat": "derived, not measured: prices extrapolate from published data on larger networks"
                  + ("; pixel4's come from nn-Meter's predictions" if device == "pixel4" else "")
                  + ("; sparse 1x1 times follow a one-parameter model of XNNPACK's kernel" if sparse_kernel == "xnnpack"
                     else "; sparse layers follow JCW's unnamed ARM kernel"),
        "overhead_ms": 0.0,
    }
    return LatencyTable(device=name, entries=entries, meta=meta)


def derive(device: str, supernets: list[str | None] | None = None, out_dir: str | Path | None = None,
           command: str = "", sparse_kernel: str = "xnnpack") -> tuple[LatencyTable, Path, Path]:
    """Derive `device`'s table for the given supernet files (default: the shipped one) and save it.

    It keeps the rows of the table of its name that loads first (the user's, else the shipped one) and goes to
    `out_dir`, by default the user's table folder: a user's supernet never rewrites a shipped table."""
    if device not in DEVICES:
        raise JcwError(f"no device model for {device!r}; derived models exist for {', '.join(DEVICES)}")
    table = derive_table(device, [load_supernet(s).space for s in (supernets or [None])], command, sparse_kernel,
                         out_dir)
    return (table, *table.save(out_dir or user_table_dir()))
