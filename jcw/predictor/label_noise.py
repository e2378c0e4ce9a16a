"""How noisy measured top-1 is as a label, and so the best Kendall tau any predictor can reach against it.

Top-1 on n validation images is a sample: redrawing the images with replacement moves a subnet's top-1 by about
sqrt(p(1 - p) / n). A redraw sits as far from the measured top-1 as the measured top-1 sits from the subnet's accuracy
on unlimited images (the bootstrap principle), so the tau between the measured top-1 and its redraws is what a
perfect predictor would score against the measured labels (benchmarks/RESULTS.md section 8). A predictor fit keeps
which images each subnet got right, so its report can show that ceiling beside its own tau.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

LABELS = "correct.npz"  # beside dataset.csv: per subnet (its rows, in order), which validation images it got right


def unpack(text: str, images: int) -> np.ndarray:
    """A scorer's per-image bits (jcw.supernet.pool packs them as hex) as booleans."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), np.uint8))[:images].astype(bool)


def save_labels(path: str | Path, correct: np.ndarray) -> None:
    np.savez_compressed(path, bits=np.packbits(correct, axis=1), images=correct.shape[1])


def load_labels(path: str | Path) -> np.ndarray:
    with np.load(path) as f:
        return np.unpackbits(f["bits"], axis=1)[:, :int(f["images"])].astype(bool)


def label_ceiling(correct: np.ndarray, redraws: int = 200, seed: int = 0) -> dict:
    """The perfect predictor's tau against these labels (median over redraws of the images) and one subnet's top-1
    sd over redraws, in points. Each redraw is a multinomial weighting of the images, so it costs one product."""
    from scipy.stats import kendalltau  # a third of a second: a search imports this module but never calls this

    right = np.asarray(correct, np.float32)
    n = right.shape[1]
    measured = right.mean(1)
    rng = np.random.default_rng(seed)
    draws = np.stack([right @ np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float32) / n
                      for _ in range(redraws)])
    taus = np.array([kendalltau(measured, d).statistic for d in draws], dtype=float)
    # undefined (None) where every subnet scored alike, as on a handful of images: there is nothing to rank
    ceiling = None if np.isnan(taus).all() else round(float(np.nanmedian(taus)), 4)
    return {"images": int(n), "subnets": int(right.shape[0]), "redraws": redraws, "perfect_predictor_tau": ceiling,
            "top1_sd_points": round(float(100 * draws.std(0).mean()), 3)}
