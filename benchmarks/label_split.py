"""How many validation images the labels need: the predictor's ceiling and the search's scoring, from stored bits.

A predictor fit keeps which validation images each scored subnet got right (`correct.npz`), so both questions are
answered without scoring anything again:

- how well a perfect predictor, and the predictor's own 5-fold held-out predictions, rank subnets against top-1 on
  the first n images of the split (labels on fewer images are noisier: benchmarks/label_noise.py explains the
  bootstrap);
- how well top-1 on the first n images ranks subnets as the whole split does (what the search may score on), over
  every scored subnet and over 30 spread across the top-1 range, as benchmarks/scoring_fidelity.py picks them.

    python benchmarks/label_split.py [--predictor predictors/mbv2_small_56_fmnist_rgb]
"""
from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import kendalltau

from jcw.predictor.label_noise import LABELS, label_ceiling, load_labels
from jcw.predictor.predictor import load_predictor

from sections import write_section


def tau(a: np.ndarray, b: np.ndarray) -> float:
    return float(kendalltau(a, b).statistic)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--predictor", default=None, help="a predictor folder with correct.npz (default: the shipped one)")
    ap.add_argument("--redraws", type=int, default=200)
    args = ap.parse_args()
    predictor = load_predictor(args.predictor)
    correct = load_labels(predictor.folder / LABELS)
    report = predictor.report
    held_out = np.array(report["held_out_rows"]["predicted"])
    whole = correct.mean(1)
    split = correct.shape[1]
    sizes = [n for n in (split, 10000, 7500, 5000, 2500, 1000) if n <= split]
    order = np.argsort(whole, kind="stable")
    spread = order[np.linspace(0, len(order) - 1, 30).round().astype(int)]
    lines = [f"## 13. Labels on a {split:,}-image validation split (benchmarks/label_split.py)", "",
             f"Predictor `{predictor.folder}` ({report['kept']}, {report['samples']} scored subnets, drawn "
             f"{report.get('sampling', 'independent')}), each scored on {split:,} validation images after "
             "recalibrating batch norm; the labels are top-1 on the first n of them (the split's first 5,000 are the "
             "5,000 of the earlier supernets' split).", "",
             "| labels: first n images | one subnet's top-1 sd over redraws (points) | perfect predictor's tau "
             "(bootstrap) | predictor's held-out tau | tau of top-1 on n images against the whole split: all "
             "subnets | 30 spread over the range |", "| --- | --- | --- | --- | --- | --- |"]
    for n in sizes:
        labels = correct[:, :n].mean(1)
        ceiling = label_ceiling(correct[:, :n], args.redraws)
        lines.append(f"| {n:,} | {ceiling['top1_sd_points']:.2f} | {ceiling['perfect_predictor_tau']:.3f} | "
                     f"{tau(held_out, labels):.3f} | {tau(labels, whole):.3f} | "
                     f"{tau(labels[spread], whole[spread]):.3f} |")
    lines += ["", "The predictor is fit and judged on the whole split's labels; its held-out predictions are the "
              "same in every row, judged against noisier labels in the shorter ones."]
    text = "\n".join(lines)
    print(text)
    write_section("label_split.py", text)


if __name__ == "__main__":
    main()
