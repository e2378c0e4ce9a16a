"""Shared fixtures. Tests use the real shipped artifacts (supernet, predictor, tables) and real Fashion-MNIST."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data():
    from jcw.data import load_dataset

    return load_dataset("fashion-mnist")


@pytest.fixture(scope="session")
def supernet():
    from jcw.supernet.supernet import load_supernet

    return load_supernet()


@pytest.fixture(scope="session")
def tiny_supernet():
    """A randomly initialised supernet of the default architecture: for shape and mask tests."""
    import torch

    from jcw.supernet.supernet import Supernet, SupernetConfig

    torch.manual_seed(0)
    return Supernet(SupernetConfig()).eval()


def run_cli(*args: str, cwd: Path | None = None, check: bool = False, timeout: int = 900,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """The real `jcw` command, as a user runs it."""
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "jcw.cli", *args], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"jcw {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
