"""Where a search's time goes, how fast subnets are scored, and how Ray scales, on this machine, in one run.

    python benchmarks/speed.py [--old-tree DIR ...] [--variant NAME=ARGS ...] [--genomes 12] [--seeds 0 1 2]
                               [--searches-only]

- The README's search (`jcw search --device pixel4 --latency 1ms`) once per seed: wall time with the CLI's start-up,
  and the phases the search records in its config.json (`timings_s`), for this tree and each --old-tree; each
  --variant runs this tree's search with more options (for example `"refine-every 50=--refine-every 50"`), to weigh a
  lever that changes what is scored against the front it finds.
- Scoring rate with the search's default settings on the default Ray pool, for this tree and each --old-tree (older
  checkouts of jcw; each in its own process, one after the other).
- Ray scaling at 1 torch thread per worker: 1 worker against 2, threads as each worker reports them.

Writes its section of benchmarks/RESULTS.md between its markers (benchmarks/run.py keeps that section).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sections import RESULTS, write_section

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jcw.latency.cpu import cpu_identity  # noqa: E402

# Runs in a fresh process with the tree under test first on sys.path; prints one JSON line.
RATE = """
import json, sys, time
import numpy as np
from jcw.supernet.supernet import load_supernet
try:  # this layout
    from jcw.allocator import keep_freed_memory
    from jcw.config import SearchConfig
    from jcw.supernet.pool import DataSpec, RayPool
    keep_freed_memory()  # as the CLI does first
    calibration = SearchConfig(device="pixel4", budgets_ms=[1.0]).calibration_images
except ImportError:  # the layout before jcw/supernet/pool.py, whose search recalibrated on 2,000 images
    from jcw.search.evaluator import DataSpec, RayEvaluator as RayPool
    calibration = 2000
workers, threads, n = (int(a) for a in sys.argv[1:4])
net = load_supernet()
genomes = list(net.space.sample(n, np.random.default_rng(0)))
kwargs = {"threads": threads} if threads else {}
pool = RayPool(net, DataSpec(calibration_images=calibration), workers=workers or None, **kwargs)
pool.score(genomes[:len(pool.actors)])  # actors started and warm
start = time.perf_counter()
pool.score(genomes)
seconds = time.perf_counter() - start
by = getattr(pool, "scored_by", [])
print(json.dumps({"rate": n / seconds, "workers": len({s["worker"] for s in by}) or len(pool.actors),
                  "threads": sorted({s["threads"] for s in by}) or f"{pool.threads} (the pool's rule)",
                  "calibration_images": calibration}))
pool.close()
"""


def scoring_rate(tree: Path, workers: int, genomes: int, threads: int = 0) -> dict:
    """Genomes/s of a RayPool with `workers` actors (0: the pool's default) of `threads` threads (0: its rule)."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, "-c", RATE, str(workers), str(threads), str(genomes)], cwd=tree, env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def readme_search(tree: Path, seed: int, extra: list[str] = ()) -> dict:
    """The README's search run from `tree` (its code and shipped artifacts), with `extra` options: wall time, phases,
    front, pick."""
    import pandas as pd

    from jcw.search.archive import hypervolume

    out = Path(tempfile.mkdtemp()) / "run"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jcw.cli", "search", "--device", "pixel4", "--latency", "1ms", "--seed",
                    str(seed), "--out", str(out), *extra], cwd=tree, env=dict(os.environ, PYTHONPATH=str(tree)),
                   check=True, capture_output=True)
    wall = time.perf_counter() - start
    config = json.loads((out / "config.json").read_text())
    front, pick = pd.read_csv(out / "pareto.csv"), pd.read_csv(out / "summary.csv").iloc[0]
    return {"seed": seed, "wall": wall, "timings": config.get("timings_s", {}), "top1": float(pick["top1"]),
            "test_top1": float(pick.get("test_top1", float("nan"))), "sparse": int((front["mean_density"] < 1).sum()),
            "front": len(front), "id": int(pick["id"]),
            "scored": int(pd.read_csv(out / "history.csv")["true_top1"].notna().sum()),
            "hv": hypervolume(front["latency_ms"].to_numpy(), front["top1"].to_numpy(), 1.0, 80.0)}


