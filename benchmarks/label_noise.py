"""How far measured validation top-1 can be trusted to rank subnets: the ceiling a predictor's Kendall tau meets.

Scores subnets from a predictor's dataset.csv keeping per-image correctness, then redraws the validation images with
replacement. A redraw sits as far from the measured top-1 as the measured top-1 sits from the subnets' true accuracy
(the bootstrap principle), so the tau between the two is what a perfect predictor would score against the measured
labels; two redraws agree less still. Run from the repository root:

    python benchmarks/label_noise.py [--predictor predictors/mbv2_small_fmnist] [--subnets 60]
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import torch
from scipy.stats import kendalltau

from jcw.data import load_dataset
from jcw.supernet.slicing import bake_masks
from jcw.supernet.slicing import subnet_from_supernet
from jcw.predictor.predictor import load_predictor
from jcw.supernet.accuracy import CALIBRATION_IMAGES, recalibrate_bn
from jcw.supernet.supernet import load_supernet


def correctness(net, data, genome: np.ndarray) -> np.ndarray:
    """1/0 per validation image, scored the way the evaluator scores (sliced subnet, recalibrated batch norm)."""
    small, _ = subnet_from_supernet(net, genome)
    small = bake_masks(small).to(memory_format=torch.channels_last)
    recalibrate_bn(small, data, CALIBRATION_IMAGES)
    small.eval()
    with torch.no_grad():
        return torch.cat([small(b.images).argmax(1) == b.labels for b in data.batches("val", 500)]).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictor", default=None, help="predictor folder (default: the shipped one)")
    parser.add_argument("--supernet", default=None, help="the supernet it was fit on (default: the shipped one)")
    parser.add_argument("--subnets", type=int, default=60)
    parser.add_argument("--redraws", type=int, default=200)
    args = parser.parse_args()
    predictor = load_predictor(args.predictor)
    net = load_supernet(args.supernet)
    predictor.check_supernet(net.hash)
    data = load_dataset(net.config.dataset)
    rows = pd.read_csv(predictor.folder / "dataset.csv").sample(args.subnets, random_state=0)
    right = np.array([correctness(net, data, np.array(json.loads(g))) for g in rows["genome"]], dtype=float)
    rng = np.random.default_rng(0)
    n = right.shape[1]
    draws = [100 * right[:, rng.integers(0, n, n)].mean(1) for _ in range(2 * args.redraws)]
    retest = [kendalltau(a, b).statistic for a, b in zip(draws[::2], draws[1::2])]
    measured = 100 * right.mean(1)
    perfect = [kendalltau(measured, d).statistic for d in draws[::2]]
    print(f"{args.subnets} subnets, {n} validation images, top-1 from {rows['top1'].min():.2f} to "
          f"{rows['top1'].max():.2f}%")
    print(f"sd of one subnet's top-1 over redraws: {np.std(draws, axis=0).mean():.3f} points")
    print(f"Kendall tau between two redraws (median of {args.redraws}): {np.median(retest):.3f}")
    print(f"Kendall tau between the measured top-1 and a redraw, the ceiling for a perfect predictor (median): "
          f"{np.median(perfect):.3f}")


if __name__ == "__main__":
    main()
