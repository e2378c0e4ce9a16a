"""Measured tables for this machine, and end-to-end validation of a table against real exported subnets.

Every entry is timed with the modules the CPU runtime (`jcw.deploy`) runs: a conv with its batch norm folded and
its activation, or torch's sparse CSR kernel for a 1x1 conv or linear layer where that beats dense. Dense time does
not depend on density, so it is timed once per (c_in, c_out) and shared by every density.
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from jcw import __version__
from jcw.deploy import SparseConv1x1, cpu_runtime
from jcw.errors import JcwError
from jcw.io import write_json
from jcw.latency.derive import space_entries
from jcw.latency.table import LatencyTable, load_table
from jcw.space import Layer, SearchSpace

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


def _sparse_weight(c_out: int, c_in: int, density: float, gen: torch.Generator) -> torch.Tensor:
    w = torch.randn(c_out, c_in, generator=gen)
    k = max(1, int(round(density * w.numel())))
    mask = torch.zeros(w.numel())
    mask[torch.randperm(w.numel(), generator=gen)[:k]] = 1
    return w * mask.view_as(w)


def micro_op(layer: Layer, c_in: int, c_out: int, density: float, impl: str, gen: torch.Generator):
    """A callable that runs one table entry exactly as the CPU runtime would, and its input."""
    if layer.kind == "conv":
        x = torch.randn(1, c_in, layer.h, layer.w, generator=gen)
        if impl == "sparse_csr":
            op = nn.Sequential(SparseConv1x1(_sparse_weight(c_out, c_in, density, gen), torch.zeros(c_out),
                                             layer.stride), nn.ReLU6())
        else:
            groups = c_in if layer.depthwise else 1
            conv = nn.Conv2d(c_in, c_out, layer.kernel, layer.stride, (layer.kernel - 1) // 2, groups=groups)
            op = nn.Sequential(conv, nn.Identity(), nn.ReLU6())
        return lambda: op(x)
    if layer.kind == "linear":
        x = torch.randn(1, c_in, generator=gen)
        if impl == "sparse_csr":
            op = SparseConv1x1(_sparse_weight(c_out, c_in, density, gen), torch.zeros(c_out), spatial=False)
        else:
            op = nn.Linear(c_in, c_out)
        return lambda: op(x)
    if layer.kind == "add":
        a, b = torch.randn(1, c_out, layer.h, layer.w, generator=gen), torch.randn(1, c_out, layer.h, layer.w)
        return lambda: a + b
    if layer.kind == "pool":
        x = torch.randn(1, c_out, layer.h, layer.w, generator=gen)
        if layer.kernel >= layer.h:
            return lambda: torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
        pool = nn.MaxPool2d(layer.kernel, layer.stride, (layer.kernel - 1) // 2)
        return lambda: pool(x)
    raise ValueError(layer.kind)


def onnx_micro_op(layer: Layer, c_in: int, c_out: int, density: float):
    """A callable that runs one entry's ONNX micro-model (the one `jcw latency bundle` writes) in onnxruntime."""
    import io

    import onnxruntime as ort

    from jcw.latency.bundle import micro_model

    model, inputs = micro_model(layer, c_in, c_out, density)
    buffer = io.BytesIO()
    torch.onnx.export(model.eval(), inputs, buffer, dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    session = ort.InferenceSession(buffer.getvalue(), opts, providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
    return lambda: session.run(None, feeds)


def has_sparse_kernel(layer: Layer) -> bool:
    return layer.sparse >= 0 and (layer.kind == "linear" or (layer.kind == "conv" and layer.kernel == 1))


def processor_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


RUNTIMES = {"torch": "torch eager CPU (jcw.deploy: BN folded, sparse CSR for 1x1 convs and linear where faster)",
            "onnxruntime": "onnxruntime CPU, dense (the micro-models `jcw latency bundle` writes)"}


def measure_table(device: str, spaces: list[SearchSpace], threads: int = 1, repeats: int = 30,
                  command: str = "", calibration_subnets: int = 5, supernet=None,
                  runtime: str = "torch") -> LatencyTable:
    """Time every entry the spaces need on this machine; calibrate the per-call overhead end to end.

    runtime="torch" times what exported subnets run on the CPU; runtime="onnxruntime" times the bundle's micro-models
    the way `run.sh --local` does, to check a phone bundle's round trip against a direct measurement.
    """
    if device != "host" and not device.startswith("host"):
        raise JcwError(f"`jcw latency measure` times this machine; name its table host or host-SOMETHING, not "
                       f"{device!r} (for a phone use `jcw latency bundle`)")
    if runtime not in RUNTIMES:
        raise JcwError(f"unknown runtime {runtime!r}; choose {' or '.join(RUNTIMES)}")
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    dense_cache: dict[tuple, tuple[float, float]] = {}
    total = len(space_entries(spaces, lambda *a: (0, 0, 0, "")))
    bar = tqdm(total=total, desc=f"measuring {device}", dynamic_ncols=True, file=sys.stderr)

    def price(layer: Layer, c_in: int, c_out: int, d: float):
        key = (layer.signature, c_in, c_out)
        if key not in dense_cache:
            op = (onnx_micro_op(layer, c_in, c_out, 1.0) if runtime == "onnxruntime"
                  else micro_op(layer, c_in, c_out, 1.0, "dense", gen))
            dense_cache[key] = time_call(op, repeats)
        best, impl = dense_cache[key], "dense"
        if d < 1.0 and has_sparse_kernel(layer) and runtime == "torch":
            sparse = time_call(micro_op(layer, c_in, c_out, d, "sparse_csr", gen), repeats)
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
    import onnxruntime

    return onnxruntime.__version__


def end_to_end_ms(supernet, genome, bound, repeats: int) -> float:
    from jcw.export import subnet_from_supernet

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


def validate_table(device: str, supernet, samples: int = 30, seed: int = 0, out_dir: str | Path | None = None,
                   repeats: int = 50) -> dict:
    """Time `samples` exported subnets, spread from the smallest to the largest, end to end against the table."""
    table = load_table(device, out_dir)
    if table.meta.get("source") != "measured" or not device.startswith("host"):
        raise JcwError(f"only a table measured on this machine can be validated here; {device} is "
                       f"{table.meta.get('source', 'unknown')} (phones: see `jcw latency bundle`)")
    if table.meta.get("runtime") != RUNTIMES["torch"]:
        raise JcwError(f"validation times exported subnets on jcw's torch CPU runtime; {device} was measured with "
                       f"{table.meta.get('runtime')}")
    torch.set_num_threads(int(table.meta.get("threads", 1)))
    bound = table.bind(supernet.space)
    rows = []
    genomes = supernet.space.sample_spread(samples, np.random.default_rng(seed))  # smallest to largest, not mid-size
    for g in tqdm(genomes, desc="validating", file=sys.stderr):
        measured = end_to_end_ms(supernet, g, bound, repeats)
        predicted = float(bound.latency(g)[0])
        rows.append({"genome": [int(v) for v in g], "predicted_ms": round(predicted, 5),
                     "measured_ms": round(measured, 5), "error_pct": round(100 * (predicted - measured) / measured, 2)})
    errors = np.array([abs(r["error_pct"]) for r in rows])
    report = {"samples": len(rows), "mape": round(float(errors.mean()), 3),
              "within_10pct": round(float((errors <= 10).mean()), 3), "rows": rows}
    folder = Path(out_dir) if out_dir else None
    from jcw.artifacts import artifact_dir

    folder = folder or artifact_dir("latency_tables")
    path = folder / f"{device}.validation.json"
    write_json(path, report)
    table.meta["error"] = {"kind": f"end-to-end on {len(rows)} exported subnets spread over the size range "
                                   f"(seed {seed})",
                           "mape_pct": report["mape"], "within_10pct": report["within_10pct"],
                           "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}
    write_json(folder / f"{device}.json", table.meta)
    report["report"] = str(path)
    return report
