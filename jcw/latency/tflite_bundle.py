"""Measure a phone's TFLite + XNNPACK latency: .tflite micro-models, a benchmark_model script, and the way back.

Every entry becomes a .tflite micro-model, timed on the phone by TFLite's standard `benchmark_model` (XNNPACK,
1 thread, pinned to a big core, warm-up, repeats). A dense entry is the layer alone. XNNPACK runs a 1x1 conv sparse
only inside a sparse subgraph (`jcw.xnnpack`), so a sparse 1x1 entry is timed inside the smallest one: a
3x3 stride-2 stem on a 3-channel image, the entry, an all-zero 1x1 "ballast" conv that takes the subgraph past two
thirds zero, and a global mean; the same subgraph without the entry is timed too, and the entry's time is the
difference. `import_results` parses benchmark_model's output files into a measured tflite-xnnpack table.
"""
from __future__ import annotations

import json
import math
import platform
import re
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn
from tqdm import tqdm

from jcw import __version__
from jcw.errors import JcwError
from jcw.io import write_csv, write_json, write_text
from jcw.latency.grid import space_entries
from jcw.latency.host_runtime import cpu_runtime
from jcw.latency.ops import micro_model, sparse_weight
from jcw.latency.table import COLUMNS, LatencyTable
from jcw.latency.tflite_runtime import convert
from jcw.space import Layer, SearchSpace
from jcw.xnnpack import SPARSE_FRACTION

RUN_SH = r"""#!/usr/bin/env bash
# Time every micro-model of this bundle on an attached Android phone with TFLite's benchmark_model and write
# results/<model>.txt, which `jcw latency import` reads.
#   BENCHMARK_MODEL  path to benchmark_model built for the phone (default ./benchmark_model; see jcw's README)
#   CPU_MASK         taskset mask of the core to pin to (default 80: the last core, a big core on most Snapdragons)
#   REPEATS          least timed runs per model (default 50; benchmark_model also runs for its minimum time), after
#                    10 warm-up runs
set -euo pipefail
cd "$(dirname "$0")"
BENCHMARK_MODEL=${BENCHMARK_MODEL:-./benchmark_model}
CPU_MASK=${CPU_MASK:-80}
REPEATS=${REPEATS:-50}
REMOTE=/data/local/tmp/jcw_bundle
adb shell mkdir -p $REMOTE
adb push "$BENCHMARK_MODEL" $REMOTE/benchmark_model >/dev/null
adb shell chmod +x $REMOTE/benchmark_model
mkdir -p results
for model in models/*.tflite; do
  name=$(basename "$model" .tflite)
  [ -s "results/$name.txt" ] && continue   # a rerun resumes where it stopped
  adb push "$model" $REMOTE/m.tflite >/dev/null
  adb shell taskset $CPU_MASK $REMOTE/benchmark_model --graph=$REMOTE/m.tflite --num_threads=1 --use_xnnpack=true \
      --warmup_runs=10 --num_runs="$REPEATS" > "results/$name.txt.tmp" 2>&1
  mv "results/$name.txt.tmp" "results/$name.txt"
done
echo "results/ written; now: jcw latency import $(pwd)"
"""

# benchmark_model prints "count=50 first=1203 curr=1011 min=998 max=1250 avg=1032.5 std=31" per phase (us) and a
# summary "Inference timings in us: Init: ..., First inference: ..., Warmup (avg): ..., Inference (avg): 1032.5"
_STATS = re.compile(r"count=(\d+)\s.*?avg=([\d.e+]+)\s+std=([\d.e+]+)")
_SUMMARY = re.compile(r"Inference \(avg\):\s*([\d.e+]+)")


def _ballast(c_in: int, density: float) -> int:
    """Output channels of an all-zero 1x1 conv after the entry that takes the subgraph past two thirds zero."""
    need = (1 / (1 - SPARSE_FRACTION) * density - 1) * c_in  # m > (3d - 1) c_in
    return max(8, int(math.ceil(max(need, 0) * 1.1)) + 1)


def _subgraph(layer: Layer, c_in: int, c_out: int, density: float, with_entry: bool,
              gen: torch.Generator) -> tuple[nn.Module, tuple]:
    m = _ballast(c_in, density)
    stem = nn.Conv2d(3, c_in, 3, 2, 1)
    parts: list[nn.Module] = [stem, nn.ReLU6()]
    width = c_in
    if with_entry:
        entry = nn.Conv2d(c_in, c_out, 1)
        entry.weight.data = sparse_weight(c_out, c_in, density, gen, 1, 1)
        parts += [entry, nn.ReLU6()]
        width = c_out
    ballast = nn.Conv2d(width, m, 1)
    ballast.weight.data.zero_()
    parts += [ballast, nn.AdaptiveAvgPool2d(1)]
    return nn.Sequential(*parts).eval(), (torch.randn(1, 3, 2 * layer.h, 2 * layer.w, generator=gen),)


def _runs_sparse_alone(layer: Layer, density: float) -> bool:
    return layer.kind == "conv" and not layer.depthwise and layer.kernel == 1 and layer.stride == 1 and density < 1


def _write(model: nn.Module, inputs: tuple, path: Path) -> None:
    path.write_bytes(convert(cpu_runtime(model), [tuple(x.shape) for x in inputs]))


