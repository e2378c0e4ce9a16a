"""Does the density half of the genome pay under a runtime's real sparse rules, and which rule costs the most?

The README search (defaults otherwise) at one budget per table, joint genes against channels only, several seeds:
- pixel4: XNNPACK's rules as they are (`jcw.xnnpack`);
- pixel4 without the stem rule (what-if: any stem starts the sparse subgraph);
- pixel4 without the stem and the two-thirds rules (what-if: every 1x1 conv runs sparse at its own density);
- pixel4-jcw-arm: JCW's own kernel, every conv and linear layer sparse at its density;
- host-tflite: LiteRT with XNNPACK measured on this machine, dense only.
The what-if tables are the pixel4 table with `what_if_relaxed` set in their metadata, written to a temporary folder.
Every pixel4 variant searches under pixel4's budget: their dense prices are equal, so one channels-only front serves
them all. Finished searches are kept in benchmarks/work/xnnpack_rules.jsonl and reused by a rerun.

    python benchmarks/xnnpack_rules.py [--seeds 0 1 2]

Writes its section of benchmarks/RESULTS.md between its markers.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sections import write_section

ROOT = Path(__file__).resolve().parents[1]
# Rows of the protocols that take hours (peers, finetune_density) are committed here as they finish, so that a
# protocol cut off with its machine resumes from a fresh clone; what they rebuild cheaply stays in benchmarks/work.
ROW_CACHES = ROOT / "benchmarks" / "rows"
# Sections 1-5 (benchmarks/run.py) and 10 (this script) measured the first default, whose layers the shipped host
# tables cover; they keep measuring it by path, since the shipped default became the 56 px supernet.
FIRST_DEFAULT = ROOT / "supernets" / "mbv2_small_fmnist" / "supernet.pt"
FIRST_DEFAULT_PREDICTOR = ROOT / "predictors" / "mbv2_small_fmnist"
FIRST_DEFAULT_ARGS = ("--supernet", str(FIRST_DEFAULT), "--predictor", str(FIRST_DEFAULT_PREDICTOR))
sys.path.insert(0, str(ROOT))

from jcw.artifacts import artifact_dir  # noqa: E402
from jcw.latency.table import load_table  # noqa: E402
from jcw.search.archive import hypervolume  # noqa: E402
from jcw.supernet.supernet import load_supernet  # noqa: E402

FLOOR = 80.0


def what_if(folder: Path, name: str, relaxed: list[str]) -> str:
    shipped = artifact_dir("latency_tables")
    shutil.copy(shipped / "pixel4.csv", folder / f"{name}.csv")
    meta = json.loads((shipped / "pixel4.json").read_text())
    meta.update(device=name, what_if_relaxed=relaxed, source="derived (what-if)")
    (folder / f"{name}.json").write_text(json.dumps(meta))
    return str(folder / f"{name}.csv")


def budget(table: str, space) -> float:
    """60% of the way from the smallest subnet to the full network, as benchmarks/run.py's granularity section."""
    bound = load_table(table).bind(space)
    lo, hi = bound.latency(space.smallest())[0], bound.latency(space.largest())[0]
    return float(round(lo + 0.6 * (hi - lo), 4))


def run(table: str, genes: str, seed: int, b: float, extra: tuple[str, ...] = ()) -> dict:
    """One search as a user runs it; `extra` adds options (another supernet and its predictor)."""
    out = Path(tempfile.mkdtemp()) / "run"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jcw.cli", "search", "--device", table, "--latency", f"{b}ms", "--genes",
                    genes, "--seed", str(seed), "--no-export", "--out", str(out), *extra], cwd=ROOT, check=True,
                   capture_output=True)
    front = pd.read_csv(out / "pareto.csv")
    lat, top = front["latency_ms"].to_numpy(), front["top1"].to_numpy()
    best = {f"best@{f:g}B": float(top[lat <= f * b].max()) if (lat <= f * b).any() else float("nan")
            for f in (0.5, 0.75, 1.0)}
    dens = front["mean_density"].to_numpy()
    return {"genes": genes, "seed": seed, "seconds": round(time.perf_counter() - start, 1),
            "hv": hypervolume(lat, top, b, FLOOR), "mean_density": float(dens.mean()), **best}


CACHE = ROOT / "benchmarks" / "work" / "xnnpack_rules.jsonl"


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/rows"],
                           cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return out.stdout.strip() + ("+changes" if dirty else "")


