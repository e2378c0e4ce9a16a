"""Measure a phone you own: ONNX micro-models for every table entry, a script to time them, and the way back.

`write_bundle` writes one ONNX model per (signature, c_in, c_out, density) entry of a space, a manifest and run.sh.
On a phone (`run.sh --adb`) each model is pushed and timed with onnxruntime's standard benchmark binary
(onnxruntime_perf_test), pinned to the big cores, with warm-up and repeats. `run.sh --local` times the same models
with onnxruntime on this machine, so the round trip is testable here. `import_results` turns results.csv into a
measured table. The micro-models carry their zeros, but onnxruntime runs them dense.
"""
from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from jcw import __version__
from jcw.errors import JcwError
from jcw.io import write_csv, write_json, write_text
from jcw.latency import tflite_bundle
from jcw.latency.grid import space_entries
from jcw.latency.ops import micro_model
from jcw.latency.table import COLUMNS, LatencyTable, user_table_dir
from jcw.space import Layer, SearchSpace
from jcw.supernet.supernet import load_supernet

RUN_SH = r"""#!/usr/bin/env bash
# Time every micro-model of this bundle and write results.csv.
#   ./run.sh --adb    on an attached Android phone (needs adb and an onnxruntime_perf_test built for the phone,
#                     path in $PERF_TEST, default ./onnxruntime_perf_test); pinned to CPUs $CPU_MASK (default f0,
#                     the big cores on most Snapdragons), $REPEATS runs after a warm-up
#   ./run.sh --local  on this machine, with onnxruntime from Python
set -euo pipefail
cd "$(dirname "$0")"
REPEATS=${REPEATS:-50}
CPU_MASK=${CPU_MASK:-f0}
case "${1:-}" in
  --local) exec python3 local_run.py --repeats "$REPEATS" ;;
  --adb)
    PERF_TEST=${PERF_TEST:-./onnxruntime_perf_test}
    REMOTE=/data/local/tmp/jcw_bundle
    adb shell mkdir -p $REMOTE
    adb push "$PERF_TEST" $REMOTE/perf_test >/dev/null
    adb shell chmod +x $REMOTE/perf_test
    echo "entry,latency_ms,std_ms,n" > results.csv.tmp
    tail -n +2 manifest.csv | while IFS=, read -r entry file rest; do
      adb push "models/$file" $REMOTE/m.onnx >/dev/null
      adb shell taskset $CPU_MASK $REMOTE/perf_test -e cpu -x 1 -r 10 $REMOTE/m.onnx >/dev/null   # warm-up
      ms=$(adb shell taskset $CPU_MASK $REMOTE/perf_test -e cpu -x 1 -r "$REPEATS" $REMOTE/m.onnx \
           | sed -n 's/.*Average inference time cost[^0-9]*\([0-9.]*\).*/\1/p')
      echo "$entry,$ms,,$REPEATS" >> results.csv.tmp
    done
    mv results.csv.tmp results.csv ;;
  *) echo "usage: $0 --adb | --local" >&2; exit 2 ;;
esac
"""

LOCAL_RUN = r'''"""Time each micro-model with onnxruntime on this machine (one thread): warm-up, repeats, median."""
import argparse, csv, os, statistics, time
import numpy as np
import onnxruntime as ort

parser = argparse.ArgumentParser()
parser.add_argument("--repeats", type=int, default=50)
args = parser.parse_args()
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
opts.inter_op_num_threads = 1
rows = []
with open("manifest.csv") as f:
    entries = list(csv.DictReader(f))
for i, e in enumerate(entries):
    sess = ort.InferenceSession(os.path.join("models", e["file"]), opts, providers=["CPUExecutionProvider"])
    feeds = {inp.name: np.random.rand(*inp.shape).astype(np.float32) for inp in sess.get_inputs()}
    for _ in range(10):
        sess.run(None, feeds)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter_ns()
        sess.run(None, feeds)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    rows.append({"entry": e["entry"], "latency_ms": statistics.median(times), "std_ms": statistics.pstdev(times),
                 "n": args.repeats})
    if i % 200 == 0:
        print(f"{i}/{len(entries)}", flush=True)
with open("results.csv.tmp", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["entry", "latency_ms", "std_ms", "n"])
    writer.writeheader()
    writer.writerows(rows)
os.replace("results.csv.tmp", "results.csv")
print("results.csv written")
'''


