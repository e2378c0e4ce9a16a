"""A search run's folder: the one place that knows its files' names and formats.

    config.json        every option, resolved paths and search space, versions, the table's metadata
    history.csv        every evaluated genome
    pareto.csv         the true-scored front
    summary.csv        the chosen subnet per budget
    pareto.png/.html   the plot and the page
    checkpoint/        the algorithm after each generation, for --resume
    subnets/<id>.pt    exported front members
"""
from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from jcw.errors import JcwError
from jcw.io import atomic_path, write_csv, write_json
from jcw.search.archive import genomes_from_column

OUTPUTS = ("summary.csv", "pareto.csv", "pareto.png", "pareto.html", "history.csv")


@dataclass
class RunRecord:
    history: pd.DataFrame
    pareto: pd.DataFrame
    config: dict


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    # ---- names ---------------------------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    @property
    def pareto(self) -> Path:
        return self.path / "pareto.csv"

    @property
    def summary(self) -> Path:
        return self.path / "summary.csv"

    @property
    def png(self) -> Path:
        return self.path / "pareto.png"

    @property
    def html(self) -> Path:
        return self.path / "pareto.html"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint" / "search.pkl"

    @property
    def subnets(self) -> Path:
        return self.path / "subnets"

    def subnet(self, subnet_id: int) -> Path:
        return self.subnets / f"{subnet_id}.pt"

    # ---- lifecycle -----------------------------------------------------------------------------------------------
    def is_started(self) -> bool:
        return self.path.exists() and any(self.path.iterdir())

    def clear(self) -> None:
        """Remove every output of an earlier run, so a half-done forced restart never reads as finished, --resume
        never continues the old run, and exported subnets' ids never name other subnets."""
        self.path.mkdir(parents=True, exist_ok=True)
        for name in OUTPUTS:
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.subnets, ignore_errors=True)
        shutil.rmtree(self.checkpoint.parent, ignore_errors=True)

    # ---- writing -------------------------------------------------------------------------------------------------
    def write_config(self, record: dict) -> None:
        write_json(self.config, record)

    def write_tables(self, history: pd.DataFrame, pareto: pd.DataFrame, summary: pd.DataFrame) -> None:
        write_csv(self.history, history.round({"latency_ms": 6, "predicted_top1": 4, "true_top1": 4}))
        write_csv(self.pareto, pareto)
        self.write_summary(summary)

    def write_summary(self, summary: pd.DataFrame) -> None:
        write_csv(self.summary, summary)

    def save_checkpoint(self, state: dict) -> None:
        with atomic_path(self.checkpoint) as tmp, open(tmp, "wb") as f:
            pickle.dump(state, f)

    def load_checkpoint(self) -> dict:
        try:
            with open(self.checkpoint, "rb") as f:
                return pickle.load(f)
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError, TypeError) as exc:
            # cut off mid-write outside jcw's atomic rename, or written by other versions of jcw or pymoo
            raise JcwError(f"{self.checkpoint} is corrupt or from another version ({exc.__class__.__name__}); "
                           "start the run again with --force") from None

    # ---- reading -------------------------------------------------------------------------------------------------
    def read(self) -> RunRecord:
        """A finished run's history, front and config; a clear error for anything else."""
        try:
            record = RunRecord(pd.read_csv(self.history), pd.read_csv(self.pareto),
                               json.loads(self.config.read_text()))
        except FileNotFoundError as exc:
            raise JcwError(f"{self.path} is not a finished search run (missing {Path(exc.filename).name})") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise JcwError(f"run files in {self.path} are corrupt ({exc.__class__.__name__})") from None
        return record

    def member(self, history: pd.DataFrame, subnet_id: int) -> tuple[pd.Series, np.ndarray]:
        """History row and genome of subnet `subnet_id`."""
        row = history[history["id"] == subnet_id]
        if row.empty:
            raise JcwError(f"{self.path} has no subnet with id {subnet_id}; ids are in pareto.csv and history.csv")
        return row.iloc[0], genomes_from_column(row["genome"])[0]
