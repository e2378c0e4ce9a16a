"""Measured tables for this machine.

Every entry is timed with the modules a runtime runs: for torch, jcw's CPU runtime (`jcw.latency.host_runtime`: a
conv with its batch norm folded and its activation, or torch's sparse CSR kernel for a 1x1 conv or linear layer
where that beats dense); for tflite-xnnpack, the same micro-model converted by jcw's TFLite runtime and run in
LiteRT with XNNPACK; for onnxruntime, the phone bundle's ONNX micro-model. Dense time does not depend on density, so
it is timed once per (c_in, c_out) and shared by every density. The process is pinned to `threads` cores while it
times, and the table records the CPU, its flags and the spread over repeats.
"""
from __future__ import annotations

import io
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from jcw import __version__
from jcw.config import check_value
from jcw.errors import JcwError
from jcw.latency.cpu import cpu_identity, cpu_mismatch, processor_name
from jcw.latency.grid import merge_entries, space_entries
from jcw.latency.host_runtime import cpu_runtime
from jcw.latency.ops import has_sparse_kernel, micro_model
from jcw.latency.table import KEY, LatencyTable, layer_key, load_table, user_table_dir
from jcw.latency.tflite_runtime import convert, interpreter, set_inputs
from jcw.space import Layer, SearchSpace
from jcw.supernet.slicing import subnet_from_supernet
from jcw.supernet.supernet import load_supernet
from jcw.threads import torch_threads

WARMUP = 10
REPEATS = 30  # timed calls per entry


def time_call(fn, repeats: int) -> tuple[float, float]:
    """Median and standard deviation of `fn()` in ms, after a warm-up."""
    with torch.no_grad():
        for _ in range(WARMUP):
            fn()
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            fn()
            samples.append((time.perf_counter_ns() - t0) / 1e6)
    return statistics.median(samples), statistics.pstdev(samples)


def _torch_call(layer: Layer, c_in: int, c_out: int, density: float, impl: str, gen: torch.Generator):
    """A callable that runs one table entry exactly as the CPU runtime would."""
    module, inputs = micro_model(layer, c_in, c_out, density, impl, gen)
    return lambda: module(*inputs)


