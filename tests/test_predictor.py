import numpy as np
import pytest

from jcw.errors import JcwError
from jcw.predictor import fit_predictor, genome_features, load_predictor


def test_spread_sample_reaches_both_ends(tiny_supernet):
    space = tiny_supernet.space
    rng = np.random.default_rng(0)
    spread = space.cost(space.sample_spread(300, rng))["macs"]
    uniform = space.cost(space.sample(300, rng))["macs"]
    lo, hi = space.cost(space.smallest())["macs"][0], space.cost(space.largest())["macs"][0]
    span = hi - lo
    assert (spread < lo + 0.15 * span).sum() > (uniform < lo + 0.15 * span).sum()
    assert (spread > lo + 0.6 * span).sum() > (uniform > lo + 0.6 * span).sum()


def test_fit_recovers_a_known_ranking(tiny_supernet, tmp_path):
    from scipy.stats import kendalltau

    space = tiny_supernet.space
    rng = np.random.default_rng(0)
    genomes = space.sample_spread(300, rng)
    x = genome_features(space, genomes)
    true = 70 + 20 * x[:, : len(space.groups)].mean(1) + 5 * x[:, len(space.groups):-2].mean(1)
    labels = true + rng.normal(0, 0.05, len(true))
    pred = fit_predictor(space, genomes, labels, "hash-a", seed=0)
    test = space.sample(200, np.random.default_rng(1))
    x_test = genome_features(space, test)
    expected = 70 + 20 * x_test[:, : len(space.groups)].mean(1) + 5 * x_test[:, len(space.groups):-2].mean(1)
    assert kendalltau(pred.predict(test), expected).statistic > 0.9
    pred.save(tmp_path)
    again = load_predictor(tmp_path)
    assert np.allclose(again.predict(test), pred.predict(test))


def test_predictor_fit_on_another_supernet_is_refused(tiny_supernet, tmp_path):
    space = tiny_supernet.space
    genomes = space.sample(40, np.random.default_rng(0))
    pred = fit_predictor(space, genomes, np.linspace(80, 90, 40), "hash-a")
    with pytest.raises(JcwError, match="fit on supernet hash-a"):
        pred.check_supernet("hash-b")


def test_shipped_predictor_matches_shipped_supernet(supernet):
    pred = load_predictor()
    pred.check_supernet(supernet.hash)
    assert pred.report["models"][pred.report["kept"]]["kendall_tau"] > 0


def test_corrupt_predictor_is_a_clear_error(tmp_path):
    (tmp_path / "predictor.pt").write_bytes(b"not a predictor")
    with pytest.raises(JcwError, match="corrupt"):
        load_predictor(tmp_path)
