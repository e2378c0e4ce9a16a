"""How many genomes a second the latency tables and the predictor price, on one core, for this tree and older ones.

    python benchmarks/screening.py [--old-tree DIR ...] [--genomes 100000] [--repeats 7]

Each tree runs in its own process pinned to core 0 (`taskset -c 0`, one BLAS thread), on the same random genomes of
the default supernet's space; the rate is the median over the repeats of one call on all of them. Besides the shipped
tables, the pixel4 table with XNNPACK's stem rule relaxed prices the case where the sparse subgraph can start (every
genome is then checked against the two-thirds rule), as benchmarks/xnnpack_rules.py's what-if does.

Writes its section of benchmarks/RESULTS.md between its markers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from sections import write_section

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jcw.latency.cpu import cpu_identity  # noqa: E402

TABLES = ["pixel4", "pixel4 (stem rule relaxed)", "pixel4-jcw-arm", "host", "host-tflite"]

# Runs with the tree under test first on sys.path; prints one JSON line of genomes/s per table and for the predictor.
RATES = """
import json, shutil, sys, tempfile, time, warnings
from pathlib import Path
import numpy as np
warnings.simplefilter("ignore")  # the other-CPU warning of the host tables
from jcw.artifacts import artifact_dir
from jcw.latency.table import load_table
from jcw.predictor.predictor import load_predictor
from jcw.supernet.supernet import load_supernet
n, repeats = int(sys.argv[1]), int(sys.argv[2])
space = load_supernet().space
genomes = space.sample(n, np.random.default_rng(0))

def rate(price):
    price(genomes[:100])
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        price(genomes)
        seconds.append(time.perf_counter() - start)
    return n / float(np.median(seconds))

what_if = Path(tempfile.mkdtemp())
shipped = artifact_dir("latency_tables")
shutil.copy(shipped / "pixel4.csv", what_if / "pixel4-nostem.csv")
meta = json.loads((shipped / "pixel4.json").read_text())
meta.update(device="pixel4-nostem", what_if_relaxed=["stem"])
(what_if / "pixel4-nostem.json").write_text(json.dumps(meta))
rates = {name: rate(load_table(*device).bind(space).latency) for name, device in
         [("pixel4", ["pixel4"]), ("pixel4 (stem rule relaxed)", ["pixel4-nostem", what_if]),
          ("pixel4-jcw-arm", ["pixel4-jcw-arm"]), ("host", ["host"]), ("host-tflite", ["host-tflite"])]}
rates["predictor"] = rate(load_predictor().predict)
print(json.dumps(rates))
"""


def rates(tree: Path, genomes: int, repeats: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", RATES, str(genomes), str(repeats)], cwd=tree,
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def section(results: dict[str, dict], genomes: int, repeats: int) -> str:
    cpu = cpu_identity()
    names = list(results)
    lines = ["## 11. Screening rate (benchmarks/screening.py)", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node()} ({cpu['model']}), "
             f"each tree in its own process pinned to one core with one BLAS thread: genomes a second priced in one "
             f"call on {genomes:,} random genomes of the default space, median of {repeats}.", "",
             "| what | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for what in TABLES + ["predictor"]:
        label = f"table {what}" if what != "predictor" else "predictor (kernel)"
        lines.append(f"| {label} | " + " | ".join(f"{results[n][what]:,.0f}" for n in names) + " |")
    if len(names) > 1:
        base, old = names[0], names[1]
        ratios = ", ".join(f"{what} {results[base][what] / results[old][what]:.2f}x" for what in TABLES + ["predictor"])
        lines += ["", f"This tree against {old}: {ratios}."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-tree", type=Path, nargs="+", default=[], help="checkouts of older jcw to compare with")
    ap.add_argument("--genomes", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    trees = {"this tree": ROOT, **{f"older tree ({t.name})": t for t in args.old_tree}}
    results = {name: rates(tree, args.genomes, args.repeats) for name, tree in trees.items()}
    print(json.dumps(results, indent=1), flush=True)
    write_section("screening.py", section(results, args.genomes, args.repeats))
    print(f"wrote {Path(__file__).parent / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
