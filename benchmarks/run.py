"""Regenerate benchmarks/RESULTS.md: granularity, selection, baselines, fidelity, cost.

    python benchmarks/run.py            # the full protocol (3 seeds, 64 x 60 searches; 97 minutes on 2 cores)
    python benchmarks/run.py --quick    # 3 seeds, 32 x 20 searches, shorter fine-tuning (29 minutes on 2 cores)

Everything goes through jcw's API (search, evaluators, export, finetune); nothing here re-implements them.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jcw.data import supernet_data  # noqa: E402
from jcw.supernet.subnet import export_subnet  # noqa: E402
from jcw.finetune import FinetuneConfig, finetune  # noqa: E402
from jcw.latency.table import load_table  # noqa: E402
from jcw.predictor.regression import rank_metrics  # noqa: E402
from jcw.predictor.predictor import load_predictor  # noqa: E402
from jcw.search.archive import genomes_from_column, hypervolume  # noqa: E402
from jcw.accelerator import CPU  # noqa: E402
from jcw.supernet.pool import DataSpec, RayPool, SerialPool  # noqa: E402
from jcw.errors import JcwError  # noqa: E402
from sections import kept_sections  # noqa: E402  (benchmarks/ is this script's folder)
from jcw.search.rundir import RunDir  # noqa: E402
from jcw.search.run import SearchConfig, search  # noqa: E402
from jcw.supernet.supernet import load_supernet  # noqa: E402
from xnnpack_rules import FIRST_DEFAULT, FIRST_DEFAULT_PREDICTOR  # noqa: E402

OUT = ROOT / "benchmarks"
# The phone table of sections 1-3: JCW's own kernel, where the demo's density genes are live. Under XNNPACK's rules
# (pixel4) the demo runs nothing sparse; benchmarks/xnnpack_rules.py measures that, in section 10.
PHONE = "pixel4-jcw-arm"
FLOOR = 80.0  # hypervolume reference accuracy (Fashion-MNIST)
REUSED: list[str] = []  # searches found finished in benchmarks/work with the same options


def budget_for(device: str, net) -> float:
    """60% of the way from the smallest subnet to the full network: a budget where choices matter."""
    bound = load_table(device).bind(net.space)
    lo, hi = bound.latency(net.space.smallest())[0], bound.latency(net.space.largest())[0]
    return float(round(lo + 0.6 * (hi - lo), 4))


def run_search(tag: str, work: Path, net, **kw) -> tuple[pd.DataFrame, float]:
    """The true-scored front of one search and its wall time; a finished run on this supernet with the same options
    is reused."""
    out = work / tag
    done = out / "summary.csv"
    if done.exists():
        record = RunDir(out).read(); pareto, config = record.pareto, record.config
        same = all(config["options"].get(k) == v for k, v in kw.items())
        if same and config["resolved"].get("supernet_hash") == net.hash:
            REUSED.append(tag)
            return pareto, done.stat().st_mtime - (out / "config.json").stat().st_mtime
    cfg = SearchConfig(out=str(out), force=True, export=False, supernet=str(net.path),
                       predictor=str(FIRST_DEFAULT_PREDICTOR), **kw)
    t0 = time.time()
    result = search(cfg, log=lambda s: None)
    return result.pareto, time.time() - t0


def front_stats(pareto: pd.DataFrame, budget: float) -> dict:
    lat, top = pareto["latency_ms"].to_numpy(), pareto["top1"].to_numpy()
    best = {}
    for frac in (0.5, 0.75, 1.0):
        ok = lat <= frac * budget
        best[f"best@{frac:g}B"] = float(top[ok].max()) if ok.any() else float("nan")
    gaps = np.diff(np.sort(np.concatenate([[0.0], lat, [budget]]))) / budget
    return {"hv": hypervolume(lat, top, budget, FLOOR), "members": len(pareto), "max_gap": float(gaps.max()), **best}


def mean_spread(values: list[float]) -> str:
    v = np.array(values, dtype=float)
    return f"{v.mean():.4f} ± {v.std():.4f}" if len(v) > 1 else f"{v[0]:.4f}"


def granularity(net, devices, seeds, gens, pop, rescore, work) -> tuple[str, list, pd.DataFrame]:
    rows, fronts, infeasible = [], [], {}
    for device in devices:
        budget = budget_for(device, net)
        for genes in ("joint", "channels", "density"):
            for seed in seeds:
                try:
                    pareto, secs = run_search(f"gran-{device}-{genes}-{seed}", work, net, device=device,
                                              budgets_ms=[budget], population=pop, generations=gens, seed=seed,
                                              genes=genes, rescore=rescore)
                except JcwError as exc:  # e.g. density alone cannot reach the budget
                    infeasible[(device, genes)] = str(exc)
                    break
                stats = front_stats(pareto, budget)
                rows.append({"device": device, "budget_ms": budget, "genes": genes, "seed": seed,
                             "seconds": secs, **stats})
                fronts.append((device, genes, seed, pareto))
    df = pd.DataFrame(rows)
    lines = ["| device | budget (ms) | genes | hypervolume | best @0.5B | best @0.75B | best @B | front size |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (device, genes), g in df.groupby(["device", "genes"], sort=False):
        lines.append(f"| {device} | {g.budget_ms.iloc[0]:g} | {genes} | {mean_spread(g.hv)} | "
                     f"{g['best@0.5B'].mean():.2f} | {g['best@0.75B'].mean():.2f} | {g['best@1B'].mean():.2f} | "
                     f"{g.members.mean():.1f} |")
    for (device, genes), reason in infeasible.items():
        lines.append(f"| {device} | {budget_for(device, net):g} | {genes} | no feasible subnet: {reason} | | | | |")
    return "\n".join(lines), fronts, df


def selection(net, seeds, gens, pop, rescore, work, joint_runs: dict[int, pd.DataFrame]) -> str:
    """JCW's multi-target survival against plain NSGA-II; the JCW arm is the granularity section's phone joint runs."""
    budget = budget_for(PHONE, net)
    rows = [{"survival": "jcw", "seed": seed, **front_stats(p, budget)} for seed, p in joint_runs.items()]
    for seed in seeds:
        pareto, _ = run_search(f"sel-nsga2-{seed}", work, net, device=PHONE, budgets_ms=[budget], population=pop,
                               generations=gens, seed=seed, survival="nsga2", rescore=rescore)
        rows.append({"survival": "nsga2", "seed": seed, **front_stats(pareto, budget)})
    df = pd.DataFrame(rows)
    lines = ["| selection | hypervolume | largest latency gap (fraction of budget) | best @0.5B | best @B |",
             "| --- | --- | --- | --- | --- |"]
    for survival, g in df.groupby("survival", sort=False):
        lines.append(f"| {survival} | {mean_spread(g.hv)} | {g.max_gap.mean():.3f} | {g['best@0.5B'].mean():.2f} | "
                     f"{g['best@1B'].mean():.2f} |")
    return "\n".join(lines)


def baselines(net, data, joint_front: pd.DataFrame, epochs: int, limit: int, work: Path) -> str:
    """Uniform widths (0.5x, 0.75x, 1.0x) and uniform magnitude pruning vs searched subnets at equal latency."""
    bound = load_table(PHONE).bind(net.space)
    space = net.space
    ratio_genomes = {}
    for label, r in (("uniform 1.0x", 1.0), ("uniform 0.75x", 0.75), ("uniform 0.5x", 0.5)):
        g = np.zeros(space.n_genes, dtype=np.int64)
        for i, grp in enumerate(space.groups):
            g[i] = int(np.argmin([abs(c - r * grp.base) for c in grp.choices]))
        ratio_genomes[label] = g
    target = bound.latency(ratio_genomes["uniform 0.75x"])[0]
    best_mag = None
    for d_idx in range(len(space.densities)):  # full width, one density everywhere, closest below the target
        g = space.largest()
        g[len(space.groups):] = d_idx
        if bound.latency(g)[0] <= target and best_mag is None:
            best_mag = g
    ratio_genomes["magnitude pruning (full width)"] = best_mag if best_mag is not None else space.smallest()
    lines = [f"| subnet | latency (ms, {PHONE}) | test top-1 before | after fine-tuning | searched at ≤ same latency: "
             "before → after |", "| --- | --- | --- | --- | --- |"]
    for label, g in ratio_genomes.items():
        lat = float(bound.latency(g)[0])
        ok = joint_front[joint_front.latency_ms <= lat]
        base = _finetuned(net, data, g, work / f"base-{label.split()[0]}-{lat:.3f}", epochs, limit)
        if ok.empty:
            searched = "no searched subnet that fast"
        else:
            sg = genomes_from_column(ok.loc[[ok.top1.idxmax()], "genome"])[0]
            s = _finetuned(net, data, sg, work / f"searched-{lat:.3f}", epochs, limit)
            searched = f"{s['test_top1_before']:.2f} → {s['test_top1']:.2f} ({float(bound.latency(sg)[0]):.3f} ms)"
        lines.append(f"| {label} | {lat:.3f} | {base['test_top1_before']:.2f} | {base['test_top1']:.2f} | "
                     f"{searched} |")
    lines.append(f"\nFine-tuning budget per subnet: {epochs} epoch(s) on {limit or 'all'} training images, "
                 "same recipe for every row (`jcw.finetune`).")
    return "\n".join(lines)


def _finetuned(net, data, genome, folder: Path, epochs: int, limit: int) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    path = export_subnet(net, genome, folder / "subnet.pt", data=data)
    return finetune(path, FinetuneConfig(epochs=epochs, limit_train=limit), out=folder / "ft", progress=False)


def fidelity(net, joint_front: pd.DataFrame) -> str:
    lines = ["| what | number |", "| --- | --- |"]
    for device in ("host", PHONE):
        try:
            err = load_table(device).meta.get("error", {})
            lines.append(f"| {device} table error ({err.get('kind', '?')}) | MAPE {err.get('mape_pct', 'n/a')}%, "
                         f"{err.get('within_10pct', 'n/a')} within ±10% |")
        except Exception as exc:
            lines.append(f"| {device} table | unavailable ({exc}) |")
    rep = load_predictor(FIRST_DEFAULT_PREDICTOR).report
    m = rep["models"][rep["kept"]]
    lines.append(f"| predictor ({rep['kept']}, {rep['folds']}-fold held-out) | RMSE {m['rmse']:.3f}, Kendall τ "
                 f"{m['kendall_tau']:.3f}, Spearman ρ {m['spearman_rho']:.3f} |")
    f = joint_front.dropna(subset=["predicted_top1"])
    if len(f) > 2:
        r = rank_metrics(f.predicted_top1.to_numpy(), f.top1.to_numpy())
        lines.append(f"| final front, predicted vs true top-1 ({len(f)} members; not held out: refinement refit the "
                     f"predictor on some of these members' scores) | RMSE {r['rmse']:.3f}, "
                     f"Kendall τ {r['kendall_tau']:.3f} |")
    return "\n".join(lines)


def _threads(pool) -> str:
    """Torch threads each scoring process reported for the last batch it scored."""
    return "/".join(str(t) for t in sorted({s["threads"] for s in pool.scored_by}))


def cost(net, search_seconds: float, n_genomes: int) -> str:
    spec = DataSpec()
    warmup = list(net.space.sample(2, np.random.default_rng(1)))  # actor start-up and first-call costs, untimed
    genomes = list(net.space.sample(n_genomes, np.random.default_rng(0)))
    rates = {}
    serial = SerialPool(net, spec, CPU)
    serial.score(warmup)
    t0 = time.time()
    serial.score(genomes)
    rates[f"serial (in-process, {_threads(serial)} torch threads)"] = n_genomes / (time.time() - t0)
    for workers in (1, 2):
        pool = RayPool(net, spec, workers=workers)
        try:
            pool.score(warmup)
            t0 = time.time()
            pool.score(genomes)
            rate = n_genomes / (time.time() - t0)
            used = len({s["worker"] for s in pool.scored_by})  # as the workers reported, not as asked
            rates[f"Ray, {used} worker process(es) of {_threads(pool)} thread(s)"] = rate
        finally:
            pool.close()
    bound = load_table(PHONE).bind(net.space)
    many = net.space.sample(1_000_000, np.random.default_rng(0))
    t0 = time.perf_counter()
    bound.latency(many)
    lookup = 1_000_000 / (time.perf_counter() - t0)
    pred = load_predictor(FIRST_DEFAULT_PREDICTOR)
    t0 = time.perf_counter()
    pred.predict(many[:200_000])
    predict_rate = 200_000 / (time.perf_counter() - t0)
    log = pd.read_csv(Path(net.path).parent / "train_log.csv")
    lines = ["| what | number |", "| --- | --- |",
             f"| search wall time (pop x gens as in Granularity, with re-scoring) | {search_seconds:.0f} s median |"]
    for k, v in rates.items():
        lines.append(f"| scoring throughput, {k} | {v:.2f} genomes/s |")
    # Logged epochs may have shared the CPU with other jobs; the median epoch is the better guide to a clean run.
    lines += [f"| supernet training (first default, {len(log)} epochs, its train_log.csv) | {log.seconds.sum() / 60:.0f} min "
              f"logged; median epoch {log.seconds.median():.0f} s, i.e. about "
              f"{len(log) * log.seconds.median() / 60:.0f} min at that pace |",
              f"| table lookup | {lookup:,.0f} genomes/s |", f"| predictor | {predict_rate:,.0f} genomes/s |"]
    return "\n".join(lines)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    seeds = [0, 1, 2]
    gens, pop, rescore = (20, 32, 10) if args.quick else (60, 64, 30)
    work = OUT / "work"
    net = load_supernet(str(FIRST_DEFAULT))
    data = supernet_data(net.config)
    devices = [PHONE, "host"] if "host" in _devices() else [PHONE]
    t_start = time.time()
    gran_md, fronts, gran_df = granularity(net, devices, seeds, gens, pop, rescore, work)
    joint_runs = {s: p for d, g, s, p in fronts if d == PHONE and g == "joint"}
    joint = joint_runs[seeds[0]]
    _plot_fronts(fronts, OUT / "granularity.png")
    sel_md = selection(net, seeds, gens, pop, rescore, work, joint_runs)
    base_md = baselines(net, data, joint, epochs=1, limit=10_000 if args.quick else 0, work=work)
    fid_md = fidelity(net, joint)
    cost_md = cost(net, float(gran_df.seconds.median()), 8 if args.quick else 20)
    text = f"""# jcw benchmarks