def cached_runs(cache: Path = CACHE) -> dict[tuple, dict]:
    if not cache.exists():
        return {}
    rows = [json.loads(line) for line in cache.read_text().splitlines() if line.strip()]
    return {(r["table"], r["budget_ms"], r["genes"], r["seed"]): r for r in rows}


def cached_run(done: dict[tuple, dict], cache: Path, label: str, table: str, genes: str, seed: int, b: float,
               extra: tuple[str, ...] = ()) -> dict:
    """A search's row from `cache` if it ran before, else run it and append its row there."""
    row = done.get((label, b, genes, seed))
    if row is None:
        row = {"table": label, "budget_ms": b, "commit": commit(), **run(table, genes, seed, b, extra)}
        with cache.open("a") as f:
            f.write(json.dumps(row) + "\n")
    print(row, flush=True)
    return row


def result_table(frame: pd.DataFrame) -> list[str]:
    """Markdown rows: each table and gene set's hypervolume and best picks, mean (sd) over seeds."""
    lines = ["| table | B (ms) | genes | hypervolume | best @0.5B | best @0.75B | best @B | mean density |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (label, genes), g in frame.groupby(["table", "genes"], sort=False):
        cells = [f"{g.hv.mean():.4f} ({g.hv.std():.4f})"] + [f"{g[c].mean():.2f}" for c in
                                                             ("best@0.5B", "best@0.75B", "best@1B")]
        lines.append(f"| {label} | {g.budget_ms.iloc[0]:g} | {genes} | " + " | ".join(cells)
                     + f" | {g.mean_density.mean():.3f} |")
    return lines


def summary_lines(frame: pd.DataFrame, baseline: str) -> list[str]:
    """Each joint front's hypervolume over pixel4's first channels-only front, and where and how long searches ran."""
    channels = frame[(frame.table == "pixel4 (XNNPACK rules)") & (frame.genes == "channels")].hv.mean()
    return ["", f"Joint hypervolume minus {baseline} (mean over seeds): " + "; ".join(
        f"{label} {g.hv.mean() - channels:+.4f}" for label, g in frame[frame.genes == "joint"].groupby(
            "table", sort=False) if not label.startswith("host")) + ".",
            "", f"Search wall time: median {np.median(frame.seconds):.0f} s; searches run at "
            f"{', '.join(sorted(set(frame['commit'])))}."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    space = load_supernet(str(FIRST_DEFAULT)).space
    done = cached_runs()
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp())
    tables = {"pixel4 (XNNPACK rules)": "pixel4",
              "pixel4, no stem rule (what-if)": what_if(folder, "pixel4-nostem", ["stem"]),
              "pixel4, no stem or 2/3 rule (what-if)": what_if(folder, "pixel4-norules", ["stem", "threshold"]),
              "pixel4-jcw-arm (JCW's kernel)": "pixel4-jcw-arm",
              "host-tflite (measured, dense)": "host-tflite"}
    rows = []
    pixel4_budget = budget("pixel4", space)
    for label, table in tables.items():
        b = budget(table, space) if label.startswith("host") else pixel4_budget
        # every pixel4 variant prices dense layers alike, so they share one channels-only front
        genes = ("joint", "channels") if label.startswith(("pixel4 (", "host")) else ("joint",)
        for seed in args.seeds:
            for g in genes:
                rows.append(cached_run(done, CACHE, label, table, g, seed, b, FIRST_DEFAULT_ARGS))
    frame = pd.DataFrame(rows)
    lines = ["## 10. Sparsity under XNNPACK's rules (benchmarks/xnnpack_rules.py)", "",
             f"`jcw search --device T --latency B --genes G --seed N`, defaults otherwise, seeds {args.seeds}, on the "
             "first default supernet (`supernets/mbv2_small_fmnist`: 28 px, 1-channel images, a 3x3 stride-1 stem). B is 60% of the way from the smallest "
             "to the largest subnet on T (for every pixel4 variant, on pixel4). Hypervolume of the true front "
             "against (B, 80%); best true top-1 within 0.5B, 0.75B and B; mean density of the front's sparse "
             "layers. Mean (sd) over seeds. The what-if rows "
             "relax XNNPACK's rules on the pixel4 table to show what each rule costs; the channels-only front is "
             "the same for every pixel4 variant (their dense prices are equal). Where the subgraph can start and the "
             "two-thirds rule holds, the search gives its 1x1 convs one shared density gene (jcw/search/repair.py). "
             "Sections 1-5 were measured before the tables knew their runtime: their pixel4 is today's "
             "pixel4-jcw-arm.", "",
             *result_table(frame), *summary_lines(frame, "pixel4's channels-only front")]
    write_section("xnnpack_rules.py", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
