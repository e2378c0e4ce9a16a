"""Score many genomes on the supernet: true top-1 after batch-norm recalibration, serially, on forked processes or on
a Ray actor pool.

The supernet's weights go into Ray's object store once; every actor builds the supernet from them once and then
scores the genomes sent to it. An actor that dies has its genome re-queued on a fresh actor, so every candidate is
scored exactly once; after `max_restarts` deaths the pool gives up with a clear error.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch

from jcw.accelerator import CPU, Accelerator
from jcw.allocator import keep_freed_memory
from jcw.cluster import start_ray
from jcw.data import supernet_data
from jcw.errors import JcwError
from jcw.supernet.accuracy import (CALIBRATION_IMAGES, TestScore, batch_norm_stats, calibrated_subnet, evaluate,
                                   folded_twin, score_genome)
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
    accelerator: str = "auto"  # where each scorer runs (jcw/accelerator.py); Ray actors use CUDA only if given a GPU
    per_image: bool = False  # also return which images each subnet got right (packed bits, hex): label noise
    batch_norm: bool = False  # also return each subnet's calibrated statistics: a search tests its picks with them


def _scored(s, spec: DataSpec) -> dict:
    """A score as plain values: top-1, loss and, where the spec asks, the per-image bits as a hex string."""
    out = {"top1": s.top1, "loss": s.loss}
    if spec.per_image:
        out.update(correct=np.packbits(s.correct).tobytes().hex(), images=len(s.correct))
    if spec.batch_norm:
        out["batch_norm"] = s.batch_norm
    return out


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

    def __init__(self, supernet, data_spec: DataSpec, accel: Accelerator):
        keep_freed_memory()
        self.accel = accel
        self.supernet = accel.module(supernet)
        self.spec = data_spec
        self.data = supernet_data(supernet.config, data_spec.data_dir)

        self.scored_by: list[dict] = []  # the last call's genomes: which process scored each, at how many threads

    def score(self, genomes: Sequence, on_scored: OnScored | None = None) -> list[dict]:
        out, self.scored_by = [], []
        for i, g in enumerate(genomes):
            s = score_genome(self.supernet, np.asarray(g), self.data, self.spec.split, self.spec.calibration_images,
                             self.spec.val_images, self.spec.per_image, self.accel, self.spec.batch_norm)
            out.append(_scored(s, self.spec))
            self.scored_by.append({"genome": i, "worker": os.getpid(), "threads": torch.get_num_threads()})
            if on_scored:
                on_scored(i, out[-1])
        return out

    def test_share(self, genome, shard: tuple[int, int] = (0, 1),
                   batch_norm: dict | None = None) -> tuple[int, int, dict[str, torch.Tensor]]:
        """Right answers and images on one share of the test split, and the batch-norm statistics they came from
        (`batch_norm`, where its scoring kept them, else recalibrated)."""
        net = calibrated_subnet(self.supernet, np.asarray(genome), self.data, self.spec.calibration_images,
                                self.accel, batch_norm)
        s = evaluate(folded_twin(net), self.data, "test", per_image=True, accel=self.accel, shard=shard)
        return int(s.correct.sum()), len(s.correct), batch_norm_stats(net)

    def test_score(self, genome, batch_norm: dict | None = None) -> TestScore:
        """A pick's top-1 on the test split, with the statistics its exported file keeps."""
        right, images, stats = self.test_share(genome, batch_norm=batch_norm)
        return TestScore(100.0 * right / max(images, 1), stats)

    def close(self) -> None:
        pass


_PROCESS_DIED = "a scoring process died (out of memory?); score in this process with --workers 0"
_FORKED: SerialPool | None = None  # in a forked scoring process: the pool it scores with, inherited from its parent
_PR_SET_PDEATHSIG = 1  # prctl(2)


def _forked_start(parent: int, pool: SerialPool) -> None:
    """One thread, and death with the parent: a forked process holds the pipe it waits on open itself, so a parent
    killed outright (an OOM kill, SIGKILL) would otherwise leave it waiting forever. `pool` comes through the fork
    as it is in the parent's memory, supernet and data included: nothing is pickled."""
    global _FORKED
    _FORKED = pool
    torch.set_num_threads(1)
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took hold
        os._exit(1)


def _score_forked(index: int, genome: np.ndarray) -> tuple[int, dict, dict]:
    score = _FORKED.score([genome])[0]
    return index, score, {"genome": index, "worker": os.getpid(), "threads": torch.get_num_threads()}


def _test_share_forked(genome: np.ndarray, shard: tuple[int, int],
                       batch_norm: dict | None) -> tuple[int, int, dict[str, torch.Tensor]]:
    return _FORKED.test_share(genome, shard, batch_norm)


