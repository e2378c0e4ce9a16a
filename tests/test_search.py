import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import OLD_DEFAULT, OLD_DEFAULT_PREDICTOR, ROOT

from jcw.errors import JcwError
from jcw.search.archive import pareto_mask
from jcw.search.budget import parse_budget, parse_budgets
from jcw.search.repair import XnnpackDensities
from jcw.search.run import SearchConfig, search
from jcw.supernet.supernet import load_supernet


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


def test_budget_below_smallest_subnet(tmp_path):
    with pytest.raises(JcwError, match="least achievable"):
        search(_small(tmp_path, "tiny", budgets_ms=[0.001]))


def test_density_genes_stay_dense_where_the_runtime_never_runs_them_sparse(tmp_path):
    """On pixel4 (TFLite with XNNPACK) the demo's stem rules out a sparse subgraph: the search says so and keeps
    every density gene at 1.0 (gene 0)."""
    import json

    import pandas as pd

    lines: list[str] = []
    search(_small(tmp_path, "dense", generations=2, supernet=str(OLD_DEFAULT / "supernet.pt"),
                  predictor=str(OLD_DEFAULT_PREDICTOR)), log=lines.append)
    assert any(line.startswith("note: tflite-xnnpack on pixel4 runs no layer of mbv2_small sparse (its stem is")
               and line.endswith("all density genes stay at 1.0") for line in lines)
    history = pd.read_csv(tmp_path / "dense" / "history.csv")
    genomes = np.array([json.loads(g) for g in history["genome"]])
    n_groups = len(load_supernet(OLD_DEFAULT / "supernet.pt").space.groups)
    assert (genomes[:, n_groups:] == 0).all() and genomes[:, :n_groups].any()


def test_the_note_counts_the_density_genes_that_leave_the_genome(tmp_path):
    """On the sparse-ready demo XNNPACK can run the 16 1x1 convs sparse; the stem's and classifier's genes leave."""
    from jcw.search.run import _Context

    s2 = "mbv2_small_s2_fmnist_rgb"
    ctx = _Context(_small(tmp_path, "note", supernet=str(ROOT / "supernets" / s2 / "supernet.pt"),
                          predictor=str(ROOT / "predictors" / s2)))
    assert ctx.dense_only.sum() == 2 and len(XnnpackDensities(ctx.bound).genes) == 16
    assert ctx.dense_only_note() == ""  # the shared gene's note says it all, in one line
    note = ctx.repair.note()
    assert note.startswith("note: XNNPACK runs only its NCHW subgraph's 16 1x1 convs sparse, and only as a whole")
    assert note.endswith("the other 2 sparse layers stay dense")


def test_no_candidate_carries_zeros_that_xnnpack_runs_dense(tmp_path):
    """The s2 demo's grid (1, 0.9, ..., 0.2) has six densities XNNPACK runs dense: a pixel4 search repairs them to
    dense, so every genome it prices (the front included) is dense or past XNNPACK's two thirds of zeros."""
    import json

    import pandas as pd

    from jcw.latency.table import load_table

    s2 = "mbv2_small_s2_fmnist_rgb"
    net = load_supernet(ROOT / "supernets" / s2 / "supernet.pt")
    cfg = _small(tmp_path, "repair", supernet=str(net.path), predictor=str(ROOT / "predictors" / s2),
                 budgets_ms=[1.0], generations=4, rescore=2)
    search(cfg)
    bound = load_table("pixel4").bind(net.space)
    genes = len(net.space.groups) + np.array(bound.subgraph_sparse())
    history = pd.read_csv(tmp_path / "repair" / "history.csv")
    genomes = np.array([json.loads(g) for g in history["genome"]])
    sparse = bound.runs_sparse(genomes)
    assert sparse.any() and (~sparse).any()
    assert (genomes[~sparse][:, genes] == 0).all()
    front = np.array([json.loads(g) for g in pd.read_csv(tmp_path / "repair" / "pareto.csv")["genome"]])
    assert (bound.runs_sparse(front) | (front[:, genes] == 0).all(axis=1)).all()
