"""Refinement picks focused on the budget: could fewer subnets scored per refinement round keep the pick?

A search's refinement rounds score `--refine` members of the predicted front spread over its whole latency range. The
pick at a budget is chosen among scored members just under it, so this benchmark tries the other rule: each round
takes the predicted front's members nearest under each budget first (`--focus` of them) and fills the rest spread
over the range, as today. The refinement's pick rule is patched in its process (`jcw.search.run.spread_front`); one
fresh process per run, one run after another.

    python benchmarks/refine_focus.py [--supernets default mbv2_small_fmnist] [--seeds 0 1 2] [--refine 4 6]
                                      [--focus 2]

Prints one JSON line per run and a table of the picks' validation and test top-1 (RESULTS.md section 6 gives the
2026-12-07 run).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pandas as pd

BUDGET_MS = 1.0  # the README search's


def one_run(supernet: str, seed: int, refine: int, focus: int, out: str) -> dict:
    import jcw.search.run as run
    from jcw.config import SearchConfig
    from jcw.search.archive import hypervolume, pareto_mask, spread_pick

    def focused(latency, top1, candidates, k):
        front = candidates[pareto_mask(latency[candidates], top1[candidates])]
        front = front[np.argsort(latency[front], kind="stable")]
        chosen = [int(i) for i in front[latency[front] <= BUDGET_MS][::-1][:focus]]
        rest = np.array([i for i in front if i not in chosen], dtype=int)
        if len(chosen) < k and len(rest):
            chosen += [int(i) for i in rest[spread_pick(latency[rest], k - len(chosen))]]
        return np.array(chosen[:k], dtype=int)

    run.spread_front = focused  # the refinement rounds; the final re-scoring (front.py) still spreads its picks
    paths = {} if supernet == "default" else {"supernet": f"supernets/{supernet}/supernet.pt",
                                              "predictor": f"predictors/{supernet}/predictor.pt"}
    result = run.search(SearchConfig(device="pixel4", budgets_ms=[BUDGET_MS], seed=seed, refine=refine, out=out,
                                     force=True, **paths), log=lambda *a: None)
    front, pick = result.pareto, result.summary.iloc[0]
    return {"supernet": supernet, "seed": seed, "refine": refine, "focus": focus,
            "scored": int(result.history["true_top1"].notna().sum()),
            "hv": round(hypervolume(front["latency_ms"].to_numpy(), front["top1"].to_numpy(), BUDGET_MS, 80.0), 4),
            "id": int(pick["id"]), "val": float(pick["top1"]), "test": float(pick["test_top1"]),
            "timings_s": {k: round(v, 2) for k, v in json.loads(
                (result.out / "config.json").read_text())["timings_s"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--supernets", nargs="+", default=["default", "mbv2_small_fmnist"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--refine", nargs="+", type=int, default=[4])
    ap.add_argument("--focus", type=int, default=2)
    ap.add_argument("--one", nargs=5, metavar=("SUPERNET", "SEED", "REFINE", "FOCUS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        supernet, seed, refine, focus, out = args.one
        print(json.dumps(one_run(supernet, int(seed), int(refine), int(focus), out)), flush=True)
        return
    rows = []
    for refine in args.refine:
        for supernet in args.supernets:
            for seed in args.seeds:
                ran = subprocess.run([sys.executable, __file__, "--one", supernet, str(seed), str(refine),
                                      str(args.focus), f"benchmarks/work/refine_focus/{supernet}-{seed}-{refine}"],
                                     capture_output=True, text=True, check=True)
                rows.append(json.loads(ran.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows).groupby(["supernet", "refine"]).agg(
        seeds=("seed", "size"), val=("val", "mean"), test=("test", "mean"), test_sd=("test", "std"),
        hv=("hv", "mean"), scored=("scored", "median"))
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