class ForkPool:
    """One forked process per CPU, at one thread each, on one machine.

    Small subnets keep two threads of one process only partly busy: on 2 cores two processes at one thread scored
    1.2x as many genomes/s (RESULTS.md section 6). Forking costs a tenth of a second where Ray's start costs
    seconds, and every process inherits the supernet and the data already loaded here. One thread is also what
    makes the fork safe: OpenMP's threads do not survive it, and a forked process at two threads hangs."""

    def __init__(self, supernet, data_spec: DataSpec, processes: int):
        self.accel = CPU
        serial = SerialPool(supernet, data_spec, CPU)
        self.data = serial.data  # the search's exports read it too
        self.processes = processes
        self.executor = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork"),
                                            initializer=_forked_start, initargs=(os.getpid(), serial))
        self.space = supernet.space
        self.scored_by: list[dict] = []

    def score(self, genomes: Sequence, on_scored: OnScored | None = None) -> list[dict]:
        genomes = [np.asarray(g) for g in genomes]
        results: list[dict | None] = [None] * len(genomes)
        self.scored_by = []
        try:
            futures = [self.executor.submit(_score_forked, i, genomes[i]) for i in largest_first(self.space, genomes)]
            for future in as_completed(futures):
                i, score, where = future.result()
                results[i] = score
                self.scored_by.append(where)
                if on_scored:
                    on_scored(i, score)
        except BrokenProcessPool:
            raise JcwError(_PROCESS_DIED) from None
        return results  # type: ignore[return-value]

    def test_score(self, genome, batch_norm: dict | None = None) -> TestScore:
        """As `SerialPool.test_score`, each process scoring its share of every test batch: a search's last scoring,
        which would otherwise leave all but one CPU idle. Without `batch_norm` each process recalibrates, with the
        same result."""
        genome = np.asarray(genome)
        try:
            shares = [f.result() for f in [self.executor.submit(_test_share_forked, genome, (k, self.processes),
                                                                batch_norm) for k in range(self.processes)]]
        except BrokenProcessPool:
            raise JcwError(_PROCESS_DIED) from None
        return TestScore(100.0 * sum(r for r, _, _ in shares) / max(sum(n for _, n, _ in shares), 1), shares[0][2])

    def close(self) -> None:
        self.executor.shutdown(cancel_futures=True)


class _ScoringActor:
    """Loads the data when it starts and builds the supernet on its first genome, from the object store ref that
    every call carries: a ref among an actor's constructor arguments is one Ray cannot promise to a restarted actor
    (ray-project/ray#53727), and Ray prints an error line at every such start."""

    def __init__(self, spec: DataSpec, threads: int, config: SupernetConfig):
        keep_freed_memory()
        torch.set_num_threads(threads)
        self.spec = spec
        self.accel = Accelerator.choose(spec.accelerator)  # this actor's own: what Ray gave it
        self.supernet = None
        self.data = supernet_data(config, spec.data_dir)

    def score(self, payload: list, genome, index: int) -> dict:
        if self.supernet is None:
            import ray  # in a Ray worker: already imported

            built = _supernet_from_payload(ray.get(payload[0]))  # a ref in a list: Ray passes it unresolved
            self.supernet = self.accel.module(built)
        s = score_genome(self.supernet, np.asarray(genome), self.data, self.spec.split, self.spec.calibration_images,
                         self.spec.val_images, self.spec.per_image, self.accel, self.spec.batch_norm)
        # where it ran, as the worker sees it: benchmarks and tests report threads measured here, not requested
        return {**_scored(s, self.spec), "index": index, "worker": os.getpid(), "threads": torch.get_num_threads()}

    def pid(self) -> int:
        return os.getpid()


