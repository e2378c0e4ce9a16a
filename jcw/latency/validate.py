"""End-to-end validation of a measured table: time real exported subnets against what the table predicts."""
from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from jcw.artifacts import artifact_dir
from jcw.errors import JcwError
from jcw.io import write_json
from jcw.latency.measure import TORCH_RUNTIME_PREFIX, end_to_end_ms
from jcw.latency.table import load_table
from jcw.runtime import torch_threads
from jcw.supernet.supernet import load_supernet


def validate_table(device: str = "host", supernet: str | Path | None = None, samples: int = 30, seed: int = 0,
                   out_dir: str | Path | None = None, repeats: int = 50) -> dict:
    """Time `samples` exported subnets, spread from the smallest to the largest, end to end against the table."""
    table = load_table(device, out_dir)
    supernet = load_supernet(supernet)
    if table.meta.get("source") != "measured" or not device.startswith("host"):
        raise JcwError(f"only a table measured on this machine can be validated here; {device} is "
                       f"{table.meta.get('source', 'unknown')} (phones: see `jcw latency bundle`)")
    if not str(table.meta.get("runtime")).startswith(TORCH_RUNTIME_PREFIX):
        raise JcwError(f"validation times exported subnets on jcw's torch CPU runtime; {device} was measured with "
                       f"{table.meta.get('runtime')}")
    bound = table.bind(supernet.space)
    rows = []
    genomes = supernet.space.sample_spread(samples, np.random.default_rng(seed))  # smallest to largest, not mid-size
    with torch_threads(int(table.meta.get("threads", 1))):
        for g in tqdm(genomes, desc="validating", file=sys.stderr):
            measured = end_to_end_ms(supernet, g, bound, repeats)
            predicted = float(bound.latency(g)[0])
            rows.append({"genome": [int(v) for v in g], "predicted_ms": round(predicted, 5),
                         "measured_ms": round(measured, 5),
                         "error_pct": round(100 * (predicted - measured) / measured, 2)})
    errors = np.array([abs(r["error_pct"]) for r in rows])
    report = {"samples": len(rows), "mape": round(float(errors.mean()), 3),
              "within_10pct": round(float((errors <= 10).mean()), 3), "rows": rows}
    folder = Path(out_dir) if out_dir else artifact_dir("latency_tables")
    path = folder / f"{device}.validation.json"
    write_json(path, report)
    table.meta["error"] = {"kind": f"end-to-end on {len(rows)} exported subnets spread over the size range "
                                   f"(seed {seed})",
                           "mape_pct": report["mape"], "within_10pct": report["within_10pct"],
                           "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}
    write_json(folder / f"{device}.json", table.meta)
    report["report"] = str(path)
    return report
