"""What the predictor sees of a genome.

Each gene's width ratio and density and their logs, the log of each weight layer's kept weights, and log total MACs
and nonzero weights: on logs a linear model is a power law in layer sizes, which ranks subnets well.
"""
from __future__ import annotations

import numpy as np

from jcw.space import SearchSpace


def genome_features(space: SearchSpace, genomes: np.ndarray) -> np.ndarray:
    g = np.asarray(genomes).reshape(-1, space.n_genes)
    bases = np.array([grp.base for grp in space.groups], dtype=float)
    genes = np.concatenate([space.widths(g) / bases[None, :], space.density_values(g)], axis=1)
    pruned = [j for j, layer in enumerate(space.layers) if layer.kind in ("conv", "linear") and not layer.depthwise]
    cost = space.cost(g)
    sizes = np.concatenate([cost["layer_weights"][:, pruned], cost["macs"][:, None], cost["params"][:, None]], axis=1)
    return np.concatenate([genes, np.log(genes), np.log(sizes)], axis=1)
