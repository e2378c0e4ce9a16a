"""What the predictor sees of a genome.

Each gene's width ratio and density and their logs, the log of each weight layer's kept weights, and log total MACs
and nonzero weights: on logs a linear model is a power law in layer sizes, which ranks subnets well.
"""
from __future__ import annotations

import numpy as np

from jcw.space import SearchSpace


class GenomeFeatures:
    """The features of one space, bound once: every quantity is then a gather of whole gene rows, (genes, n), and
    a product. Column gathers from (n, genes) took half of a prediction; the kernel model's exponentials now take
    most of what is left."""

    def __init__(self, space: SearchSpace):
        self.space = space
        n_groups, size = len(space.groups), int(space.gene_sizes.max())
        values = np.ones((space.n_genes + 1, size))  # the last row, all ones, stands for a layer's missing gene
        for i, group in enumerate(space.groups):
            values[i, :len(group.choices)] = np.array(group.choices) / group.base
        values[n_groups:space.n_genes, :len(space.densities)] = space.densities
        self.values = values
        in_gene, out_gene, d_gene, scale, positions, pruned = [], [], [], [], [], []
        for layer in space.layers:
            if layer.kind not in ("conv", "linear"):
                continue  # no weights
            # a layer's kept weights: ratio x base (or its fixed width) on each side, density, kernel area
            c_in = (-1, 1) if layer.depthwise else \
                (layer.in_group, space.groups[layer.in_group].base) if layer.in_group >= 0 else (-1, layer.c_in)
            c_out = (layer.out_group, space.groups[layer.out_group].base) if layer.out_group >= 0 else \
                (-1, layer.c_out)
            in_gene.append(c_in[0])
            out_gene.append(c_out[0])
            d_gene.append(n_groups + layer.sparse if layer.sparse >= 0 else -1)
            area = layer.kernel ** 2 if layer.kind == "conv" else 1
            scale.append(c_in[1] * c_out[1] * area)
            positions.append((-(-layer.h // layer.stride)) ** 2 if layer.kind == "conv" else 1)
            pruned.append(not layer.depthwise)
        self.in_gene, self.out_gene, self.d_gene = np.array(in_gene), np.array(out_gene), np.array(d_gene)
        self.scale, self.positions = np.array(scale, float)[:, None], np.array(positions, float)
        self.pruned = np.flatnonzero(pruned)

    def rows(self, genomes: np.ndarray) -> np.ndarray:
        """(n_features, n): the features of each genome, one row per feature."""
        g = np.asarray(genomes).reshape(-1, self.space.n_genes)
        index = np.zeros((g.shape[1] + 1, g.shape[0]), np.int32)
        index[:-1] = g.T
        genes = self.values[np.arange(len(index))[:, None], index]  # (n_genes + 1, n), last row ones
        weights = genes[self.in_gene] * genes[self.out_gene] * genes[self.d_gene] * self.scale
        sizes = np.concatenate([weights[self.pruned], (self.positions @ weights)[None], weights.sum(0)[None]])
        return np.concatenate([genes[:-1], np.log(genes[:-1]), np.log(sizes)])

    def __call__(self, genomes: np.ndarray) -> np.ndarray:
        """(n, n_features)."""
        return self.rows(genomes).T


def genome_features(space: SearchSpace, genomes: np.ndarray) -> np.ndarray:
    return GenomeFeatures(space)(genomes)
