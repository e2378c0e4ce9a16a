"""Snap genomes that XNNPACK would run dense to dense.

Under tflite-xnnpack a genome's sparse 1x1 weights pay only when its NCHW subgraph is more than two thirds zero,
counted together. Below that the table prices the subgraph dense, so its zeros cost accuracy and buy no time: the
same genome with those densities at 1.0 costs the same and is at least as accurate. Left alone, such genomes fill the
population (benchmarks/RESULTS.md section 10: with the stem rule relaxed, the joint front fell 0.014 below channels
alone). The search repairs every genome pymoo asks it to price.
"""
from __future__ import annotations

import numpy as np
from pymoo.core.repair import Repair

from jcw.latency.table import BoundTable


class DenseBelowThreshold(Repair):
    def __init__(self, bound: BoundTable):
        super().__init__()
        self.bound = bound
        space, subgraph = bound.space, bound.subgraph
        convs = subgraph.convs if subgraph is not None and subgraph.possible and 1.0 in space.densities else []
        # the subgraph's density genes: the only ones the threshold decides
        self.genes = sorted({len(space.groups) + space.layers[j].sparse for j in convs if space.layers[j].sparse >= 0})
        self.dense_value = space.densities.index(1.0) if self.genes else 0

    def _do(self, problem, X, **kwargs):
        X = np.rint(X).astype(np.int64)
        if self.genes:
            X[np.ix_(~self.bound.runs_sparse(X), self.genes)] = self.dense_value
        return X
