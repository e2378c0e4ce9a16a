import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from hypothesis import given
from hypothesis import strategies as st

from jcw.errors import JcwError
from jcw.search.archive import pareto_mask
from jcw.search.budget import parse_budget, parse_budgets
from jcw.search.run import SearchConfig, search


@pytest.mark.parametrize("text,ms", [("30ms", 30), ("0.03s", 30), ("30 ms", 30), ("250us", 0.25), (" 1.5 ms ", 1.5)])
def test_budget_parser_accepts_units(text, ms):
    assert parse_budget(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["fast", "-5ms", "30 parsecs", "", "0ms", "ms", "5"])
def test_budget_parser_rejects_nonsense(text):
    with pytest.raises(JcwError):
        parse_budgets(text)


@given(st.text(max_size=20))
def test_budget_parser_never_crashes(text):
    try:
        values = parse_budgets(text)
    except JcwError:
        return
    assert values and all(v > 0 for v in values)


def test_several_budgets():
    assert parse_budgets("30ms,10ms, 20 ms") == [10, 20, 30]


def test_pareto_mask():
    lat = np.array([1.0, 2.0, 3.0, 2.5, 0.5])
    top = np.array([80.0, 85.0, 84.0, 90.0, 70.0])
    assert pareto_mask(lat, top).tolist() == [True, True, False, True, True]


def test_multi_target_survival_covers_every_target():
    from pymoo.core.population import Population

    from jcw.search.survival import MultiTargetSurvival

    rng = np.random.default_rng(0)
    lat = rng.uniform(0, 10, 200)
    err = 30 - 2 * lat + rng.normal(0, 1, 200)
    pop = Population.new(X=np.zeros((200, 2)), F=np.stack([lat, err], 1))
    survivors = MultiTargetSurvival([1, 4, 7, 10])._do(None, pop, n_survive=40)
    chosen = survivors.get("F")[:, 0]
    for t in (1, 4, 7, 10):
        assert np.min(np.abs(chosen - t)) < 0.5


def _small(tmp_path, name, **kw):
    cfg = dict(device="pixel4", budgets_ms=[0.9], population=16, generations=6, seed=3, out=str(tmp_path / name),
               workers=0, rescore=4, calibration_images=250, val_images=500, export=False)
    cfg.update(kw)
    return SearchConfig(**cfg)


@pytest.fixture
def ray_cluster():
    """A Ray head started as a user starts one (`ray start --head`), stopped afterwards."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ray = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, capture_output=True, timeout=120)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120)


@pytest.mark.slow
def test_a_search_on_a_ray_cluster_finds_the_serial_front(tmp_path, ray_cluster):
    """`jcw search --ray-address` joins a head the user started, token authentication on, as Ray now defaults to."""
    search(_small(tmp_path, "serial", workers=0, calibration_images=100, val_images=200), log=lambda s: None)
    # one actor on the cluster's two CPUs scores at two threads, as the serial run does: the same sums, bit for bit
    run_cli("search", "--device", "pixel4", "--latency", "0.9ms", "--population", "16", "--generations", "6",
            "--seed", "3", "--out", str(tmp_path / "ray"), "--workers", "1", "--ray-address", ray_cluster,
            "--rescore", "4", "--calibration-images", "100", "--val-images", "200", "--no-export", check=True,
            env={"RAY_AUTH_MODE": "token"})
    front = pd.read_csv(tmp_path / "serial" / "pareto.csv")
    pd.testing.assert_frame_equal(front, pd.read_csv(tmp_path / "ray" / "pareto.csv"))
    assert (front["latency_ms"] <= 0.9).all() and front["top1"].notna().all()
    assert pareto_mask(front["latency_ms"].to_numpy(), front["top1"].to_numpy()).all()



def test_budget_below_smallest_subnet(tmp_path):
    with pytest.raises(JcwError, match="least achievable"):
        search(_small(tmp_path, "tiny", budgets_ms=[0.001]))