def write_bundle(device: str, space: SearchSpace, out: str | Path) -> Path:
    out = Path(out)
    if (out / "manifest.csv").exists():
        raise JcwError(f"{out} already holds a bundle; choose another --out")
    (out / "models").mkdir(parents=True, exist_ok=True)
    grid = space_entries([space], lambda *a: (0.0, 0.0, 0, "dense"))
    layers = {l.signature: l for l in space.layers}
    gen = torch.Generator().manual_seed(0)
    rows, written = [], {}
    for i, e in enumerate(tqdm(grid.itertuples(), total=len(grid), desc="writing .tflite micro-models")):
        layer = layers[Layer(name="", kind=e.kind, h=e.h, w=e.w, kernel=e.kernel, stride=e.stride,
                             depthwise=bool(e.depthwise)).signature]
        c_in, c_out, d = int(e.c_in), int(e.c_out), float(e.density)
        row = {"entry": i, **{c: getattr(e, c) for c in COLUMNS[:9]}}
        if _runs_sparse_alone(layer, d) and layer.sparse >= 0:
            row["file"] = f"e{i:05d}"
            _write(*_subgraph(layer, c_in, c_out, d, True, gen), out / "models" / f"{row['file']}.tflite")
            key = ("base", layer.h, c_in, _ballast(c_in, d))
            if key not in written:
                written[key] = f"b{len(written):05d}"
                _write(*_subgraph(layer, c_in, c_out, d, False, gen), out / "models" / f"{written[key]}.tflite")
            row["baseline"], row["impl"] = written[key], "sparse_xnnpack"
        else:  # dense time does not depend on density: one model per (signature, c_in, c_out)
            key = ("dense", layer.signature, c_in, c_out)
            if key not in written:
                written[key] = f"d{len(written):05d}"
                module, inputs = micro_model(layer, c_in, c_out, 1.0, gen=gen)
                _write(module, inputs, out / "models" / f"{written[key]}.tflite")
            row["file"], row["baseline"], row["impl"] = written[key], "", "dense"
        rows.append(row)
    write_csv(out / "manifest.csv", pd.DataFrame(rows))
    write_json(out / "bundle.json", {"device": device, "format": "tflite", "space": space.model, "jcw": __version__,
                                     "made": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "entries": len(rows)})
    write_text(out / "run.sh", RUN_SH)
    (out / "run.sh").chmod(0o755)
    return out


def parse_benchmark_output(text: str) -> tuple[float, float, int]:
    """(mean ms, std ms, runs) of the timed runs in one benchmark_model output."""
    stats = _STATS.findall(text)
    if stats:  # the last stats line is the timed runs (the first is the warm-up)
        count, avg, std = stats[-1]
        return float(avg) / 1000, float(std) / 1000, int(count)
    summary = _SUMMARY.search(text)
    if summary:
        return float(summary.group(1)) / 1000, 0.0, 0
    raise ValueError("no timing line")


def import_results(bundle: str | Path, device: str | None = None) -> LatencyTable:
    bundle = Path(bundle)
    try:
        info = json.loads((bundle / "bundle.json").read_text())
        manifest = pd.read_csv(bundle / "manifest.csv", keep_default_na=False)
    except FileNotFoundError as exc:
        raise JcwError(f"{bundle} lacks {Path(exc.filename).name}; write it with `jcw latency bundle`") from None
    except ValueError as exc:  # JSON and CSV parse errors are ValueErrors
        raise JcwError(f"{bundle}'s bundle.json or manifest.csv is corrupt ({exc.__class__.__name__}); write the "
                       "bundle again with `jcw latency bundle`") from None
    lacking = [c for c in COLUMNS[:9] + ["impl", "file", "baseline"] if c not in manifest.columns]
    if lacking or not isinstance(info, dict) or "device" not in info:
        raise JcwError(f"{bundle}/manifest.csv lacks columns {lacking} or bundle.json names no device; write the "
                       "bundle again with `jcw latency bundle`")
    timings: dict[str, tuple[float, float, int]] = {}
    for name in set(manifest["file"]) | set(manifest["baseline"]) - {""}:
        path = bundle / "results" / f"{name}.txt"
        if not path.exists():
            missing = sum(1 for n in set(manifest["file"]) if not (bundle / "results" / f"{n}.txt").exists())
            raise JcwError(f"{bundle}/results lacks {path.name} ({missing} model outputs missing); rerun run.sh, "
                           "which resumes")
        try:
            timings[name] = parse_benchmark_output(path.read_text(errors="replace"))
        except ValueError:
            raise JcwError(f"{path} holds no benchmark_model timing line; rerun run.sh for it (delete the file)") \
                from None
    entries = manifest[COLUMNS[:9] + ["impl"]].copy()
    ms, std, n = [], [], []
    for row in manifest.itertuples():
        t, s, k = timings[row.file]
        if row.baseline:
            base = timings[row.baseline]
            t, s = max(t - base[0], 0.0), (s ** 2 + base[1] ** 2) ** 0.5
        ms.append(round(t, 6))
        std.append(round(s, 6))
        n.append(k)
    entries["latency_ms"], entries["std_ms"], entries["n"] = ms, std, n
    device = device or info["device"]
    meta = {"device": device, "processor": "the phone that ran run.sh", "runtime": "tflite-xnnpack",
            "runtime_detail": "TFLite benchmark_model with XNNPACK, 1 thread, pinned (jcw latency bundle --format "
                              "tflite); sparse 1x1 entries timed inside a minimal sparse subgraph, less its baseline",
            "threads": 1, "batch": 1, "source": "measured", "input_sizes": [], "models": [info.get("space")],
            "made": {"command": f"jcw latency bundle --format tflite --device {info['device']}; run.sh; "
                                f"jcw latency import", "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
                     "machine": platform.node(), "bundle_made": info.get("made")},
            "overhead_ms": 0.0, "error": {"kind": "not validated end to end"}}
    return LatencyTable(device=device, entries=entries[COLUMNS], meta=meta)
