"""Accuracy predictor: top-1 of a subnet from its genome, in microseconds instead of seconds.

Fit on a few hundred subnets scored on the supernet, spread over the whole size range. Features are the per-gene
width ratio and density plus log MACs and log nonzero weights. An MLP is compared with ridge regression on a held-out
20%, and the better one is kept. A predictor is tied to the supernet it was fit on, by the supernet file's hash.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from jcw.errors import JcwError
from jcw.io import torch_save, write_csv, write_json
from jcw.space import SearchSpace

FORMAT = "jcw-predictor/1"


def genome_features(space: SearchSpace, genomes: np.ndarray) -> np.ndarray:
    g = np.asarray(genomes).reshape(-1, space.n_genes)
    bases = np.array([grp.base for grp in space.groups], dtype=float)
    widths = space.widths(g) / bases[None, :]
    dens = space.density_values(g)
    cost = space.cost(g)
    return np.concatenate([widths, dens, np.log(cost["macs"])[:, None], np.log(cost["params"])[:, None]], axis=1)


# ---- models ----------------------------------------------------------------------------------------------------
@dataclass
class Standardizer:
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> "Standardizer":
        return cls(x.mean(0), np.where(x.std(0) > 1e-9, x.std(0), 1.0))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float = 1.0) -> dict:
    xs = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    reg = alpha * np.eye(xs.shape[1])
    reg[-1, -1] = 0
    w = np.linalg.solve(xs.T @ xs + reg, xs.T @ y)
    return {"kind": "ridge", "w": w}


def fit_mlp(x: np.ndarray, y: np.ndarray, seed: int = 0, hidden: int = 128, epochs: int = 600) -> dict:
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                              torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)[:, None]
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(xt[idx]), yt[idx]).backward()
            opt.step()
        sched.step()
    layers = [m for m in net if isinstance(m, torch.nn.Linear)]
    return {"kind": "mlp", "weights": [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy())
                                       for m in layers]}


def apply_model(model: dict, x: np.ndarray) -> np.ndarray:
    """Forward pass in numpy: no torch dispatch overhead, so batches go at millions of rows a second."""
    if model["kind"] == "ridge":
        return x @ model["w"][:-1] + model["w"][-1]
    h = x
    for i, (w, b) in enumerate(model["weights"]):
        h = h @ w + b
        if i < len(model["weights"]) - 1:
            h = np.maximum(h, 0)
    return h[:, 0]


# ---- the predictor ---------------------------------------------------------------------------------------------
class Predictor:
    def __init__(self, space: SearchSpace, model: dict, x_norm: Standardizer, y_mean: float, y_std: float,
                 supernet_hash: str, report: dict | None = None):
        self.space, self.model, self.x_norm = space, model, x_norm
        self.y_mean, self.y_std = y_mean, y_std
        self.supernet_hash = supernet_hash
        self.report = report or {}

    def predict(self, genomes: np.ndarray) -> np.ndarray:
        """Predicted validation top-1 (percent) of each genome."""
        x = self.x_norm(genome_features(self.space, genomes))
        return apply_model(self.model, x) * self.y_std + self.y_mean

    def check_supernet(self, supernet_hash: str) -> None:
        if supernet_hash != self.supernet_hash:
            raise JcwError(f"this predictor was fit on supernet {self.supernet_hash}, not on {supernet_hash}; "
                           "fit one with `jcw predictor fit --supernet S` or use --evaluator supernet")

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        model = dict(self.model)
        state = {"format": FORMAT, "space": self.space.to_dict(), "model": json.dumps(_to_lists(model)),
                 "x_mean": self.x_norm.mean.tolist(), "x_std": self.x_norm.std.tolist(), "y_mean": self.y_mean,
                 "y_std": self.y_std, "supernet_hash": self.supernet_hash, "report": json.dumps(self.report)}
        torch_save(folder / "predictor.pt", state)
        return folder / "predictor.pt"


def _to_lists(obj):
    if isinstance(obj, np.ndarray):
        return {"__array__": obj.tolist()}
    if isinstance(obj, (list, tuple)):
        return [_to_lists(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _to_lists(v) for k, v in obj.items()}
    return obj


def _from_lists(obj):
    if isinstance(obj, dict):
        if "__array__" in obj:
            return np.array(obj["__array__"])
        return {k: _from_lists(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_lists(o) for o in obj]
    return obj


def load_predictor(path: str | Path | None = None) -> Predictor:
    """Load a predictor folder (or its predictor.pt); with no path, the shipped default."""
    import torch

    from jcw.artifacts import default_predictor_path

    path = Path(path) if path else default_predictor_path()
    file = path / "predictor.pt" if path.is_dir() else path
    if not file.is_file():
        raise JcwError(f"predictor {path} does not exist; fit one with `jcw predictor fit` or use "
                       "--evaluator supernet")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        if state.get("format") != FORMAT:
            raise ValueError("format")
        model = _from_lists(json.loads(state["model"]))
        return Predictor(SearchSpace.from_dict(state["space"]), model,
                         Standardizer(np.array(state["x_mean"]), np.array(state["x_std"])), float(state["y_mean"]),
                         float(state["y_std"]), state["supernet_hash"], json.loads(state["report"]))
    except JcwError:
        raise
    except Exception as exc:
        raise JcwError(f"predictor file {file} is corrupt or truncated ({exc.__class__.__name__}); refit it with "
                       "`jcw predictor fit`") from None


# ---- fitting ---------------------------------------------------------------------------------------------------
def rank_metrics(pred: np.ndarray, true: np.ndarray) -> dict:
    from scipy.stats import kendalltau, spearmanr

    return {"rmse": round(float(np.sqrt(np.mean((pred - true) ** 2))), 4),
            "kendall_tau": round(float(kendalltau(pred, true).statistic), 4),
            "spearman_rho": round(float(spearmanr(pred, true).statistic), 4)}


def fit_predictor(space: SearchSpace, genomes: np.ndarray, top1: np.ndarray, supernet_hash: str,
                  seed: int = 0) -> Predictor:
    """Fit MLP and ridge on 80%, compare on the held-out 20%, refit the better on everything."""
    x_all = genome_features(space, genomes)
    y_all = np.asarray(top1, dtype=float)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y_all))
    n_test = max(2, len(y_all) // 5)
    test, train = order[:n_test], order[n_test:]
    norm = Standardizer.fit(x_all[train])
    y_mean, y_std = float(y_all[train].mean()), float(y_all[train].std() or 1.0)
    candidates = {"mlp": fit_mlp(norm(x_all[train]), (y_all[train] - y_mean) / y_std, seed),
                  "ridge": fit_ridge(norm(x_all[train]), (y_all[train] - y_mean) / y_std)}
    report = {"samples": int(len(y_all)), "held_out": int(n_test), "seed": seed, "models": {}}
    held_out_pred = {}
    for name, model in candidates.items():
        pred = apply_model(model, norm(x_all[test])) * y_std + y_mean
        held_out_pred[name] = pred
        report["models"][name] = rank_metrics(pred, y_all[test])
    best = max(report["models"], key=lambda k: (report["models"][k]["kendall_tau"], -report["models"][k]["rmse"]))
    report["kept"] = best
    report["held_out_rows"] = {"index": test.tolist(), "true": y_all[test].tolist(),
                               "predicted": held_out_pred[best].tolist()}
    # Refit the kept model on all samples.
    norm = Standardizer.fit(x_all)
    y_mean, y_std = float(y_all.mean()), float(y_all.std() or 1.0)
    target = (y_all - y_mean) / y_std
    final = fit_mlp(norm(x_all), target, seed) if best == "mlp" else fit_ridge(norm(x_all), target)
    return Predictor(space, final, norm, y_mean, y_std, supernet_hash, report)


def write_report(predictor: Predictor, folder: str | Path, dataset: pd.DataFrame) -> None:
    """dataset.csv, report.json and report.png beside predictor.pt."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    write_csv(folder / "dataset.csv", dataset)
    rep = predictor.report
    write_json(folder / "report.json", {k: v for k, v in rep.items() if k != "held_out_rows"})
    rows = rep["held_out_rows"]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(rows["true"], rows["predicted"], s=12)
    lo, hi = min(rows["true"] + rows["predicted"]), max(rows["true"] + rows["predicted"])
    ax.plot([lo, hi], [lo, hi], color="gray", lw=1)
    m = rep["models"][rep["kept"]]
    ax.set_title(f"held-out: {rep['kept']}, RMSE {m['rmse']:.2f}, tau {m['kendall_tau']:.3f}")
    ax.set_xlabel("true validation top-1 (%)")
    ax.set_ylabel("predicted top-1 (%)")
    fig.tight_layout()
    from jcw.io import atomic_path

    with atomic_path(folder / "report.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def fit_on_supernet(supernet, samples: int, out: str | Path, seed: int = 0, workers: int | None = None,
                    ray_address: str | None = None, data_dir: str | None = None) -> Predictor:
    """Sample subnets over the size range, score them on the supernet, fit, and write the predictor folder."""
    import sys

    from tqdm import tqdm

    from jcw.search.evaluator import DataSpec, make_evaluator

    space = supernet.space
    genomes = np.unique(space.sample_spread(samples, np.random.default_rng(seed)), axis=0)
    genomes = genomes[np.random.default_rng(seed).permutation(len(genomes))]
    evaluator = make_evaluator(supernet, DataSpec(supernet.config.dataset, data_dir), workers, ray_address)
    try:
        with tqdm(total=len(genomes), desc="scoring subnets", dynamic_ncols=True, file=sys.stderr) as bar:
            scores = evaluator.score(list(genomes), progress=bar.update)
    finally:
        evaluator.close()
    top1 = np.array([s["top1"] for s in scores])
    predictor = fit_predictor(space, genomes, top1, supernet.hash, seed)
    out = Path(out)
    predictor.save(out)
    cost = space.cost(genomes)
    dataset = pd.DataFrame({"genome": [json.dumps([int(v) for v in g]) for g in genomes],
                            "macs": cost["macs"].round().astype(np.int64),
                            "params": cost["params"].round().astype(np.int64),
                            "mean_density": space.density_values(genomes).mean(1).round(4),
                            "top1": top1, "loss": [s["loss"] for s in scores]})
    write_report(predictor, out, dataset)
    return predictor
