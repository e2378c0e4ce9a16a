"""`jcw predictor fit`: sample subnets over the size range, score them on the supernet, fit, write the folder."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from jcw.accelerator import Accelerator
from jcw.config import DEFAULT_SAMPLES, PredictorFitConfig
from jcw.errors import JcwError, JcwWarning
from jcw.predictor.dataset import PARTIAL, dataset_frame, per_image_labels, read_scored, score_subnets
from jcw.predictor.label_noise import LABELS, label_ceiling, save_labels
from jcw.predictor.predictor import Predictor
from jcw.predictor.regression import FOLDS, fit_predictor
from jcw.predictor.report import write_report
from jcw.supernet.accuracy import CALIBRATION_IMAGES
from jcw.supernet.pool import DataSpec
from jcw.supernet.supernet import load_supernet
from jcw.xnnpack import as_xnnpack_runs


def fit(cfg: PredictorFitConfig) -> Predictor:
    """Fit a predictor folder as `cfg` says; refuses to overwrite one without `force`."""
    out = Path(cfg.out)
    if (out / "predictor.pt").exists() and not cfg.force:
        raise JcwError(f"{out} already holds a predictor; pass --force to refit it")
    samples = cfg.samples if cfg.samples is not None else (0 if cfg.scored else DEFAULT_SAMPLES)
    # chosen before any scoring starts; a named cluster's GPUs are checked when its actors start
    accel = Accelerator.choose(cfg.accelerator) if not cfg.ray_address and samples else None
    return fit_on_supernet(load_supernet(cfg.supernet), samples, out, cfg.seed, cfg.workers, cfg.ray_address,
                           cfg.data_dir, cfg.scored, cfg.calibration_images, cfg.val_images, cfg.accelerator, accel)


def fit_on_supernet(supernet, samples: int, out: str | Path, seed: int = 0, workers: int | None = None,
                    ray_address: str | None = None, data_dir: str | None = None,
                    scored: str | Path | None = None, calibration_images: int = CALIBRATION_IMAGES,
                    val_images: int | None = None, accelerator: str = "auto",
                    accel: Accelerator | None = None) -> Predictor:
    """Sample subnets over the size range, score them on the supernet, fit, and write the predictor folder.

    With `scored`, a dataset.csv written by an earlier fit on this same supernet, its subnets are reused and only
    `samples` new ones (none by default) are scored: refitting takes seconds, and growing a dataset that ranks too
    noisily does not rescore the hour already spent. Use another seed than the earlier fit's, or its draws repeat.
    Each subnet's score goes to `out/scoring.partial.csv` as soon as it is known, so a killed fit rerun with the
    same options scores only what is left.
    """
    space, out = supernet.space, Path(out)
    genomes, scores = (np.zeros((0, space.n_genes), np.int64), []) if scored is None else \
        read_scored(scored, space, supernet.hash)
    if len(genomes) + samples < 2 * FOLDS:  # said before any scoring, not after it
        extra = f", plus {len(genomes)} from --scored" if scored is not None else ""
        raise JcwError(f"fitting a predictor needs at least {2 * FOLDS} scored subnets; this fit would have "
                       f"{len(genomes) + samples} (--samples {samples}{extra})")
    sampling = supernet.recipe.get("random_densities", "independent")
    if samples > 0:
        new = space.sample_spread(samples, np.random.default_rng(seed))
        if sampling == "xnnpack":  # the subnets it was trained on, and the only ones a TFLite search visits
            new = as_xnnpack_runs(space, new)
        new = np.unique(new, axis=0)
        new = new[np.random.default_rng(seed).permutation(len(new))]
        new = new[~(new[:, None, :] == genomes[None, :, :]).all(-1).any(1)] if len(genomes) else new
        spec = DataSpec(supernet.config.dataset, data_dir, calibration_images, "val", val_images, accelerator,
                        per_image=True)
        genomes, scores = np.concatenate([genomes, new]), scores + score_subnets(supernet, new, spec, workers,
                                                                                  ray_address, out / PARTIAL, accel)
    top1 = np.array([s["top1"] for s in scores])
    if len(top1) and np.ptp(top1) == 0:
        warnings.warn(f"predictor fit: all {len(top1)} scored subnets have top-1 {top1[0]:.2f}%, so there is nothing "
                      f"to rank (Kendall tau undefined); score more validation images (--val-images) or train the "
                      f"supernet longer", JcwWarning, stacklevel=2)
    predictor = fit_predictor(space, genomes, top1, supernet.hash, seed)
    predictor.report["sampling"] = sampling
    labels = per_image_labels(scores)
    if labels is not None:  # how far any predictor could rank these labels, beside how far this one does
        predictor.report["label_noise"] = label_ceiling(labels, seed=seed)
    predictor.save(out)
    if labels is not None:
        save_labels(out / LABELS, labels)
    dataset = dataset_frame(space, genomes, scores, supernet.hash)
    write_report(predictor, out, dataset)
    (out / PARTIAL).unlink(missing_ok=True)
    return predictor
