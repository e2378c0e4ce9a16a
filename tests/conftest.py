"""Shared fixtures. Tests use the real shipped artifacts (supernet, predictor, tables) and real Fashion-MNIST.

Expensive things are made once per session and shared: one small search run, one tiny block-sparse supernet.
Most end-to-end tests call the CLI's own `main` in this process (`jcw`), which skips torch's import per call;
those that kill a run, or need a fresh process, start the real `python -m jcw.cli` (`run_cli`).
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the first default (grey 28 px images, a stride-1 stem: nothing sparse on pixel4), still loadable by path
OLD_DEFAULT = ROOT / "supernets" / "mbv2_small_fmnist"
OLD_DEFAULT_PREDICTOR = ROOT / "predictors" / "mbv2_small_fmnist"
# the user's own tables (`jcw latency measure`'s default folder) must not leak into the tests, nor theirs into it
os.environ["JCW_HOME"] = tempfile.mkdtemp(prefix="jcw-home-")

# The search every export, pick, plot, finetune and resume test works from (small, serial, seeded).
SMALL = ["--device", "pixel4", "--population", "16", "--generations", "30", "--rescore", "4",
         "--calibration-images", "250", "--val-images", "500", "--workers", "0", "--seed", "1"]
SMALL_BUDGETS = "0.5ms,0.9ms"


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def jcw(*args: str, check: bool = False) -> Ran:
    """`jcw ARGS` through the CLI's `main`, in this process, with its stdout and stderr captured."""
    from jcw.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse: --help, --version and usage errors
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    ran = Ran(code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"jcw {' '.join(args)} failed ({code}):\n{ran.stdout}\n{ran.stderr}")
    return ran


def run_cli(*args: str, cwd: Path | None = None, check: bool = False, timeout: int = 900,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """The real `jcw` command in a fresh process, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "jcw.cli", *args], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout, env=cli_env(env))
    if check and proc.returncode != 0:
        raise AssertionError(f"jcw {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def kill_cli_when(*args: str, line_starts: str, then_exists: Path | None = None, timeout: float = 300) -> list[int]:
    """Run `jcw ARGS` in a fresh process and SIGKILL it once it prints a line starting with `line_starts` (and, when
    given, once `then_exists` is written): a run cut off as a dying laptop cuts it, for the resume tests. Every
    process it had started must die with it; returns their pids."""
    proc = subprocess.Popen([sys.executable, "-m", "jcw.cli", *args], cwd=ROOT, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + timeout
    for line in proc.stdout:
        if line.startswith(line_starts) or time.time() > deadline:
            while then_exists is not None and not then_exists.exists() and time.time() < deadline:
                time.sleep(0.1)
            break
    started = children_of(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be cut off"
    deadline = time.time() + 10
    while children_alive(started) and time.time() < deadline:
        time.sleep(0.1)
    assert not children_alive(started), f"processes the run started outlived it: {children_alive(started)}"
    return started


def proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state, ppid, ...); None once the process is gone."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def children_of(pid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
            and (stat := proc_stat(int(p.name))) is not None and int(stat[1]) == pid]


def children_alive(pids: list[int]) -> list[int]:
    """Those of `pids` still running (a zombie has exited: only its exit status waits to be read)."""
    return [pid for pid in pids if (stat := proc_stat(pid)) is not None and stat[0] != "Z"]


def cli_env(extra: dict | None = None) -> dict:
    env = dict(os.environ, **(extra or {}))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def one_clear_line(proc, *needles: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def write_imagefolder(root: Path, classes: int = 2, per_class: int = 12) -> Path:
    """An ImageNet-layout tree of small JPEGs, one colour per class: train/ has `per_class`, val/ 3 per class."""
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(per_class if split == "train" else 3):
                pixels = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
                pixels[..., c] = 255  # each class has its own colour
                Image.fromarray(pixels).save(root / split / f"class{c}" / f"{i}.jpg")
    return root


@pytest.fixture(scope="session")
def data(supernet):
    """The shipped supernet's data: its dataset at its input size, with its validation split held out."""
    from jcw.data import supernet_data

    return supernet_data(supernet.config)


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


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    """One finished search (`SMALL`, budgets 0.5 and 0.9 ms), run as a user runs it; tests must not modify it."""
    out = tmp_path_factory.mktemp("search") / "run"
    proc = run_cli("search", "--latency", SMALL_BUDGETS, "--out", str(out), *SMALL, check=True)
    (out.parent / "stdout.txt").write_text(proc.stdout)
    return out


@pytest.fixture(scope="session")
def block_supernet(tmp_path_factory) -> Path:
    """A tiny supernet trained briefly with 1x4 weight blocks (`supernet train --block 4`); its stderr beside it."""
    out = tmp_path_factory.mktemp("block") / "sn"
    ran = jcw("supernet", "train", "--model", "mbv2_tiny", "--block", "4", "--epochs", "1", "--limit-train", "256",
              "--batch-size", "128", "--val-images", "500", "--out", str(out), check=True)
    (out / "stderr.txt").write_text(ran.stderr)
    return out / "supernet.pt"
