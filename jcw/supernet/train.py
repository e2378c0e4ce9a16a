"""Train a supernet with the sandwich rule and in-place distillation.

Each step trains the largest subnet on the labels, then the smallest and `n_random` random subnets on the largest's
soft predictions (BigNAS / Once-for-All). Training the two extremes every step is what keeps the whole range of
subnets accurate with shared weights. Each pass runs on the physically sliced subnet, so a small subnet's pass costs
a fraction of the largest's.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from jcw.accelerator import Accelerator
from jcw.config import CALIBRATION_IMAGES, CHOICES, TrainConfig
from jcw.data import load_dataset, supernet_data
from jcw.errors import JcwError
from jcw.io import write_json
from jcw.supernet.accuracy import score_genome
from jcw.supernet.loop import Replica, Schedule, train_loop
from jcw.supernet.supernet import Supernet, SupernetConfig, read_checkpoint
from jcw.threads import torch_threads
from jcw.xnnpack import as_xnnpack_runs


class _Sandwich:
    """The loop's recipe for a supernet: largest on labels, smallest and random subnets on its soft labels.

    The random subnets come from a generator seeded by the epoch and drawn once per step in step order, so every
    data-parallel worker trains the same subnets at every step (each epoch's digest of them is compared across the
    workers), and a resumed run draws what a whole run would.
    """

    def __init__(self, net: Supernet, data, cfg: TrainConfig, accel: Accelerator):
        self.net, self.data, self.cfg, self.accel = net, data, cfg, accel
        self.largest, self.smallest = net.space.largest(), net.space.smallest()
        self.rng = np.random.default_rng(cfg.seed)
        self.drawn = hashlib.sha256()
        self.subnets: list[np.ndarray] = []

    def begin_epoch(self, epoch: int) -> None:
        self.net.train()
        self.rng = np.random.default_rng([self.cfg.seed, epoch])
        self.drawn = hashlib.sha256()

    def begin_step(self) -> None:
        drawn = self.net.space.sample(self.cfg.n_random, self.rng)
        if self.cfg.random_densities == "xnnpack":
            drawn = as_xnnpack_runs(self.net.space, drawn)
        self.subnets = [self.smallest, *drawn]
        self.drawn.update(np.ascontiguousarray(self.subnets, dtype=np.int64).tobytes())

    def epoch_digest(self) -> str:
        return self.drawn.hexdigest()[:16]

    def step(self, batch, epoch: int, backward) -> float:
        net = self.net
        logits = net.forward_sliced(self.largest, batch.images)
        loss = F.cross_entropy(logits, batch.labels, label_smoothing=self.cfg.label_smoothing)
        backward(loss)
        soft = F.softmax(logits.detach().float(), dim=1)
        for genome in self.subnets:
            backward(F.cross_entropy(net.forward_sliced(genome, batch.images), soft))
        return loss.item()

    def end_epoch(self, epoch: int, row: dict) -> None:
        # a run capped to N training images per epoch (a quick run, a test) recalibrates on at most N: calibrating on
        # 2,000 took two thirds of such an epoch
        calibration = min(CALIBRATION_IMAGES, self.cfg.limit_train or CALIBRATION_IMAGES)
        for label, genome in (("largest", self.largest), ("smallest", self.smallest)):
            score = score_genome(self.net, genome, self.data, calibration_images=calibration,
                                 eval_images=self.cfg.val_images, accel=self.accel)
            row[f"val_top1_{label}"] = round(score.top1, 2)
        print(f"epoch {epoch + 1}/{self.cfg.epochs}: loss {row['train_loss']}, val top-1 largest "
              f"{row['val_top1_largest']}%, smallest {row['val_top1_smallest']}%, {row['seconds']:.0f}s", flush=True)

    def state(self) -> dict:
        return self.net.checkpoint()

    def restore(self, checkpoint: dict) -> None:
        self.net.load_raw_state_dict(checkpoint["state_dict"])
        for i, order in enumerate(checkpoint["group_orders"]):
            self.net.group_order(i).copy_(order)


def train_supernet(net: Supernet, data, out_dir: str | Path, cfg: TrainConfig, resume: bool | Path = False,
                   progress: bool = True, replica: Replica | None = None, accel: Accelerator | None = None) -> Path:
    """Train `net` in place; write out_dir/{supernet.pt, checkpoint.pt, train_log.csv, train_config.json}.

    With a `replica` (a Ray Train worker), this process trains its slice of every batch and only rank 0 writes.
    `accel` is the caller's choice for this process; without one, it is chosen here from the recipe.
    """
    if cfg.random_densities not in CHOICES["random_densities"]:
        raise JcwError(f"random densities {cfg.random_densities!r}: use one of "
                       f"{', '.join(CHOICES['random_densities'])}")
    if cfg.random_densities == "xnnpack":
        as_xnnpack_runs(net.space, net.space.largest()[None])  # before anything is written: a space it cannot run
    out = Path(out_dir)
    chief = replica is None or replica.rank == 0
    if chief:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "train_config.json", {"supernet": asdict(net.config), "train": asdict(cfg)})
    accel = accel or Accelerator.choose(cfg.accelerator)
    if chief:
        print(f"training on {accel.describe()}", flush=True)
    net = accel.module(net)
    params = list(net.named_parameters())
    groups = [{"params": [p for _, p in params if p.dim() > 1], "weight_decay": cfg.weight_decay},
              {"params": [p for _, p in params if p.dim() <= 1], "weight_decay": 0.0}]
    schedule = Schedule(cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.warmup_epochs, cfg.seed,
                        cfg.limit_train, cfg.accumulate)
    with torch_threads(cfg.threads):
        train_loop(_Sandwich(net, data, cfg, accel), groups, data, schedule, out, "train_log.csv", "epoch", resume,
                   progress, accel, replica)
    final = out / "supernet.pt"
    if chief:
        net.set_genome(net.space.largest())
        net.save(final, {"training": asdict(cfg)})
    return final


def prepare(out: Path, config: SupernetConfig | None, recipe: TrainConfig | None, data_dir: str | None,
            resume: bool, force: bool, input_size: int | None) -> tuple[SupernetConfig, TrainConfig, object]:
    """The network, recipe and data a training run uses: the folder's own when resuming, else the given ones with
    the dataset's input size, channels and classes."""
    loader_workers = (recipe or TrainConfig()).loader_workers  # this machine's, even when resuming
    if resume:
        config = SupernetConfig.from_dict(read_checkpoint(out / "checkpoint.pt")["config"])
        data = supernet_data(config, data_dir, loader_workers)
        saved = out / "train_config.json"
        if saved.exists():
            recipe = TrainConfig(**json.loads(saved.read_text())["train"])
    else:
        if (out / "supernet.pt").exists() and not force:
            raise JcwError(f"{out} already holds a trained supernet; pass --resume to continue or --force to retrain")
        config = config or SupernetConfig()
        data = load_dataset(config.dataset, data_dir, input_size, config.val_split, loader_workers)
        config = replace(config, input_size=data.input_size, in_channels=data.in_channels,
                         num_classes=data.num_classes)
    return config, recipe or TrainConfig(), data


