"""Accuracy predictor: top-1 of a subnet from its genome, in microseconds instead of seconds.

Fit on several hundred subnets scored on the supernet, spread over the whole size range. Features are each gene's
width ratio and density and their logs, the log of each weight layer's kept weights, and log total MACs and nonzero
weights: on logs a linear model is a power law in layer sizes, which ranks subnets well. An MLP, ridge regression and
kernel ridge regression are compared over five held-out folds, and the best is kept. A predictor is tied to the
supernet it was fit on, by the supernet file's hash.
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

FORMAT = "jcw-predictor/2"
PARTIAL = "scoring.partial.csv"  # scores checkpointed while a fit runs; removed when it ends


def genome_features(space: SearchSpace, genomes: np.ndarray) -> np.ndarray:
    g = np.asarray(genomes).reshape(-1, space.n_genes)
    bases = np.array([grp.base for grp in space.groups], dtype=float)
    genes = np.concatenate([space.widths(g) / bases[None, :], space.density_values(g)], axis=1)
    pruned = [j for j, layer in enumerate(space.layers) if layer.kind in ("conv", "linear") and not layer.depthwise]
    cost = space.cost(g)
    sizes = np.concatenate([cost["layer_weights"][:, pruned], cost["macs"][:, None], cost["params"][:, None]], axis=1)
    return np.concatenate([genes, np.log(genes), np.log(sizes)], axis=1)


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


def fit_mlp(x: np.ndarray, y: np.ndarray, seed: int = 0, hidden: int = 128, epochs: int = 300) -> dict:
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                              torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
    # Strong decoupled weight decay: a few hundred noisy labels, and the ranking matters more than the last 0.01.
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.05)
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


def _kernel(a: np.ndarray, b: np.ndarray, gamma: float) -> np.ndarray:
    """Gaussian plus linear kernel on standardised features; gamma is divided by the feature count, so one value
    suits any number of features."""
    dims = a.shape[1]
    dot = a @ b.T
    sq = np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * dot, 0)
    return np.exp(-gamma / dims * sq) + dot / dims


def fit_kernel(x: np.ndarray, y: np.ndarray, seed: int = 0, landmarks: int = 256, gamma: float = 0.1,
               noise: float = 0.03) -> dict:
    """Kernel ridge regression on at most `landmarks` training rows (subset of regressors).

    Accuracy bends smoothly with every layer's size, and how much one layer's width matters depends on the others';
    a kernel fits that from a few hundred rows where an MLP overfits and ridge cannot bend. Landmarks cap the cost of
    a prediction so the search still screens well over 100k genomes a second. gamma and noise were chosen by 5-fold CV
    on the default predictor's first 500 subnets, where tau hardly moved (0.836-0.841) over gamma 0.05-0.2 and noise
    0.01-0.03.
    """
    keep = np.sort(np.random.default_rng(seed).permutation(len(x))[:landmarks])
    z = x[keep]
    kxz, kzz = _kernel(x, z, gamma), _kernel(z, z, gamma)
    beta = np.linalg.solve(kxz.T @ kxz + noise * kzz + 1e-8 * np.eye(len(z)), kxz.T @ y)
    # Stored ready for apply_model: exp(-g|x-z|^2) = exp(-g|x|^2) exp(2g x.z) exp(-g|z|^2), so one matrix product and
    # one exp per landmark, and the linear part collapses to one weight vector.
    g = gamma / x.shape[1]
    return {"kind": "kernel", "landmarks": z, "rate": g, "beta": beta * np.exp(-g * (z * z).sum(1)),
            "linear": z.T @ beta / x.shape[1]}


KINDS = ("mlp", "ridge", "kernel")
_FITTERS = {"mlp": fit_mlp, "ridge": lambda x, y, seed: fit_ridge(x, y), "kernel": fit_kernel}


def fit_models(x: np.ndarray, y: np.ndarray, seed: int = 0, kinds: tuple[str, ...] = KINDS) -> dict[str, dict]:
    """The candidates; only those in `kinds` are trained (a search refitting a kernel predictor needs no MLP)."""
    return {kind: _FITTERS[kind](x, y, seed) for kind in kinds}


def apply_model(model: dict, x: np.ndarray) -> np.ndarray:
    """Forward pass in numpy: no torch dispatch overhead, so batches go at hundreds of thousands of rows a second."""
    if model["kind"] == "ridge":
        return x @ model["w"][:-1] + model["w"][-1]
    if model["kind"] == "kernel":
        g, out = model["rate"], np.empty(len(x))
        for i in range(0, len(x), 8192):  # bounds the kernel matrix at 8192 x landmarks
            part = x[i:i + 8192]
            out[i:i + 8192] = np.exp(-g * (part * part).sum(1)) * (np.exp(2 * g * part @ model["landmarks"].T)
                                                                   @ model["beta"])
        return out + x @ model["linear"]
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
        self.folder: Path | None = None  # where it was loaded from; its dataset.csv holds the scored subnets

    def refined(self, genomes: np.ndarray, top1: np.ndarray, seed: int = 0) -> "Predictor":
        """This predictor's model kind, refit on its own scored subnets plus these.

        A search drives into gene combinations a spread sample rarely covers, where the predictor overrates
        subnets; scoring some of them and refitting corrects it where the search is looking.
        """
        if self.folder is None or not (self.folder / "dataset.csv").is_file():
            raise JcwError("refining a predictor needs the dataset.csv it was fit on, beside predictor.pt")
        base, scores = read_scored(self.folder / "dataset.csv", self.space, self.supernet_hash)
        genomes = np.concatenate([base, self.space.check(genomes)])
        top1 = np.concatenate([[s["top1"] for s in scores], np.asarray(top1, dtype=float)])
        refit = fit_kind(self.space, genomes, top1, self.report["kept"], self.supernet_hash, seed, self.report)
        refit.folder = self.folder
        return refit

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
        found = state.get("format")
        if isinstance(found, str) and found.startswith("jcw-predictor/") and found != FORMAT:
            raise JcwError(f"predictor {file} is {found}, from another jcw version, and this one reads {FORMAT}; "
                           "refit it with `jcw predictor fit`")
        if found != FORMAT:
            raise ValueError("format")
        model = _from_lists(json.loads(state["model"]))
        if model.get("kind") not in KINDS:
            raise JcwError(f"predictor {file} keeps a {model.get('kind')!r} model, which this jcw version does not "
                           "have; refit it with `jcw predictor fit`")
        predictor = Predictor(SearchSpace.from_dict(state["space"]), model,
                              Standardizer(np.array(state["x_mean"]), np.array(state["x_std"])),
                              float(state["y_mean"]), float(state["y_std"]), state["supernet_hash"],
                              json.loads(state["report"]))
    except JcwError:
        raise
    except Exception as exc:
        raise JcwError(f"predictor file {file} is corrupt or truncated ({exc.__class__.__name__}); refit it with "
                       "`jcw predictor fit`") from None
    predictor.folder = file.parent
    return predictor


# ---- fitting ---------------------------------------------------------------------------------------------------
def rank_metrics(pred: np.ndarray, true: np.ndarray) -> dict:
    from scipy.stats import kendalltau, spearmanr

    return {"rmse": round(float(np.sqrt(np.mean((pred - true) ** 2))), 4),
            "kendall_tau": round(float(kendalltau(pred, true).statistic), 4),
            "spearman_rho": round(float(spearmanr(pred, true).statistic), 4)}


FOLDS = 5


def _fit_standardized(x: np.ndarray, y: np.ndarray, seed: int, kinds: tuple[str, ...]):
    norm = Standardizer.fit(x)
    y_mean, y_std = float(y.mean()), float(y.std() or 1.0)
    return norm, y_mean, y_std, fit_models(norm(x), (y - y_mean) / y_std, seed, kinds)


def fit_predictor(space: SearchSpace, genomes: np.ndarray, top1: np.ndarray, supernet_hash: str,
                  seed: int = 0) -> Predictor:
    """Compare the candidates over five held-out 20% folds, then refit the best on every row.

    Kendall tau on one 20% split of noisy labels moves by about 0.01 from split to split; its mean over five folds,
    with every subnet held out once, is a steadier basis both for choosing the model and for the report.
    """
    x_all = genome_features(space, genomes)
    y_all = np.asarray(top1, dtype=float)
    n = len(y_all)
    if n < 2 * FOLDS:
        raise JcwError(f"fitting a predictor needs at least {2 * FOLDS} scored subnets; got {n}")
    folds = np.array_split(np.random.default_rng(seed).permutation(n), FOLDS)
    held_out = {kind: np.empty(n) for kind in KINDS}
    per_fold: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    for test in folds:
        train = np.setdiff1d(np.arange(n), test)
        norm, y_mean, y_std, models = _fit_standardized(x_all[train], y_all[train], seed, KINDS)
        for kind, model in models.items():
            held_out[kind][test] = apply_model(model, norm(x_all[test])) * y_std + y_mean
            per_fold[kind].append(rank_metrics(held_out[kind][test], y_all[test]))
    report = {"samples": n, "folds": FOLDS, "seed": seed, "models": {}}
    for kind, metrics in per_fold.items():
        taus = [m["kendall_tau"] for m in metrics]
        report["models"][kind] = {"rmse": round(float(np.sqrt(np.mean((held_out[kind] - y_all) ** 2))), 4),
                                  "kendall_tau": round(float(np.mean(taus)), 4),
                                  "spearman_rho": round(float(np.mean([m["spearman_rho"] for m in metrics])), 4),
                                  "kendall_tau_folds": taus}
    best = max(KINDS, key=lambda k: (report["models"][k]["kendall_tau"], -report["models"][k]["rmse"]))
    report["kept"] = best
    report["held_out_rows"] = {"true": y_all.tolist(), "predicted": held_out[best].tolist()}
    return fit_kind(space, genomes, y_all, best, supernet_hash, seed, report)


def fit_kind(space: SearchSpace, genomes: np.ndarray, top1: np.ndarray, kind: str, supernet_hash: str,
             seed: int = 0, report: dict | None = None) -> Predictor:
    """One candidate kind fit on every row: the final predictor, once the held-out comparison has chosen it."""
    norm, y_mean, y_std, models = _fit_standardized(genome_features(space, genomes), np.asarray(top1, dtype=float),
                                                    seed, (kind,))
    return Predictor(space, models[kind], norm, y_mean, y_std, supernet_hash, report)


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
    ax.set_title(f"{rep['kept']}, each subnet held out once: RMSE {m['rmse']:.2f}, tau {m['kendall_tau']:.3f}",
                 fontsize=9)
    ax.set_xlabel("true validation top-1 (%)")
    ax.set_ylabel("predicted top-1 (%)")
    fig.tight_layout()
    from jcw.io import atomic_path

    with atomic_path(folder / "report.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def fit_on_supernet(supernet, samples: int, out: str | Path, seed: int = 0, workers: int | None = None,
                    ray_address: str | None = None, data_dir: str | None = None,
                    scored: str | Path | None = None, calibration_images: int = 2000,
                    val_images: int | None = None) -> Predictor:
    """Sample subnets over the size range, score them on the supernet, fit, and write the predictor folder.

    With `scored`, a dataset.csv written by an earlier fit on this same supernet, its subnets are reused and only
    `samples` new ones (none by default) are scored: refitting takes seconds, and growing a dataset that ranks too
    noisily does not rescore the hour already spent. Use another seed than the earlier fit's, or its draws repeat.
    Each subnet's score goes to `out/scoring.partial.csv` as soon as it is known, so a killed fit rerun with the
    same options scores only what is left.
    """
    from jcw.search.evaluator import DataSpec

    space, out = supernet.space, Path(out)
    genomes, scores = (np.zeros((0, space.n_genes), np.int64), []) if scored is None else \
        read_scored(scored, space, supernet.hash)
    if samples > 0:
        new = np.unique(space.sample_spread(samples, np.random.default_rng(seed)), axis=0)
        new = new[np.random.default_rng(seed).permutation(len(new))]
        new = new[~(new[:, None, :] == genomes[None, :, :]).all(-1).any(1)] if len(genomes) else new
        spec = DataSpec(supernet.config.dataset, data_dir, calibration_images, "val", val_images)
        genomes, scores = np.concatenate([genomes, new]), scores + _score(supernet, new, spec, workers, ray_address,
                                                                          out / PARTIAL)
    top1 = np.array([s["top1"] for s in scores])
    predictor = fit_predictor(space, genomes, top1, supernet.hash, seed)
    predictor.save(out)
    cost = space.cost(genomes)
    dataset = pd.DataFrame({"genome": [json.dumps([int(v) for v in g]) for g in genomes],
                            "macs": cost["macs"].round().astype(np.int64),
                            "params": cost["params"].round().astype(np.int64),
                            "mean_density": space.density_values(genomes).mean(1).round(4),
                            "top1": top1, "loss": [s["loss"] for s in scores], "supernet_hash": supernet.hash})
    write_report(predictor, out, dataset)
    (out / PARTIAL).unlink(missing_ok=True)
    return predictor


def _scoring_key(supernet_hash: str, spec) -> str:
    """What a checkpointed score depends on besides its genome: scores made otherwise are not reused."""
    return f"{supernet_hash}/{spec.dataset}/{spec.split}/calibration {spec.calibration_images}/val {spec.val_images}"


def _read_partial(path: Path, key: str) -> dict[str, dict]:
    """Scores checkpointed by a killed fit, by genome, if they were made the way this fit makes them."""
    if not path.exists():
        return {}
    try:
        table = pd.read_csv(path)
        table = table[table["scoring"] == key]
        return {g: {"top1": float(t), "loss": float(l)} for g, t, l in zip(table["genome"], table["top1"],
                                                                            table["loss"])}
    except (KeyError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return {}


def _score(supernet, genomes: np.ndarray, spec, workers: int | None, ray_address: str | None,
           partial: Path) -> list[dict]:
    import sys

    from tqdm import tqdm

    from jcw.search.evaluator import make_evaluator

    key = _scoring_key(supernet.hash, spec)
    names = [json.dumps([int(v) for v in g]) for g in genomes]
    wanted = set(names)
    done = {n: s for n, s in _read_partial(partial, key).items() if n in wanted}
    todo = [i for i, n in enumerate(names) if n not in done]
    if done:
        print(f"resuming: {len(done)} of {len(names)} subnets already scored in {partial}", file=sys.stderr)

    def checkpoint(i: int, score: dict) -> None:
        done[names[todo[i]]] = score
        write_csv(partial, pd.DataFrame([{"genome": n, **s, "scoring": key} for n, s in done.items()]))

    if todo:
        evaluator = make_evaluator(supernet, spec, workers, ray_address)
        try:
            with tqdm(total=len(names), initial=len(done), desc="scoring subnets", dynamic_ncols=True,
                      file=sys.stderr) as bar:
                evaluator.score([genomes[i] for i in todo],
                                on_scored=lambda i, s: (checkpoint(i, s), bar.update()))
        finally:
            evaluator.close()
    return [done[n] for n in names]


def read_scored(path: str | Path, space: SearchSpace, supernet_hash: str) -> tuple[np.ndarray, list[dict]]:
    """Genomes and scores from a predictor's dataset.csv, refusing rows scored on another supernet."""
    try:
        table = pd.read_csv(path)
        genomes = np.array([json.loads(g) for g in table["genome"]], dtype=np.int64)
        hashes = set(table["supernet_hash"])
        scores = table[["top1", "loss"]].to_dict("records")
    except FileNotFoundError:
        raise JcwError(f"--scored {path}: no such file") from None
    except (KeyError, ValueError, pd.errors.ParserError) as exc:
        raise JcwError(f"--scored {path}: not a predictor dataset.csv with genome, top1, loss and supernet_hash "
                       f"columns ({exc.__class__.__name__}: {exc})") from None
    if hashes != {supernet_hash}:
        raise JcwError(f"--scored {path} was scored on supernet {', '.join(map(str, sorted(hashes)))}, not on "
                       f"{supernet_hash}; refit without --scored to score afresh")
    space.check(genomes)
    return genomes, scores
