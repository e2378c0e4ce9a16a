"""Derived tables: price a space's layers with a device model fit to public measurements."""
from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

from jcw import __version__
from jcw.errors import JcwError
from jcw.latency.device_model import DEVICES, DeviceModel, fit_device
from jcw.latency.grid import merge_entries, space_entries
from jcw.latency.ops import op_features
from jcw.latency.table import LatencyTable, known_devices, load_table
from jcw.space import SearchSpace
from jcw.supernet.supernet import load_supernet


def derive_table(device: str, spaces: list[SearchSpace], command: str = "") -> LatencyTable:
    """Fit `device`'s op model and price every layer of `spaces`, keeping what the existing table covers."""
    model: DeviceModel = fit_device(device)

    def price(layer, c_in, c_out, d):
        op = op_features(layer.kind, layer.h, layer.w, layer.kernel, layer.stride, layer.depthwise, c_in, c_out)
        sparse = d < 1.0 and layer.sparse >= 0
        return round(model.op_ms(op, d), 6), 0.0, 0, "sparse_simd" if sparse else "dense"

    old, old_meta = None, {}
    if device in known_devices():  # a table that exists but does not load is an error, not a fresh start
        previous = load_table(device)
        old, old_meta = previous.entries, previous.meta
    entries = merge_entries(old, space_entries(spaces, price, old))
    meta = {
        "device": device, "processor": model.processor, "runtime": model.runtime, "runtime_version": "see fit.data",
        "threads": model.threads, "batch": 1,
        # the table keeps the rows of the spaces priced before, so it still covers their models
        "input_sizes": sorted({s.input_size for s in spaces} | set(old_meta.get("input_sizes", []))),
        "models": sorted({s.model for s in spaces} | set(old_meta.get("models", []))),
        "source": "derived",
        "made": {"command": command or f"jcw latency derive --device {device}",
                 "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": platform.node(),
                 "jcw": __version__, "python": sys.version.split()[0]},
        "model": {"params": model.params, "sparse_curve_density": [round(0.1 * i, 1) for i in range(11)],
                  "sparse_curve_ratio": model.sparse_curve},
        "fit": model.fit,
        "error": {"kind": "leave-one-out on the public measurements the model was fit to",
                  "mape_pct": model.fit["loo_mape_pct"], "within_10pct": model.fit["loo_within_10pct"]},
        "caveat": "derived, not measured: prices extrapolate from published measurements of larger networks; "
                  "sparse layers assume a SIMD sparse kernel like JCW's",
        "overhead_ms": 0.0,
    }
    return LatencyTable(device=device, entries=entries, meta=meta)


def derive(device: str, supernets: list[str | None] | None = None, out_dir: str | Path | None = None,
           command: str = "") -> tuple[LatencyTable, Path, Path]:
    """Derive `device`'s table for the given supernet files (default: the shipped one) and save it."""
    if device not in DEVICES:
        raise JcwError(f"no device model for {device!r}; derived models exist for {', '.join(DEVICES)}")
    table = derive_table(device, [load_supernet(s).space for s in (supernets or [None])], command)
    return (table, *table.save(out_dir))
