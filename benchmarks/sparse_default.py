"""Is a sparse-ready 56 px supernet ready to be the default? Its joint front against the first default's, on pixel4.

The first default (supernets/mbv2_small_fmnist) cannot run sparse on pixel4, so its search is a channel search;
supernets/mbv2_small_56_fmnist_rgb (and its twins trained on the default's 55,000 images: ..._55k with XNNPACK's
sampling, ..._indep with the default's) has the same blocks at the same resolutions behind a stem XNNPACK starts its
sparse subgraph at. Each is searched as the README does (`jcw search --device pixel4 --latency 1ms`, with
`--supernet`/`--predictor`), the 56 px ones also with `--genes channels`, over seeds; every search reports its 1 ms
pick's top-1 on the validation images it was chosen on and on the test split. Each supernet's dense uniform widths
are scored too, to show where along the size range two supernets differ. The sparse-ready demo (28 px, a stride-2
stem) is searched too: its density grid has choices XNNPACK runs dense, which the search repairs to dense.

    python benchmarks/sparse_default.py [--seeds 0 1 2]

Finished searches and widths are kept in benchmarks/work/sparse_default*.jsonl and reused by a rerun. Writes its
section of benchmarks/RESULTS.md between its markers.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sections import write_section
from xnnpack_rules import ROOT, commit

from jcw.config import SearchConfig
from jcw.data import supernet_data
from jcw.latency.table import load_table
from jcw.search.archive import hypervolume
from jcw.supernet.accuracy import score_genome
from jcw.supernet.supernet import load_supernet

BUDGET, FLOOR = 1.0, 80.0
SUPERNETS = {"first default (mbv2_small_fmnist)": "mbv2_small_fmnist",
             "sparse-ready (mbv2_small_56_fmnist_rgb)": "mbv2_small_56_fmnist_rgb",
             # the same recipe on the default's split: 55,000 training images instead of 45,000
             "sparse-ready, 55,000 images (mbv2_small_56_fmnist_rgb_55k)": "mbv2_small_56_fmnist_rgb_55k",
             # the 55,000-image split with the default's sampling (independent densities, 1 to 0.2)
             "sparse-ready, 55,000 images, default sampling (mbv2_small_56_fmnist_rgb_indep)":
                 "mbv2_small_56_fmnist_rgb_indep",
             # its grid (1, 0.9, ..., 0.2) holds densities XNNPACK runs dense, which the search now repairs to dense
             "sparse-ready demo (mbv2_small_s2_fmnist_rgb)": "mbv2_small_s2_fmnist_rgb"}
CACHE = ROOT / "benchmarks" / "work" / "sparse_default.jsonl"
WIDTHS = ROOT / "benchmarks" / "work" / "sparse_default_widths.jsonl"
RATIOS = (1.0, 0.75, 0.5, 0.25)  # dense uniform widths, scored on every supernet


def uniform_widths(name: str) -> list[dict]:
    """Each dense uniform width's pixel4 latency and top-1 (scored as a search scores), to show where two supernets
    differ along the size range rather than at one pick."""
    net = load_supernet(str(ROOT / "supernets" / name / "supernet.pt"))
    data, bound = supernet_data(net.config), load_table("pixel4").bind(net.space)
    images = SearchConfig.calibration_images
    return [{"ratio": r, "ms": float(bound.latency(net.space.uniform(r))[0]),
             **{split: score_genome(net, net.space.uniform(r), data, split, images).top1 for split in ("val", "test")}}
            for r in RATIOS]


def search(name: str, genes: str, seed: int) -> dict:
    out = Path(tempfile.mkdtemp()) / "run"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jcw.cli", "search", "--device", "pixel4", "--latency", f"{BUDGET}ms",
                    "--genes", genes, "--seed", str(seed), "--supernet", f"supernets/{name}/supernet.pt",
                    "--predictor", f"predictors/{name}", "--out", str(out)], cwd=ROOT, check=True,
                   capture_output=True)
    front, pick = pd.read_csv(out / "pareto.csv"), pd.read_csv(out / "summary.csv").iloc[0]
    lat, top = front["latency_ms"].to_numpy(), front["top1"].to_numpy()
    return {"seconds": round(time.perf_counter() - start, 1), "hv": hypervolume(lat, top, BUDGET, FLOOR),
            "best@0.5B": float(top[lat <= 0.5 * BUDGET].max()) if (lat <= 0.5 * BUDGET).any() else float("nan"),
            "pick_val": float(pick["top1"]), "pick_test": float(pick["test_top1"]), "front": len(front),
            "sparse": int((front["mean_density"] < 1).sum()), "pick_density": float(
                front.loc[front["id"] == pick["id"], "mean_density"].iloc[0])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    done = {}
    if CACHE.exists():
        done = {(r["supernet"], r["genes"], r["seed"]): r for r in map(json.loads, CACHE.read_text().splitlines())}
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        for label, name in SUPERNETS.items():
            for genes in ("joint", "channels") if name.startswith("mbv2_small_56") else ("joint",):
                row = done.get((label, genes, seed))
                if row is None:
                    row = {"supernet": label, "genes": genes, "seed": seed, "commit": commit(),
                           **search(name, genes, seed)}
                    with CACHE.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                print(row, flush=True)
                rows.append(row)
    frame = pd.DataFrame(rows)
    lines = ["## 14. The sparse-ready supernet against the default (benchmarks/sparse_default.py)", "",
             f"`jcw search --device pixel4 --latency 1ms --genes G --seed N --supernet S --predictor P`, seeds "
             f"{args.seeds}, mean (sd) over seeds. Hypervolume against ({BUDGET:g} ms, {FLOOR:g}%); the pick is "
             "the best true (validation) top-1 within 1 ms, also scored on the test split. On pixel4 the first "
             "default's density genes stay dense (its stem), so its joint search is a channel search.", "",
             "| supernet | genes | hypervolume | best @0.5 ms (val) | 1 ms pick: val | test | pick's mean density "
             "| front members (sparse) | search s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (label, genes), g in frame.groupby(["supernet", "genes"], sort=False):
        lines.append(f"| {label} | {genes} | {g.hv.mean():.4f} ({g.hv.std():.4f}) | {g['best@0.5B'].mean():.2f} | "
                     f"{g.pick_val.mean():.2f} ({g.pick_val.std():.2f}) | {g.pick_test.mean():.2f} "
                     f"({g.pick_test.std():.2f}) | {g.pick_density.mean():.3f} | {g.front.mean():.1f} "
                     f"({g['sparse'].mean():.1f}) | {np.median(g.seconds):.0f} |")
    lines += ["", f"Searches run at {', '.join(sorted(set(frame['commit'])))}.", "",
              "Dense uniform widths (`jcw supernet eval --genome uniform:R --calibration-images 1000 --split S`: "
              "batch norm recalibrated on the search's 1,000 images): pixel4 ms, validation / test top-1.", "",
              "| supernet | " + " | ".join(f"uniform {r:g}x" for r in RATIOS) + " |",
              "| --- |" + " --- |" * len(RATIOS)]
    widths = {r["supernet"]: r["widths"] for r in map(json.loads, WIDTHS.read_text().splitlines())} \
        if WIDTHS.exists() else {}
    for label, name in SUPERNETS.items():
        if label not in widths:
            widths[label] = uniform_widths(name)
            with WIDTHS.open("a") as f:
                f.write(json.dumps({"supernet": label, "widths": widths[label]}) + "\n")
        lines.append(f"| {label} | " + " | ".join(f"{w['ms']:.3f} ms: {w['val']:.2f} / {w['test']:.2f}"
                                                   for w in widths[label]) + " |")
    write_section("sparse_default.py", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
