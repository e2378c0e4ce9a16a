"""The search space: what a genome means.

A genome is one integer per gene: first one width index per channel group (layers whose output channels must agree),
then one density index per sparse layer (non-depthwise convs and the classifier). The space is plain data, free of
torch, so that the search, the latency table and the predictor can use it without a network in memory.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from jcw.errors import JcwError

DEFAULT_DENSITIES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)


@dataclass(frozen=True)
class ChannelGroup:
    """Layers whose output channels are coupled (residual adds, depthwise convs); one width gene."""

    name: str
    base: int
    choices: tuple[int, ...]  # widths, largest first


@dataclass(frozen=True)
class Layer:
    """One priced operation. `in_group`/`out_group` index `SearchSpace.groups`, or -1 for a fixed width."""

    name: str
    kind: str  # conv | linear | add | pool | act | mul (jcw.latency.ops prices each)
    h: int  # input height and width
    w: int
    kernel: int = 1
    stride: int = 1
    depthwise: bool = False
    in_group: int = -1
    out_group: int = -1
    c_in: int = 0  # fixed widths, used where the group is -1
    c_out: int = 0
    sparse: int = -1  # index into SearchSpace.sparse, or -1 for a dense layer

    @property
    def signature(self) -> str:
        dw = "dw" if self.depthwise else "full"
        return f"{self.kind}-{self.h}x{self.w}-k{self.kernel}-s{self.stride}-{dw}"


@dataclass
class SearchSpace:
    model: str
    input_size: int
    in_channels: int
    num_classes: int
    groups: list[ChannelGroup]
    layers: list[Layer]
    sparse: list[str] = field(default_factory=list)  # names of sparse layers, in gene order
    densities: tuple[float, ...] = DEFAULT_DENSITIES

    # ---- genes -------------------------------------------------------------------------------------------------
    @property
    def n_genes(self) -> int:
        return len(self.groups) + len(self.sparse)

    @property
    def gene_sizes(self) -> np.ndarray:
        """Number of choices per gene; gene i takes values 0 .. gene_sizes[i]-1 (0 is the largest/densest)."""
        return np.array([len(g.choices) for g in self.groups] + [len(self.densities)] * len(self.sparse))

    def largest(self) -> np.ndarray:
        return np.zeros(self.n_genes, dtype=np.int64)

    def smallest(self) -> np.ndarray:
        return self.gene_sizes - 1

    def uniform(self, ratio: float) -> np.ndarray:
        """Dense, with every channel group at the choice nearest `ratio` of its base width: the uniform-width
        baseline every pruning method is measured against."""
        return np.array([int(np.argmin([abs(c - ratio * g.base) for c in g.choices])) for g in self.groups]
                        + [0] * len(self.sparse), dtype=np.int64)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, self.gene_sizes[None, :], size=(n, self.n_genes))

    def sample_spread(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Genomes spread over the size range: the two extremes, a third uniform, the rest around a random scale.

        Independent uniform genes average out to mid-size subnets; drawing one scale per genome and jittering every
        gene around it reaches the small and large ends too. Predictor fits and latency validation use it.
        """
        sizes = self.gene_sizes
        n_uniform = n // 3
        uniform = self.sample(n_uniform, rng)
        scale = rng.uniform(0, 1, size=(n - n_uniform, 1))
        jitter = rng.normal(0, 0.2, size=(n - n_uniform, self.n_genes))
        scaled = np.clip(np.rint((scale + jitter) * (sizes[None, :] - 1)), 0, sizes[None, :] - 1).astype(np.int64)
        return np.concatenate([self.largest()[None], self.smallest()[None], uniform, scaled])[:n]

    def num_subnets(self) -> int:
        return math.prod(int(s) for s in self.gene_sizes)

    def check(self, genomes: np.ndarray) -> np.ndarray:
        """Validate a genome or a batch; return them as an int64 2-D array."""
        arr = np.asarray(genomes)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.n_genes:
            raise JcwError(f"a genome has {self.n_genes} genes for this space; got shape {tuple(np.shape(genomes))}")
        if not np.issubdtype(arr.dtype, np.integer) and not np.all(np.equal(np.mod(arr, 1), 0)):
            raise JcwError("genome genes must be integers")
        arr = arr.astype(np.int64)
        bad = (arr < 0) | (arr >= self.gene_sizes[None, :])
        if bad.any():
            i = int(np.argwhere(bad)[0][1])
            raise JcwError(f"gene {i} ({self.gene_name(i)}) must be in 0..{self.gene_sizes[i] - 1}")
        return arr

    def gene_name(self, i: int) -> str:
        n_groups = len(self.groups)
        return f"width:{self.groups[i].name}" if i < n_groups else f"density:{self.sparse[i - n_groups]}"

    # ---- readable form -----------------------------------------------------------------------------------------
    def widths(self, genomes: np.ndarray) -> np.ndarray:
        """Channel count of every group, (n, n_groups)."""
        arr = np.asarray(genomes).reshape(-1, self.n_genes)
        table = np.zeros((len(self.groups), max(len(g.choices) for g in self.groups)), dtype=np.int64)
        for i, g in enumerate(self.groups):
            table[i, :len(g.choices)] = g.choices
        return table[np.arange(len(self.groups))[None, :], arr[:, :len(self.groups)]]

    def density_values(self, genomes: np.ndarray) -> np.ndarray:
        arr = np.asarray(genomes).reshape(-1, self.n_genes)
        return np.asarray(self.densities)[arr[:, len(self.groups):]]

    def decode(self, genome: Sequence[int]) -> dict:
        """Readable per-layer channels and densities of one genome."""
        g = self.check(genome)[0]
        return {"channels": [int(c) for c in self.widths(g)[0]],
                "densities": [float(d) for d in self.density_values(g)[0]]}

    def encode(self, channels: Sequence[int], densities: Sequence[float]) -> np.ndarray:
        if len(channels) != len(self.groups) or len(densities) != len(self.sparse):
            raise JcwError(f"expected {len(self.groups)} channel counts and {len(self.sparse)} densities")
        genes = []
        for g, c in zip(self.groups, channels):
            if c not in g.choices:
                raise JcwError(f"{c} channels is not a choice for {g.name}: {list(g.choices)}")
            genes.append(g.choices.index(c))
        for name, d in zip(self.sparse, densities):
            match = [i for i, v in enumerate(self.densities) if abs(v - d) < 1e-6]
            if not match:
                raise JcwError(f"density {d} is not a choice for {name}: {list(self.densities)}")
            genes.append(match[0])
        return np.array(genes, dtype=np.int64)

    @staticmethod
    def format_readable(values: Sequence) -> str:
        return "-".join(str(v) for v in values)

    # ---- per-layer sizes (used by the latency table and the predictor) -------------------------------------------
    def layer_channels(self, genomes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Input and output channels of every layer, each (n, n_layers)."""
        widths = self.widths(genomes)

        def per_layer(groups: list[int], fixed: list[int]) -> np.ndarray:
            groups_arr = np.array(groups)
            return np.where(groups_arr >= 0, widths[:, np.maximum(groups_arr, 0)], np.array(fixed))

        return (per_layer([layer.in_group for layer in self.layers], [layer.c_in for layer in self.layers]),
                per_layer([layer.out_group for layer in self.layers], [layer.c_out for layer in self.layers]))

    def layer_densities(self, genomes: np.ndarray) -> np.ndarray:
        sparse = np.array([layer.sparse for layer in self.layers])
        return np.where(sparse >= 0, self.density_values(genomes)[:, np.maximum(sparse, 0)], 1.0)

    def layer_weights(self, genomes: np.ndarray) -> np.ndarray:
        """Kept (nonzero) weights of every layer, (n, n_layers); zero for layers without weights."""
        c_in, c_out = self.layer_channels(genomes)
        depthwise = np.array([layer.depthwise for layer in self.layers])
        kernel_area = np.array([layer.kernel ** 2 if layer.kind == "conv" else 1 for layer in self.layers])
        weighted = np.array([layer.kind in ("conv", "linear") for layer in self.layers])
        return np.where(depthwise, 1, c_in) * kernel_area * c_out * self.layer_densities(genomes) * weighted

    def cost(self, genomes: np.ndarray) -> dict[str, np.ndarray]:
        """MACs and nonzero weights of each genome, counting kept weights only, and the per-layer weights too."""
        weights = self.layer_weights(genomes)
        positions = np.array([(-(-layer.h // layer.stride)) ** 2 if layer.kind == "conv" else 1
                              for layer in self.layers])
        return {"macs": weights @ positions, "params": weights.sum(1), "layer_weights": weights}

    # ---- persistence -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SearchSpace":
        try:
            groups = [ChannelGroup(g["name"], int(g["base"]), tuple(int(c) for c in g["choices"])) for g in d["groups"]]
            layers = [Layer(**layer) for layer in d["layers"]]
            return cls(model=d["model"], input_size=int(d["input_size"]), in_channels=int(d["in_channels"]),
                       num_classes=int(d["num_classes"]), groups=groups, layers=layers, sparse=list(d["sparse"]),
                       densities=tuple(float(x) for x in d["densities"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise JcwError(f"malformed search space description ({exc})") from None

    def fingerprint(self) -> str:
        import hashlib

        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def width_choices(base: int, min_ratio: float = 0.25, step: float = 1 / 8, divisor: int = 8) -> tuple[int, ...]:
    """Widths on a grid of `step` x base down to `min_ratio`, rounded to a multiple of `divisor`, largest first."""
    out: list[int] = []
    ratio = 1.0
    while ratio >= min_ratio - 1e-9:
        c = max(divisor, int(round(base * ratio / divisor)) * divisor)
        c = min(c, base)
        if c not in out:
            out.append(c)
        ratio -= step
    return tuple(out)


def parse_genomes(spec: str, space: SearchSpace, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Genomes named on the command line: largest, smallest, random:N, uniform:R (every group at R of its width,
    dense), or a file (a JSON list of genomes, or a CSV with a genome column), comma-separated, each with a label."""
    out = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        if part == "largest":
            out.append(("largest", space.largest()))
        elif part == "smallest":
            out.append(("smallest", space.smallest()))
        elif part.startswith("random:"):
            try:
                n = int(part.split(":", 1)[1])
            except ValueError:
                n = 0
            if n < 1:
                raise JcwError(f"--genome {part!r}: write random:N with N a whole number, 1 or more") from None
            for i, g in enumerate(space.sample(n, np.random.default_rng(seed))):
                out.append((f"random{i}", g))
        elif part.startswith("uniform:"):
            try:
                ratio = float(part.split(":", 1)[1])
            except ValueError:
                ratio = -1.0
            if not 0 < ratio <= 1:
                raise JcwError(f"--genome {part!r}: write uniform:R with R a width ratio in (0, 1]")
            out.append((part, space.uniform(ratio)))
        elif Path(part).is_file():
            try:
                if part.endswith(".csv"):
                    items = [json.loads(g) for g in pd.read_csv(part)["genome"]]
                else:
                    items = json.loads(Path(part).read_text())
            except (ValueError, KeyError, TypeError) as exc:  # bad JSON or CSV, undecodable bytes, no genome column
                raise JcwError(f"--genome file {part} must be a JSON list of genomes or a CSV with a genome "
                               f"column ({exc.__class__.__name__}: {str(exc)[:80]})") from None
            for i, g in enumerate(items):
                out.append((f"{Path(part).stem}{i}", space.check(g)[0]))
        else:
            raise JcwError(f"--genome {part!r}: use largest, smallest, random:N, uniform:R or a file path")
    if not out:
        raise JcwError("--genome is empty; use largest, smallest, random:N, uniform:R or a file path")
    return out
