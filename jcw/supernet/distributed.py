"""Data-parallel supernet training on Ray Train: the one training loop on N workers (gloo on CPU, nccl on GPU).

Each worker trains its own slice of every batch (the loop's `Replica`), sums the gradients of the step's several
sandwich passes locally and averages them with the other workers once per step, in one all-reduce. DDP's wrapper
would reduce inside each backward pass of a module's `forward`; the sandwich rule runs three or more forward and
backward passes per step through `forward_sliced`, so the loop does DDP's arithmetic itself at the step's end.

Rank 0 writes the checkpoint after every epoch into the supernet's folder and hands it to `ray.train.report`, which
keeps the last ones under OUT/ray_train/. A worker that dies is restarted by Ray Train (`FailureConfig`), and every
worker then resumes from the last reported checkpoint; `--resume` resumes a run whose driver died from
OUT/checkpoint.pt. On a cluster, OUT must be on storage that every node sees.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.distributed as dist

from jcw.allocator import keep_freed_memory
from jcw.cluster import start_ray
from jcw.config import TrainConfig
from jcw.data import supernet_data
from jcw.errors import JcwError
from jcw.supernet.loop import Replica
from jcw.supernet.supernet import SupernetConfig
from jcw.supernet.train import initial_supernet, prepare, train_supernet

RUN_NAME = "ray_train"


class RayTrainReplica(Replica):
    """This worker's place in the Ray Train worker group, and the collectives the loop calls."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def check_same(self, what: str, value: str) -> None:
        values: list = [None] * self.world
        dist.all_gather_object(values, value)
        if len(set(values)) > 1:
            raise RuntimeError(f"data-parallel workers disagree on {what}: {values}")

    def report(self, row: dict, checkpoint: Path) -> None:
        import ray.train

        if self.rank > 0:
            return ray.train.report(row)
        with tempfile.TemporaryDirectory() as folder:
            shutil.copy(checkpoint, Path(folder) / checkpoint.name)
            ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _worker(job: dict) -> None:
    """One Ray Train worker: the whole training run on its slice of every batch."""
    import ray.train

    keep_freed_memory()  # as the CLI's process and the scoring actors do (it cut a worker's page faults by ~40%)
    torch.set_num_threads(job["threads"])
    ctx = ray.train.get_context()
    replica = RayTrainReplica(ctx.get_world_rank(), ctx.get_world_size())
    config, recipe = SupernetConfig.from_dict(job["config"]), TrainConfig(**job["recipe"])
    recipe.threads = job["threads"]
    # each worker's own decoding processes, within its CPU share
    data = supernet_data(config, job["data_dir"], job["threads"] if recipe.loader_workers is None
                         else recipe.loader_workers)
    net = initial_supernet(config, recipe)
    restored = ray.train.get_checkpoint()  # set when Ray Train restarted the group after a failure
    if restored is None:
        train_supernet(net, data, job["out"], recipe, job["resume"], progress=False, replica=replica)
        return
    with restored.as_directory() as folder:
        train_supernet(net, data, job["out"], recipe, Path(folder) / "checkpoint.pt", progress=False,
                       replica=replica)


def train_on_ray(out: str | Path, workers: int, config: SupernetConfig | None = None,
                 recipe: TrainConfig | None = None, data_dir: str | None = None, resume: bool = False,
                 force: bool = False, input_size: int | None = None, ray_address: str | None = None,
                 threads: int = 1, gpus_per_worker: float = 0, max_failures: int = 3) -> Path:
    """`jcw supernet train --workers N`: `train`'s run on N Ray Train workers, each at `threads` torch threads."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if workers < 1 or threads < 1 or gpus_per_worker < 0 or max_failures < 0:
        raise JcwError("--workers and --threads must be at least 1, --gpus-per-worker and --max-failures 0 or more")
    out = Path(out).resolve()
    config, recipe, _ = prepare(out, config, recipe, data_dir, resume, force, input_size)
    if recipe.accelerator == "cuda" and not gpus_per_worker:
        raise JcwError("--accelerator cuda on Ray Train workers needs --gpus-per-worker: each worker uses what Ray "
                       "gives it")
    # what Ray gives each worker, not what the driver sees: each worker chooses from it when it starts
    recipe = replace(recipe, accelerator="cuda" if gpus_per_worker else "cpu")
    if not resume:
        shutil.rmtree(out / RUN_NAME, ignore_errors=True)  # an earlier run's checkpoints are not this run's
    owns_ray = start_ray(ray_address, log_to_driver=True)
    job = {"config": asdict(config), "recipe": asdict(recipe), "data_dir": data_dir, "out": str(out),
           "resume": bool(resume), "threads": threads}
    trainer = TorchTrainer(
        _worker, train_loop_config=job, torch_config=TorchConfig(backend="nccl" if gpus_per_worker else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0,
                                     resources_per_worker={"CPU": threads, **({"GPU": gpus_per_worker}
                                                                              if gpus_per_worker else {})}),
        run_config=RunConfig(name=RUN_NAME, storage_path=str(out), failure_config=FailureConfig(max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)))
    print(f"training on {workers} Ray Train worker(s) x {threads} thread(s)"
          f"{f', {gpus_per_worker} GPU each' if gpus_per_worker else ''}; checkpoints in {out / RUN_NAME}",
          file=sys.stderr, flush=True)
    try:
        result = trainer.fit()
    except Exception as exc:
        raise JcwError(f"Ray Train run failed ({exc.__class__.__name__}: {str(exc).strip().splitlines()[-1][:200]}); "
                       f"continue it with --resume") from None
    finally:
        if owns_ray:
            ray.shutdown()
    if result.error:
        raise JcwError(f"Ray Train run failed ({result.error}); continue it with --resume")
    return out / "supernet.pt"
