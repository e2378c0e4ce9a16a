"""When TFLite's XNNPACK delegate runs a network's weights sparse: one place for the rules that pricing, the search,
supernet training and the TFLite export all follow.

XNNPACK runs sparse only inside an NCHW subgraph: it begins at a 3x3 stride-2 conv (padding 1) on the 3-channel
image, holds only 1x1 stride-1 convs, depthwise 3x3 or 5x5 convs (stride 1 or 2, explicit padding), adds, activations
(h-swish and sigmoid too) and squeeze-excite (its global pool, 1x1 convs and multiply), and ends at the global average
pool before the classifier (a spatial MEAN). Inside it, the 1x1 convs run sparse only if more than
two thirds of their weights, counted together, are exactly zero; every other layer runs dense wherever it is. TFLite's
delegate asks for sparse inference only when the file stores weights sparse (behind DENSIFY ops), and XNNPACK never
runs sparse on x86 CPUs with AVX.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from jcw.errors import JcwError
from jcw.space import Layer, SearchSpace

SPARSE_FRACTION = 2 / 3  # zeros among the subgraph's 1x1 conv weights, counted together, must exceed this
SOURCE = ("google/XNNPACK src/subgraph.c @75db3c09 (xnn_check_nchw_compatibility, xnn_subgraph_rewrite_for_nchw: "
          "'num_zeroes * 3 <= num_params * 2' disables sparse); tensorflow/lite/delegates/xnnpack/README.md, "
          "'Sparse Inference'")


@dataclass(frozen=True)
class SparseSubgraph:
    """The 1x1 convs (indices into the layer list) that can run sparse, or why none can."""

    convs: tuple[int, ...]
    reason: str = ""  # empty when `convs` is not

    @property
    def possible(self) -> bool:
        return bool(self.convs)


def is_1x1(layer: Layer) -> bool:
    return layer.kind == "conv" and not layer.depthwise and layer.kernel == 1


def _nchw_compatible(layer: Layer) -> str:
    """'' if XNNPACK can run `layer` inside the NCHW subgraph, else what stops it."""
    if layer.kind in ("add", "act", "mul"):  # squeeze-excite's multiply and h-swish run in NCHW too
        return ""
    if layer.kind == "conv" and layer.depthwise:
        return "" if layer.kernel in (3, 5) and layer.stride in (1, 2) else \
            f"depthwise {layer.kernel}x{layer.kernel} stride {layer.stride}"
    if is_1x1(layer):
        return "" if layer.stride == 1 else f"1x1 conv with stride {layer.stride}"
    if layer.kind == "conv":
        return f"dense {layer.kernel}x{layer.kernel} conv"
    if layer.kind == "pool":
        return "" if layer.kernel >= layer.h else "a pool other than the global average pool"
    return f"a {layer.kind} layer"


def sparse_subgraph(layers: Sequence[Layer], in_channels: int, relax_stem: bool = False) -> SparseSubgraph:
    """The NCHW subgraph of a chain network (residual adds allowed), from its stem to its global average pool.

    `relax_stem` lets any stem start it: a what-if, to measure what the stem rule costs a network."""
    if not layers or layers[0].kind != "conv":
        return SparseSubgraph((), "the network does not start with a conv")
    stem = layers[0]
    if not relax_stem and ((stem.kernel, stem.stride, in_channels) != (3, 2, 3) or stem.depthwise):
        return SparseSubgraph((), f"its stem is a {stem.kernel}x{stem.kernel} stride-{stem.stride} conv on "
                                  f"{in_channels}-channel images; XNNPACK starts a sparse subgraph only at a 3x3 "
                                  "stride-2 conv on 3-channel images")
    heads = [i for i, layer in enumerate(layers) if layer.kind == "pool" and layer.kernel >= layer.h]
    if not heads:  # the last global pool feeds the classifier; earlier ones are squeeze-excite's, inside
        return SparseSubgraph((), "the network has no global average pool")
    convs = []
    for index, layer in enumerate(layers[1:heads[-1]], start=1):
        blocker = _nchw_compatible(layer)
        if blocker:
            return SparseSubgraph((), f"{layer.name} ({blocker}) cannot run in XNNPACK's NCHW subgraph")
        if is_1x1(layer):
            convs.append(index)
    return SparseSubgraph(tuple(convs), "" if convs else "the subgraph has no 1x1 conv")


def runs_sparse(weights: np.ndarray, nonzeros: np.ndarray) -> np.ndarray:
    """Whether XNNPACK runs the subgraph sparse, from its 1x1 convs' weight and nonzero counts summed (any shape)."""
    weights = np.asarray(weights, dtype=float)
    return (weights - np.asarray(nonzeros)) * 3 > weights * 2 * (1 + 1e-12)


def subgraph_sparsity(layers: Sequence[Layer], in_channels: int, weights: dict[str, int],
                      nonzeros: dict[str, int]) -> tuple[SparseSubgraph, float, bool]:
    """A built network's subgraph, the fraction of its 1x1 weights that are zero (counted together), and whether
    XNNPACK runs it sparse; `weights` and `nonzeros` count each weight layer's weights by the layer's name."""
    subgraph = sparse_subgraph(layers, in_channels)
    total = sum(weights[layers[i].name] for i in subgraph.convs)
    nonzero = sum(nonzeros[layers[i].name] for i in subgraph.convs)
    zero_fraction = 1 - nonzero / total if total else 0.0
    return subgraph, zero_fraction, subgraph.possible and bool(runs_sparse(total, nonzero))


def shared_density_genes(space: SearchSpace, subgraph: SparseSubgraph | None) -> list[int]:
    """Genome positions of the subgraph's 1x1 convs' density genes, in layer order. XNNPACK runs them sparse only as
    a whole, so they share one density: the first's (`tie_densities`)."""
    convs = subgraph.convs if subgraph is not None else ()
    return sorted({len(space.groups) + space.layers[i].sparse for i in convs if space.layers[i].sparse >= 0})


def tie_densities(genomes: np.ndarray, genes: list[int]) -> np.ndarray:
    """`genomes` (a copy) with every gene of `genes` set to the first's value."""
    out = np.array(genomes, dtype=np.int64)
    out[:, genes] = out[:, genes[:1]]
    return out


def as_xnnpack_runs(space: SearchSpace, genomes: np.ndarray) -> np.ndarray:
    """`genomes` with the densities XNNPACK can run: the subgraph's 1x1 convs share the first one's density, and
    every other layer is dense. Training on such subnets spends the supernet's capacity where a TFLite search looks."""
    subgraph = sparse_subgraph(space.layers, space.in_channels)
    if not subgraph.possible:
        raise JcwError(f"XNNPACK runs no layer of {space.model} sparse: {subgraph.reason}")
    shared = shared_density_genes(space, subgraph)
    out = tie_densities(genomes, shared)
    dense = np.setdiff1d(np.arange(len(space.groups), space.n_genes), shared)
    out[:, dense] = 0
    return out
