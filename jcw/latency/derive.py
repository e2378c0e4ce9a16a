"""Derived tables: price a space's layers with a device model fit to public measurements."""
from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
from itertools import product

import pandas as pd

from jcw import __version__
from jcw.latency.device_model import DeviceModel, fit_device
from jcw.latency.ops import op_features
from jcw.latency.table import KEY, LatencyTable, layer_key, load_table
from jcw.space import Layer, SearchSpace


def space_entries(spaces: list[SearchSpace], price, previous: pd.DataFrame | None = None) -> pd.DataFrame:
    """The grid each layer signature needs: the product of every c_in, c_out and density that any layer with that
    signature can take, in any of `spaces` or in the `previous` entries of a signature they share.

    Lookups interpolate on a full product grid per signature, so two spaces that share a signature with different
    channel choices (mbv2_tiny and mbv2_small both have 14x14 1x1 convs) need the points neither has alone.
    `price(layer, c_in, c_out, density)` returns (ms, std, n, impl).
    """
    grids: dict[tuple, tuple[Layer, set, set, set]] = {}
    for space in spaces:
        for layer in space.layers:
            _, c_ins, c_outs, dens = grids.setdefault(layer_key(layer), (layer, set(), set(), set()))
            c_ins.update(space.groups[layer.in_group].choices if layer.in_group >= 0 else (layer.c_in,))
            c_outs.update(space.groups[layer.out_group].choices if layer.out_group >= 0 else (layer.c_out,))
            dens.update(space.densities if layer.sparse >= 0 else (1.0,))
    if previous is not None:
        for key, frame in previous.groupby(KEY):
            if key in grids:
                _, c_ins, c_outs, dens = grids[key]
                c_ins.update(int(c) for c in frame["c_in"])
                c_outs.update(int(c) for c in frame["c_out"])
                dens.update(float(d) for d in frame["density"])
    rows = []
    for layer, c_ins, c_outs, dens in grids.values():
        for c_out, c_in, d in product(sorted(c_outs), sorted(c_ins), sorted(dens)):
            if layer.depthwise and c_in != c_out:
                continue
            ms, std, n, impl = price(layer, c_in, c_out, d)
            rows.append(dict(kind=layer.kind, h=layer.h, w=layer.w, kernel=layer.kernel, stride=layer.stride,
                             depthwise=layer.depthwise, c_in=c_in, c_out=c_out, density=d, latency_ms=ms,
                             std_ms=std, n=n, impl=impl))
    return pd.DataFrame(rows)


def merge_entries(old: pd.DataFrame | None, new: pd.DataFrame) -> pd.DataFrame:
    """New rows replace old ones at the same key; other spaces' rows are kept."""
    if old is None:
        return new
    both = pd.concat([old, new], ignore_index=True)
    return both.drop_duplicates(KEY + ["c_in", "c_out", "density"], keep="last").reset_index(drop=True)


def derive_table(device: str, spaces: list[SearchSpace], command: str = "") -> LatencyTable:
    """Fit `device`'s op model and price every layer of `spaces`, keeping what the existing table covers."""
    model: DeviceModel = fit_device(device)

    def price(layer, c_in, c_out, d):
        op = op_features(layer.kind, layer.h, layer.w, layer.kernel, layer.stride, layer.depthwise, c_in, c_out)
        sparse = d < 1.0 and layer.sparse >= 0
        return round(model.op_ms(op, d), 6), 0.0, 0, "sparse_simd" if sparse else "dense"

    try:
        previous = load_table(device)
        old, old_meta = previous.entries, previous.meta
    except Exception:
        old, old_meta = None, {}
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
