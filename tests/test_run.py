"""End to end from one search run (`small_run`, made once per session): its front, and export, ONNX, pick, plot,
resume after a kill, and fine-tuning of what it exported."""
import json
import os
import re
import shutil

import numpy as np
import pytest
import pandas as pd
import torch

from jcw.artifacts import default_supernet_path
from jcw.errors import JcwError
from jcw.supernet.supernet import Supernet, SupernetConfig

from conftest import SMALL, SMALL_BUDGETS, jcw, kill_cli_when, one_clear_line


def _dominated(lat: np.ndarray, top: np.ndarray, i: int) -> bool:
    return bool(((lat <= lat[i]) & (top >= top[i]) & ((lat < lat[i]) | (top > top[i]))).any())


def test_front_is_true_top1_within_budget_and_non_dominated(small_run):
    front = pd.read_csv(small_run / "pareto.csv")
    history = pd.read_csv(small_run / "history.csv").set_index("id")
    for col in ("id", "latency_ms", "top1", "predicted_top1", "params", "macs", "mean_density"):
        assert pd.api.types.is_numeric_dtype(front[col]), col
    assert (front["latency_ms"] <= 0.9).all()
    lat, top = front["latency_ms"].to_numpy(), front["top1"].to_numpy()
    assert not any(_dominated(lat, top, i) for i in range(len(front)))
    # every front top-1 is a supernet score of that member recorded in the history, not a prediction
    assert np.allclose(history.loc[front["id"], "true_top1"], front["top1"])
    stdout = (small_run.parent / "stdout.txt").read_text()
    assert "gen  25  refined the predictor with" in stdout  # generation 25 refit the predictor on scored members
    sparse = int((front["mean_density"] < 1).sum())
    assert f"front: {len(front)} members, " in stdout and f"; {sparse} with sparse weights, " in stdout
    summary = pd.read_csv(small_run / "summary.csv")
    assert sorted(summary["budget_ms"]) == [0.5, 0.9]
    assert sorted(int(p.stem) for p in (small_run / "subnets").glob("*.pt")) == sorted(summary["id"])


def test_a_finished_run_is_not_overwritten(small_run):
    before = (small_run / "pareto.csv").read_bytes()
    one_clear_line(jcw("search", "--latency", "0.9ms", "--out", str(small_run), *SMALL), "already exists")
    assert (small_run / "pareto.csv").read_bytes() == before


