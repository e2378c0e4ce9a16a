"""`jcw search`: NSGA-II over channels x sparsity under a latency budget, driven by pymoo's ask/tell.

Each generation prices the population with the device table and the accuracy predictor (or the supernet) and appends
to history.csv; the algorithm is checkpointed every few seconds. Every few generations some of the predicted front is
scored on the supernet and the predictor is refit with those rows, because the search otherwise settles where the
predictor overrates subnets. At the end the archive's Pareto members are re-scored on the supernet, so the front in
pareto.csv carries true validation top-1.
"""
from __future__ import annotations

import json
import platform
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import pymoo
import torch
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.evaluator import Evaluator
from pymoo.core.problem import Problem
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.operators.sampling.rnd import IntegerRandomSampling
from pymoo.problems.static import StaticProblem
from tqdm import tqdm

from jcw import __version__
from jcw.accelerator import CPU, Accelerator
from jcw.artifacts import default_predictor_path
from jcw.cluster import check_ray_address
from jcw.config import CHOICES, SearchConfig
from jcw.errors import JcwError
from jcw.latency.table import load_table
from jcw.predictor.predictor import load_predictor
from jcw.predictor.regression import refine
from jcw.search.archive import genomes_from_column, hypervolume, on_front_with_ties, pareto_mask, spread_front
from jcw.search.budget import format_ms
from jcw.search.front import SearchResult, rescore_front, write_outputs
from jcw.search.repair import XnnpackDensities
from jcw.search.rundir import RunDir
from jcw.search.survival import MultiTargetSurvival, latency_targets
from jcw.supernet.accuracy import TestScore
from jcw.supernet.pool import DataSpec, SerialPool, scoring_pool
from jcw.supernet.supernet import load_supernet


CHECKPOINT_EVERY_S = 5.0  # between checkpoints while the predictor prices generations (a hundredth of a second
# each) and after every refinement: pickling the algorithm after each generation took 0.5 s of the README search


def _genome_key(genome) -> tuple[int, ...]:
    return tuple(int(v) for v in genome)


def default_run_name(cfg: SearchConfig) -> str:
    return f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.device}-{format_ms(cfg.largest_budget_ms)}"


