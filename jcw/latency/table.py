"""Latency tables: one CSV of per-layer entries plus one JSON of metadata per device.

An entry is keyed by a layer signature (op kind, input HxW, kernel, stride, depthwise) and a point of the grid
c_in x c_out x density. Binding a table to a search space interpolates (multilinearly, as JCW does) once per layer
onto the space's own choices; pricing a genome is then one gather and a sum, millions of genomes a second.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from jcw.artifacts import artifact_dir
from jcw.errors import JcwError, JcwWarning
from jcw.io import write_csv, write_json
from jcw.latency.cpu import cpu_mismatch
from jcw.space import Layer, SearchSpace
from jcw.xnnpack import runs_sparse, sparse_subgraph

COLUMNS = ["kind", "h", "w", "kernel", "stride", "depthwise", "c_in", "c_out", "density", "latency_ms", "std_ms",
           "n", "impl"]
KEY = ["kind", "h", "w", "kernel", "stride", "depthwise"]
# What a table prices, and so where its sparse entries apply: torch (per entry, dense or CSR, whichever the table
# found faster), onnxruntime (always dense), tflite-xnnpack (1x1 convs, only inside a sparse-enough NCHW subgraph:
# jcw.xnnpack), jcw-arm (JCW's own kernel: every conv and linear layer at its density).
RUNTIMES = ("torch", "onnxruntime", "tflite-xnnpack", "jcw-arm")


def layer_key(layer: Layer) -> tuple:
    """A layer's row key in a table: its values of KEY."""
    return tuple(getattr(layer, column) for column in KEY)


def user_table_dir() -> Path:
    """Where the user's own tables go (`jcw latency measure`, `import`): never over the shipped ones.

    $JCW_HOME/latency_tables, default ~/.local/share/jcw/latency_tables; tables there shadow shipped ones by name."""
    return Path(os.environ.get("JCW_HOME", Path.home() / ".local" / "share" / "jcw")) / "latency_tables"


def table_dirs(folder: str | Path | None = None) -> list[Path]:
    return [Path(folder)] if folder else [user_table_dir(), artifact_dir("latency_tables")]


@dataclass
class LatencyTable:
    device: str
    entries: pd.DataFrame
    meta: dict
    folder: Path | None = None  # where it was loaded from

    @property
    def runtime(self) -> str:
        """One of RUNTIMES; tables made before the field existed are read by their runtime's description."""
        named = str(self.meta.get("runtime", ""))
        if named in RUNTIMES:
            return named
        if "onnxruntime" in named:
            return "onnxruntime"
        return "torch" if "torch" in named else "jcw-arm"

    @property
    def threads(self) -> int:
        return int(self.meta.get("threads", 1))

    @property
    def overhead_ms(self) -> float:
        """Fixed cost of one whole-model call (runtime dispatch), outside every layer."""
        return float(self.meta.get("overhead_ms", 0.0))

    def bind(self, space: SearchSpace) -> "BoundTable":
        return BoundTable(self, space)

    def save(self, folder: str | Path) -> tuple[Path, Path]:
        folder = Path(folder)
        csv_path, json_path = folder / f"{self.device}.csv", folder / f"{self.device}.json"
        write_csv(csv_path, self.entries[COLUMNS].sort_values(KEY + ["c_in", "c_out", "density"]))
        write_json(json_path, self.meta)
        return csv_path, json_path


def known_devices(folder: str | Path | None = None) -> list[str]:
    return sorted({p.stem for d in table_dirs(folder) for p in d.glob("*.json") if p.with_suffix(".csv").exists()})


def _find(device: str, folder: str | Path | None) -> Path | None:
    for d in table_dirs(folder):
        if (d / f"{device}.csv").exists() and (d / f"{device}.json").exists():
            return d
    return None