def onnx_micro_op(layer: Layer, c_in: int, c_out: int, density: float):
    """A callable that runs one entry's ONNX micro-model (the one `jcw latency bundle` writes) in onnxruntime."""
    import onnxruntime as ort  # heavy optional runtime: only the onnxruntime measurement imports it

    model, inputs = micro_model(layer, c_in, c_out, density)
    buffer = io.BytesIO()
    torch.onnx.export(model, inputs, buffer, dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    session = ort.InferenceSession(buffer.getvalue(), opts, providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
    return lambda: session.run(None, feeds)


RUNTIME_DETAILS = {"torch": "torch eager CPU (jcw.latency.host_runtime: BN folded, sparse CSR for 1x1 convs and linear "
                      "where faster)",
            "onnxruntime": "onnxruntime CPU, dense (the micro-models `jcw latency bundle` writes)",
            "tflite-xnnpack": "LiteRT with XNNPACK (jcw.latency.tflite_runtime), dense: each micro-model runs alone, "
                              "outside any sparse subgraph, and XNNPACK never runs sparse on x86 CPUs with AVX"}


def tflite_micro_op(layer: Layer, c_in: int, c_out: int, density: float, threads: int):
    """A callable that runs one entry's micro-model in LiteRT with XNNPACK at `threads`."""
    model, inputs = micro_model(layer, c_in, c_out, density)
    runner = interpreter(convert(model, [tuple(x.shape) for x in inputs]), threads)
    set_inputs(runner, *(x.numpy() for x in inputs))
    return runner.invoke


@contextmanager
def pinned(threads: int) -> Iterator[list[int]]:
    """Pin this process to `threads` of the cores it may use while it times, so that the OS cannot move it."""
    if not hasattr(os, "sched_setaffinity"):
        yield []
        return
    allowed = sorted(os.sched_getaffinity(0))
    cores = allowed[:max(1, threads)]
    os.sched_setaffinity(0, cores)
    try:
        yield cores
    finally:
        os.sched_setaffinity(0, allowed)


def measure_table(device: str, spaces: list[SearchSpace], threads: int = 1, repeats: int | None = None,
                  command: str = "", calibration_subnets: int = 5, supernet=None,
                  runtime: str = "torch", previous: LatencyTable | None = None) -> LatencyTable:
    """Time every entry the spaces need on this machine at `threads`; calibrate the per-call overhead end to end.

    runtime="torch" times what exported subnets run on the CPU; "tflite-xnnpack" what `jcw export --tflite` writes,
    run in LiteRT; "onnxruntime" the bundle's micro-models the way `run.sh --local` does, to check a phone bundle's
    round trip against a direct measurement. With `previous` (a table of this machine, runtime and threads), only
    the entries it lacks are timed and added to it: a new supernet's layers, without timing again what it shares.
    """
    if previous is not None:
        return _extended(previous, spaces, threads, runtime, command, repeats)
    with torch_threads(threads), pinned(threads) as cores:
        table = _measure_table(device, spaces, threads, repeats or REPEATS, command, calibration_subnets, supernet,
                               runtime)
    table.meta["made"]["pinned_cores"] = cores
    return table


def _extended(previous: LatencyTable, spaces: list[SearchSpace], threads: int, runtime: str, command: str,
              repeats: int | None) -> LatencyTable:
    """`previous` with the entries `spaces` need and it lacks, timed as it was (its repeats, warm-up, pinning)."""
    meta, where = previous.meta, f"the {previous.device} table in {previous.folder}"
    other, version = cpu_mismatch(meta), _version(runtime)
    if other or previous.runtime != runtime or previous.threads != threads:
        how = f"on another CPU ({other})" if other else f"in {previous.runtime} at {previous.threads} thread(s)"
        raise JcwError(f"{where} was measured {how}; extend only a table of this machine, runtime and threads, or "
                       "measure a new one")
    if meta.get("runtime_version", version) != version:
        raise JcwError(f"{where} was measured with {meta['runtime_version']}, this machine runs {version}; new "
                       "entries would not be timed as it was: measure a new one")
    counts = previous.entries["n"].dropna().unique()
    if len(counts) != 1 or (repeats is not None and repeats != counts[0]):
        raise JcwError(f"{where} holds entries of {', '.join(str(int(c)) for c in sorted(counts))} timed calls; "
                       f"extend it only at its own repeats (leave --repeats out)")
    with torch_threads(threads), pinned(threads) as cores:
        added = _measure_table(previous.device, spaces, threads, int(counts[0]), command, 0, None, runtime,
                               previous.entries)
    new = added.meta["made"]["entries_timed"]
    entries = merge_entries(previous.entries, added.entries)  # the rows they share hold the same values
    made = meta.get("made", {})
    made = dict(made, extended=[*made.get("extended", []), {
        "command": added.meta["made"]["command"], "date": added.meta["made"]["date"], "cpu": cpu_identity(),
        "runtime_version": version, "entries_timed": new, "pinned_cores": cores}])
    # overhead_ms, error and calibration_genomes stay the original measurement's: validate again for the new layers
    meta = dict(meta, made=made, input_sizes=sorted({*meta.get("input_sizes", []), *added.meta["input_sizes"]}),
                models=sorted({*meta.get("models", []), *added.meta["models"]}), spread=_spread(entries))
    return LatencyTable(device=previous.device, entries=entries, meta=meta)


def _spread(entries: pd.DataFrame) -> dict:
    spread = (entries.std_ms / entries.latency_ms).replace([np.inf], np.nan)
    return {"median_std_pct": round(float(100 * spread.median()), 2),
            "p90_std_pct": round(float(100 * spread.quantile(0.9)), 2),
            "what": "standard deviation over each entry's timed calls, relative to its median"}


def _measure_table(device: str, spaces: list[SearchSpace], threads: int, repeats: int, command: str,
                   calibration_subnets: int, supernet, runtime: str,
                   known: pd.DataFrame | None = None) -> LatencyTable:
    if device != "host" and not device.startswith("host"):
        raise JcwError(f"`jcw latency measure` times this machine; name its table host or host-SOMETHING, not "
                       f"{device!r} (for a phone use `jcw latency bundle`)")
    if runtime not in RUNTIME_DETAILS:
        raise JcwError(f"unknown runtime {runtime!r}; choose {', '.join(RUNTIME_DETAILS)}")
    gen = torch.Generator().manual_seed(0)
    dense_cache: dict[tuple, tuple[float, float]] = {}
    # entries a table being extended already holds: kept as they are, not timed again
    kept = {} if known is None else {tuple(r[:-4]): tuple(r[-4:]) for r in
                                     known[KEY + ["c_in", "c_out", "density", "latency_ms", "std_ms", "n",
                                                  "impl"]].itertuples(index=False)}
    grid = space_entries(spaces, lambda *a: (0, 0, 0, ""), known)
    timed = sum(tuple(r) not in kept for r in grid[KEY + ["c_in", "c_out", "density"]].itertuples(index=False))
    if known is not None and not timed:
        raise JcwError(f"the {device} table already holds every entry these supernets need; nothing to extend")
    bar = tqdm(total=timed, desc=f"measuring {device}", dynamic_ncols=True, file=sys.stderr)

    def price(layer: Layer, c_in: int, c_out: int, d: float):
        if (*layer_key(layer), c_in, c_out, d) in kept:
            return kept[(*layer_key(layer), c_in, c_out, d)]
        key, dense = (layer.signature, c_in, c_out), (*layer_key(layer), c_in, c_out, 1.0)
        if key not in dense_cache and dense in kept:  # a new density of a kept shape: its dense time as kept
            dense_cache[key] = kept[dense][:2]
        if key not in dense_cache:
            op = (onnx_micro_op(layer, c_in, c_out, 1.0) if runtime == "onnxruntime"
                  else tflite_micro_op(layer, c_in, c_out, 1.0, threads) if runtime == "tflite-xnnpack"
                  else _torch_call(layer, c_in, c_out, 1.0, "dense", gen))
            dense_cache[key] = time_call(op, repeats)
        best, impl = dense_cache[key], "dense"
        if d < 1.0 and has_sparse_kernel(layer) and runtime == "torch":
            sparse = time_call(_torch_call(layer, c_in, c_out, d, "sparse_csr", gen), repeats)
            if sparse[0] < best[0]:
                best, impl = sparse, "sparse_csr"
        bar.update(1)
        return round(best[0], 6), round(best[1], 6), repeats, impl

    entries = space_entries(spaces, price, known)
    bar.close()
    meta = {
        "device": device, "processor": processor_name(), "cpu": cpu_identity(), "runtime": runtime,
        "runtime_detail": RUNTIME_DETAILS[runtime], "runtime_version": _version(runtime),
        "threads": threads, "batch": 1, "input_sizes": sorted({s.input_size for s in spaces}),
        "models": sorted({s.model for s in spaces}), "source": "measured",
        "spread": _spread(entries),
        "made": {"command": command or f"jcw latency measure --device {device} --threads {threads}",
                 "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": platform.node(),
                 "cores": os.cpu_count(), "jcw": __version__, "python": sys.version.split()[0],
                 "method": f"{WARMUP} warm-up calls, median of {repeats} timed calls per entry",
                 "entries_timed": timed},
        "overhead_ms": 0.0,
        "error": {"kind": "not validated yet: run `jcw latency validate`"},
    }
    table = LatencyTable(device=device, entries=entries, meta=meta)
    if supernet is not None and calibration_subnets and runtime != "onnxruntime":
        genomes = calibration_genomes(supernet.space, calibration_subnets)
        table.meta["overhead_ms"] = round(_calibrate_overhead(table, supernet, genomes, repeats), 6)
        table.meta["calibration_genomes"] = [[int(v) for v in g] for g in genomes]
        table.meta["overhead_note"] = (f"median (end-to-end - sum of entries) over {calibration_subnets} spread "
                                       "subnets (seed 12345); `jcw latency validate` times others")
    return table


def calibration_genomes(space: SearchSpace, n: int = 5) -> np.ndarray:
    return space.sample_spread(n, np.random.default_rng(CALIBRATION_SEED))


CALIBRATION_SEED = 12345


def _version(runtime: str) -> str:
    if runtime == "onnxruntime":
        import onnxruntime  # heavy optional runtime

        return onnxruntime.__version__
    if runtime == "tflite-xnnpack":
        from importlib.metadata import version

        return f"ai-edge-litert {version('ai-edge-litert')}"
    return torch.__version__


def end_to_end_call(supernet, genome, bound):
    """A callable that runs the exported subnet as the table's runtime does (torch with the kernels the table chose,
    or LiteRT with XNNPACK at the table's threads)."""
    small, _ = subnet_from_supernet(supernet, genome)
    space = bound.space
    x = torch.randn(1, space.in_channels, space.input_size, space.input_size)
    if bound.table.runtime == "tflite-xnnpack":
        runner = interpreter(convert(cpu_runtime(small), [tuple(x.shape)]), bound.table.threads)
        set_inputs(runner, x.numpy())
        return runner.invoke
    impl = bound.implementation(genome)
    sparse = {layer.name for layer, kind in zip(space.layers, impl) if kind == "sparse_csr"}
    runtime = cpu_runtime(small, sparse)
    return lambda: runtime(x)


def end_to_end_ms(supernet, genome, bound, repeats: int) -> float:
    """Median time of the exported subnet in the table's runtime."""
    return time_call(end_to_end_call(supernet, genome, bound), repeats)[0]


def _calibrate_overhead(table: LatencyTable, supernet, genomes: np.ndarray, repeats: int) -> float:
    bound = table.bind(supernet.space)
    residuals = [end_to_end_ms(supernet, g, bound, repeats) - float(bound.latency(g)[0]) for g in genomes]
    return float(np.median(residuals))


def measure(device: str = "host", supernets: list[str | None] | None = None, threads: int = 1,
            repeats: int | None = None,
            runtime: str = "torch", out_dir: str | Path | None = None, command: str = "",
            extend: bool = False) -> tuple[LatencyTable, Path, Path]:
    """Measure this machine's table for the given supernet files (default: the shipped one) and save it: to
    `out_dir`, by default the user's table folder, which lookups read before the shipped tables. With `extend`,
    the table of that name in that folder gets only the entries it lacks."""
    check_value("threads", threads, least=1)
    check_value("repeats", repeats, least=1)
    folder = Path(out_dir) if out_dir else user_table_dir()
    previous = None
    if extend:
        if not (folder / f"{device}.json").exists():
            raise JcwError(f"no {device} table in {folder} to extend; measure one without --extend")
        previous = load_table(str(folder / f"{device}.json"))
    nets = [load_supernet(s) for s in (supernets or [None])]
    table = measure_table(device, [n.space for n in nets], threads=threads, repeats=repeats, command=command,
                          supernet=nets[0], runtime=runtime, previous=previous)
    return (table, *table.save(folder))