def section(searches: dict[str, list[dict]], rates: dict, scaling: dict, genomes: int) -> str:
    lines = ["## 6. Speed (benchmarks/speed.py)", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node()} "
             f"({cpu_identity()['model']}, {cpu_identity()['generation']}, {os.cpu_count()} CPUs), one measurement "
             "after another, nothing else running.", "",
             "README search (`jcw search --device pixel4 --latency 1ms`), wall time with the CLI's start-up; "
             "hypervolume of the true front against (1 ms, 80%):", "",
             "| code | seed | wall s | subnets scored | HV | front (sparse members) | picked id | top-1 at 1 ms, "
             "val | test |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for code, runs in searches.items():
        lines += [f"| {code} | {s['seed']} | {s['wall']:.1f} | {s['scored']} | {s['hv']:.4f} | {s['front']} "
                  f"({s['sparse']}) | {s['id']} | {s['top1']:.2f}% | "
                  f"{'-' if s['test_top1'] != s['test_top1'] else format(s['test_top1'], '.2f') + '%'} |"
                  for s in runs]
    for code, runs in searches.items():
        lines.append(f"\n{code}: median wall {np.median([s['wall'] for s in runs]):.1f} s, HV mean "
                     f"{np.mean([s['hv'] for s in runs]):.4f} (sd {np.std([s['hv'] for s in runs], ddof=1):.4f}), "
                     f"top-1 at 1 ms mean {np.mean([s['top1'] for s in runs]):.2f}% "
                     f"(sd {np.std([s['top1'] for s in runs], ddof=1):.2f}).")
    older = [code for code in searches if code.startswith("older tree")]
    for code in (c for c in searches if older and not c.startswith("older tree")):
        ratio = np.median([s["wall"] for s in searches[older[0]]]) / np.median([s["wall"] for s in searches[code]])
        lines.append(f"\n{code}: {ratio:.2f}x as fast as the {older[0]} (median against median).")
    searches = searches["this tree"]
    lines += ["", "Where this tree's search spends its time (median over the seeds, seconds; `generations` "
              "includes refinement scoring, refits, predictor calls and checkpoints):",
              "", "| phase | s | share of the search |", "| --- | --- | --- |"]
    phases = searches[0]["timings"].keys()
    total = np.median([s["timings"]["total"] for s in searches])
    for phase in phases:
        v = float(np.median([s["timings"].get(phase, 0.0) for s in searches]))
        lines.append(f"| {phase} | {v:.1f} | {100 * v / total:.0f}% |")
    if not rates:
        return "\n".join(lines)
    lines += ["", f"Scoring with the search's default settings on the default Ray pool ({genomes} sampled subnets, "
              "after the actors are warm):", "", "| code | workers x threads (reported by the workers) | "
              "calibration images | genomes/s |", "| --- | --- | --- | --- |"]
    for name, r in rates.items():
        lines.append(f"| {name} | {r['workers']} x {r['threads']} | {r['calibration_images']} | {r['rate']:.3f} |")
    ours = rates["this tree"]["rate"]
    lines += [""] + [f"This tree scores {ours / r['rate']:.2f}x as fast as the {name}." for name, r in rates.items()
                     if name != "this tree"]
    one, two = scaling[1], scaling[2]
    lines += ["", f"Ray scaling at 1 thread per worker: 1 worker {one['rate']:.3f} genomes/s "
              f"(threads {one['threads']}), 2 workers {two['rate']:.3f} genomes/s (threads {two['threads']}): "
              f"{two['rate'] / one['rate']:.2f}x. One worker of 2 threads: {scaling['1x2']['rate']:.3f} genomes/s "
              f"(threads {scaling['1x2']['threads']})."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-tree", type=Path, nargs="+", default=[], help="checkouts of older jcw to compare with")
    ap.add_argument("--variant", nargs="+", default=[], metavar="NAME=ARGS",
                    help="this tree's search with more options, e.g. 'refine-every 50=--refine-every 50'")
    ap.add_argument("--genomes", type=int, default=12)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--searches-only", action="store_true", help="skip the scoring-rate and Ray-scaling runs")
    args = ap.parse_args()
    runs = {"this tree": (ROOT, []), **{f"this tree, {v.split('=', 1)[0]}": (ROOT, v.split("=", 1)[1].split())
                                         for v in args.variant},
            **{f"older tree ({t.name})": (t, []) for t in args.old_tree}}
    trees = {name: tree for name, (tree, extra) in runs.items() if not extra}
    searches = {name: [] for name in runs}
    for seed in args.seeds:  # trees interleaved, so that a machine slowing down mid-run slows them alike
        for name, (tree, extra) in runs.items():
            searches[name].append(readme_search(tree, seed, extra))
    print(f"searches: { {k: [round(s['wall'], 1) for s in v] for k, v in searches.items()} }", flush=True)
    if args.searches_only:
        write_section("speed.py", section(searches, {}, {}, args.genomes))
        return
    rates = {name: scoring_rate(tree, 0, args.genomes) for name, tree in trees.items()}
    print(f"rates: {rates}", flush=True)
    scaling = {w: scoring_rate(ROOT, w, args.genomes, threads=1) for w in (1, 2)}
    scaling["1x2"] = scoring_rate(ROOT, 1, args.genomes, threads=2)
    write_section("speed.py", section(searches, rates, scaling, args.genomes))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