def load_table(device: str, folder: str | Path | None = None) -> LatencyTable:
    """Load `device`'s table (the user's own before a shipped one); a path to a .csv or .json file also works.

    A host table measured on another CPU warns in one line: its prices describe that machine."""
    as_path = Path(device)
    if as_path.suffix in (".csv", ".json") and as_path.exists():
        folder, device = as_path.parent, as_path.stem
    found = _find(device, folder)
    if found is None:
        known = ", ".join(known_devices(folder)) or "none"
        raise JcwError(f"unknown device {device!r}; known devices: {known} (measure this machine with "
                       "`jcw latency measure --device host`)")
    folder = found
    csv_path, json_path = folder / f"{device}.csv", folder / f"{device}.json"
    try:
        meta = json.loads(json_path.read_text())
        entries = pd.read_csv(csv_path)
        missing = [c for c in COLUMNS if c not in entries.columns]
        if missing or not isinstance(meta, dict):
            raise ValueError(f"missing columns {missing}")
        numeric = ["h", "w", "kernel", "stride", "c_in", "c_out", "density", "latency_ms"]
        entries[numeric] = entries[numeric].apply(pd.to_numeric, errors="raise")
        entries["depthwise"] = entries["depthwise"].map(
            lambda v: v if isinstance(v, (bool, np.bool_)) else str(v).strip().lower() == "true")
        if entries[numeric].isna().any().any() or len(entries) == 0:
            raise ValueError("empty or missing values")
    except (ValueError, TypeError, json.JSONDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError,
            UnicodeDecodeError) as exc:
        raise JcwError(f"latency table {csv_path} is corrupt ({exc.__class__.__name__}); regenerate it with "
                       f"`jcw latency derive` or `jcw latency measure`") from None
    mismatch = other_cpu(device, meta)
    if mismatch:
        warnings.warn(f"the {device} table was measured on another CPU ({mismatch}), so its prices may "
                      f"not hold here; measure this machine's with `jcw latency measure --device {device} --runtime "
                      f"{meta.get('runtime', 'torch')}` (it goes "
                      f"to {user_table_dir()}, ahead of the shipped table)", JcwWarning, stacklevel=2)
    return LatencyTable(device=device, entries=entries, meta=meta, folder=folder)


def other_cpu(device: str, meta: dict) -> str:
    """How a host table's CPU differs from this one ('' if it does not, or the table is not measured here)."""
    return cpu_mismatch(meta) if meta.get("source") == "measured" and device.startswith("host") else ""


def list_tables(folder: str | Path | None = None) -> list[dict]:
    """Every table in `folder` (default: the user's folder, then the shipped one; a user table hides a shipped one
    of its name) with its source, size, error and date, for `jcw latency list`."""
    rows = []
    for name in known_devices(folder):
        with warnings.catch_warnings():  # listing a table is not pricing with it: no CPU warning
            warnings.simplefilter("ignore", JcwWarning)
            table = load_table(name, folder)
        rows.append({"device": name, "folder": str(table.folder), "runtime": table.runtime, "threads": table.threads,
                     "source": table.meta.get("source", "?"), "entries": len(table.entries),
                     "error": table.meta.get("error", {}), "date": table.meta.get("made", {}).get("date", "?"),
                     "processor": table.meta.get("processor", "?"),
                     "other_cpu": bool(other_cpu(name, table.meta))})
    return rows


def compare_tables(reference: LatencyTable | str, other: LatencyTable | str) -> dict:
    """How far `other` is from `reference`, over the entries both hold: per-entry error, and the reference's spread.

    The spread (std over repeats, relative to the median) is the noise one measurement carries; two measurements of
    the same thing should differ by about that much.
    """
    reference = load_table(reference) if isinstance(reference, str) else reference
    other = load_table(other) if isinstance(other, str) else other
    keys = KEY + ["c_in", "c_out", "density"]
    both = reference.entries.merge(other.entries, on=keys, suffixes=("_ref", "_other"))
    if both.empty:
        raise JcwError(f"the {reference.device} and {other.device} tables share no entries")
    rel = (both.latency_ms_other - both.latency_ms_ref) / both.latency_ms_ref
    return {"reference": reference.device, "other": other.device, "common_entries": int(len(both)),
            "median_ratio": round(float((both.latency_ms_other / both.latency_ms_ref).median()), 4),
            "mape_pct": round(float(100 * rel.abs().mean()), 2),
            "within_10pct": round(float((rel.abs() <= 0.10).mean()), 4),
            "within_25pct": round(float((rel.abs() <= 0.25).mean()), 4),
            "reference_noise_pct": round(float(100 * (both.std_ms_ref / both.latency_ms_ref).median()), 2),
            "total_ms": {"reference": round(float(both.latency_ms_ref.sum()), 4),
                         "other": round(float(both.latency_ms_other.sum()), 4)}}


