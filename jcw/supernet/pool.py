"""Score many genomes on the supernet: true top-1 after batch-norm recalibration, serially or on a Ray actor pool.

The supernet's weights go into Ray's object store once; every actor builds the supernet from them once and then
scores the genomes sent to it. An actor that dies has its genome re-queued on a fresh actor, so every candidate is
scored exactly once; after `max_restarts` deaths the pool gives up with a clear error.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from jcw.data import load_dataset
from jcw.errors import JcwError
from jcw.supernet.accuracy import CALIBRATION_IMAGES, score_genome
from jcw.supernet.supernet import Supernet, SupernetConfig

OnScored = Callable[[int, dict], None]  # called with a genome's index and its score as soon as it is scored


@dataclass(frozen=True)
class DataSpec:
    """How an evaluator finds its data: a name and an optional folder."""

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    calibration_images: int = CALIBRATION_IMAGES
    split: str = "val"
    val_images: int | None = None  # cap on scored images (None: the whole split)


def _supernet_from_payload(payload: dict) -> Supernet:
    state = {k: torch.from_numpy(v) for k, v in payload["state_dict"].items()}
    orders = [torch.from_numpy(o) for o in payload["group_orders"]]
    net = Supernet(SupernetConfig.from_dict(payload["config"]), state, orders)
    net.eval()
    return net


def supernet_payload(supernet) -> dict:
    """The supernet as plain numpy arrays and a config: cheap to put into the object store."""
    ckpt = supernet.checkpoint()
    return {"config": ckpt["config"], "state_dict": {k: v.numpy() for k, v in ckpt["state_dict"].items()},
            "group_orders": [o.numpy() for o in ckpt["group_orders"]]}


class SerialPool:
    """Scores in this process; for debugging (`--workers 0`) and tests."""

    def __init__(self, supernet, data_spec: DataSpec):
        self.supernet = supernet
        self.spec = data_spec
        self.data = load_dataset(data_spec.dataset, data_spec.data_dir, supernet.config.input_size)

        self.scored_by: list[dict] = []  # the last call's genomes: which process scored each, at how many threads

    def score(self, genomes: Sequence, on_scored: OnScored | None = None) -> list[dict]:
        out, self.scored_by = [], []
        for i, g in enumerate(genomes):
            s = score_genome(self.supernet, np.asarray(g), self.data, self.spec.split, self.spec.calibration_images,
                             self.spec.val_images)
            out.append({"top1": s.top1, "loss": s.loss})
            self.scored_by.append({"genome": i, "worker": os.getpid(), "threads": torch.get_num_threads()})
            if on_scored:
                on_scored(i, out[-1])
        return out

    def close(self) -> None:
        pass


class _ScoringActor:
    def __init__(self, payload: dict, spec: DataSpec, threads: int):
        torch.set_num_threads(threads)
        self.supernet = _supernet_from_payload(payload)
        self.spec = spec
        self.data = load_dataset(spec.dataset, spec.data_dir, self.supernet.config.input_size)

    def score(self, genome) -> dict:
        s = score_genome(self.supernet, np.asarray(genome), self.data, self.spec.split, self.spec.calibration_images,
                         self.spec.val_images)
        # where it ran, as the worker sees it: benchmarks and tests report threads measured here, not requested
        return {"top1": s.top1, "loss": s.loss, "worker": os.getpid(), "threads": torch.get_num_threads()}

    def pid(self) -> int:
        return os.getpid()


def _init_failure(exc: Exception) -> str:
    """The reason inside a Ray actor-creation error: a JcwError's own message, else the traceback's last line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        if "JcwError: " in line:
            return line.split("JcwError: ", 1)[1]
    return lines[-1] if lines else exc.__class__.__name__


