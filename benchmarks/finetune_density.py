"""Does density pay after fine-tuning? Joint and channels-only picks at 0.4B, 0.5B and B, fine-tuned alike.

Users deploy a front member after `jcw finetune`, so the inherited top-1 the search ranks by is not the last word:
a sparse subnet may recover more (or less) than a narrower dense one. For each seed, each supernet and gene mode is
searched as the README does, with the three budgets at once (`jcw search --device pixel4 --latency
0.4ms,0.5ms,1ms --genes G --seed N`); each budget's pick is then fine-tuned with one recipe (`jcw finetune --epochs
5 --seed N`: the same data order for every row of a seed) and scored on the test split, which nothing selects on.

    python benchmarks/finetune_density.py [--seeds 0 1 2] [--epochs 5] [--only SUPERNET ...]

Each finished search and fine-tune is appended to benchmarks/rows/finetune_density.jsonl (committed) as it ends, and a
rerun skips what is there (a killed fine-tune resumes from its checkpoint). Writes its section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sections import write_section
from xnnpack_rules import ROOT, ROW_CACHES, commit

from jcw.supernet.subnet import read_subnet_metadata

BUDGET = 1.0
# 0.3B (0.3 ms) is below every subnet of both supernets (0.308 ms is the least on pixel4): 0.4B stands for it
FRACTIONS = (0.4, 0.5, 1.0)
# mbv2_small_56_fmnist_rgb (45,000 images, XNNPACK's sampling) was measured first: its table is kept in RESULTS.md
# below this section, as its rows' cache was lost
INDEP = "sparse-ready, default sampling (mbv2_small_56_fmnist_rgb_indep)"
ROWS = [(INDEP, "mbv2_small_56_fmnist_rgb_indep", "joint"),
        (INDEP, "mbv2_small_56_fmnist_rgb_indep", "channels"),
        # on pixel4 the first default's density genes stay dense (its stem): its search is a channel search
        ("first default (mbv2_small_fmnist)", "mbv2_small_fmnist", "channels")]
WORK = ROOT / "benchmarks" / "work" / "finetune_density"
CACHE = ROW_CACHES / "finetune_density.jsonl"


def jcw(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "jcw.cli", *args], cwd=ROOT, check=True, capture_output=True)


def search(name: str, genes: str, seed: int, out: Path) -> pd.DataFrame:
    """The run's summary: one pick per budget (none for a budget below every subnet the genes allow: the search
    refuses it, so it is dropped), reusing a finished run."""
    budgets = [f * BUDGET for f in FRACTIONS]
    while not (out / "summary.csv").exists():
        ran = subprocess.run([sys.executable, "-m", "jcw.cli", "search", "--device", "pixel4", "--latency",
                              ",".join(f"{b:g}ms" for b in budgets), "--genes", genes, "--seed", str(seed),
                              "--supernet", f"supernets/{name}/supernet.pt", "--predictor", f"predictors/{name}",
                              "--out", str(out), "--force"], cwd=ROOT, capture_output=True, text=True)
        if ran.returncode == 2 and "below the smallest subnet" in ran.stderr and len(budgets) > 1:
            budgets = budgets[1:]
        elif ran.returncode:
            raise RuntimeError(f"jcw search failed: {ran.stderr.strip()[-500:]}")
    return pd.read_csv(out / "summary.csv")


def finetune(run: Path, subnet_id: int, seed: int, epochs: int) -> dict:
    out = run / "finetuned" / str(subnet_id)
    start = time.perf_counter()
    resume = ["--resume"] if (out / "checkpoint.pt").exists() else []
    jcw("finetune", str(run / "subnets" / f"{subnet_id}.pt"), "--epochs", str(epochs), "--seed", str(seed),
        "--out", str(out), *resume)
    meta = read_subnet_metadata(out / "subnet.pt")
    return {"test_before": round(float(meta["test_top1_before_finetune"]), 2),
            "test_after": round(float(meta["test_top1"]), 2), "finetune_s": round(time.perf_counter() - start)}


def run_all(seeds: list[int], epochs: int, only: list[str] | None = None) -> pd.DataFrame:
    """Every row of ROWS for these seeds that is finished, running the missing ones (of `only`'s supernets)."""
    done = {}
    if CACHE.exists():
        done = {(r["supernet"], r["genes"], r["seed"], r["budget_ms"]): r
                for r in map(json.loads, CACHE.read_text().splitlines()) if r.get("epochs") == epochs}
    WORK.mkdir(parents=True, exist_ok=True)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in seeds:
        for label, name, genes in ROWS:
            run = WORK / f"{name}-{genes}-s{seed}"
            summary = None
            for fraction in FRACTIONS:
                key = (label, genes, seed, round(fraction * BUDGET, 6))
                row = done.get(key)
                if row is None and only and name not in only:
                    continue
                if row is None:
                    summary = search(name, genes, seed, run) if summary is None else summary
                    picks = summary[np.isclose(summary["budget_ms"], key[3])]
                    pick = picks.iloc[0] if len(picks) else None
                    row = {"supernet": label, "genes": genes, "seed": seed, "budget_ms": key[3], "epochs": epochs,
                           "commit": commit()}
                    if pick is not None and not pd.isna(pick["id"]):
                        front = pd.read_csv(run / "pareto.csv").set_index("id")
                        row.update(id=int(pick["id"]), latency_ms=float(pick["latency_ms"]),
                                   val=float(pick["top1"]), mean_density=float(front.at[int(pick["id"]),
                                                                                       "mean_density"]),
                                   **finetune(run, int(pick["id"]), seed, epochs))
                    with CACHE.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                print(row, flush=True)
                rows.append(row)
    return pd.DataFrame(rows)


def section(frame: pd.DataFrame, seeds: list[int], epochs: int) -> str:
    budgets = ",".join(f"{f * BUDGET:g}ms" for f in FRACTIONS)
    lines = ["## 15. Density after fine-tuning (benchmarks/finetune_density.py)", "",
             f"`jcw search --device pixel4 --latency {budgets} --genes G --seed N --supernet S --predictor P`, then "
             f"`jcw finetune PICK --epochs {epochs} --seed N` on each budget's pick (best validation top-1 within the "
             f"budget); seeds {seeds}, mean (sd) over seeds. Test top-1 is on the whole test split, before and after "
             "fine-tuning; nothing selects on it.", "",
             "| budget | supernet | genes | picks | latency ms | mean density | val (inherited) | test before | "
             "test after fine-tuning |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for budget, by_budget in frame.groupby("budget_ms"):
        for (label, genes), g in by_budget.groupby(["supernet", "genes"], sort=False):
            g = g.dropna(subset=["test_after"]) if "test_after" in g else g.iloc[:0]
            if g.empty:
                lines.append(f"| {budget:g} ms | {label} | {genes} | 0 | no subnet fits | | | | |")
                continue
            lines.append(f"| {budget:g} ms | {label} | {genes} | {len(g)} | {g.latency_ms.mean():.3f} | "
                         f"{g.mean_density.mean():.3f} | {g.val.mean():.2f} ({g.val.std():.2f}) | "
                         f"{g.test_before.mean():.2f} ({g.test_before.std():.2f}) | "
                         f"**{g.test_after.mean():.2f}** ({g.test_after.std():.2f}) |")
    lines += ["", "Joint minus channels-only on each sparse-ready supernet, test top-1 after fine-tuning "
              "(paired by seed):", ""]
    ready = frame[frame.supernet.str.startswith("sparse-ready")]
    for (label, budget), g in ready.groupby(["supernet", "budget_ms"], sort=False):
        by = g.dropna(subset=["test_after"]).pivot_table(index="seed", columns="genes", values="test_after")
        if {"joint", "channels"} <= set(by.columns) and len(by.dropna()):
            diff = (by["joint"] - by["channels"]).dropna()
            se = diff.std() / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
            lines.append(f"- {label}, {budget:g} ms: {diff.mean():+.2f} points (SE {se:.2f}, {len(diff)} seeds)")
        else:
            lines.append(f"- {label}, {budget:g} ms: no channels-only subnet fits, so only the joint search has a "
                         "pick")
    lines += ["", f"Runs at {', '.join(sorted(set(frame['commit'])))}."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--only", nargs="+", metavar="SUPERNET",
                    help="run only these supernets' missing rows (folder names); the section shows every finished row")
    args = ap.parse_args()
    frame = run_all(args.seeds, args.epochs, args.only)
    text = section(frame, args.seeds, args.epochs)
    write_section("finetune_density.py", text)
    print(text)


if __name__ == "__main__":
    main()
