"""What supernet training costs and how it scales on this machine: one process against Ray Train workers.

    python benchmarks/scale.py [--images 4096] [--repeats 3]

- The demo supernet's recipe (mbv2_small, Fashion-MNIST, batch 256), one epoch of `--images` training images, through
  `jcw supernet train`: 1 process at 1 thread, 1 process at 2 threads, and 2 Ray Train workers of 1 thread each.
  Images/s come from the epoch's own seconds in train_log.csv (Ray start-up and the end-of-epoch scoring excluded);
  threads are as the workers recorded them.
- A 224 px MobileNetV2 supernet on a generated ImageFolder (JPEGs the script writes), 1 process at 2 threads: the
  figure the README's ImageNet cost estimates start from.

Writes its section of benchmarks/RESULTS.md between its markers.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from sections import write_section

ROOT = Path(__file__).resolve().parents[1]


def train(out: Path, *args: str) -> pd.Series:
    """One `jcw supernet train` run; its single epoch's log row."""
    subprocess.run([sys.executable, "-m", "jcw.cli", "supernet", "train", "--out", str(out), "--epochs", "1",
                    "--force", *args], cwd=ROOT, check=True, capture_output=True, env={**os.environ,
                                                                                         "PYTHONPATH": str(ROOT)})
    return pd.read_csv(out / "train_log.csv").iloc[-1]


def write_jpegs(root: Path, classes: int = 3, per_class: int = 40) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 4)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    demo = ["--limit-train", str(args.images), "--val-images", "200"]
    setups = {"1 process, 1 thread": ["--threads", "1"], "1 process, 2 threads": ["--threads", "2"],
              "2 Ray Train workers x 1 thread": ["--workers", "2", "--threads", "1"]}
    rows = []
    for repeat in range(args.repeats):  # interleaved, so drift in the machine's speed hits every setup alike
        for name, extra in setups.items():
            row = train(tmp / "demo", *demo, *extra)
            rows.append({"setup": name, "repeat": repeat, "images_per_s": args.images / row["seconds"],
                         "workers": int(row["workers"]), "threads_per_worker": int(row["threads_per_worker"])})
            print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    rate = frame.groupby("setup", sort=False)["images_per_s"].median()
    base = rate["1 process, 1 thread"]
    table = "\n".join(f"| {name} | {int(frame[frame.setup == name].workers.iloc[0])} x "
                      f"{int(frame[frame.setup == name].threads_per_worker.iloc[0])} | {rate[name]:.0f} | "
                      f"{rate[name] / base:.2f}x |" for name in setups)
    data = write_jpegs(tmp / "jpegs")
    big = train(tmp / "mbv2_224", "--model", "mobilenet_v2", "--dataset", "imagefolder", "--data-dir", str(data),
                "--batch-size", "16", "--limit-train", "96", "--val-images", "12", "--threads", "2")
    big_rate = 96 / big["seconds"]
    text = f"""## 9. Scale: supernet training on Ray Train (benchmarks/scale.py)

{platform.processor() or platform.machine()}, {os.cpu_count()} cores, no GPU. The demo recipe (mbv2_small,
Fashion-MNIST 28 px, batch 256, sandwich rule with 1 random subnet), one epoch of {args.images} images per run,
median of {args.repeats} interleaved runs; images/s from the epoch's own time (train_log.csv), threads as the workers
recorded them.

| setup | workers x threads (recorded) | images/s | vs 1 process at 1 thread |
| --- | --- | --- | --- |
{table}

224 px MobileNetV2 supernet (3 classes, generated JPEGs, batch 16, 1 process at 2 threads, DataLoader with 2
workers): {big_rate:.1f} images/s, so one epoch of ImageNet's 1.28 M training images would take about
{1.28e6 / big_rate / 3600:.0f} hours on this machine (an estimate from {96} images, not a run). No GPU was lent to
measure the CUDA path."""
    print(text)
    write_section("scale.py", text)


if __name__ == "__main__":
    main()
