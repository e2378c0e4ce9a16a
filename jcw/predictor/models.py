"""The regression models a predictor may keep: an MLP, ridge regression and kernel ridge regression.

Each is fit on standardised features and stored as plain numpy arrays, applied in numpy so that a search screens
hundreds of thousands of genomes a second.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


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
        landmarks = 2 * g * model["landmarks"].T
        for i in range(0, len(x), 8192):  # bounds the kernel matrix at 8192 x landmarks
            part = x[i:i + 8192]
            similarity = np.exp(part @ landmarks, out=np.empty((len(part), landmarks.shape[1])))
            out[i:i + 8192] = np.exp(-g * np.einsum("ij,ij->i", part, part)) * (similarity @ model["beta"])
        return out + x @ model["linear"]
    h = x
    for i, (w, b) in enumerate(model["weights"]):
        h = h @ w + b
        if i < len(model["weights"]) - 1:
            h = np.maximum(h, 0)
    return h[:, 0]