Generated by `python benchmarks/run.py{' --quick' if args.quick else ''}` in {(time.time() - t_start) / 60:.0f} min on
{platform.node()} ({_cpu()}, {torch.get_num_threads()} threads), Python {platform.python_version()}, torch
{torch.__version__}. Supernet: the first default (`{Path(net.path).relative_to(ROOT)}`, Fashion-MNIST at 28 px). Seeds: {seeds}.
{len(REUSED)} searches were reused from `benchmarks/work/` (finished earlier with the same options; their wall times
are those of the original runs). Searches: population {pop} x {gens} generations, predictor-driven, front re-scored on the supernet ({rescore}
members); accuracies are true validation top-1 unless marked test. Hypervolume: area of the true front against
(budget, {FLOOR:g}% top-1), normalised to 0..1. B is the budget.

## 1. Granularity: joint vs channels only vs density only

{gran_md}

![fronts](granularity.png)

## 2. Selection: JCW multi-target vs plain NSGA-II survival ({PHONE}, joint)

{sel_md}

## 3. Baselines at equal latency ({PHONE} table, test top-1)

{base_md}

## 4. Fidelity

{fid_md}

## 5. Cost

{cost_md}
"""
    previous = (OUT / "RESULTS.md").read_text() if (OUT / "RESULTS.md").exists() else ""
    text = text.rstrip() + "\n\n" + kept_sections(previous)  # sections other scripts measure stay
    (OUT / "RESULTS.md").write_text(text)
    print(f"results: {OUT / 'RESULTS.md'}")


def _devices() -> list[str]:
    from jcw.latency.table import known_devices

    return known_devices()


def _cpu() -> str:
    from jcw.latency.cpu import processor_name

    return processor_name()


def _plot_fronts(fronts, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices = sorted({d for d, *_ in fronts})
    fig, axes = plt.subplots(1, len(devices), figsize=(6 * len(devices), 4.5), squeeze=False)
    colors = {"joint": "tab:red", "channels": "tab:blue", "density": "tab:green"}
    for ax, device in zip(axes[0], devices):
        for d, genes, seed, p in fronts:
            if d == device:
                ax.plot(p.latency_ms, p.top1, "o-", ms=3, color=colors[genes], alpha=0.7,
                        label=genes if seed == fronts[0][2] else None)
        ax.set_title(device)
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("validation top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