def check_ray_address(address: str, timeout: float = 3.0) -> None:
    """Fail fast on an address that does not answer; ray.init itself retries for minutes."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except (OSError, ValueError):
        raise JcwError(f"Ray address {address} does not answer (no connection within {timeout:g}s); start the "
                       "cluster with `ray start --head`, fix --ray-address, or drop it to run locally") from None


class RayPool:
    """A pool of scoring actors on a local Ray instance (sized to the machine) or an existing cluster."""

    def __init__(self, supernet, data_spec: DataSpec, workers: int | None = None, address: str | None = None,
                 max_restarts: int = 8):
        import ray  # heavy (about a second to import): only a pool that uses it pays for it

        self.ray = ray
        self.owns_ray = False
        if not ray.is_initialized():
            try:
                if address:
                    check_ray_address(address)
                    ray.init(address=address, include_dashboard=False, log_to_driver=False)
                else:
                    # Ray runs workers at niceness 15; on a busy laptop the scoring actors, which are the whole
                    # job, would then crawl behind any other process. A local instance is ours: run them at ours.
                    os.environ.setdefault("RAY_worker_niceness", "0")
                    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            except JcwError:
                raise
            except Exception as exc:
                where = f"at {address}" if address else "locally"
                # `ray start --head` turns on token authentication, but Ray sends the token to an explicit
                # address only under RAY_AUTH_MODE=token, and the refusal reads as a plain connection failure
                token = "" if not address or os.environ.get("RAY_AUTH_MODE") else \
                    " (a cluster from `ray start --head` needs RAY_AUTH_MODE=token set before jcw starts)"
                raise JcwError(f"cannot start or reach Ray {where} ({exc.__class__.__name__}: "
                               f"{str(exc).splitlines()[0][:160]}){token}; check --ray-address or use --workers 0"
                               ) from None
            self.owns_ray = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = workers or max(1, cpus)
        self.threads = max(1, cpus // self.workers)
        self.spec = data_spec
        self.payload_ref = ray.put(supernet_payload(supernet))
        self.actor_cls = ray.remote(num_cpus=min(self.threads, cpus))(_ScoringActor)
        self.actors = [self._new_actor() for _ in range(self.workers)]
        self.restarts = 0
        self.max_restarts = max_restarts
        self.scored_by: list[dict] = []  # the last call's genomes: which actor process scored each, at how many threads

    def _new_actor(self):
        return self.actor_cls.remote(self.payload_ref, self.spec, self.threads)

    def score(self, genomes: Sequence, on_scored: OnScored | None = None) -> list[dict]:
        ray = self.ray
        genomes = [np.asarray(g) for g in genomes]
        results: list[dict | None] = [None] * len(genomes)
        self.scored_by = []
        queue = list(range(len(genomes)))
        running: dict = {}  # ObjectRef -> (actor slot, genome index)
        idle = list(range(len(self.actors)))
        while queue or running:
            while queue and idle:
                slot, i = idle.pop(), queue.pop(0)
                running[self.actors[slot].score.remote(genomes[i])] = (slot, i)
            done, _ = ray.wait(list(running), num_returns=1)
            ref = done[0]
            slot, i = running.pop(ref)
            try:
                got = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                if getattr(exc, "actor_init_failed", False):  # it would fail the same way on every restart
                    raise JcwError(f"a scoring actor could not start: {_init_failure(exc)}") from None
                self.restarts += 1
                if self.restarts > self.max_restarts:
                    cause = " ".join(str(exc).split())[-200:]
                    raise JcwError(f"scoring actors died {self.restarts} times (the last on genome {i}: ...{cause}); "
                                   "giving up: check memory on the Ray nodes, or score serially with --workers 0"
                                   ) from None
                self.actors[slot] = self._new_actor()  # the actor died: replace it and re-queue its genome
                queue.insert(0, i)
            else:
                self.scored_by.append({"genome": i, "worker": got.pop("worker"), "threads": got.pop("threads")})
                results[i] = got
                if on_scored:
                    on_scored(i, got)
            idle.append(slot)
        return results  # type: ignore[return-value]

    def actor_pids(self) -> list[int]:
        return self.ray.get([a.pid.remote() for a in self.actors])

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        if self.owns_ray:
            self.ray.shutdown()


def scoring_pool(supernet, data_spec: DataSpec, workers: int | None, address: str | None = None):
    """`workers=0` scores in this process; otherwise Ray actors (None: one per CPU)."""
    if workers == 0:
        return SerialPool(supernet, data_spec)
    return RayPool(supernet, data_spec, workers, address)