def write_bundle(device: str, space: SearchSpace, out: str | Path) -> Path:
    out = Path(out)
    if (out / "manifest.csv").exists():
        raise JcwError(f"{out} already holds a bundle; choose another --out")
    (out / "models").mkdir(parents=True, exist_ok=True)
    grid = space_entries([space], lambda *a: (0.0, 0.0, 0, "dense"))
    rows = []
    layers = {l.signature: l for l in space.layers}
    for i, e in enumerate(tqdm(grid.itertuples(), total=len(grid), desc="writing micro-models")):
        sig = Layer(name="", kind=e.kind, h=e.h, w=e.w, kernel=e.kernel, stride=e.stride,
                    depthwise=bool(e.depthwise)).signature
        model, inputs = micro_model(layers[sig], int(e.c_in), int(e.c_out), float(e.density))
        file = f"e{i:05d}.onnx"
        torch.onnx.export(model, inputs, str(out / "models" / file), dynamo=False)
        rows.append({"entry": i, "file": file, **{c: getattr(e, c) for c in COLUMNS[:9]}})
    write_csv(out / "manifest.csv", pd.DataFrame(rows))
    write_json(out / "bundle.json", {"device": device, "space": space.model, "jcw": __version__,
                                     "made": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "entries": len(rows)})
    write_text(out / "run.sh", RUN_SH)
    (out / "run.sh").chmod(0o755)
    write_text(out / "local_run.py", LOCAL_RUN)
    return out


def import_results(bundle: str | Path, device: str | None = None) -> LatencyTable:
    bundle = Path(bundle)
    try:
        info = json.loads((bundle / "bundle.json").read_text())
        manifest = pd.read_csv(bundle / "manifest.csv")
        results = pd.read_csv(bundle / "results.csv")
    except FileNotFoundError as exc:
        raise JcwError(f"{bundle} lacks {Path(exc.filename).name}; run its run.sh first") from None
    except (ValueError, pd.errors.ParserError) as exc:
        raise JcwError(f"bundle files in {bundle} are corrupt ({exc.__class__.__name__})") from None
    merged = manifest.merge(results, on="entry", how="left")
    if merged["latency_ms"].isna().any():
        missing = int(merged["latency_ms"].isna().sum())
        raise JcwError(f"results.csv in {bundle} lacks {missing} of {len(merged)} entries; rerun run.sh")
    merged["std_ms"] = merged["std_ms"].fillna(0.0)
    merged["impl"] = "dense"
    device = device or info["device"]
    meta = {"device": device, "processor": "see made.machine (local) or the phone that ran run.sh --adb",
            "runtime": "onnxruntime", "runtime_detail": "onnxruntime (micro-models from jcw latency bundle)",
            "threads": 1, "batch": 1,
            "source": "measured", "input_sizes": [], "models": [info.get("space")],
            "made": {"command": f"jcw latency bundle --device {info['device']}; run.sh; jcw latency import",
                     "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": platform.node(),
                     "bundle_made": info.get("made")},
            "overhead_ms": 0.0, "error": {"kind": "not validated end to end"}}
    return LatencyTable(device=device, entries=merged[COLUMNS], meta=meta)


FORMATS = ("onnx", "tflite")


def bundle(device: str, supernet: str | Path | None, out: str | Path, format: str = "onnx") -> Path:
    """A phone bundle covering a supernet file's space (default: the shipped supernet): ONNX micro-models for
    onnxruntime, or .tflite ones for TFLite's benchmark_model with XNNPACK (`jcw.latency.tflite_bundle`)."""
    if format not in FORMATS:
        raise JcwError(f"unknown bundle format {format!r}; choose {' or '.join(FORMATS)}")
    space = load_supernet(supernet).space
    if format == "tflite":
        return tflite_bundle.write_bundle(device, space, out)
    return write_bundle(device, space, out)


def import_bundle(bundle_dir: str | Path, device: str | None = None,
                  out_dir: str | Path | None = None) -> tuple[LatencyTable, Path, Path]:
    """A bundle's results as a measured table, saved (by default to the user's table folder)."""
    try:
        info = json.loads((Path(bundle_dir) / "bundle.json").read_text())
    except OSError:
        info = {}  # import_results says what is missing
    except ValueError:
        raise JcwError(f"{bundle_dir}/bundle.json is corrupt; write the bundle again with `jcw latency bundle`") \
            from None
    tflite = isinstance(info, dict) and info.get("format") == "tflite"
    if tflite:
        table = tflite_bundle.import_results(bundle_dir, device)
    else:
        table = import_results(bundle_dir, device)
    return (table, *table.save(out_dir or user_table_dir()))
