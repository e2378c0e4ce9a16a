"""End-to-end validation of a measured table: time real exported subnets against what the table predicts.

The subnets are spread from the smallest to the largest and exclude the ones the table's overhead was calibrated
on. Each is timed in several rounds; the report gives the error's median and range over the rounds, not the best.
"""
from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from jcw.errors import JcwError
from jcw.io import write_json
from jcw.latency.measure import calibration_genomes, end_to_end_call, pinned, time_call
from jcw.latency.table import load_table, user_table_dir
from jcw.supernet.supernet import load_supernet
from jcw.threads import torch_threads

VALIDATED_RUNTIMES = ("torch", "tflite-xnnpack")


def validation_genomes(space, samples: int, seed: int, calibration: list | None) -> np.ndarray:
    """`samples` spread genomes, none of them one the table was calibrated on (uniform draws fill up what the spread
    draw shares with the calibration set: its two extremes always, and for a small `samples` nothing else)."""
    excluded = {tuple(g) for g in (calibration if calibration is not None else calibration_genomes(space))}
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    for attempt in range(100):
        if len(chosen) == samples:
            break
        for g in space.sample_spread(samples, rng) if attempt == 0 else space.sample(samples, rng):
            if tuple(int(v) for v in g) not in excluded and len(chosen) < samples:
                excluded.add(tuple(int(v) for v in g))
                chosen.append(g)
    if len(chosen) < samples:
        raise JcwError(f"the space has fewer than {samples} subnets the table was not calibrated on; ask for fewer "
                       "with --samples")
    return np.array(chosen)


def validate_table(device: str = "host", supernet: str | Path | None = None, samples: int = 30, seed: int = 0,
                   out_dir: str | Path | None = None, repeats: int = 50, rounds: int = 3) -> dict:
    """Time `samples` exported subnets end to end against the table, in `rounds` rounds.

    The report goes beside the table in `out_dir`, else to the user's table folder; the table records its error
    only where it lives there, so a shipped table is never copied (a copy would hide its later updates)."""
    if samples < 1 or rounds < 1:
        raise JcwError("--samples and --rounds must each be at least 1")
    table = load_table(device, out_dir)
    supernet = load_supernet(supernet)
    if table.meta.get("source") != "measured" or not device.startswith("host"):
        raise JcwError(f"only a table measured on this machine can be validated here; {device} is "
                       f"{table.meta.get('source', 'unknown')} (phones: see `jcw latency bundle`)")
    if table.runtime not in VALIDATED_RUNTIMES:
        raise JcwError(f"validation times exported subnets in jcw's torch or TFLite runtime; {device} was measured "
                       f"with {table.runtime}")
    bound = table.bind(supernet.space)
    genomes = validation_genomes(supernet.space, samples, seed, table.meta.get("calibration_genomes"))
    with torch_threads(table.threads), pinned(table.threads):
        calls = [end_to_end_call(supernet, g, bound) for g in tqdm(genomes, desc="exporting", file=sys.stderr)]
        measured = np.array([[time_call(call, repeats)[0] for call in calls]
                             for _ in tqdm(range(rounds), desc="timing rounds", file=sys.stderr)])  # (rounds, n)
    predicted = bound.latency(genomes)
    errors = 100 * np.abs(predicted[None, :] - measured) / measured  # (rounds, n)
    mape = errors.mean(axis=1)
    within = (errors <= 10).mean(axis=1)
    rows = [{"genome": [int(v) for v in g], "predicted_ms": round(float(p), 5),
             "measured_ms": round(float(np.median(m)), 5), "measured_range_ms": [round(float(m.min()), 5),
                                                                                 round(float(m.max()), 5)],
             "error_pct": round(float(100 * (p - np.median(m)) / np.median(m)), 2)}
            for g, p, m in zip(genomes, predicted, measured.T)]
    validated_on = {"supernet": supernet.path, "supernet_hash": supernet.hash}  # the error holds for its layers
    report = {**validated_on, "samples": len(rows), "rounds": rounds, "repeats": repeats,
              "mape": round(float(np.median(mape)), 3), "mape_range": [round(float(mape.min()), 3),
                                                                      round(float(mape.max()), 3)],
              "within_10pct": round(float(np.median(within)), 3), "rows": rows}
    folder = Path(out_dir) if out_dir else user_table_dir()  # never over a shipped table
    path = folder / f"{device}.validation.json"
    write_json(path, report)
    table.meta["error"] = {"kind": f"end-to-end on {len(rows)} exported subnets spread over the size range, none "
                                   f"calibrated on (seed {seed}); median of {rounds} rounds",
                           "mape_pct": report["mape"], "mape_range_pct": report["mape_range"],
                           "within_10pct": report["within_10pct"], **validated_on,
                           "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}
    if table.folder is not None and table.folder.resolve() == folder.resolve():
        table.save(folder)
    report["report"] = str(path)
    return report
