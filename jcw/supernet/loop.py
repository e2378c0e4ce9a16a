"""The one training loop: supernet training (sandwich rule) and fine-tuning both run in it.

What the two share lives here: SGD with Nesterov momentum, linear warm-up then cosine decay per step, shuffled and
augmented batches seeded per epoch, a CSV log row and a checkpoint after every epoch, and resuming from that
checkpoint. What differs is a `Recipe`: the step (the sandwich rule's several subnets, or one subnet with its masks
held and an optional teacher), the epoch's evaluation, and what of the model a checkpoint holds.
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
from tqdm import tqdm

from jcw.accelerator import CPU, Accelerator
from jcw.artifacts import load_torch_file
from jcw.data import Batch
from jcw.errors import JcwError
from jcw.io import atomic_path, torch_save


@dataclass
class Schedule:
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    warmup_epochs: float = 0.0
    seed: int = 0
    limit_train: int = 0  # cap on training images per epoch (0: all); for quick runs and tests


class Recipe(Protocol):
    def begin_epoch(self, epoch: int) -> None:
        """Put the model in training mode and draw whatever the epoch samples."""

    def step(self, batch, epoch: int, backward: Callable[[torch.Tensor], None]) -> float:
        """Forward one batch and pass each loss to `backward` (gradients accumulate); return the loss to log."""

    def end_epoch(self, epoch: int, row: dict) -> None:
        """Add the epoch's evaluation to its log row and print it."""

    def state(self) -> dict:
        """The model part of a checkpoint."""

    def restore(self, checkpoint: dict) -> None:
        """Load the model part of a checkpoint."""


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * base * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def append_row(path: Path, row: dict) -> None:
    """Append one epoch to the CSV log, rewriting it atomically."""
    rows = list(csv.DictReader(path.open())) if path.exists() else []
    rows.append({k: str(v) for k, v in row.items()})
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        writer.writeheader()
        writer.writerows(rows)


def train_loop(recipe: Recipe, param_groups: list[dict], data, schedule: Schedule, out: Path, log_name: str,
               desc: str, resume: bool = False, progress: bool = True, accelerator: Accelerator = CPU) -> None:
    """Train for `schedule.epochs`, writing out/checkpoint.pt and out/<log_name> after every epoch.

    The recipe's model must already sit on `accelerator`; its forward passes run under the accelerator's autocast
    and its losses go backward through the gradient scaler (a pass-through except for fp16).
    """
    torch.manual_seed(schedule.seed)
    opt = torch.optim.SGD(param_groups, lr=schedule.lr, momentum=schedule.momentum, nesterov=True)
    scaler = accelerator.grad_scaler()

    def backward(loss: torch.Tensor) -> None:
        scaler.scale(loss).backward()
    n_train = min(schedule.limit_train or data.size("train"), data.size("train"))
    steps = math.ceil(n_train / schedule.batch_size)
    total, warmup = schedule.epochs * steps, int(schedule.warmup_epochs * steps)
    ckpt_path, log_path = out / "checkpoint.pt", out / log_name
    start = 0
    if resume:
        if not ckpt_path.exists():
            raise JcwError(f"--resume: no checkpoint at {ckpt_path}; start without --resume")
        ckpt = load_torch_file(ckpt_path, "checkpoint", None, "start without --resume", "start without --resume")
        recipe.restore(ckpt)
        opt.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["epoch"])
        torch.set_rng_state(ckpt["torch_rng"])
    elif log_path.exists():
        log_path.unlink()
    for epoch in range(start, schedule.epochs):
        t0 = time.time()
        recipe.begin_epoch(epoch)
        batches = data.batches("train", schedule.batch_size, shuffle=True, augment=True,
                               seed=schedule.seed * 1000 + epoch, limit=n_train)
        bar = tqdm(batches, total=steps, desc=f"{desc} {epoch + 1}/{schedule.epochs}", disable=not progress,
                   dynamic_ncols=True)
        running = 0.0
        for i, batch in enumerate(bar):
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch * steps + i, total, warmup, schedule.lr)
            opt.zero_grad(set_to_none=True)
            with accelerator.autocast():
                loss = recipe.step(Batch(*accelerator.tensors(batch.images, batch.labels)), epoch, backward)
            scaler.step(opt)
            scaler.update()
            running = 0.98 * running + 0.02 * loss if i else loss
            bar.set_postfix(loss=f"{running:.3f}", lr=f"{opt.param_groups[0]['lr']:.3f}")
        row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "train_loss": round(running, 4),
               "seconds": round(time.time() - t0, 1)}
        recipe.end_epoch(epoch, row)
        append_row(log_path, row)
        torch_save(ckpt_path, {**recipe.state(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                               "torch_rng": torch.get_rng_state()})
