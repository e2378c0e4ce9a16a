"""`jcw export` and `jcw pick`: a run's front member, by id or as the best within a budget, in deployable form; and
the same forms for any subnet file, such as a fine-tuned one."""
from __future__ import annotations

from pathlib import Path

from jcw.errors import JcwError
from jcw.export.onnx import export_onnx
from jcw.export.tflite import export_tflite
from jcw.search.archive import best_within_budget
from jcw.search.members import export_member
from jcw.search.rundir import RunDir


def export_from_run(run: str | Path, subnet_id: int, out: str | Path | None = None, onnx: bool = False,
                    data_dir: str | None = None, tflite: bool = False) -> dict[str, Path]:
    """Member `subnet_id` as a subnet file (RUN/subnets/ID.pt or `out`) and, with `onnx` or `tflite`, an .onnx or a
    .tflite (with its XNNPACK report, .xnnpack.csv) beside it."""
    return deployable(export_member(run, subnet_id, out=out, data_dir=data_dir), onnx, tflite)


def deployable(subnet: Path, onnx: bool = False, tflite: bool = False) -> dict[str, Path]:
    """The subnet file and, with `onnx` or `tflite`, an .onnx or a .tflite (with its XNNPACK report, .xnnpack.csv)
    beside it."""
    paths = {"subnet": Path(subnet)}
    if onnx:
        paths["onnx"] = export_onnx(paths["subnet"], paths["subnet"].with_suffix(".onnx"))
    if tflite:
        paths["tflite"], paths["xnnpack report"] = export_tflite(paths["subnet"],
                                                                 paths["subnet"].with_suffix(".tflite"))
    return paths


def pick(run: str | Path, budget_ms: float, out: str | Path | None = None, onnx: bool = False,
         data_dir: str | None = None, tflite: bool = False) -> tuple[dict, dict[str, Path]]:
    """Export the front member with the best true top-1 within `budget_ms`; return its row and the paths."""
    pareto = RunDir(run).read().pareto
    best = best_within_budget(pareto, budget_ms)
    if best is None:
        raise JcwError(f"no front member of {run} is within {budget_ms:g}ms; the fastest takes "
                       f"{pareto['latency_ms'].min():.4g}ms")
    return best.to_dict(), export_from_run(run, int(best["id"]), out, onnx, data_dir, tflite)
