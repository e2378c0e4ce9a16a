"""The grid of table entries a set of search spaces needs, and merging new entries into a table."""
from __future__ import annotations

from itertools import product
from typing import Callable

import pandas as pd

from jcw.latency.table import KEY, layer_key
from jcw.space import Layer, SearchSpace

Price = Callable[[Layer, int, int, float], tuple[float, float, int, str]]  # -> (ms, std, n, impl)


def space_entries(spaces: list[SearchSpace], price: Price, previous: pd.DataFrame | None = None) -> pd.DataFrame:
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