def _axis_weights(grid: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each query value: the two bracketing grid indices and the weight of the upper one."""
    if len(grid) == 1:
        zeros = np.zeros(len(query), dtype=np.int64)
        return zeros, zeros, np.zeros(len(query))
    hi = np.clip(np.searchsorted(grid, query), 1, len(grid) - 1)
    lo = hi - 1
    t = (query - grid[lo]) / (grid[hi] - grid[lo])
    return lo, hi, t


def interpolate(grid_axes: list[np.ndarray], values: np.ndarray, queries: list[np.ndarray]) -> np.ndarray:
    """Multilinear interpolation of `values` (on the product of `grid_axes`) at the product of `queries`."""
    out = values
    for axis, (grid, query) in enumerate(zip(grid_axes, queries)):
        lo, hi, t = _axis_weights(grid, query)
        shape = [1] * out.ndim
        shape[axis] = len(query)
        out = np.take(out, lo, axis=axis) * (1 - t.reshape(shape)) + np.take(out, hi, axis=axis) * t.reshape(shape)
    return out


def _covering_command(table: LatencyTable) -> str:
    """How to get a table of this device that covers another supernet's layers: a host table is measured on this
    machine (`--extend` keeps what it has), a phone's timed on the phone, a derived one derived again."""
    if table.meta.get("source") == "measured" and table.device.startswith("host"):
        runtime = "" if table.runtime == "torch" else f" --runtime {table.runtime}"
        threads = "" if table.threads == 1 else f" --threads {table.threads}"
        return (f"measure its layers on this machine with `jcw latency measure --device {table.device}{runtime}"
                f"{threads} --supernet S --extend --out-dir DIR` (DIR: the table's folder, if it was measured here; "
                "without --extend, a new table for S alone)")
    if table.meta.get("source") == "measured":
        return (f"time its layers on the phone with `jcw latency bundle --device {table.device} --supernet S` and "
                "`jcw latency import`")
    if table.runtime == "jcw-arm":
        return (f"derive one with `jcw latency derive --device {table.device.removesuffix('-jcw-arm')} "
                f"--sparse-kernel jcw-arm --supernet S`")
    return f"derive one with `jcw latency derive --device {table.device} --supernet S`"


class BoundTable:
    """A table interpolated onto one space's choices: `latency(genomes)` in ms.

    For tflite-xnnpack the sparse entries of the NCHW subgraph's 1x1 convs count only for genomes whose 1x1
    weights there are more than two thirds zero, counted together; every other layer is priced dense."""

    def __init__(self, table: LatencyTable, space: SearchSpace):
        self.table, self.space = table, space
        groups = {key: frame for key, frame in table.entries.groupby(KEY)}
        self.layer_tables: list[np.ndarray] = []
        self.impl: list[np.ndarray] = []
        for layer in space.layers:
            frame = groups.get(layer_key(layer))
            if frame is None:
                raise JcwError(f"the {table.device} table does not cover layer {layer.name} (signature "
                               f"{layer.signature}); {_covering_command(table)}, S being the supernet searched")
            values, impl = self._layer_grid(layer, frame)
            self.layer_tables.append(values)
            self.impl.append(impl)
        sizes = [t.size for t in self.layer_tables]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)[:, None]
        self.flat = np.concatenate([t.ravel() for t in self.layer_tables])
        self.strides = np.array([[t.shape[1] * t.shape[2], t.shape[2], 1] for t in self.layer_tables], np.int32)
        self.in_gene = np.array([l.in_group if (l.in_group >= 0 and not l.depthwise) else -1 for l in space.layers])
        self.out_gene = np.array([l.out_group for l in space.layers])
        self.d_gene = np.array([len(space.groups) + l.sparse if l.sparse >= 0 else -1 for l in space.layers])
        # a what-if table may relax XNNPACK's "stem" or "threshold" rule, to measure what each one costs
        self.relaxed = set(table.meta.get("what_if_relaxed", []))
        self.subgraph = (sparse_subgraph(space.layers, space.in_channels, "stem" in self.relaxed)
                         if table.runtime == "tflite-xnnpack" else None)
        if self.subgraph is not None and self.subgraph.possible:
            self._bind_subgraph()

    def _bind_subgraph(self) -> None:
        """Per subgraph 1x1 conv: its widths and density by gene value, to count its weights and nonzeros."""
        space, convs = self.space, list(self.subgraph.convs)
        self.in_subgraph = np.zeros(len(space.layers), bool)
        self.in_subgraph[convs] = True
        size = max(int(space.gene_sizes.max()), 1)

        def by_gene(group: int, fixed: int) -> np.ndarray:
            values = np.full(size, float(fixed))
            if group >= 0:
                values[:len(space.groups[group].choices)] = space.groups[group].choices
            return values

        layers = [space.layers[j] for j in convs]
        self.sub_c_in = np.stack([by_gene(l.in_group, l.c_in) for l in layers])
        self.sub_c_out = np.stack([by_gene(l.out_group, l.c_out) for l in layers])
        densities = np.ones(size)
        densities[:len(space.densities)] = space.densities
        self.sub_density = np.array([densities if l.sparse >= 0 else np.ones(size) for l in layers])
        self.sub_genes = np.array([[self.in_gene[j], self.out_gene[j], self.d_gene[j]] for j in convs])

    def _choices(self, layer: Layer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        space = self.space
        c_in = np.array(space.groups[layer.in_group].choices if layer.in_group >= 0 else [layer.c_in], float)
        c_out = np.array(space.groups[layer.out_group].choices if layer.out_group >= 0 else [layer.c_out], float)
        dens = np.array(space.densities if layer.sparse >= 0 else [1.0], float)
        return c_in, c_out, dens

    def _layer_grid(self, layer: Layer, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        q_in, q_out, q_d = self._choices(layer)
        if layer.depthwise:  # channel-wise ops: one channel axis
            q_in = np.array([0.0])
            frame = frame.assign(c_in=0)
        axes = [np.sort(frame[c].unique()).astype(float) for c in ("c_in", "c_out", "density")]
        pivot = frame.groupby(["c_in", "c_out", "density"])["latency_ms"].mean()
        full = pd.MultiIndex.from_product(axes, names=["c_in", "c_out", "density"])
        if len(pivot) != len(full):
            raise JcwError(f"the {self.table.device} table's grid for {layer.signature} is incomplete "
                           f"({len(pivot)} of {len(full)} points)")
        values = pivot.reindex(full).to_numpy().reshape([len(a) for a in axes])
        for name, grid, query in zip(("input channels", "output channels", "density"), axes, (q_in, q_out, q_d)):
            if query.min() < grid.min() - 1e-9 or query.max() > grid.max() + 1e-9:
                raise JcwError(f"the {self.table.device} table covers {layer.signature} only for {name} "
                               f"{grid.min():g}..{grid.max():g}, but {layer.name} needs {query.min():g}.."
                               f"{query.max():g}; {_covering_command(self.table)}, S being the supernet searched")
        lat = interpolate(axes, values, [q_in, q_out, q_d])
        impl_frame = frame.groupby(["c_in", "c_out", "density"])["impl"].first().reindex(full)
        impl_grid = impl_frame.to_numpy().reshape(values.shape)
        nearest = [np.abs(a[None, :] - q[:, None]).argmin(1) for a, q in zip(axes, (q_in, q_out, q_d))]
        impl = impl_grid[np.ix_(*nearest)]
        return lat, impl

    def _gene_rows(self, genomes: np.ndarray) -> np.ndarray:
        """Genes as rows, (n_genes + 1, n) int32, the last row zeros for a layer without a gene (gene -1): a layer
        then reads whole contiguous rows, which keeps pricing over a million genomes a second on one core."""
        g = np.asarray(genomes).reshape(-1, self.space.n_genes)
        rows = np.zeros((g.shape[1] + 1, g.shape[0]), np.int32)
        rows[:-1] = g.T
        return rows

    def _prices(self, rows: np.ndarray, sparse: np.ndarray | bool = True) -> np.ndarray:
        """Per-layer latency in ms, (n_layers, n); the density genes count only where `sparse` (broadcast to it)."""
        index = rows[self.in_gene] * self.strides[:, :1]
        index += rows[self.out_gene] * self.strides[:, 1:2]
        index += rows[self.d_gene] * self.strides[:, 2:3] * sparse
        index += self.offsets
        return np.take(self.flat, index)

    def layer_latency(self, genomes: np.ndarray) -> np.ndarray:
        """Per-layer latency in ms, (n, n_layers), each layer at its own density genes."""
        return self._prices(self._gene_rows(genomes)).T

    def sparse_genes(self) -> np.ndarray:
        """Per density gene, whether its runtime can ever run its layer sparse: some entry of the table prices the
        layer sparse (none does where the runtime runs zeros dense, as onnxruntime and XNNPACK on an AVX host do, or
        where torch found its CSR kernel slower everywhere) and, for tflite-xnnpack, the layer is a 1x1 conv of an
        NCHW subgraph that can start."""
        space = self.space
        able = np.zeros(len(space.sparse), bool)
        for layer, impl in zip(space.layers, self.impl):
            if layer.sparse >= 0 and (impl != "dense").any():
                able[layer.sparse] = True
        if self.subgraph is not None:
            inside = np.zeros_like(able)
            inside[self.subgraph_sparse()] = True
            able &= inside
        return able

    def subgraph_sparse(self) -> list[int]:
        """Indices into the space's sparse layers of the NCHW subgraph's 1x1 convs (none without a subgraph)."""
        convs = self.subgraph.convs if self.subgraph is not None else []
        return sorted({self.space.layers[j].sparse for j in convs if self.space.layers[j].sparse >= 0})

    def prices_sparse(self) -> bool:
        """Whether any entry this space reads is priced sparse."""
        return any((impl != "dense").any() for impl in self.impl)

    def runs_sparse(self, genomes: np.ndarray) -> np.ndarray:
        """Per genome, whether XNNPACK runs its sparse subgraph sparse (always True for other runtimes)."""
        return self._runs_sparse(self._gene_rows(genomes))

    def _runs_sparse(self, rows: np.ndarray) -> np.ndarray:
        n = rows.shape[1]
        if self.subgraph is None:
            return np.ones(n, bool)
        if not self.subgraph.possible or "threshold" in self.relaxed:
            return np.full(n, self.subgraph.possible)
        convs = np.arange(len(self.sub_genes))[:, None]
        weights = self.sub_c_in[convs, rows[self.sub_genes[:, 0]]] * self.sub_c_out[convs, rows[self.sub_genes[:, 1]]]
        nonzeros = weights * self.sub_density[convs, rows[self.sub_genes[:, 2]]]
        return runs_sparse(weights.sum(axis=0), nonzeros.sum(axis=0))

    def _priced(self, genomes: np.ndarray) -> np.ndarray:
        """(n_layers, n) prices under the runtime's rules for where sparse entries apply."""
        rows = self._gene_rows(genomes)
        if self.subgraph is None:
            return self._prices(rows)
        if not self.subgraph.possible:
            return self._prices(rows, False)
        return self._prices(rows, self.in_subgraph[:, None] & self._runs_sparse(rows)[None, :])

    def priced_layers(self, genomes: np.ndarray) -> np.ndarray:
        """Per-layer latency in ms, (n, n_layers), with the runtime's rules for where sparse entries apply."""
        return self._priced(genomes).T

    def latency(self, genomes: np.ndarray) -> np.ndarray:
        """Whole-model latency in ms for each genome."""
        return self._priced(genomes).sum(axis=0) + self.table.overhead_ms

    def implementation(self, genome: np.ndarray) -> list[str]:
        """The kernel (dense, sparse_csr, sparse_xnnpack, sparse_simd) the table prices per layer of one genome."""
        g = np.append(np.asarray(genome, dtype=np.int64), 0)
        sparse = bool(self.runs_sparse(g[:-1])[0])
        return [str(self.impl[j][g[self.in_gene[j]], g[self.out_gene[j]], g[self.d_gene[j]]])
                if self.subgraph is None or (sparse and self.in_subgraph[j]) else "dense"
                for j in range(len(self.space.layers))]
