import json

import numpy as np
import pytest

from jcw.errors import JcwError
from jcw.predictor.features import genome_features
from jcw.predictor.regression import fit_predictor, refine
from jcw.predictor.models import apply_model, fit_kernel, fit_ridge
from jcw.predictor.predictor import load_predictor


def test_spread_sample_reaches_both_ends(tiny_supernet):
    space = tiny_supernet.space
    rng = np.random.default_rng(0)
    spread = space.cost(space.sample_spread(300, rng))["macs"]
    uniform = space.cost(space.sample(300, rng))["macs"]
    lo, hi = space.cost(space.smallest())["macs"][0], space.cost(space.largest())["macs"][0]
    span = hi - lo
    assert (spread < lo + 0.15 * span).sum() > (uniform < lo + 0.15 * span).sum()
    assert (spread > lo + 0.6 * span).sum() > (uniform > lo + 0.6 * span).sum()


def _known_accuracy(space, genomes: np.ndarray) -> np.ndarray:
    bases = np.array([grp.base for grp in space.groups])
    return 70 + 20 * (space.widths(genomes) / bases).mean(1) + 5 * space.density_values(genomes).mean(1)


def test_features_are_the_genes_and_the_logs_of_the_layer_sizes(tiny_supernet):
    """The bound gathers must give what the space's own size accounting gives, depthwise and fixed widths included."""
    space = tiny_supernet.space
    genomes = space.sample(40, np.random.default_rng(1))
    x, cost = genome_features(space, genomes), space.cost(genomes)
    bases = np.array([group.base for group in space.groups])
    genes = np.concatenate([space.widths(genomes) / bases, space.density_values(genomes)], axis=1)
    pruned = [j for j, layer in enumerate(space.layers) if layer.kind in ("conv", "linear") and not layer.depthwise]
    assert any(layer.depthwise for layer in space.layers) and (genes < 1).any()
    sizes = np.concatenate([cost["layer_weights"][:, pruned], cost["macs"][:, None], cost["params"][:, None]], axis=1)
    assert np.allclose(x, np.concatenate([genes, np.log(genes), np.log(sizes)], axis=1), rtol=1e-12, atol=0)


def test_fit_recovers_a_known_ranking(tiny_supernet, tmp_path):
    from scipy.stats import kendalltau

    space = tiny_supernet.space
    rng = np.random.default_rng(0)
    genomes = space.sample_spread(300, rng)
    labels = _known_accuracy(space, genomes) + rng.normal(0, 0.05, len(genomes))
    pred = fit_predictor(space, genomes, labels, "hash-a", seed=0)
    assert set(pred.report["models"]) == {"mlp", "ridge", "kernel"}
    assert all(len(m["kendall_tau_folds"]) == 5 for m in pred.report["models"].values())
    test = space.sample(200, np.random.default_rng(1))
    assert kendalltau(pred.predict(test), _known_accuracy(space, test)).statistic > 0.9
    pred.save(tmp_path)
    again = load_predictor(tmp_path)
    assert np.allclose(again.predict(test), pred.predict(test))


def test_refined_predictor_learns_the_new_rows(tiny_supernet, tmp_path):
    import pandas as pd

    space = tiny_supernet.space
    rng = np.random.default_rng(0)
    genomes = space.sample_spread(200, rng)
    labels = _known_accuracy(space, genomes)
    pred = fit_predictor(space, genomes, labels, "hash-a", seed=0)
    pred.save(tmp_path)
    pd.DataFrame({"genome": [json.dumps(g.tolist()) for g in genomes], "top1": labels, "loss": 0.5,
                  "supernet_hash": "hash-a"}).to_csv(tmp_path / "dataset.csv", index=False)
    # subnets the first fit overrates by 3 points, as a search finds them
    overrated = space.sample(40, np.random.default_rng(1))
    truth = _known_accuracy(space, overrated) - 3
    refined = refine(load_predictor(tmp_path), overrated, truth)
    before = np.abs(pred.predict(overrated) - truth).mean()
    after = np.abs(refined.predict(overrated) - truth).mean()
    assert before > 2.5 and after < before - 1.0


def test_kernel_model_fits_an_interaction_ridge_cannot():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = x[:, 0] * x[:, 1] + x[:, 2]
    test = rng.normal(size=(9000, 3))  # more rows than one prediction chunk
    truth = test[:, 0] * test[:, 1] + test[:, 2]
    kernel = fit_kernel(x, y, landmarks=200)
    assert len(kernel["landmarks"]) == 200
    kernel_rmse = np.sqrt(np.mean((apply_model(kernel, test) - truth) ** 2))
    ridge_rmse = np.sqrt(np.mean((apply_model(fit_ridge(x, y), test) - truth) ** 2))
    assert ridge_rmse > 0.8 and kernel_rmse < 0.3


def test_too_few_scored_subnets_is_a_clear_error(tiny_supernet):
    genomes = tiny_supernet.space.sample(9, np.random.default_rng(0))
    with pytest.raises(JcwError, match="at least 10 scored subnets"):
        fit_predictor(tiny_supernet.space, genomes, np.linspace(80, 90, 9), "hash-a")


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


def test_shipped_dataset_ranks_unseen_subnets_and_shuffled_labels_do_not(supernet):
    """On the shipped predictor's own scored subnets: fit on 80%, rank the other 20%; shuffled labels rank nothing."""
    import pandas as pd
    from scipy.stats import kendalltau

    from jcw.artifacts import default_predictor_path
    from jcw.predictor.regression import fit_kind
    from jcw.search.archive import genomes_from_column

    rows = pd.read_csv(default_predictor_path() / "dataset.csv")
    genomes, top1 = genomes_from_column(rows["genome"]), rows["top1"].to_numpy()
    order = np.random.default_rng(0).permutation(len(rows))
    train, test = order[: int(0.8 * len(rows))], order[int(0.8 * len(rows)):]
    kind = load_predictor().report["kept"]
    fit = fit_kind(supernet.space, genomes[train], top1[train], kind, supernet.hash)
    assert kendalltau(fit.predict(genomes[test]), top1[test]).statistic > 0.7
    shuffled = fit_kind(supernet.space, genomes[train], np.random.default_rng(1).permutation(top1[train]), kind,
                        supernet.hash)
    assert abs(kendalltau(shuffled.predict(genomes[test]), top1[test]).statistic) < 0.15


def test_a_killed_fits_partial_scores_survive_a_torn_last_line(tmp_path):
    """Scores are appended a row at a time; a kill mid-row leaves a torn line that is skipped, not the whole file."""
    from jcw.predictor.dataset import _read_partial
    from jcw.predictor.label_noise import label_ceiling, unpack

    right = np.random.default_rng(0).random((3, 20)) < 0.8
    rows = [f'"[{i}, 0]",{100 * r.mean()},0.5,{np.packbits(r).tobytes().hex()},20,key' for i, r in enumerate(right)]
    text = "genome,top1,loss,correct,images,scoring\n" + "\n".join(rows) + "\n"
    (tmp_path / "p.csv").write_text(text[:-9])  # the last row torn inside its scoring key
    done = _read_partial(tmp_path / "p.csv", "key")
    assert list(done) == ["[0, 0]", "[1, 0]"]
    assert np.array_equal(unpack(done["[1, 0]"]["correct"], 20), right[1])
    assert _read_partial(tmp_path / "p.csv", "other scoring") == {}
    # a perfect predictor ranks subnets far apart perfectly, and one draw of noise is as good as the labels allow
    apart = np.array([np.arange(400) < k for k in (100, 200, 300)])
    assert label_ceiling(apart, redraws=20)["perfect_predictor_tau"] == 1.0
