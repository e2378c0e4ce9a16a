"""The one training loop: supernet training (sandwich rule) and fine-tuning both run in it.

What the two share lives here: SGD with Nesterov momentum, linear warm-up then cosine decay per step, shuffled and
augmented batches seeded per epoch, a CSV log row and a checkpoint after every epoch, and resuming from that
checkpoint. What differs is a `Recipe`: the step (the sandwich rule's several subnets, or one subnet with its masks
held and an optional teacher), the epoch's evaluation, and what of the model a checkpoint holds.

A step's batch may be split: over the data-parallel workers of a `Replica` (jcw/supernet/distributed.py), each
reading and training on its own slice of every batch, and into `accumulate` micro-batches whose gradients add up
before the update.
Each slice's dropout is then seeded from the step and the slice's place in the batch, so 2 workers take exactly the
step one process takes with `accumulate=2`.
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
    accumulate: int = 1  # micro-batches per step on each worker, their gradients summed before the update


class Replica:
    """One process training alone: rank 0 of 1. A data-parallel worker overrides the three collective calls."""

    rank, world = 0, 1

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Make every worker's gradients the mean over all workers."""

    def check_same(self, what: str, value: str) -> None:
        """Stop if the workers disagree on `value` (for example the subnets an epoch trained)."""

    def report(self, row: dict, checkpoint: Path) -> None:
        """The epoch is done and its checkpoint written (on rank 0)."""


class Recipe(Protocol):
    def begin_epoch(self, epoch: int) -> None:
        """Put the model in training mode and draw whatever the epoch samples."""

    def begin_step(self) -> None:
        """Draw what the whole step shares (the sandwich's random subnets), once, before its micro-batches."""

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


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def _write_rows(path: Path, fields: list[str], rows: list[dict]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def append_row(path: Path, row: dict) -> None:
    """Append one epoch to the CSV log, rewriting it atomically."""
    _write_rows(path, list(row), _read_rows(path) + [{k: str(v) for k, v in row.items()}])


def keep_rows_until(path: Path, epoch: int) -> None:
    """Drop the log rows of epochs after `epoch`: a worker lost between logging an epoch and reporting its checkpoint
    leaves a row for work that the resumed run does again."""
    rows = _read_rows(path)
    kept = [row for row in rows if int(row["epoch"]) <= epoch]
    if len(kept) < len(rows):
        _write_rows(path, list(rows[0]), kept)


def _slices(batch: Batch, parts: int) -> list[Batch]:
    size = len(batch.labels) // parts
    return [Batch(batch.images[k * size:(k + 1) * size], batch.labels[k * size:(k + 1) * size])
            for k in range(parts)]


def train_loop(recipe: Recipe, param_groups: list[dict], data, schedule: Schedule, out: Path, log_name: str,
               desc: str, resume: bool | Path = False, progress: bool = True, accelerator: Accelerator = CPU,
               replica: Replica | None = None) -> None:
    """Train for `schedule.epochs`, writing out/checkpoint.pt and out/<log_name> after every epoch (on rank 0).

    The recipe's model must already sit on `accelerator`; its forward passes run under the accelerator's autocast
    and its losses go backward through the gradient scaler (a pass-through except for fp16). `resume` may name the
    checkpoint to resume from; True means out/checkpoint.pt.
    """
    replica = replica or Replica()
    parts = replica.world * schedule.accumulate  # slices of every batch, over all workers
    if schedule.batch_size % parts:
        raise JcwError(f"--batch-size {schedule.batch_size} must divide into {replica.world} worker(s) x "
                       f"{schedule.accumulate} micro-batch(es)")
    torch.manual_seed(schedule.seed)
    opt = torch.optim.SGD(param_groups, lr=schedule.lr, momentum=schedule.momentum, nesterov=True)
    params = [p for group in param_groups for p in group["params"]]
    scaler = accelerator.grad_scaler()

    def backward(loss: torch.Tensor) -> None:
        scaler.scale(loss / schedule.accumulate).backward()

    n_train = min(schedule.limit_train or data.size("train"), data.size("train"))
    # every worker takes the same number of steps with whole slices, or the workers' collectives fall out of step
    steps = math.ceil(n_train / schedule.batch_size) if parts == 1 else n_train // schedule.batch_size
    if steps == 0:
        raise JcwError(f"{n_train} training images make no batch of {schedule.batch_size}")
    n_train = n_train if parts == 1 else steps * schedule.batch_size
    total, warmup = schedule.epochs * steps, int(schedule.warmup_epochs * steps)
    ckpt_path, log_path = out / "checkpoint.pt", out / log_name
    start = 0
    if resume:
        resume_path = ckpt_path if resume is True else Path(resume)
        if not resume_path.exists():
            raise JcwError(f"--resume: no checkpoint at {resume_path}; start without --resume")
        ckpt = load_torch_file(resume_path, "checkpoint", None, "start without --resume", "start without --resume")
        recipe.restore(ckpt)
        opt.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["epoch"])
        torch.set_rng_state(ckpt["torch_rng"])
        if replica.rank == 0:
            keep_rows_until(log_path, start)
    elif log_path.exists() and replica.rank == 0:
        log_path.unlink()
    for epoch in range(start, schedule.epochs):
        t0 = time.time()
        recipe.begin_epoch(epoch)
        # each worker reads and augments only its share of every batch
        batches = data.batches("train", schedule.batch_size, shuffle=True, augment=True,
                               seed=schedule.seed * 1000 + epoch, limit=n_train, shard=(replica.rank, replica.world))
        bar = tqdm(batches, total=steps, desc=f"{desc} {epoch + 1}/{schedule.epochs}",
                   disable=not progress or replica.rank > 0, dynamic_ncols=True)
        running = 0.0
        for i, batch in enumerate(bar):
            step = epoch * steps + i
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, warmup, schedule.lr)
            opt.zero_grad(set_to_none=True)
            recipe.begin_step()
            loss = 0.0
            mine = _slices(batch, schedule.accumulate)
            for k, micro in enumerate(mine):
                if parts > 1:  # dropout as this slice would draw it wherever it runs
                    torch.manual_seed(schedule.seed * 1_000_003 + step * parts + replica.rank * schedule.accumulate
                                      + k)
                with accelerator.autocast():
                    loss += recipe.step(Batch(*accelerator.tensors(micro.images, micro.labels)), epoch,
                                        backward) / len(mine)
            replica.average_gradients(params)
            scaler.step(opt)
            scaler.update()
            running = 0.98 * running + 0.02 * loss if i else loss
            bar.set_postfix(loss=f"{running:.3f}", lr=f"{opt.param_groups[0]['lr']:.3f}")
        row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "train_loss": round(running, 4),
               "seconds": round(time.time() - t0, 1), "workers": replica.world,
               "threads_per_worker": torch.get_num_threads()}
        digest = getattr(recipe, "epoch_digest", None)
        if digest:
            row["subnets_digest"] = digest()
            replica.check_same("the subnets trained this epoch", row["subnets_digest"])
        if replica.rank == 0:
            recipe.end_epoch(epoch, row)
            append_row(log_path, row)
            torch_save(ckpt_path, {**recipe.state(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                                   "torch_rng": torch.get_rng_state()})
        replica.report(row, ckpt_path)
