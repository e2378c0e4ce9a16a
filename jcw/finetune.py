"""Fine-tune an exported subnet with its sparsity masks held, optionally distilling from the supernet's largest."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from jcw.accelerator import Accelerator
from jcw.config import FinetuneConfig, SupernetConfig
from jcw.data import supernet_data
from jcw.errors import JcwError
from jcw.io import write_json
from jcw.supernet.accuracy import evaluate, recalibrate_bn
from jcw.supernet.loop import Schedule, train_loop
from jcw.supernet.subnet import load_subnet, save_subnet
from jcw.supernet.supernet import load_supernet


class _MasksHeld:
    """The loop's recipe for a subnet: cross-entropy, half of it on the teacher's soft labels when there is one."""

    def __init__(self, model: torch.nn.Module, data, cfg: FinetuneConfig, teacher, before: float, accel: Accelerator):
        self.model, self.data, self.cfg, self.teacher, self.before = model, data, cfg, teacher, before
        self.accel = accel

    def begin_epoch(self, epoch: int) -> None:
        self.model.train()

    def begin_step(self) -> None:
        pass

    def step(self, batch, epoch: int, backward) -> float:
        logits = self.model(batch.images)
        loss = F.cross_entropy(logits, batch.labels)
        if self.teacher is not None:
            with torch.no_grad():
                soft = F.softmax(self.teacher(batch.images).float(), dim=1)
            loss = 0.5 * loss + 0.5 * F.cross_entropy(logits, soft)
        backward(loss)
        return loss.item()

    def end_epoch(self, epoch: int, row: dict) -> None:
        row["val_top1"] = round(evaluate(self.model, self.data, "val", limit=self.cfg.val_images,
                                         accel=self.accel).top1, 2)
        print(f"epoch {epoch + 1}/{self.cfg.epochs}: loss {row['train_loss']}, val top-1 {row['val_top1']}%",
              flush=True)

    def state(self) -> dict:
        return {"state_dict": self.model.state_dict(), "test_top1_before": self.before}

    def restore(self, checkpoint: dict) -> None:
        self.model.load_state_dict(checkpoint["state_dict"])
        self.before = float(checkpoint["test_top1_before"])


def finetune(subnet_path: str | Path, cfg: FinetuneConfig | None = None, out: str | Path | None = None,
             resume: bool = False, data_dir: str | None = None, progress: bool = True) -> dict:
    """Train the subnet with its masks held; write OUT/subnet.pt and return its test top-1 before and after."""
    cfg = cfg or FinetuneConfig()
    accel = Accelerator.choose(cfg.accelerator)  # before anything is read or written
    subnet_path = Path(subnet_path)
    model = load_subnet(subnet_path)
    data = supernet_data(SupernetConfig.from_dict(model.jcw_arch["supernet_config"]), data_dir)
    out = Path(out) if out else subnet_path.with_name(subnet_path.stem + "-finetuned")
    before, after = finetune_module(model, data, cfg, out, resume, progress, {"subnet": str(subnet_path)}, accel)
    meta = dict(model.jcw_metadata, test_top1_before_finetune=before, test_top1=after, finetune=asdict(cfg))
    final = out / "subnet.pt"
    save_subnet(final, model.cpu(), model.jcw_arch, meta)
    return {"subnet": str(final), "test_top1_before": before, "test_top1": after,
            "log": str(out / "finetune_log.csv")}


def finetune_module(model: torch.nn.Module, data, cfg: FinetuneConfig, out: str | Path, resume: bool = False,
                    progress: bool = True, config: dict | None = None,
                    accel: Accelerator | None = None) -> tuple[float, float]:
    """Fine-tune any classifier in place (a subnet, or a network another pruner made) with `cfg`'s recipe, so that
    networks from different pruners are compared after the same training; return its test top-1 before and after.
    OUT gets the log, the checkpoint a resumed run starts from, and finetune_config.json (`config` added to it).
    `accel` is the caller's choice for this process; without one, it is chosen here from `cfg`."""
    accel = accel or Accelerator.choose(cfg.accelerator)
    model = accel.network(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = None
    if cfg.distill_from:
        teacher = accel.module(load_supernet(cfg.distill_from))
        if (teacher.config.dataset, teacher.config.num_classes) != (data.name, data.num_classes):
            raise JcwError(f"--distill-from {cfg.distill_from} was trained on {teacher.config.dataset} "
                           f"({teacher.config.num_classes} classes), the subnet on {data.name} ({data.num_classes} "
                           f"classes): the teacher must know the subnet's classes")
        teacher.set_genome(teacher.space.largest())
        # shared statistics mix every subnet trained; the teacher needs its own
        recalibrate_bn(teacher, data, accel=accel)
        teacher.eval()
    # a resumed run restores its own
    before = 0.0 if resume else evaluate(model, data, "test", limit=cfg.test_images, accel=accel).top1
    recipe = _MasksHeld(model, data, cfg, teacher, before, accel)
    write_json(out / "finetune_config.json", {**(config or {}), **asdict(cfg)})
    schedule = Schedule(cfg.epochs, cfg.batch_size, cfg.lr, seed=cfg.seed, limit_train=cfg.limit_train)
    groups = [{"params": list(model.parameters()), "weight_decay": cfg.weight_decay}]
    train_loop(recipe, groups, data, schedule, out, "finetune_log.csv", "finetune", resume, progress, accel)
    return recipe.before, evaluate(model, data, "test", limit=cfg.test_images, accel=accel).top1