def test_export_onnx_and_tflite_equal_the_torch_subnet_with_its_zeros(small_run, data, tmp_path):
    import onnx
    import onnxruntime as ort

    from jcw.latency.tflite_runtime import interpreter, run_tflite
    from jcw.supernet.subnet import load_subnet

    front = pd.read_csv(small_run / "pareto.csv")
    member = front.loc[front["mean_density"].idxmin()]  # the sparsest: the default's 1x1 convs share its density
    assert member["mean_density"] < 0.5
    ran = jcw("export", str(small_run), "--id", str(int(member["id"])), "--onnx", "--tflite", "--out",
              str(tmp_path / "x.pt"), check=True)
    assert f"tflite: {tmp_path / 'x.tflite'}" in ran.stdout
    assert "XNNPACK will run 16 of 16 1x1 convs sparse" in ran.stdout
    report = pd.read_csv(tmp_path / "x.xnnpack.csv")
    one_by_one = report["op"] == "1x1 conv"
    assert one_by_one.sum() == 16 and (report[one_by_one]["stored_sparse"] & (report[one_by_one]["xnnpack"] ==
                                                                             "sparse")).all()
    assert (report[~one_by_one]["xnnpack"] == "dense").all()
    model = load_subnet(tmp_path / "x.pt")
    assert model.jcw_metadata["genome"] == json.loads(member["genome"])
    x = next(data.batches("val", 16)).images
    with torch.no_grad():
        expected = model(x).numpy()
    got = ort.InferenceSession(str(tmp_path / "x.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"images": x.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4
    runner = interpreter((tmp_path / "x.tflite").read_bytes())
    got = np.concatenate([run_tflite(runner, x[i:i + 1].numpy()) for i in range(len(x))])
    assert np.abs(got - expected).max() <= 1e-4
    # the weight zeros travel into the ONNX file: as many zero weights as the subnet's masks hold
    zeros = sum(int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, (torch.nn.Conv2d,
                                                                                      torch.nn.Linear)))
    graph = onnx.load(str(tmp_path / "x.onnx")).graph
    onnx_zeros = sum(int((onnx.numpy_helper.to_array(t) == 0).sum()) for t in graph.initializer if len(t.dims) >= 2)
    assert zeros > 1000 and onnx_zeros == zeros


def test_pick_exports_the_best_true_top1_within_each_budget(small_run, tmp_path):
    front = pd.read_csv(small_run / "pareto.csv")
    for budget in (0.9, float(front["latency_ms"].median())):
        within = front[front["latency_ms"] <= budget]
        best = within.loc[within["top1"].idxmax()]
        proc = jcw("pick", str(small_run), "--latency", f"{budget}ms", "--out", str(tmp_path / "p.pt"), check=True)
        assert re.search(r"picked id (\d+)", proc.stdout).group(1) == str(int(best["id"]))
        meta = torch.load(tmp_path / "p.pt", weights_only=True)["metadata"]
        assert meta["id"] == int(best["id"]) and meta["val_top1"] == best["top1"]
    one_clear_line(jcw("pick", str(small_run), "--latency", "1us"), "no front member")


def test_plot_and_page_carry_every_front_id(small_run, supernet, tmp_path):
    from jcw.search.page import FRONT_TRUE, front_page
    from jcw.search.plot import SPARSE_LABEL, front_figure, run_space
    from jcw.search.rundir import RunDir, RunRecord

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    (run / "pareto.png").unlink()
    (run / "pareto.html").unlink()
    # the run keeps its space: redrawing needs neither the supernet file nor torch; older runs rebuild it
    kept = (run / "config.json").read_text()
    assert run_space(RunDir(run).read()) == supernet.space
    config = json.loads(kept)
    config["resolved"]["supernet"] = str(tmp_path / "moved" / "supernet.pt")
    (run / "config.json").write_text(json.dumps(config))
    jcw("plot", str(run), check=True)
    ids = sorted(pd.read_csv(run / "pareto.csv")["id"])
    page = (run / "pareto.html").read_text()
    assert "<script src=" not in page and len(page) > 3_000_000  # plotly.js is inside: no network needed
    fig = front_page(run, supernet.space)
    front = next(t for t in fig.data if t.name == FRONT_TRUE)
    assert sorted(int(t) for t in front.text) == ids
    assert [int(c[0]) for c in front.customdata] == [int(t) for t in front.text]  # each hover names its own point
    # sparse members stand out, on the page and on the png: the small run's front has some (export test above)
    sparse = pd.read_csv(run / "pareto.csv").set_index("id")["mean_density"] < 1
    assert list(front.marker.symbol) == ["diamond-open" if sparse[int(i)] else "circle" for i in front.text]
    assert (run / "pareto.png").stat().st_size > 10_000
    # the png: a readable subset of ids, always the per-budget picks, no two labels overlapping, nothing clipped
    fig = front_figure(run)
    ax = fig.axes[0]
    marked = next(line for line in ax.lines if line.get_label() == SPARSE_LABEL)
    assert sparse.any() and len(marked.get_xdata()) == sparse.sum()
    labels = [t for t in ax.texts if t.get_text().isdigit()]
    picks = set(pd.read_csv(run / "summary.csv")["id"].astype(int))
    written = {int(t.get_text()) for t in labels}
    assert picks <= written <= set(ids) and len(written) <= 12
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in labels]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    history = pd.read_csv(run / "history.csv")
    points = pd.concat([pd.read_csv(run / "pareto.csv")[["latency_ms", "top1"]],
                        history[history["uniform"]][["latency_ms", "true_top1"]].set_axis(["latency_ms", "top1"],
                                                                                          axis=1)])
    assert points["latency_ms"].between(x0, x1).all() and points["top1"].between(y0, y1).all()
    # one subnet's layers, and two runs compared
    member = ids[len(ids) // 2]
    config = json.loads(kept)
    config["resolved"]["space"].pop("definition")  # as runs wrote it before: the CLI rebuilds it from the supernet
    with pytest.raises(JcwError, match="predates kept search spaces"):
        run_space(RunRecord(None, None, config))
    (run / "config.json").write_text(json.dumps(config))
    drawn = jcw("plot", str(run), "--id", str(member), check=True)
    assert (run / f"layers-{member}.png").stat().st_size > 10_000 and f"layers-{member}.png" in drawn.stdout
    jcw("plot", str(run), str(small_run), "--out", str(tmp_path / "both"), check=True)
    assert (tmp_path / "both.png").stat().st_size > 10_000
    both = (tmp_path / "both.html").read_text().replace("\\u002f", "/")  # plotly escapes slashes in its JSON
    assert f'"name":"{run} (joint, pixel4)"' in both and f'"name":"{small_run} (joint, pixel4)"' in both


def test_a_search_killed_outright_takes_its_scoring_processes_along(tmp_path):
    """With the default --workers on this 2-CPU machine a search scores on forked processes; killed outright, as an
    OOM kill does, it must not leave them waiting."""
    args = ["search", "--device", "pixel4", "--latency", "1ms", "--population", "8", "--generations", "6",
            "--refine", "2", "--refine-every", "2", "--rescore", "2", "--calibration-images", "100",
            "--val-images", "200", "--out", str(tmp_path / "run")]
    started = kill_cli_when(*args, line_starts="gen   2  refined")
    if len(os.sched_getaffinity(0)) == 2:
        assert len(started) == 2  # one per CPU, and both gone


@pytest.mark.slow
def test_a_killed_search_resumes_to_the_same_bytes(small_run, tmp_path):
    """Killed mid-generations and resumed, a run ends byte-identical to the uninterrupted one (same seed)."""
    run = tmp_path / "c"
    shutil.copytree(small_run, run)  # a finished run that the next one, forced, starts over
    args = ["search", "--latency", SMALL_BUDGETS, "--out", str(run), *SMALL]
    kill_cli_when(*args, "--force", line_starts="gen  12")  # in the middle of the generations
    assert not any((run / f).exists() for f in ("summary.csv", "pareto.csv", "pareto.html", "history.csv",
                                                "subnets"))
    resumed = jcw(*args, "--resume", check=True)
    assert "resuming" in resumed.stdout
    for name in ("pareto.csv", "history.csv", "summary.csv"):
        assert (run / name).read_bytes() == (small_run / name).read_bytes(), name


def test_a_corrupt_search_checkpoint_is_one_clear_line(small_run, tmp_path):
    run = tmp_path / "c"
    shutil.copytree(small_run, run)
    (run / "checkpoint" / "search.pkl").write_bytes(b"\x80\x04 not a pickle")
    one_clear_line(jcw("search", "--latency", SMALL_BUDGETS, "--out", str(run), *SMALL, "--resume"),
                   "search.pkl is corrupt or from another version", "--force")


@pytest.mark.slow
def test_finetune_resumes_to_the_same_weights(small_run, tmp_path):
    subnet = sorted((small_run / "subnets").glob("*.pt"))[0]
    common = [str(subnet), "--epochs", "2", "--limit-train", "256", "--batch-size", "128", "--val-images", "200",
              "--test-images", "1000"]
    done = jcw("finetune", *common, "--out", str(tmp_path / "full"), check=True)
    reported = re.search(r"test top-1 \(first 1000 images\): ([\d.]+)% before, ([\d.]+)% after", done.stdout)
    before, after = map(float, reported.groups())
    full_log = pd.read_csv(tmp_path / "full" / "finetune_log.csv")
    assert full_log["epoch"].tolist() == [1, 2]
    meta = torch.load(tmp_path / "full" / "subnet.pt", weights_only=True)["metadata"]
    assert (meta["test_top1_before_finetune"], meta["test_top1"]) == (before, after)
    # stopped after its first epoch and resumed, it ends with the uninterrupted run's weights and log
    out = tmp_path / "cut"
    kill_cli_when("finetune", *common, "--out", str(out), line_starts="epoch 1/2", then_exists=out / "checkpoint.pt")
    assert not (out / "subnet.pt").exists()
    # a row logged for an epoch whose checkpoint never came (a worker lost in between) goes when the run resumes
    logged = pd.read_csv(out / "finetune_log.csv").head(1)
    pd.concat([logged, logged.assign(epoch=2)]).to_csv(out / "finetune_log.csv", index=False)
    resumed = jcw("finetune", *common, "--out", str(out), "--resume", check=True)
    assert f"{before:.2f}% before" in resumed.stdout  # the test top-1 before fine-tuning comes from the checkpoint
    pd.testing.assert_frame_equal(pd.read_csv(out / "finetune_log.csv").drop(columns="seconds"),
                                  full_log.drop(columns="seconds"))
    a = torch.load(out / "subnet.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "full" / "subnet.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_distills_from_the_supernet(small_run, tmp_path):
    """Same seed, same batches: only the teacher's soft labels can make the distilled run's loss differ."""
    subnet = sorted((small_run / "subnets").glob("*.pt"))[0]
    common = [str(subnet), "--epochs", "1", "--limit-train", "256", "--batch-size", "128", "--val-images", "200",
              "--test-images", "500"]
    jcw("finetune", *common, "--out", str(tmp_path / "plain"), check=True)
    taught_run = jcw("finetune", *common, "--out", str(tmp_path / "taught"), "--distill-from",
                     str(default_supernet_path()), "--onnx", check=True)
    plain, taught = (pd.read_csv(tmp_path / name / "finetune_log.csv") for name in ("plain", "taught"))
    assert len(plain) == len(taught) == 1
    assert abs(plain["train_loss"][0] - taught["train_loss"][0]) > 1e-3
    config = json.loads((tmp_path / "taught" / "finetune_config.json").read_text())
    assert config["distill_from"] == str(default_supernet_path()) and config["test_images"] == 500
    assert (tmp_path / "taught" / "subnet.pt").is_file()
    # --onnx ships the fine-tuned network, not the one it started from
    import onnxruntime as ort

    from jcw.supernet.subnet import load_subnet

    assert f"onnx: {tmp_path / 'taught' / 'subnet.onnx'}" in taught_run.stdout
    arch = load_subnet(subnet).jcw_arch
    x = torch.randn(4, arch["in_channels"], arch["input_size"], arch["input_size"],
                    generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tuned, start = (load_subnet(f).eval()(x).numpy() for f in (tmp_path / "taught" / "subnet.pt", subnet))
    got = ort.InferenceSession(str(tmp_path / "taught" / "subnet.onnx")).run(None, {"images": x.numpy()})[0]
    assert np.abs(got - tuned).max() <= 1e-4 < np.abs(got - start).max()
    missing = jcw("finetune", *common, "--out", str(tmp_path / "x"), "--distill-from", str(tmp_path / "none.pt"))
    one_clear_line(missing, "none.pt")
    Supernet(SupernetConfig(model="mbv2_tiny", dataset="cifar100", input_size=32, in_channels=3, num_classes=100)
             ).save(tmp_path / "cifar.pt")
    other = jcw("finetune", *common, "--out", str(tmp_path / "y"), "--distill-from", str(tmp_path / "cifar.pt"))
    one_clear_line(other, "cifar100 (100 classes)", "fashion-mnist-rgb (10 classes)")
