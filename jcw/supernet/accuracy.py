"""Score a subnet: recalibrate batch-norm statistics, then measure top-1 and loss.

Shared weights carry batch-norm statistics of the whole supernet's training mix, which fit no single subnet; JCW and
Once-for-All both re-estimate them on training images before scoring. The calibration images are fixed (same seed)
so scores are repeatable.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.experimental.optimization import fuse

from jcw.accelerator import CPU, Accelerator
from jcw.config import CALIBRATION_IMAGES  # re-exported: scoring's default
from jcw.config import check_value
from jcw.data import supernet_data
from jcw.space import parse_genomes
from jcw.supernet.slicing import bake_masks, subnet_from_supernet
from jcw.supernet.supernet import load_supernet


@dataclass
class Score:
    top1: float  # percent
    loss: float
    correct: np.ndarray | None = None  # per image, whether the top guess was right (when asked for)
    batch_norm: dict[str, torch.Tensor] | None = None  # the statistics it was scored with (when asked for)


@torch.no_grad()
def recalibrate_bn(net: nn.Module, data, images: int = CALIBRATION_IMAGES, batch_size: int = 250,
                   accel: Accelerator = CPU) -> None:
    """Re-estimate every batch norm's running mean and variance on `images` fixed training images."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    was_training = net.training
    net.train()
    with accel.autocast():
        for batch in data.batches("train", batch_size, shuffle=True, seed=1234, limit=images):
            net(accel.tensors(batch.images, batch.labels)[0])
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    net.train(was_training)


@torch.no_grad()
def evaluate(net: nn.Module, data, split: str = "val", batch_size: int = 100, limit: int | None = None,
             per_image: bool = False, accel: Accelerator = CPU, shard: tuple[int, int] = (0, 1)) -> Score:
    """Top-1 and mean loss in eval mode (and with `per_image`, which images it got right: how noisy top-1 is as a
    label follows from them). Batches of 100 keep every activation under the allocator's 32 MiB mmap threshold
    (see `jcw.allocator`), which made scoring about 1.5x faster than batches of 500."""
    was_training = net.training
    net.eval()
    right, loss = [], 0.0
    for batch in data.batches(split, batch_size, limit=limit, shard=shard):  # (k, n): the k-th of n shares
        images, labels = accel.tensors(batch.images, batch.labels)
        with accel.autocast():
            logits = net(images)
        loss += F.cross_entropy(logits.float(), labels, reduction="sum").item()
        right.append((logits.argmax(1) == labels).cpu())
    net.train(was_training)
    correct = torch.cat(right).numpy() if right else np.zeros(0, bool)
    total = max(len(correct), 1)
    return Score(top1=100.0 * int(correct.sum()) / total, loss=loss / total, correct=correct if per_image else None)


def folded_twin(net: nn.Module) -> nn.Module:
    """The form scoring runs a calibrated subnet in: masks baked into the weights, channels_last, and each batch norm
    folded into the convolution before it (torch.fx's eval-mode fusion: the same top-1, about 10% less time). In
    place where the masks are baked: pass a copy to keep them."""
    return fuse(bake_masks(net).to(memory_format=torch.channels_last).eval())


def calibrated_subnet(supernet, genome, data, calibration_images: int = CALIBRATION_IMAGES,
                      accel: Accelerator = CPU, batch_norm: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The sliced subnet with its masks baked in (cheaper to run than masked), channels_last, batch norm
    recalibrated for it (or given the `batch_norm` statistics an earlier calibration computed for it)."""
    small, _ = subnet_from_supernet(supernet, np.asarray(genome))
    small = bake_masks(small).to(memory_format=torch.channels_last)
    if batch_norm is None:
        recalibrate_bn(small, data, calibration_images, accel=accel)
    else:
        load_batch_norm_stats(small, batch_norm)
    return small


_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def batch_norm_stats(net: nn.Module) -> dict[str, torch.Tensor]:
    """Every batch norm's running statistics, by module name and buffer: what calibration computed for a subnet, a
    few kilobytes to hand to another process or another form of the same subnet."""
    return {f"{name}.{b}": getattr(m, b).detach().cpu().clone() for name, m in net.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) for b in _BN_BUFFERS}


def load_batch_norm_stats(net: nn.Module, stats: dict[str, torch.Tensor]) -> None:
    for name, m in net.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for b in _BN_BUFFERS:
                getattr(m, b).copy_(stats[f"{name}.{b}"])


@dataclass
class TestScore:
    """A subnet's top-1 on the test split and the batch-norm statistics it was scored with."""

    __test__ = False  # named for the test split: pytest must not collect it where a test module imports it
    top1: float
    batch_norm: dict[str, torch.Tensor]


def score_genome(supernet, genome, data, split: str = "val", calibration_images: int = CALIBRATION_IMAGES,
                 eval_images: int | None = None, per_image: bool = False, accel: Accelerator = CPU,
                 keep_batch_norm: bool = False) -> Score:
    """True top-1 of one subnet, with its own batch-norm statistics (returned too, with `keep_batch_norm`).

    Scores the physically sliced subnet (the exported network, tested equal to the masked supernet), not the masked
    supernet: a masked forward pass costs as much as the largest subnet, a sliced one only what the subnet costs,
    which is 2-20x less. It is calibrated with its masks already baked in (cheaper than masked), then evaluated as
    its `folded_twin`. The supernet's own statistics are untouched.
    """
    small = calibrated_subnet(supernet, genome, data, calibration_images, accel)
    stats = batch_norm_stats(small) if keep_batch_norm else None
    score = evaluate(folded_twin(small), data, split, limit=eval_images, per_image=per_image, accel=accel)
    score.batch_norm = stats
    return score


def evaluate_genomes(supernet: str | None, genomes: str, split: str = "val",
                     calibration_images: int = CALIBRATION_IMAGES, seed: int = 0,
                     data_dir: str | None = None, accelerator: str = "auto") -> Iterator[dict]:
    """`jcw supernet eval`: each named genome's readable form, top-1 and loss, yielded as it is scored."""
    check_value("calibration_images", calibration_images)
    check_value("seed", seed)
    accel = Accelerator.choose(accelerator)
    net = accel.module(load_supernet(supernet))
    data = supernet_data(net.config, data_dir)
    for label, g in parse_genomes(genomes, net.space, seed):
        s = score_genome(net, g, data, split, calibration_images, accel=accel)
        yield {"label": label, "genome": [int(v) for v in g], **net.space.decode(g), "top1": round(s.top1, 4),
               "loss": round(s.loss, 5)}
