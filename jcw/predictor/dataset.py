"""A predictor's training data: subnets scored on the supernet, checkpointed as they are scored, read back."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from jcw.accelerator import Accelerator
from jcw.errors import JcwError
from jcw.io import write_csv
from jcw.predictor.label_noise import LABELS, load_labels, unpack
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
    """Scores checkpointed by a killed fit, by genome, if they were made the way this fit makes them. Rows are
    appended one at a time, so a kill mid-write can leave a short last line: it is skipped."""
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    if not lines:
        return {}
    header, done = next(csv.reader(lines[:1])), {}
    for line in lines[1:]:
        try:
            row = dict(zip(header, next(csv.reader([line]), []), strict=True))
            if row["scoring"] == key:
                score = {"top1": float(row["top1"]), "loss": float(row["loss"])}
                if row.get("correct"):
                    score.update(correct=row["correct"], images=int(row["images"]))
                done[row["genome"]] = score
        except (csv.Error, KeyError, ValueError):  # a short or broken line: the kill's, or another format's
            continue
    return done


def score_subnets(supernet, genomes: np.ndarray, spec: DataSpec, workers: int | None, ray_address: str | None,
                  partial: Path, accel: Accelerator | None = None) -> list[dict]:
    """Scores of `genomes` on the supernet, each checkpointed to `partial` as it comes; a rerun reuses them."""
    key = _scoring_key(supernet.hash, spec)
    names = [json.dumps([int(v) for v in g]) for g in genomes]
    wanted = set(names)
    done = {n: s for n, s in _read_partial(partial, key).items() if n in wanted}
    todo = [i for i, n in enumerate(names) if n not in done]
    if done:
        print(f"resuming: {len(done)} of {len(names)} subnets already scored in {partial}", file=sys.stderr)

    columns = ["genome", "top1", "loss", *(["correct", "images"] if spec.per_image else []), "scoring"]
    if not partial.exists() or list(pd.read_csv(partial, nrows=0).columns) != columns:
        partial.parent.mkdir(parents=True, exist_ok=True)
        write_csv(partial, pd.DataFrame([{"genome": n, **s, "scoring": key} for n, s in done.items()],
                                        columns=columns))

    def checkpoint(i: int, score: dict) -> None:
        """One row appended per score: rewriting the file each time costs more than scoring once it holds
        thousands of per-image bit strings."""
        done[names[todo[i]]] = score
        with open(partial, "a") as f:
            pd.DataFrame([{"genome": names[todo[i]], **score, "scoring": key}], columns=columns).to_csv(
                f, header=False, index=False)

    if todo:
        pool = scoring_pool(supernet, spec, workers, ray_address, accel)
        try:
            with tqdm(total=len(names), initial=len(done), desc="scoring subnets", dynamic_ncols=True,
                      file=sys.stderr) as bar:
                pool.score([genomes[i] for i in todo],
                                on_scored=lambda i, s: (checkpoint(i, s), bar.update()))
        finally:
            pool.close()
    return [done[n] for n in names]


def read_scored(path: str | Path, space: SearchSpace, supernet_hash: str) -> tuple[np.ndarray, list[dict]]:
    """Genomes and scores from a predictor's dataset.csv, refusing rows scored on another supernet; with the
    per-image bits of its correct.npz where that lies beside it."""
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
    labels = Path(path).with_name(LABELS)
    if labels.exists():
        correct = load_labels(labels)
        if len(correct) == len(scores):
            scores = [{**s, "correct_bits": c} for s, c in zip(scores, correct)]
    return genomes, scores


def per_image_labels(scores: list[dict]) -> np.ndarray | None:
    """(subnets, images) booleans where every score carries its per-image bits, else None."""
    rows = [s["correct_bits"] if "correct_bits" in s else
            unpack(s["correct"], int(s["images"])) if isinstance(s.get("correct"), str) else None for s in scores]
    if not rows or any(r is None for r in rows) or len({len(r) for r in rows}) != 1:
        return None
    return np.stack(rows)
