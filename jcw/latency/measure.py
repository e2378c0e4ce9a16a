"""Measured tables for this machine.

Every entry is timed with the modules the CPU runtime (`jcw.latency.host_runtime`) runs: a conv with its batch norm folded and
its activation, or torch's sparse CSR kernel for a 1x1 conv or linear layer where that beats dense. Dense time does
not depend on density, so it is timed once per (c_in, c_out) and shared by every density.
"""
from __future__ import annotations

import io
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from jcw import __version__
from jcw.errors import JcwError
from jcw.latency.grid import space_entries
from jcw.latency.host_runtime import cpu_runtime
from jcw.latency.ops import has_sparse_kernel, micro_model
from jcw.latency.table import LatencyTable
from jcw.runtime import torch_threads
from jcw.space import Layer, SearchSpace
from jcw.supernet.slicing import subnet_from_supernet
from jcw.supernet.supernet import load_supernet

WARMUP = 10


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


def processor_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


TORCH_RUNTIME_PREFIX = "torch eager CPU"  # tables made before the runtime moved name it differently after this
RUNTIMES = {"torch": "torch eager CPU (jcw.latency.host_runtime: BN folded, sparse CSR for 1x1 convs and linear where faster)",
            "onnxruntime": "onnxruntime CPU, dense (the micro-models `jcw latency bundle` writes)"}


def measure_table(device: str, spaces: list[SearchSpace], threads: int = 1, repeats: int = 30,
                  command: str = "", calibration_subnets: int = 5, supernet=None,
                  runtime: str = "torch") -> LatencyTable:
    """Time every entry the spaces need on this machine at `threads`; calibrate the per-call overhead end to end.

    runtime="torch" times what exported subnets run on the CPU; runtime="onnxruntime" times the bundle's micro-models
    the way `run.sh --local` does, to check a phone bundle's round trip against a direct measurement.
    """
    with torch_threads(threads):
        return _measure_table(device, spaces, threads, repeats, command, calibration_subnets, supernet, runtime)


def _measure_table(device: str, spaces: list[SearchSpace], threads: int, repeats: int, command: str,
                   calibration_subnets: int, supernet, runtime: str) -> LatencyTable:
    if device != "host" and not device.startswith("host"):
        raise JcwError(f"`jcw latency measure` times this machine; name its table host or host-SOMETHING, not "
                       f"{device!r} (for a phone use `jcw latency bundle`)")
    if runtime not in RUNTIMES:
        raise JcwError(f"unknown runtime {runtime!r}; choose {' or '.join(RUNTIMES)}")
    gen = torch.Generator().manual_seed(0)
    dense_cache: dict[tuple, tuple[float, float]] = {}
    total = len(space_entries(spaces, lambda *a: (0, 0, 0, "")))
    bar = tqdm(total=total, desc=f"measuring {device}", dynamic_ncols=True, file=sys.stderr)

    def price(layer: Layer, c_in: int, c_out: int, d: float):
        key = (layer.signature, c_in, c_out)
        if key not in dense_cache:
            op = (onnx_micro_op(layer, c_in, c_out, 1.0) if runtime == "onnxruntime"
                  else _torch_call(layer, c_in, c_out, 1.0, "dense", gen))
            dense_cache[key] = time_call(op, repeats)
        best, impl = dense_cache[key], "dense"
        if d < 1.0 and has_sparse_kernel(layer) and runtime == "torch":
            sparse = time_call(_torch_call(layer, c_in, c_out, d, "sparse_csr", gen), repeats)
            if sparse[0] < best[0]:
                best, impl = sparse, "sparse_csr"
        bar.update(1)
        return round(best[0], 6), round(best[1], 6), repeats, impl

    entries = space_entries(spaces, price)
    bar.close()
    meta = {
        "device": device, "processor": processor_name(), "runtime": RUNTIMES[runtime],
        "runtime_version": torch.__version__ if runtime == "torch" else _ort_version(),
        "threads": threads, "batch": 1, "input_sizes": sorted({s.input_size for s in spaces}),
        "models": sorted({s.model for s in spaces}), "source": "measured",
        "made": {"command": command or f"jcw latency measure --device {device} --threads {threads}",
                 "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": platform.node(),
                 "cores": os.cpu_count(), "jcw": __version__, "python": sys.version.split()[0],
                 "method": f"{WARMUP} warm-up calls, median of {repeats} timed calls per entry"},
        "overhead_ms": 0.0,
        "error": {"kind": "not validated yet: run `jcw latency validate`"},
    }
    table = LatencyTable(device=device, entries=entries, meta=meta)
    if supernet is not None and calibration_subnets and runtime == "torch":
        table.meta["overhead_ms"] = round(_calibrate_overhead(table, supernet, calibration_subnets, repeats), 6)
        table.meta["overhead_note"] = (f"median (end-to-end - sum of entries) over {calibration_subnets} spread "
                                       "subnets (seed 12345), not those used to validate")
    return table


def _ort_version() -> str:
    import onnxruntime  # heavy optional runtime

    return onnxruntime.__version__


def end_to_end_ms(supernet, genome, bound, repeats: int) -> float:
    """Median time of the exported subnet in the CPU runtime, with the kernels the table chose."""
    small, _ = subnet_from_supernet(supernet, genome)
    impl = bound.implementation(genome)
    sparse = {layer.name for layer, kind in zip(bound.space.layers, impl) if kind == "sparse_csr"}
    runtime = cpu_runtime(small, sparse)
    space = bound.space
    x = torch.randn(1, space.in_channels, space.input_size, space.input_size)
    return time_call(lambda: runtime(x), repeats)[0]


def _calibrate_overhead(table: LatencyTable, supernet, n: int, repeats: int) -> float:
    bound = table.bind(supernet.space)
    genomes = supernet.space.sample_spread(n, np.random.default_rng(12345))
    residuals = [end_to_end_ms(supernet, g, bound, repeats) - float(bound.latency(g)[0]) for g in genomes]
    return float(np.median(residuals))


def measure(device: str = "host", supernets: list[str | None] | None = None, threads: int = 1, repeats: int = 30,
            runtime: str = "torch", out_dir: str | Path | None = None, command: str = "") -> tuple[LatencyTable, Path,
                                                                                                    Path]:
    """Measure this machine's table for the given supernet files (default: the shipped one) and save it."""
    nets = [load_supernet(s) for s in (supernets or [None])]
    table = measure_table(device, [n.space for n in nets], threads=threads, repeats=repeats, command=command,
                          supernet=nets[0], runtime=runtime)
    return (table, *table.save(out_dir))
