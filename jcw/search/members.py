"""Export one member of a search run as a subnet file, with the run's scores in its metadata."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from jcw.accelerator import CPU, Accelerator
from jcw.data import supernet_data
from jcw.errors import JcwError
from jcw.search.rundir import RunDir
from jcw.supernet.accuracy import TestScore
from jcw.supernet.subnet import export_subnet
from jcw.supernet.supernet import Supernet, load_supernet


def export_member(run: str | Path | RunDir, subnet_id: int, supernet: Supernet | None = None,
                  device: str | None = None, out: str | Path | None = None, data_dir: str | None = None,
                  test: bool = False, accel: Accelerator = CPU, data=None, tested: TestScore | None = None) -> Path:
    """Write member `subnet_id` of `run` to RUN/subnets/ID.pt (or `out`), batch norm recalibrated for it (and, with
    `test`, its test top-1 in the metadata); `data` is the supernet's dataset where the caller has it loaded, and
    `tested` both where the caller's scoring pool has computed them."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    record = run.read()
    row, genome = run.member(record.history, subnet_id)
    config = record.config
    if supernet is None:
        supernet = load_supernet(config["resolved"]["supernet"])
    if supernet.hash != config["resolved"]["supernet_hash"]:
        raise JcwError(f"the supernet at {supernet.path} changed since the run (hash {supernet.hash}, run used "
                       f"{config['resolved']['supernet_hash']})")
    if data is None and tested is None:
        data = supernet_data(supernet.config, data_dir or config["options"].get("data_dir"))
    meta = {"id": int(subnet_id), "device": device or config["options"]["device"],
            "predicted_latency_ms": float(row["latency_ms"]),
            "val_top1": None if pd.isna(row["true_top1"]) else float(row["true_top1"]),
            "predicted_top1": None if pd.isna(row["predicted_top1"]) else float(row["predicted_top1"]),
            "run": str(run.path.resolve())}
    return export_subnet(supernet, genome, Path(out) if out else run.subnet(subnet_id), data=data, metadata=meta,
                         test=test, accel=accel, tested=tested)