class _Context:
    """Everything a search reads: supernet, bound table, predictor, evaluator; built once."""

    def __init__(self, cfg: SearchConfig):
        self.timings: dict[str, float] = defaultdict(float)  # seconds per phase, for config.json and the last line
        for option in ("evaluator", "survival", "genes"):
            if getattr(cfg, option) not in CHOICES[option]:
                raise JcwError(f"--{option} must be one of {', '.join(CHOICES[option])}, not "
                               f"{getattr(cfg, option)!r}")
        # this process's choice, made once; a named cluster's GPUs are checked when its actors start
        self.accel = None if cfg.ray_address else Accelerator.choose(cfg.accelerator)
        if cfg.ray_address and cfg.workers != 0:
            check_ray_address(cfg.ray_address)  # before any work, not after the last generation
        self.table = load_table(cfg.device)
        self.supernet = load_supernet(cfg.supernet)
        self.space = self.supernet.space
        self.bound = self.table.bind(self.space)
        self.predictor = None
        if cfg.evaluator == "predictor":
            path = cfg.predictor or (default_predictor_path() if cfg.supernet is None else None)
            if path is None:
                raise JcwError("--supernet given without --predictor: fit one with `jcw predictor fit --supernet S` "
                               "and pass --predictor, or use --evaluator supernet")
            self.predictor = load_predictor(path)
            self.predictor.check_supernet(self.supernet.hash)
        self.shipped_predictor = self.predictor  # refinement refits from this one, never from a refit
        self.upper = self.space.gene_sizes - 1
        n_groups = len(self.space.groups)
        if cfg.genes == "channels":
            self.upper[n_groups:] = 0
        elif cfg.genes == "density":
            self.upper[:n_groups] = 0
        self.dense_only = ~self.bound.sparse_genes()  # layers this table's runtime never runs sparse stay dense
        if cfg.genes == "density" and self.dense_only.all():
            raise JcwError(f"--genes density has nothing to search: {self.table.runtime} on {cfg.device} runs no "
                           f"layer of {self.space.model} sparse ({self._why_dense()})")
        self.upper[n_groups:][self.dense_only] = 0
        self.repair = XnnpackDensities(self.bound)
        smallest = self.upper.copy()
        self.smallest_ms = float(self.bound.latency(smallest)[0])
        if self.smallest_ms > min(cfg.budgets_ms):
            raise JcwError(f"budget {format_ms(min(cfg.budgets_ms))} is below the smallest subnet's latency on "
                           f"{cfg.device}: {self.smallest_ms:.4g}ms is the least achievable")
        self.largest_ms = float(self.bound.latency(np.zeros_like(self.upper))[0])
        self.unconstrained = [b for b in cfg.budgets_ms if b >= self.largest_ms]
        self.evaluator = None
        # calibrated statistics of the scored subnets that could still be a pick, by genome, with their latency and
        # true top-1: those on the true front within the largest budget
        self.batch_norm: dict[tuple, tuple[float, float, dict]] = {}
        self.cfg = cfg

    def _why_dense(self) -> str:
        subgraph = self.bound.subgraph
        if subgraph is not None and subgraph.reason:
            return subgraph.reason
        if not self.bound.prices_sparse():
            return "its table prices every layer dense"
        if subgraph is not None:
            return "XNNPACK runs only the 1x1 convs of its NCHW subgraph sparse"
        return "its table prices them dense at every density"

    def dense_only_note(self) -> str:
        """One line where some density genes leave the genome, else '' (also where XNNPACK's shared gene is left,
        whose own note says which layers stay dense)."""
        if not self.dense_only.any() or self.cfg.genes == "channels" or self.repair.genes:
            return ""
        n, total = int(self.dense_only.sum()), len(self.dense_only)
        what = "no layer" if n == total else f"only {total - n} of {total} sparse layers"
        return (f"note: {self.table.runtime} on {self.cfg.device} runs {what} of {self.space.model} sparse "
                f"({self._why_dense()}): {f'the other {n}' if n < total else 'all'} density genes stay at 1.0")

    @contextmanager
    def timed(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[phase] += time.perf_counter() - start

    def scorer(self):
        if self.evaluator is None:
            spec = DataSpec(dataset=self.supernet.config.dataset, data_dir=self.cfg.data_dir,
                            calibration_images=self.cfg.calibration_images, val_images=self.cfg.val_images,
                            accelerator=self.cfg.accelerator, batch_norm=True)
            with self.timed("scorer start"):
                self.evaluator = scoring_pool(self.supernet, spec, self.cfg.workers, self.cfg.ray_address,
                                              self.accel)
        return self.evaluator

    @property
    def supernet_accel(self) -> Accelerator:
        """Where the supernet's weights are: scoring in this process moves them to its accelerator."""
        return self.evaluator.accel if isinstance(self.evaluator, SerialPool) else CPU

    def true_top1(self, genomes: np.ndarray, label: str, phase: str) -> np.ndarray:
        scorer = self.scorer()
        with self.timed(phase), tqdm(total=len(genomes), desc=label, dynamic_ncols=True, file=sys.stderr) as bar:
            scores = scorer.score(list(genomes), on_scored=lambda i, s: bar.update())
        top1 = np.array([s["top1"] for s in scores])
        self._keep_batch_norm(genomes, top1, [s["batch_norm"] for s in scores])
        return top1

    def _keep_batch_norm(self, genomes: np.ndarray, top1: np.ndarray, stats: list[dict]) -> None:
        """Keep the statistics a pick's test top-1 will be scored with, rather than recalibrate it; only for subnets
        still on the true front, since under `--evaluator supernet` every one of thousands of subnets is scored."""
        for g, lat, t, st in zip(genomes, self.bound.latency(np.asarray(genomes)), top1, stats):
            if lat <= self.cfg.largest_budget_ms:
                self.batch_norm[_genome_key(g)] = (float(lat), float(t), st)
        keys, kept = list(self.batch_norm), list(self.batch_norm.values())
        front = on_front_with_ties(np.array([k[0] for k in kept]), np.array([k[1] for k in kept]))
        self.batch_norm = {key: value for key, value, on in zip(keys, kept, front) if on}

    def test_score(self, genome) -> TestScore | None:
        """A pick's test top-1 on the scoring pool, with the statistics its validation scoring kept; None where the
        pool has no such call (Ray's actors), and the export scores it in this process."""
        if not hasattr(self.evaluator, "test_score"):
            return None
        kept = self.batch_norm.get(_genome_key(genome))
        return self.evaluator.test_score(genome, kept[2] if kept else None)

    def close(self) -> None:
        if self.evaluator is not None:
            self.evaluator.close()


def _algorithm(ctx: _Context, cfg: SearchConfig):
    problem = Problem(n_var=ctx.space.n_genes, n_obj=2, n_ieq_constr=1, xl=np.zeros(ctx.space.n_genes),
                      xu=ctx.upper.astype(float), vtype=int)
    kwargs = {}
    if cfg.survival == "jcw":
        kwargs["survival"] = MultiTargetSurvival(latency_targets(ctx.smallest_ms, cfg.largest_budget_ms, cfg.targets))
    algorithm = NSGA2(pop_size=cfg.population, sampling=IntegerRandomSampling(),
                      crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
                      mutation=PM(eta=20, vtype=float, repair=RoundingRepair()), eliminate_duplicates=True, **kwargs)
    algorithm.setup(problem, termination=("n_gen", cfg.generations), seed=cfg.seed, verbose=False)
    return problem, algorithm


def _prepare_out(cfg: SearchConfig) -> RunDir:
    run = RunDir(Path(cfg.out) if cfg.out else Path(cfg.runs_dir) / default_run_name(cfg))
    if cfg.resume:
        if not run.checkpoint.exists():
            raise JcwError(f"--resume: {run} has no checkpoint; start it without --resume")
    elif run.is_started() and not cfg.force:
        raise JcwError(f"output directory {run} already exists; pass --resume to continue it or --force to "
                       "overwrite it")
    return run


def _config_record(cfg: SearchConfig, ctx: _Context, out: RunDir) -> dict:
    return {"options": asdict(cfg), "resolved": {
        "out": str(out.path.resolve()), "supernet": ctx.supernet.path, "supernet_hash": ctx.supernet.hash,
        "predictor": None if ctx.predictor is None else str(cfg.predictor or "default"),
        "smallest_ms": ctx.smallest_ms, "largest_ms": ctx.largest_ms,
        "space": {"model": ctx.space.model, "genes": ctx.space.n_genes, "subnets": str(ctx.space.num_subnets()),
                  "definition": ctx.space.to_dict()}},  # `jcw plot` redraws from it without torch
        "versions": {"jcw": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "pymoo": pymoo.__version__, "ray": version("ray"), "numpy": np.__version__},
        "machine": platform.node(), "table": ctx.table.meta}


def search(cfg: SearchConfig, log=print) -> SearchResult:
    """Run (or resume) a search; return the true-scored Pareto front and where everything went."""
    out = _prepare_out(cfg)
    start = time.perf_counter()
    ctx = _Context(cfg)
    ctx.timings["load"] = time.perf_counter() - start
    try:
        result = _search(cfg, ctx, out, log)
    finally:
        ctx.close()
    ctx.timings["total"] = time.perf_counter() - start
    timings = {k: round(v, 2) for k, v in ctx.timings.items()}
    out.write_config({**_config_record(cfg, ctx, out), "timings_s": timings})
    log("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    return result


def _search(cfg: SearchConfig, ctx: _Context, out: RunDir, log) -> SearchResult:
    if cfg.resume:
        state = out.load_checkpoint()
        problem, algorithm, rows = state["problem"], state["algorithm"], state["rows"]
        log(f"resuming {out} after generation {algorithm.n_gen - 1 if algorithm.n_gen else 0}")
        if ctx.predictor is not None and any(not np.isnan(r["true_top1"]) for r in rows):
            ctx.predictor = _refit(ctx, rows, cfg.seed)
    else:
        out.clear()
        problem, algorithm = _algorithm(ctx, cfg)
        rows = []
    out.write_config(_config_record(cfg, ctx, out))
    for note in (ctx.dense_only_note(), ctx.repair.note() if cfg.genes != "channels" else ""):
        if note:
            log(note)
    if ctx.unconstrained:
        log(f"note: budget {', '.join(map(format_ms, ctx.unconstrained))} constrains nothing: the largest subnet of "
            f"this space takes {ctx.largest_ms:.4g}ms on {cfg.device}; for ImageNet-size networks, whose subnets "
            f"do meet tens of ms, see the README's \"ImageNet-size networks\"")
    budget = cfg.largest_budget_ms
    seen = {tuple(json.loads(r["genome"])) for r in rows}
    t0, saved = time.time(), 0.0  # the first generation is checkpointed at once
    while algorithm.has_next():
        pop = algorithm.ask()
        ctx.repair.do(problem, pop)
        X = np.rint(pop.get("X")).astype(np.int64)
        lat = ctx.bound.latency(X)
        if ctx.predictor is not None:
            with ctx.timed("predictor"):
                top1 = ctx.predictor.predict(X)
        else:
            top1 = ctx.true_top1(X, f"gen {algorithm.n_gen} scoring", "generation scoring")
        Evaluator().eval(StaticProblem(problem, F=objectives(lat, top1),
                                       G=(lat - budget)[:, None]), pop)
        algorithm.tell(infills=pop)
        gen = algorithm.n_gen - 1
        for x, l, t in zip(X, lat, top1):
            if tuple(x) in seen:
                continue
            seen.add(tuple(x))
            rows.append({"id": len(rows), "generation": gen, "latency_ms": float(l),
                         "predicted_top1": float(t) if ctx.predictor is not None else np.nan,
                         "true_top1": np.nan if ctx.predictor is not None else float(t),
                         "genome": json.dumps([int(v) for v in x])})
        refined = ctx.predictor is not None and cfg.refine and gen % cfg.refine_every == 0 and algorithm.has_next()
        if refined:
            _refine(cfg, ctx, problem, algorithm, rows, gen, log)
        if refined or time.time() - saved >= CHECKPOINT_EVERY_S or not algorithm.has_next():
            with ctx.timed("checkpoints"):
                out.save_checkpoint({"problem": problem, "algorithm": algorithm, "rows": rows})
            saved = time.time()
        _progress_line(log, gen, cfg, rows, ctx.predictor is not None, time.time() - t0)
    ctx.timings["generations"] = time.time() - t0
    history = rescore_front(cfg, ctx, pd.DataFrame(rows))
    with ctx.timed("outputs"):
        return write_outputs(cfg, ctx, out, history)


def objectives(latency: np.ndarray, top1: np.ndarray) -> np.ndarray:
    """What NSGA-II minimises, per genome: latency in ms and top-1 error in points."""
    return np.stack([latency, 100 - top1], axis=1)


def _refine(cfg: SearchConfig, ctx: _Context, problem, algorithm, rows: list[dict], gen: int, log) -> None:
    """Score up to cfg.refine unscored members of the predicted front, refit the predictor, re-price everything."""
    frame = pd.DataFrame(rows)
    lat, predicted = frame["latency_ms"].to_numpy(), frame["predicted_top1"].to_numpy()
    candidates = np.flatnonzero((lat <= cfg.largest_budget_ms) & frame["true_top1"].isna().to_numpy())
    if not len(candidates):
        return
    picks = spread_front(lat, predicted, candidates, cfg.refine)
    true = ctx.true_top1(genomes_from_column(frame["genome"].iloc[picks]), f"gen {gen} refining the predictor",
                         "refinement scoring")
    for i, t in zip(picks, true):
        rows[i]["true_top1"] = float(t)
    with ctx.timed("refinement refits"):
        ctx.predictor = _refit(ctx, rows, cfg.seed)
    repriced = ctx.predictor.predict(genomes_from_column(frame["genome"]))
    for row, p in zip(rows, repriced):
        row["predicted_top1"] = float(p)
    pop = algorithm.pop
    X = np.rint(pop.get("X")).astype(np.int64)
    pop.set("F", objectives(ctx.bound.latency(X), ctx.predictor.predict(X)))
    algorithm.pop = algorithm.survival.do(problem, pop, n_survive=len(pop), algorithm=algorithm,
                                         random_state=algorithm.random_state)
    log(f"gen {gen:>3}  refined the predictor with {len(picks)} front members, which it had overrated by "
        f"{np.mean(predicted[picks] - true):+.2f} points on average")


def _refit(ctx: _Context, rows: list[dict], seed: int):
    """The shipped predictor refit with every subnet this run has scored so far."""
    scored = [r for r in rows if not np.isnan(r["true_top1"])]
    genomes = genomes_from_column(pd.Series([r["genome"] for r in scored]))
    return refine(ctx.shipped_predictor, genomes, np.array([r["true_top1"] for r in scored]), seed)


def _progress_line(log, gen: int, cfg: SearchConfig, rows: list[dict], predicted: bool, seconds: float) -> None:
    # plain arrays, not a DataFrame of every row: building one each generation took 0.5 s of the README search
    lat = np.array([r["latency_ms"] for r in rows])
    top1 = np.array([r["predicted_top1" if predicted else "true_top1"] for r in rows])
    inside = lat <= cfg.largest_budget_ms
    front = pareto_mask(lat[inside], top1[inside]).sum() if inside.any() else 0
    bests = []
    for b in cfg.budgets_ms:
        ok = lat <= b
        bests.append(f"{format_ms(b)}: {top1[ok].max():.2f}%" if ok.any() else f"{format_ms(b)}: -")
    hv = hypervolume(lat[inside], top1[inside], cfg.largest_budget_ms) if inside.any() else 0.0
    log(f"gen {gen:>3}/{cfg.generations}  front {front:>3}  best {'  '.join(bests)}  HV {hv:.4f}  "
        f"evaluated {len(rows)}  {seconds:.1f}s")
