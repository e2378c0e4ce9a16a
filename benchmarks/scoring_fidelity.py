"""How few images can scoring use and still rank subnets as the full setting does?

Takes subnets a predictor's dataset.csv scored with the full setting (2,000 calibration images, the whole
validation split), rescores them with fewer calibration images and on prefixes of the validation split (the whole,
two thirds, a third, a sixth, a fifteenth), and reports Kendall tau against the full setting's top-1 (both the
stored scores and a rescoring at the full setting, whose tau against the stored ones is the noise floor of rescoring
itself), with the time each setting takes.

    python benchmarks/scoring_fidelity.py [--supernet S --predictor P] [--subnets 30] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import kendalltau

from jcw.allocator import keep_freed_memory
from jcw.artifacts import default_predictor_path
from jcw.data import supernet_data
from jcw.supernet.accuracy import recalibrate_bn
from jcw.supernet.slicing import bake_masks, subnet_from_supernet
from jcw.supernet.supernet import load_supernet

CALIBRATION = (2000, 1000, 500)
PREFIXES = (1, 2 / 3, 1 / 3, 1 / 6, 1 / 15)  # of the validation split


@torch.no_grad()
def prefix_top1(net, data, sizes, batch_size: int = 100) -> dict[int, float]:
    """Top-1 on the first n validation images for each n, from one pass."""
    net.eval()
    correct, seen, out = 0, 0, {}
    for batch in data.batches("val", batch_size, limit=max(sizes)):
        correct += int((net(batch.images).argmax(1) == batch.labels).sum())
        seen += len(batch.labels)
        for n in sizes:
            if seen == n:
                out[n] = 100.0 * correct / n
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subnets", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--supernet", default=None, help="default: the shipped one")
    ap.add_argument("--predictor", default=None, help="its predictor folder (default: the shipped one)")
    args = ap.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    net = load_supernet(args.supernet)
    data = supernet_data(net.config)
    split = data.size("val")
    validation = sorted({100 * int(round(split * f / 100)) for f in PREFIXES}, reverse=True)  # whole batches
    scored = pd.read_csv(Path(args.predictor or default_predictor_path()) / "dataset.csv")
    # spread over the top-1 range: every k-th subnet in order of its stored score
    order = scored.sort_values("top1").index.to_numpy()
    picks = order[np.linspace(0, len(order) - 1, args.subnets).round().astype(int)]
    rows, seconds = [], {}
    for i in picks:
        genome = np.array(json.loads(scored.at[i, "genome"]))
        small, _ = subnet_from_supernet(net, genome)
        small = bake_masks(small).to(memory_format=torch.channels_last)
        row = {"stored": float(scored.at[i, "top1"])}
        for calib in CALIBRATION:
            t = time.perf_counter()
            recalibrate_bn(small, data, calib)
            seconds[f"calibrate {calib}"] = seconds.get(f"calibrate {calib}", 0) + time.perf_counter() - t
            t = time.perf_counter()
            for n, top1 in prefix_top1(small, data, validation).items():
                row[(calib, n)] = top1
            seconds["evaluate"] = seconds.get("evaluate", 0) + time.perf_counter() - t
        rows.append(row)
        print(f"{len(rows)}/{len(picks)} scored", flush=True)
    frame = pd.DataFrame(rows)
    per = {k: v / len(picks) for k, v in seconds.items()}
    print(f"\n{len(picks)} subnets spread over the stored top-1 range ({frame['stored'].min():.2f}-"
          f"{frame['stored'].max():.2f}%), {args.threads} torch threads; tau against the full setting")
    print("| calibration | validation | tau vs stored | tau vs rescored full | mean abs diff (pts) | s per subnet |")
    print("| --- | --- | --- | --- | --- | --- |")
    full = frame[(CALIBRATION[0], validation[0])]
    for calib in CALIBRATION:
        for n in validation:
            col = frame[(calib, n)]
            cost = per[f"calibrate {calib}"] + per["evaluate"] * n / validation[0]
            print(f"| {calib} | {n} | {kendalltau(col, frame['stored']).statistic:.3f} | "
                  f"{kendalltau(col, full).statistic:.3f} | {np.abs(col - full).mean():.2f} | {cost:.2f} |")


if __name__ == "__main__":
    main()