def _init_failure(exc: Exception) -> str:
    """The reason inside a Ray actor-creation error: a JcwError's own message, else the traceback's last line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        if "JcwError: " in line:
            return line.split("JcwError: ", 1)[1]
    return lines[-1] if lines else exc.__class__.__name__


class RayPool:
    """Scoring actors on a local Ray instance (sized to the machine) or an existing cluster.

    Ray does the pool's bookkeeping: `ray.util.ActorPool` hands genomes to idle actors, and an actor that dies (a
    lost node, an OOM kill) is restarted by Ray, up to `max_restarts` times, with its running genome retried on it.
    The supernet goes into the object store once; every actor, and every restart, reads it from there.
    """

    def __init__(self, supernet, data_spec: DataSpec, workers: int | None = None, address: str | None = None,
                 max_restarts: int = 8, threads: int | None = None, start_timeout: float = 300.0):
        import ray  # heavy (about a second to import): only a pool that uses it pays for it

        self.ray = ray
        self.owns_ray = start_ray(address)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        gpus = _cluster_gpus(ray, data_spec.accelerator)
        self.workers = workers or max(1, gpus or cpus)  # default: one actor per GPU, else per CPU
        gpus_per_actor = min(1.0, gpus / self.workers) if gpus else 0
        # an actor without a GPU share must not touch a GPU Ray did not give it
        data_spec = replace(data_spec, accelerator="cuda" if gpus else "cpu")
        self.threads = threads or max(1, cpus // self.workers)  # default: the CPUs split between the actors
        self.space = supernet.space
        self.max_restarts = max_restarts
        self.payload_ref = ray.put(supernet_payload(supernet))
        # SPREAD: one actor per node before doubling up, so losing a node loses as few actors as it can
        actor_cls = ray.remote(num_cpus=min(self.threads, cpus), num_gpus=gpus_per_actor, max_restarts=max_restarts,
                               max_task_retries=max_restarts, scheduling_strategy="SPREAD")(_ScoringActor)
        self.actors = [actor_cls.remote(data_spec, self.threads, supernet.config)
                       for _ in range(self.workers)]
        self._wait_until_started(start_timeout, cpus)
        self.scored_by: list[dict] = []  # the last call's genomes: which actor process scored each, at how many threads

    def _wait_until_started(self, timeout: float, cpus: int) -> None:
        """An actor the cluster cannot place would otherwise leave the first score() waiting forever."""
        ready, _ = self.ray.wait([a.pid.remote() for a in self.actors], num_returns=len(self.actors),
                                 timeout=timeout)
        for ref in ready:
            try:
                self.ray.get(ref)
            except self._actor_errors as exc:  # a constructor that failed says why here
                self.close()  # the caller never gets this pool to close
                raise self._failure(exc) from None
        if len(ready) < len(self.actors):
            self.close()
            raise JcwError(f"only {len(ready)} of {self.workers} scoring actors started within {timeout:g}s: each "
                           f"asks for {min(self.threads, cpus)} CPU(s) and the cluster has {cpus}; see `ray status`, "
                           f"or ask for fewer with --workers")

    @property
    def _actor_errors(self) -> tuple:
        return self.ray.exceptions.RayActorError, self.ray.exceptions.WorkerCrashedError

    def _failure(self, exc: Exception) -> JcwError:
        if getattr(exc, "actor_init_failed", False):  # it would fail the same way on every restart
            return JcwError(f"a scoring actor could not start: {_init_failure(exc)}")
        cause = " ".join(str(exc).split())[-200:]
        return JcwError(f"a scoring actor died after Ray restarted it {self.max_restarts} times (...{cause}); giving "
                        "up: check memory on the Ray nodes, or score serially with --workers 0")

    def score(self, genomes: Sequence, on_scored: OnScored | None = None) -> list[dict]:
        from ray.util import ActorPool

        genomes = [np.asarray(g) for g in genomes]
        results: list[dict | None] = [None] * len(genomes)
        self.scored_by = []
        pool = ActorPool(self.actors)
        for i in largest_first(self.space, genomes):
            pool.submit(lambda actor, i: actor.score.remote([self.payload_ref], genomes[i], i), i)
        while pool.has_next():
            try:
                got = pool.get_next_unordered()
            except self._actor_errors as exc:
                raise self._failure(exc) from None
            i = got.pop("index")
            self.scored_by.append({"genome": i, "worker": got.pop("worker"), "threads": got.pop("threads")})
            results[i] = got
            if on_scored:
                on_scored(i, got)
        return results  # type: ignore[return-value]

    def actor_pids(self) -> list[int]:
        return self.ray.get([a.pid.remote() for a in self.actors])

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []
        if self.owns_ray:
            self.ray.shutdown()


def largest_first(space, genomes: list[np.ndarray]) -> list[int]:
    """Genome indices by falling dense MACs (a sliced subnet computes its zeros too): costs vary 4x with size, and
    the costliest handed out last would leave every other worker idle while one finishes."""
    if not genomes:
        return []
    dense = np.array(genomes)
    dense[:, len(space.groups):] = 0
    return [int(i) for i in np.argsort(-space.cost(dense)["macs"], kind="stable")]


def _cluster_gpus(ray, accelerator: str) -> int:
    """GPUs the scoring actors share: the cluster's for auto and cuda, none for cpu; cuda without any is an error."""
    gpus = int(ray.cluster_resources().get("GPU", 0)) if accelerator != "cpu" else 0
    if accelerator == "cuda" and not gpus:
        raise JcwError("--accelerator cuda: the Ray cluster has no GPU; use --accelerator cpu or auto")
    return gpus


LOCAL_UP_TO_CPUS = 2  # where `workers=None` scores on this machine's own processes rather than on Ray actors


def scoring_pool(supernet, data_spec: DataSpec, workers: int | None, address: str | None = None,
                 accel: Accelerator | None = None):
    """`workers=0` scores in this process, N on N Ray actors. None chooses by the machine: with no cluster named and
    at most LOCAL_UP_TO_CPUS CPUs, one forked process per CPU (this process where CUDA scores, or on one CPU), which
    saves Ray's start-up (RESULTS.md section 6); else one Ray actor per CPU (or GPU). `accel` is the caller's choice
    for this process (chosen here from the spec if the caller made none); Ray's actors choose their own."""
    cpus = len(os.sched_getaffinity(0))
    if workers == 0 or (workers is None and address is None and cpus <= LOCAL_UP_TO_CPUS):
        accel = accel or Accelerator.choose(data_spec.accelerator)
        if workers is None and cpus > 1 and not accel.cuda:  # CUDA does not survive a fork
            return ForkPool(supernet, data_spec, cpus)
        return SerialPool(supernet, data_spec, accel)
    return RayPool(supernet, data_spec, workers, address)
