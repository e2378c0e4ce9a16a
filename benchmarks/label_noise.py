"""How far measured top-1 can be trusted to rank subnets, and how well the predictor ranks against less noisy labels.

A predictor is fit and judged on top-1 over the 5,000 validation images. That label is itself noisy: redrawing the
images with replacement moves one subnet's top-1 by about 0.4 points, a large share of the 1-point spread between
subnets. A redraw sits as far from the measured top-1 as the measured top-1 sits from the subnets' true accuracy
(the bootstrap principle), so the tau between the two is what a perfect predictor would score against measured
labels. The script also scores the same subnets on the 10,000 test images, which nothing in a search selects on, and
compares the predictor's held-out predictions (5-fold, as `jcw predictor fit` makes them) against top-1 on all
15,000 images: a third of the label noise. Run from the repository root:

    python benchmarks/label_noise.py [--predictor predictors/mbv2_small_fmnist] [--subnets 150]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch
from scipy.stats import kendalltau

from jcw.allocator import keep_freed_memory
from jcw.data import load_dataset
from jcw.predictor.dataset import read_scored
from jcw.predictor.regression import fit_predictor
from jcw.predictor.predictor import load_predictor
from jcw.supernet.accuracy import recalibrate_bn
from jcw.supernet.slicing import bake_masks, subnet_from_supernet
from jcw.supernet.supernet import load_supernet

from sections import write_section


@torch.no_grad()
def correctness(net, data, genome: np.ndarray, calibration_images: int) -> dict[str, np.ndarray]:
    """1/0 per validation and per test image, scored the way the evaluator scores (sliced, recalibrated)."""
    small, _ = subnet_from_supernet(net, genome)
    small = bake_masks(small).to(memory_format=torch.channels_last)
    recalibrate_bn(small, data, calibration_images)
    small.eval()
    return {split: torch.cat([small(b.images).argmax(1) == b.labels for b in data.batches(split, 100)]).numpy()
            for split in ("val", "test")}


def tau(a: np.ndarray, b: np.ndarray) -> float:
    return float(kendalltau(a, b).statistic)


def bootstrap_ceiling(right: np.ndarray, redraws: int, rng: np.random.Generator) -> tuple[float, float]:
    """Median tau of a perfect predictor against these labels, and one subnet's top-1 sd over redraws (points)."""
    n = right.shape[1]
    measured = 100 * right.mean(1)
    draws = np.array([100 * right[:, rng.integers(0, n, n)].mean(1) for _ in range(redraws)])
    return float(np.median([tau(measured, d) for d in draws])), float(draws.std(0).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictor", default=None, help="predictor folder (default: the shipped one)")
    parser.add_argument("--supernet", default=None, help="the supernet it was fit on (default: the shipped one)")
    parser.add_argument("--subnets", type=int, default=150)
    parser.add_argument("--redraws", type=int, default=200)
    parser.add_argument("--calibration-images", type=int, default=2000,
                        help="as dataset.csv was scored (the shipped one: 2,000)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    predictor = load_predictor(args.predictor)
    net = load_supernet(args.supernet)
    predictor.check_supernet(net.hash)
    data = load_dataset(net.config.dataset, input_size=net.config.input_size)
    genomes, scores = read_scored(predictor.folder / "dataset.csv", predictor.space, net.hash)
    stored = np.array([s["top1"] for s in scores])
    report = fit_predictor(predictor.space, genomes, stored, net.hash, predictor.report.get("seed", 0)).report
    held_out = np.array(report["held_out_rows"]["predicted"])
    rows = pd.Series(np.arange(len(stored))).sample(args.subnets, random_state=0).to_numpy()
    start, right = time.perf_counter(), {"val": [], "test": []}
    for k, i in enumerate(rows):
        for split, r in correctness(net, data, genomes[i], args.calibration_images).items():
            right[split].append(r)
        print(f"{k + 1}/{len(rows)} scored", flush=True)
    val, test = (np.array(right[s], dtype=float) for s in ("val", "test"))
    both = np.concatenate([val, test], axis=1)
    reproduced = np.abs(100 * val.mean(1) - stored[rows]).max()
    rng = np.random.default_rng(0)
    ceiling_val, sd_val = bootstrap_ceiling(val, args.redraws, rng)
    ceiling_both, sd_both = bootstrap_ceiling(both, args.redraws, rng)
    pred = held_out[rows]
    text = f"""## 8. Label noise and the predictor's ceiling (benchmarks/label_noise.py)

{len(rows)} random subnets of the shipped predictor's dataset.csv ({report['samples']} scored subnets), rescored with
{args.calibration_images} calibration images (largest difference from the stored top-1: {reproduced:.2f} points),
{time.perf_counter() - start:.0f} s. The predictor's predictions are its own 5-fold held-out ones
({report['kept']}, held-out tau {report['models'][report['kept']]['kendall_tau']} over all rows).

| labels | one subnet's top-1 sd over redraws (points) | perfect predictor's tau (bootstrap) | predictor's held-out tau |
| --- | --- | --- | --- |
| 5,000 validation images (what the predictor is fit and judged on) | {sd_val:.2f} | {ceiling_val:.3f} | {tau(pred, 100 * val.mean(1)):.3f} |
| 5,000 validation + 10,000 test images | {sd_both:.2f} | {ceiling_both:.3f} | {tau(pred, 100 * both.mean(1)):.3f} |

Against 5,000-image labels even a perfect predictor ranks at about the tau in the first row, so a held-out tau of 0.9
cannot be reached on them; with three times the images the same predictions rank as in the second row."""
    print(text)
    write_section("label_noise.py", text)


if __name__ == "__main__":
    main()
