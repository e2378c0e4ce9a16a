"""Fine-tune an exported subnet with its sparsity masks held, optionally distilling from the supernet's largest."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from jcw.errors import JcwError
from jcw.export import FORMAT, load_subnet
from jcw.io import torch_save, write_json
from jcw.supernet.evaluate import evaluate, recalibrate_bn
from jcw.supernet.train import _append_row, lr_at


@dataclass
class FinetuneConfig:
    epochs: int = 5
    lr: float = 0.02
    batch_size: int = 256
    weight_decay: float = 4e-5
    distill_from: str | None = None  # a supernet file; its largest subnet is the teacher
    seed: int = 0
    limit_train: int = 0


def finetune(subnet_path: str | Path, data, cfg: FinetuneConfig, out: str | Path | None = None,
             resume: bool = False, progress: bool = True) -> dict:
    """Train the subnet in place; return its test top-1 before and after."""
    subnet_path = Path(subnet_path)
    model = load_subnet(subnet_path)
    out = Path(out) if out else subnet_path.with_name(subnet_path.stem + "-finetuned")
    out.mkdir(parents=True, exist_ok=True)
    teacher = None
    if cfg.distill_from:
        from jcw.supernet.supernet import load_supernet

        teacher = load_supernet(cfg.distill_from)
        teacher.set_genome(teacher.space.largest())
        recalibrate_bn(teacher, data)  # shared statistics mix every subnet trained; the teacher needs its own
        teacher.eval()
    torch.manual_seed(cfg.seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True,
                          weight_decay=cfg.weight_decay)
    n_train = min(cfg.limit_train or data.size("train"), data.size("train"))
    steps = math.ceil(n_train / cfg.batch_size)
    ckpt_path, log_path = out / "checkpoint.pt", out / "finetune_log.csv"
    start = 0
    before = evaluate(model, data, "test").top1
    if resume:
        if not ckpt_path.exists():
            raise JcwError(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        start, before = int(ckpt["epoch"]), float(ckpt["test_top1_before"])
    elif log_path.exists():
        log_path.unlink()
    write_json(out / "finetune_config.json", {"subnet": str(subnet_path), **asdict(cfg)})
    for epoch in range(start, cfg.epochs):
        model.train()
        bar = tqdm(data.batches("train", cfg.batch_size, shuffle=True, augment=True, seed=cfg.seed * 1000 + epoch,
                                limit=n_train), total=steps, desc=f"finetune {epoch + 1}/{cfg.epochs}",
                   disable=not progress, dynamic_ncols=True)
        for i, batch in enumerate(bar):
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch * steps + i, cfg.epochs * steps, 0, cfg.lr)
            opt.zero_grad(set_to_none=True)
            logits = model(batch.images)
            loss = F.cross_entropy(logits, batch.labels)
            if teacher is not None:
                with torch.no_grad():
                    soft = F.softmax(teacher(batch.images), dim=1)
                loss = 0.5 * loss + 0.5 * F.cross_entropy(logits, soft)
            loss.backward()
            opt.step()
        row = {"epoch": epoch + 1, "train_loss": round(loss.item(), 4),
               "val_top1": round(evaluate(model, data, "val").top1, 2)}
        _append_row(log_path, row)
        print(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']}, val top-1 {row['val_top1']}%", flush=True)
        torch_save(ckpt_path, {"state_dict": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                               "test_top1_before": before})
    after = evaluate(model, data, "test").top1
    meta = dict(model.jcw_metadata, test_top1_before_finetune=before, test_top1=after, finetune=asdict(cfg))
    final = out / "subnet.pt"
    torch_save(final, {"format": FORMAT, "arch": model.jcw_arch, "state_dict": model.state_dict(), "metadata": meta})
    return {"subnet": str(final), "test_top1_before": before, "test_top1": after, "log": str(log_path)}
