"""Fitting a predictor: candidates compared over five held-out folds, the best refit on every row.

Fit on several hundred subnets scored on the supernet, spread over the whole size range. An MLP, ridge regression and
kernel ridge regression are compared by held-out Kendall tau, and the best is kept.
"""
from __future__ import annotations

import numpy as np

from jcw.errors import JcwError
from jcw.predictor.dataset import read_scored
from jcw.predictor.features import genome_features
from jcw.predictor.models import KINDS, Standardizer, apply_model, fit_models
from jcw.predictor.predictor import Predictor
from jcw.space import SearchSpace


def rank_metrics(pred: np.ndarray, true: np.ndarray) -> dict:
    """RMSE and rank agreement; a constant side has no ranking, so its tau and rho are NaN (fit says why)."""
    from scipy.stats import kendalltau, spearmanr  # a third of a second: fits need it, a search's refits do not

    rmse = round(float(np.sqrt(np.mean((pred - true) ** 2))), 4)
    if np.ptp(pred) == 0 or np.ptp(true) == 0:
        return {"rmse": rmse, "kendall_tau": float("nan"), "spearman_rho": float("nan")}
    return {"rmse": rmse, "kendall_tau": round(float(kendalltau(pred, true).statistic), 4),
            "spearman_rho": round(float(spearmanr(pred, true).statistic), 4)}


FOLDS = 5


def _fit_standardized(x: np.ndarray, y: np.ndarray, seed: int, kinds: tuple[str, ...]):
    norm = Standardizer.fit(x)
    y_mean, y_std = float(y.mean()), float(y.std() or 1.0)
    return norm, y_mean, y_std, fit_models(norm(x), (y - y_mean) / y_std, seed, kinds)


def fit_predictor(space: SearchSpace, genomes: np.ndarray, top1: np.ndarray, supernet_hash: str,
                  seed: int = 0) -> Predictor:
    """Compare the candidates over five held-out 20% folds, then refit the best on every row.

    Kendall tau on one 20% split of noisy labels moves by about 0.01 from split to split; its mean over five folds,
    with every subnet held out once, is a steadier basis both for choosing the model and for the report.
    """
    x_all = genome_features(space, genomes)
    y_all = np.asarray(top1, dtype=float)
    n = len(y_all)
    if n < 2 * FOLDS:
        raise JcwError(f"fitting a predictor needs at least {2 * FOLDS} scored subnets; got {n}")
    folds = np.array_split(np.random.default_rng(seed).permutation(n), FOLDS)
    held_out = {kind: np.empty(n) for kind in KINDS}
    per_fold: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    for test in folds:
        train = np.setdiff1d(np.arange(n), test)
        norm, y_mean, y_std, models = _fit_standardized(x_all[train], y_all[train], seed, KINDS)
        for kind, model in models.items():
            held_out[kind][test] = apply_model(model, norm(x_all[test])) * y_std + y_mean
            per_fold[kind].append(rank_metrics(held_out[kind][test], y_all[test]))
    report = {"samples": n, "folds": FOLDS, "seed": seed, "models": {}}
    for kind, metrics in per_fold.items():
        taus = [m["kendall_tau"] for m in metrics]
        report["models"][kind] = {"rmse": round(float(np.sqrt(np.mean((held_out[kind] - y_all) ** 2))), 4),
                                  "kendall_tau": round(float(np.mean(taus)), 4),
                                  "spearman_rho": round(float(np.mean([m["spearman_rho"] for m in metrics])), 4),
                                  "kendall_tau_folds": taus}
    best = max(KINDS, key=lambda k: (report["models"][k]["kendall_tau"], -report["models"][k]["rmse"]))
    report["kept"] = best
    report["held_out_rows"] = {"true": y_all.tolist(), "predicted": held_out[best].tolist()}
    return fit_kind(space, genomes, y_all, best, supernet_hash, seed, report)


def fit_kind(space: SearchSpace, genomes: np.ndarray, top1: np.ndarray, kind: str, supernet_hash: str,
             seed: int = 0, report: dict | None = None) -> Predictor:
    """One candidate kind fit on every row: the final predictor, once the held-out comparison has chosen it."""
    norm, y_mean, y_std, models = _fit_standardized(genome_features(space, genomes), np.asarray(top1, dtype=float),
                                                    seed, (kind,))
    return Predictor(space, models[kind], norm, y_mean, y_std, supernet_hash, report)


def refine(predictor: Predictor, genomes: np.ndarray, top1: np.ndarray, seed: int = 0) -> Predictor:
    """`predictor`'s model kind, refit on its own scored subnets plus these.

    A search drives into gene combinations a spread sample rarely covers, where the predictor overrates
    subnets; scoring some of them and refitting corrects it where the search is looking.
    """
    if predictor.folder is None or not (predictor.folder / "dataset.csv").is_file():
        raise JcwError("refining a predictor needs the dataset.csv it was fit on, beside predictor.pt")
    space = predictor.space
    base, scores = read_scored(predictor.folder / "dataset.csv", space, predictor.supernet_hash)
    genomes = np.concatenate([base, space.check(genomes)])
    top1 = np.concatenate([[s["top1"] for s in scores], np.asarray(top1, dtype=float)])
    refit = fit_kind(space, genomes, top1, predictor.report["kept"], predictor.supernet_hash, seed, predictor.report)
    refit.folder = predictor.folder
    return refit