def initial_supernet(config: SupernetConfig, recipe: TrainConfig) -> Supernet:
    """The same --seed starts from the same weights, so runs (and every data-parallel worker) start alike."""
    with torch.random.fork_rng():
        torch.manual_seed(recipe.seed)
        return Supernet(config)


def train(out: str | Path, config: SupernetConfig | None = None, recipe: TrainConfig | None = None,
          data_dir: str | None = None, resume: bool = False, force: bool = False,
          input_size: int | None = None) -> Path:
    """Train a new supernet into `out` in this process, or (resume) finish an interrupted one with the recipe it
    started with; `jcw.supernet.distributed.train_on_ray` runs the same on Ray Train workers.

    The dataset (and `input_size`, for ImageFolder trees) fixes the input size, channels and classes of `config`; a
    resumed run takes its network and recipe from the folder, whatever `config` and `recipe` say now.
    """
    out = Path(out)
    accel = None if resume else Accelerator.choose((recipe or TrainConfig()).accelerator)  # before the data loads
    config, recipe, data = prepare(out, config, recipe, data_dir, resume, force, input_size)
    accel = accel or Accelerator.choose(recipe.accelerator)  # a resumed run's recipe comes from its folder
    return train_supernet(initial_supernet(config, recipe), data, out, recipe, resume=resume, accel=accel)
