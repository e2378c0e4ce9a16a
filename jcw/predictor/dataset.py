"""A predictor's training data: subnets scored on the supernet, checkpointed as they are scored, read back."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from jcw.errors import JcwError
from jcw.io import write_csv
from jcw.space import SearchSpace
from jcw.supernet.pool import DataSpec, scoring_pool

PARTIAL = "scoring.partial.csv"  # scores checkpointed while a fit runs; removed when it ends


def dataset_frame(space: SearchSpace, genomes: np.ndarray, scores: list[dict], supernet_hash: str) -> pd.DataFrame:
    """dataset.csv: each scored subnet's genome, size, top-1, loss and the supernet it was scored on."""
    cost = space.cost(genomes)
    return pd.DataFrame({"genome": [json.dumps([int(v) for v in g]) for g in genomes],
                         "macs": cost["macs"].round().astype(np.int64),
                         "params": cost["params"].round().astype(np.int64),
                         "mean_density": space.density_values(genomes).mean(1).round(4),
                         "top1": [s["top1"] for s in scores], "loss": [s["loss"] for s in scores],
                         "supernet_hash": supernet_hash})


def _scoring_key(supernet_hash: str, spec) -> str:
    """What a checkpointed score depends on besides its genome: scores made otherwise are not reused."""
    return f"{supernet_hash}/{spec.dataset}/{spec.split}/calibration {spec.calibration_images}/val {spec.val_images}"


def _read_partial(path: Path, key: str) -> dict[str, dict]:
    """Scores checkpointed by a killed fit, by genome, if they were made the way this fit makes them."""
    if not path.exists():
        return {}
    try:
        table = pd.read_csv(path)
        table = table[table["scoring"] == key]
        return {g: {"top1": float(t), "loss": float(l)} for g, t, l in zip(table["genome"], table["top1"],
                                                                            table["loss"])}
    except (KeyError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return {}


def score_subnets(supernet, genomes: np.ndarray, spec: DataSpec, workers: int | None, ray_address: str | None,
                  partial: Path) -> list[dict]:
    """Scores of `genomes` on the supernet, each checkpointed to `partial` as it comes; a rerun reuses them."""
    key = _scoring_key(supernet.hash, spec)
    names = [json.dumps([int(v) for v in g]) for g in genomes]
    wanted = set(names)
    done = {n: s for n, s in _read_partial(partial, key).items() if n in wanted}
    todo = [i for i, n in enumerate(names) if n not in done]
    if done:
        print(f"resuming: {len(done)} of {len(names)} subnets already scored in {partial}", file=sys.stderr)

    def checkpoint(i: int, score: dict) -> None:
        done[names[todo[i]]] = score
        write_csv(partial, pd.DataFrame([{"genome": n, **s, "scoring": key} for n, s in done.items()]))

    if todo:
        pool = scoring_pool(supernet, spec, workers, ray_address)
        try:
            with tqdm(total=len(names), initial=len(done), desc="scoring subnets", dynamic_ncols=True,
                      file=sys.stderr) as bar:
                pool.score([genomes[i] for i in todo],
                                on_scored=lambda i, s: (checkpoint(i, s), bar.update()))
        finally:
            pool.close()
    return [done[n] for n in names]


def read_scored(path: str | Path, space: SearchSpace, supernet_hash: str) -> tuple[np.ndarray, list[dict]]:
    """Genomes and scores from a predictor's dataset.csv, refusing rows scored on another supernet."""
    try:
        table = pd.read_csv(path)
        genomes = np.array([json.loads(g) for g in table["genome"]], dtype=np.int64)
        hashes = set(table["supernet_hash"])
        scores = table[["top1", "loss"]].to_dict("records")
    except FileNotFoundError:
        raise JcwError(f"--scored {path}: no such file") from None
    except (KeyError, ValueError, pd.errors.ParserError) as exc:
        raise JcwError(f"--scored {path}: not a predictor dataset.csv with genome, top1, loss and supernet_hash "
                       f"columns ({exc.__class__.__name__}: {exc})") from None
    if hashes != {supernet_hash}:
        raise JcwError(f"--scored {path} was scored on supernet {', '.join(map(str, sorted(hashes)))}, not on "
                       f"{supernet_hash}; refit without --scored to score afresh")
    space.check(genomes)
    return genomes, scores
