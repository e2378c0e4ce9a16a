"""Does the density half of the genome pay under XNNPACK's real rules on a supernet whose stem lets it run sparse?

Section 10 found that the demo supernet (a 3x3 stride-1 stem on grey images) runs nothing sparse on pixel4. This
runs the same comparison on supernets/mbv2_small_s2_fmnist_rgb: the demo architecture with a 3x3 stride-2 stem, on
Fashion-MNIST with its grey channel repeated three times, the stem XNNPACK starts its NCHW subgraph at. Tables:
- pixel4: XNNPACK's rules as they are, joint genes against channels only;
- pixel4 without the two-thirds rule (what-if: every 1x1 conv of the subgraph runs sparse at its own density);
- pixel4-jcw-arm: JCW's own kernel, every conv and linear layer sparse at its density.

    python benchmarks/sparse_ready.py [--seeds 0 1 2]

Finished searches are kept in benchmarks/work/sparse_ready.jsonl and reused by a rerun. Writes its section of
benchmarks/RESULTS.md between its markers.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd
from sections import write_section
from xnnpack_rules import ROOT, budget, cached_run, cached_runs, result_table, summary_lines, what_if

from jcw.supernet.supernet import load_supernet

SUPERNET = "supernets/mbv2_small_s2_fmnist_rgb/supernet.pt"
PREDICTOR = "predictors/mbv2_small_s2_fmnist_rgb"
# the same recipe with `--random-densities xnnpack`: random subnets trained as XNNPACK runs them; then also with
# `--densities 1,0.3,0.25,0.2,0.15,0.1`, only the densities XNNPACK runs faster
TRAINED = {"trained with --random-densities xnnpack": "mbv2_small_s2_fmnist_rgb_xnnpack",
           "trained so, densities 1 and 0.3-0.1": "mbv2_small_s2_fmnist_rgb_fine"}
CACHE = ROOT / "benchmarks" / "work" / "sparse_ready.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    space = load_supernet(ROOT / SUPERNET).space
    done = cached_runs(CACHE)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp())
    tables = {"pixel4 (XNNPACK rules)": ("pixel4", ("joint", "channels")),
              "pixel4, no 2/3 rule (what-if)": (what_if(folder, "pixel4-nothreshold", ["threshold"]), ("joint",)),
              "pixel4-jcw-arm (JCW's kernel)": ("pixel4-jcw-arm", ("joint",))}
    extra = ("--supernet", SUPERNET, "--predictor", PREDICTOR)
    b = budget("pixel4", space)  # every pixel4 variant prices dense layers alike: one budget, one channels-only front
    rows = [cached_run(done, CACHE, label, table, g, seed, b, extra)
            for label, (table, genes) in tables.items() for seed in args.seeds for g in genes]
    for how, name in TRAINED.items():
        if (ROOT / "predictors" / name).exists():
            trained = ("--supernet", f"supernets/{name}/supernet.pt", "--predictor", f"predictors/{name}")
            rows += [cached_run(done, CACHE, f"pixel4 (XNNPACK rules), {how}", "pixel4", g, seed, b, trained)
                     for seed in args.seeds for g in ("joint", "channels")]
    frame = pd.DataFrame(rows)
    lines = ["## 12. Sparsity under XNNPACK's rules, on a supernet XNNPACK can run sparse (benchmarks/sparse_ready.py)",
             "",
             f"`jcw search --device T --latency B --genes G --seed N --supernet {SUPERNET} --predictor {PREDICTOR}`, "
             f"defaults otherwise, seeds {args.seeds}: the demo architecture with a 3x3 stride-2 stem (the first "
             "block's stride moves to the stem, so the blocks see the same resolutions), on Fashion-MNIST with its "
             "grey channel three times (fashion-mnist-rgb). On pixel4 every 1x1 conv is inside XNNPACK's sparse "
             "subgraph and they share one density gene. B is 60% of the way from the smallest to the largest subnet "
             "on pixel4; measures as in section 10, mean (sd) over seeds. Mean density is over all 18 sparse "
             "layers, the stem and the classifier among them, which stay dense on pixel4. The rows 'trained with "
             "--random-densities xnnpack' search supernets/mbv2_small_s2_fmnist_rgb_xnnpack (and its predictor): the "
             "same recipe, with random subnets that draw their densities as XNNPACK runs them (one for the 1x1 convs, "
             "the rest dense). The rows 'trained so, densities 1 and 0.3-0.1' search "
             "supernets/mbv2_small_s2_fmnist_rgb_fine: that recipe with `--densities 1,0.3,0.25,0.2,0.15,0.1`, "
             "only choices past XNNPACK's two-thirds-zero threshold.", "",
             *result_table(frame), *summary_lines(frame, "the first supernet's channels-only front on pixel4")]
    write_section("sparse_ready.py", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
