"""A fitted predictor's report: dataset.csv, report.json and the held-out scatter in report.png."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from jcw.io import atomic_path, write_csv, write_json
from jcw.predictor.predictor import Predictor


def write_report(predictor: Predictor, folder: str | Path, dataset: pd.DataFrame) -> None:
    """dataset.csv, report.json and report.png beside predictor.pt."""
    import matplotlib  # heavy optional plotting: imported only when a report is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    write_csv(folder / "dataset.csv", dataset)
    rep = predictor.report
    write_json(folder / "report.json", {k: v for k, v in rep.items() if k != "held_out_rows"})
    rows = rep["held_out_rows"]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(rows["true"], rows["predicted"], s=12)
    lo, hi = min(rows["true"] + rows["predicted"]), max(rows["true"] + rows["predicted"])
    ax.plot([lo, hi], [lo, hi], color="gray", lw=1)
    m = rep["models"][rep["kept"]]
    ceiling = rep.get("label_noise", {}).get("perfect_predictor_tau")
    ax.set_title(f"{rep['kept']}, each subnet held out once: RMSE {m['rmse']:.2f}, tau {m['kendall_tau']:.3f}"
                 + (f"\n(a perfect predictor: tau {ceiling:.3f} on these {rep['label_noise']['images']}-image labels)"
                    if ceiling else ""), fontsize=9)
    ax.set_xlabel("true validation top-1 (%)")
    ax.set_ylabel("predicted top-1 (%)")
    fig.tight_layout()
    with atomic_path(folder / "report.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
