"""JCW's multi-target selection against plain NSGA-II survival, per budget: the README search with four budgets,
both survivals, several seeds; true top-1 of each budget's pick and the front's hypervolume.

    python benchmarks/selection.py [--seeds 0 1 2 3 4] [--budgets 0.5ms,0.75ms,1ms,1.5ms]

Writes its section of benchmarks/RESULTS.md between its markers.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sections import write_section

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jcw.search.archive import hypervolume  # noqa: E402
from jcw.search.budget import parse_budgets  # noqa: E402


def run(survival: str, seed: int, budgets: str) -> dict:
    out = Path(tempfile.mkdtemp()) / "run"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jcw.cli", "search", "--device", "pixel4", "--latency", budgets,
                    "--survival", survival, "--seed", str(seed), "--no-export", "--out", str(out)], cwd=ROOT,
                   check=True, capture_output=True)
    front, summary = pd.read_csv(out / "pareto.csv"), pd.read_csv(out / "summary.csv")
    top = max(parse_budgets(budgets))
    return {"survival": survival, "seed": seed, "seconds": time.perf_counter() - start,
            "hv": hypervolume(front["latency_ms"].to_numpy(), front["top1"].to_numpy(), top, 80.0),
            **{f"{b:g} ms": t for b, t in zip(summary["budget_ms"], summary["top1"])}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--budgets", default="0.5ms,0.75ms,1ms,1.5ms")
    args = ap.parse_args()
    rows = []
    for seed in args.seeds:
        for survival in ("jcw", "nsga2"):
            rows.append(run(survival, seed, args.budgets))
            print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    cols = [c for c in frame.columns if c.endswith(" ms")] + ["hv"]
    stats = frame.groupby("survival")[cols].agg(["mean", "std"])
    lines = ["## 7. Selection per budget (benchmarks/selection.py)", "",
             f"`jcw search --device pixel4 --latency {args.budgets} --survival S --seed N`, defaults otherwise, "
             f"seeds {args.seeds}: true validation top-1 of each budget's pick, and the hypervolume of the true "
             f"front against ({max(parse_budgets(args.budgets)):g} ms, 80%). Mean (sd) over the seeds.", "",
             "| survival | " + " | ".join(cols) + " |", "| --- " * (len(cols) + 1) + "|"]
    for survival in ("jcw", "nsga2"):
        cells = [f"{stats.loc[survival, (c, 'mean')]:.{4 if c == 'hv' else 2}f} "
                 f"({stats.loc[survival, (c, 'std')]:.{4 if c == 'hv' else 2}f})" for c in cols]
        lines.append(f"| {survival} | " + " | ".join(cells) + " |")
    diff = frame[frame.survival == "jcw"].set_index("seed")[cols] - frame[frame.survival == "nsga2"].set_index(
        "seed")[cols]
    lines += ["", "Paired by seed, jcw minus nsga2: " + ", ".join(
        f"{c} {diff[c].mean():+.{4 if c == 'hv' else 2}f} (jcw ahead on {(diff[c] > 0).sum()} of {len(diff)})"
        for c in cols) + f". Median search {np.median(frame['seconds']):.0f} s."]
    write_section("selection.py", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
