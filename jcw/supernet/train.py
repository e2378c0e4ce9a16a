"""Train a supernet with the sandwich rule and in-place distillation.

Each step trains the largest subnet on the labels, then the smallest and `n_random` random subnets on the largest's
soft predictions (BigNAS / Once-for-All). Training the two extremes every step is what keeps the whole range of
subnets accurate with shared weights. Each pass runs on the physically sliced subnet, so a small subnet's pass costs
a fraction of the largest's.
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from jcw.errors import JcwError
from jcw.io import atomic_path, torch_save, write_json
from jcw.supernet.evaluate import score_genome
from jcw.supernet.supernet import Supernet, read_checkpoint


@dataclass
class TrainConfig:
    epochs: int = 12
    batch_size: int = 256
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 2e-4
    label_smoothing: float = 0.1
    n_random: int = 1
    warmup_epochs: float = 0.5
    seed: int = 0
    threads: int = 0  # 0: torch's default
    limit_train: int = 0  # cap on training images per epoch (0: all); for quick runs and tests


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * base * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_supernet(net: Supernet, data, out_dir: str | Path, cfg: TrainConfig, resume: bool = False,
                   progress: bool = True) -> Path:
    """Train `net` in place; write out_dir/{supernet.pt, checkpoint.pt, train_log.csv, train_config.json}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    params_decay = [p for n, p in net.named_parameters() if p.dim() > 1]
    params_plain = [p for n, p in net.named_parameters() if p.dim() <= 1]
    opt = torch.optim.SGD([{"params": params_decay, "weight_decay": cfg.weight_decay},
                           {"params": params_plain, "weight_decay": 0.0}], lr=cfg.lr, momentum=cfg.momentum,
                          nesterov=True)
    n_train = data.size("train") if not cfg.limit_train else min(cfg.limit_train, data.size("train"))
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    total, warmup = cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch)
    start_epoch = 0
    ckpt_path, log_path = out / "checkpoint.pt", out / "train_log.csv"
    if resume:
        if not ckpt_path.exists():
            raise JcwError(f"--resume: no checkpoint at {ckpt_path}; start without --resume")
        ckpt = read_checkpoint(ckpt_path)
        net.load_raw_state_dict(ckpt["state_dict"])
        for i, order in enumerate(ckpt["group_orders"]):
            net.group_order(i).copy_(order)
        opt.load_state_dict(ckpt["optimizer"])
        start_epoch = int(ckpt["epoch"])
        torch.set_rng_state(ckpt["torch_rng"])
    elif log_path.exists():
        log_path.unlink()
    write_json(out / "train_config.json", {"supernet": asdict(net.config), "train": asdict(cfg)})
    space = net.space
    largest, smallest = space.largest(), space.smallest()
    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        t0 = time.time()
        rng = np.random.default_rng([cfg.seed, epoch])  # per epoch, so a resumed run samples what a whole run would
        batches = data.batches("train", cfg.batch_size, shuffle=True, augment=True, seed=cfg.seed * 1000 + epoch,
                               limit=n_train)
        bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
                   dynamic_ncols=True)
        running = 0.0
        for i, batch in enumerate(bar):
            step = epoch * steps_per_epoch + i
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, warmup, cfg.lr)
            opt.zero_grad(set_to_none=True)
            logits = net.forward_sliced(largest, batch.images)
            loss = F.cross_entropy(logits, batch.labels, label_smoothing=cfg.label_smoothing)
            loss.backward()
            soft = F.softmax(logits.detach(), dim=1)
            for genome in [smallest, *space.sample(cfg.n_random, rng)]:
                kd = F.cross_entropy(net.forward_sliced(genome, batch.images), soft)
                kd.backward()
            opt.step()
            running = 0.98 * running + 0.02 * loss.item() if i else loss.item()
            bar.set_postfix(loss=f"{running:.3f}", lr=f"{opt.param_groups[0]['lr']:.3f}")
        train_seconds = time.time() - t0
        row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "train_loss": round(running, 4),
               "seconds": round(train_seconds, 1)}
        for label, genome in (("largest", largest), ("smallest", smallest)):
            row[f"val_top1_{label}"] = round(score_genome(net, genome, data).top1, 2)
        _append_row(log_path, row)
        print(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']}, val top-1 largest "
              f"{row['val_top1_largest']}%, smallest {row['val_top1_smallest']}%, {train_seconds:.0f}s", flush=True)
        torch_save(ckpt_path, net.checkpoint({"optimizer": opt.state_dict(), "epoch": epoch + 1,
                                              "torch_rng": torch.get_rng_state()}))
    final = out / "supernet.pt"
    net.set_genome(largest)
    net.save(final, {"training": asdict(cfg)})
    return final


def _append_row(path: Path, row: dict) -> None:
    """Append one epoch to the CSV log, rewriting it atomically."""
    rows = list(csv.DictReader(path.open())) if path.exists() else []
    rows.append({k: str(v) for k, v in row.items()})
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        writer.writeheader()
        writer.writerows(rows)
