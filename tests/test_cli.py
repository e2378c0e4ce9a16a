"""End-to-end: the real `jcw` command on small settings, and its answers to bad input."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import ROOT, run_cli

SMALL = ["--device", "pixel4", "--population", "16", "--generations", "30", "--rescore", "4",
         "--calibration-images", "250", "--val-images", "500", "--workers", "0", "--seed", "1"]


def one_clear_line(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_help_and_version():
    out = run_cli("--help", check=True).stdout
    for cmd in ("search", "supernet", "predictor", "latency", "export", "pick", "plot", "finetune"):
        assert cmd in out
    assert run_cli("--version", check=True).stdout.startswith("jcw ")


@pytest.mark.parametrize("args,needles", [
    (["bogus"], ["invalid choice"]),
    (["search", "--device", "pixel4", "--latency", "1ms", "--frobnicate"], ["unrecognized"]),
    (["search", "--device", "nokia3310", "--latency", "1ms"], ["unknown device", "pixel4"]),
    (["search", "--device", "pixel4", "--latency", "fast"], ["cannot read latency budget"]),
    (["search", "--device", "pixel4", "--latency=-5ms"], ["latency budget"]),
    (["search", "--device", "pixel4", "--latency", "30 parsecs"], ["latency budget"]),
    (["search", "--device", "pixel4", "--latency", ""], ["empty latency budget"]),
    (["search", "--device", "pixel4", "--latency", "1us"], ["least achievable"]),
    (["supernet", "train", "--dataset", "imagefolder", "--data-dir", "/nonexistent", "--out", "/tmp/jcw-x"],
     ["train/ and val/"]),
    (["search", "--device", "pixel4", "--latency", "1ms", "--ray-address", "127.0.0.1:1"], ["does not answer"]),
])
def test_bad_input_is_one_clear_line(args, needles, tmp_path):
    if "--ray-address" in args:
        args = args + ["--out", str(tmp_path / "r")]
    one_clear_line(run_cli(*args, timeout=300), *needles)


def test_corrupt_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x02garbage")
    one_clear_line(run_cli("supernet", "eval", "--supernet", str(bad)), "corrupt")
    one_clear_line(run_cli("search", "--device", "pixel4", "--latency", "1ms", "--predictor", str(tmp_path),
                           "--out", str(tmp_path / "o")), "predictor")
    one_clear_line(run_cli("plot", str(tmp_path)), "not a finished search run")


def test_search_end_to_end_then_export_pick_finetune(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("search", "--latency", "0.5ms,0.9ms", "--out", str(out), *SMALL, check=True)
    assert "pareto:" in proc.stdout and "plot:" in proc.stdout
    front = pd.read_csv(out / "pareto.csv")
    for col in ("id", "latency_ms", "top1", "predicted_top1", "params", "macs", "mean_density"):
        assert pd.api.types.is_numeric_dtype(front[col]), col
    assert (front["latency_ms"] <= 0.9).all()
    lat, top = front["latency_ms"].to_numpy(), front["top1"].to_numpy()
    for i in range(len(front)):  # mutually non-dominated
        assert not ((lat <= lat[i]) & (top >= top[i]) & ((lat < lat[i]) | (top > top[i]))).any()
    history = pd.read_csv(out / "history.csv")
    assert set(front["id"]) <= set(history["id"])
    # generation 20 scored part of the predicted front and refit the predictor with it
    assert "gen  20  refined the predictor with" in proc.stdout
    assert history.loc[history["generation"] <= 20, "true_top1"].notna().sum() >= 1
    assert (out / "pareto.png").stat().st_size > 10_000
    assert len(list((out / "subnets").glob("*.pt"))) >= 1
    # the output folder is not overwritten without --resume or --force
    one_clear_line(run_cli("search", "--latency", "0.9ms", "--out", str(out), *SMALL), "already exists")
    # export by id (with ONNX) and pick by budget
    first = int(front["id"].iloc[-1])
    run_cli("export", str(out), "--id", str(first), "--onnx", "--out", str(tmp_path / "x.pt"), check=True)
    assert (tmp_path / "x.onnx").exists()
    proc = run_cli("pick", str(out), "--latency", "0.9ms", "--out", str(tmp_path / "p.pt"), check=True)
    assert "picked id" in proc.stdout
    proc = run_cli("finetune", str(tmp_path / "p.pt"), "--epochs", "1", "--limit-train", "2048",
                   "--out", str(tmp_path / "ft"), check=True)
    assert "test top-1" in proc.stdout and (tmp_path / "ft" / "finetune_log.csv").exists()
    one_clear_line(run_cli("pick", str(out), "--latency", "1us"), "no front member")


def test_same_seed_same_bytes_and_resume_after_sigkill(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    args = ["--latency", "0.9ms", *SMALL, "--generations", "60", "--no-export"]
    run_cli("search", "--out", str(a), *args, check=True)
    run_cli("search", "--out", str(b), *args, check=True)
    assert (a / "pareto.csv").read_bytes() == (b / "pareto.csv").read_bytes()
    shutil.copytree(a, c)  # a finished run that the next one, forced, starts over
    (c / "subnets").mkdir()
    (c / "subnets" / "1.pt").write_bytes(b"")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "jcw.cli", "search", "--out", str(c), *args, "--force"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    for line in proc.stdout:  # kill it in the middle of the generations
        if line.startswith("gen  20") or time.time() > deadline:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not any((c / f).exists() for f in ("summary.csv", "pareto.csv", "pareto.html", "history.csv", "subnets"))
    resumed = run_cli("search", "--out", str(c), *args, "--resume", check=True)
    assert "resuming" in resumed.stdout
    assert (a / "pareto.csv").read_bytes() == (c / "pareto.csv").read_bytes()


def test_supernet_eval_json():
    proc = run_cli("supernet", "eval", "--genome", "largest,smallest", "--split", "val", "--calibration-images",
                   "500", "--json", check=True)
    rows = json.loads(proc.stdout)
    assert [set(r) >= {"genome", "channels", "densities", "top1", "loss"} for r in rows] == [True, True]
    assert rows[0]["top1"] > rows[1]["top1"]


def test_predictor_fit_then_refit_and_grow_from_its_scores(tmp_path):
    fit = ["predictor", "fit", "--calibration-images", "250", "--val-images", "500", "--workers", "0"]
    proc = run_cli(*fit, "--samples", "16", "--out", str(tmp_path / "p"), check=True)
    assert "kept:" in proc.stdout
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    scored = pd.read_csv(tmp_path / "p" / "dataset.csv")
    assert len(scored) == report["samples"] == 16 and scored["top1"].between(10, 100).all()
    # Refitting from the saved scores skips scoring and gives the same predictor.
    run_cli(*fit, "--scored", str(tmp_path / "p" / "dataset.csv"), "--out", str(tmp_path / "q"), check=True)
    assert json.loads((tmp_path / "q" / "report.json").read_text()) == report
    # Growing them keeps every scored row and adds only new subnets.
    run_cli(*fit, "--scored", str(tmp_path / "p" / "dataset.csv"), "--samples", "6", "--seed", "1",
            "--out", str(tmp_path / "g"), check=True)
    grown = pd.read_csv(tmp_path / "g" / "dataset.csv")
    assert 16 < len(grown) <= 22 and grown["genome"].is_unique
    pd.testing.assert_frame_equal(grown.iloc[:16], scored)
    one_clear_line(run_cli(*fit, "--out", str(tmp_path / "p")), "--force")
    scored.assign(supernet_hash="0123456789abcdef").to_csv(tmp_path / "other.csv", index=False)
    one_clear_line(run_cli(*fit, "--scored", str(tmp_path / "other.csv"), "--out", str(tmp_path / "r")),
                   "scored on supernet 0123456789abcdef")
    one_clear_line(run_cli(*fit, "--samples", "-1", "--out", str(tmp_path / "r")), "--samples")



def test_a_killed_predictor_fit_resumes_from_its_checkpointed_scores(tmp_path):
    out = tmp_path / "p"
    args = ["predictor", "fit", "--calibration-images", "250", "--val-images", "500", "--workers", "0",
            "--samples", "40", "--out", str(out)]
    partial = out / "scoring.partial.csv"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "jcw.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    try:
        while not (partial.exists() and len(pd.read_csv(partial)) >= 3):  # stop it once a few are checkpointed
            assert proc.poll() is None and time.time() < deadline, "the fit ended before it could be stopped"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "predictor.pt").exists()
    kept = pd.read_csv(partial)
    assert 3 <= len(kept) < 40
    # Mark one checkpointed score: the resumed fit must take it as it is rather than score that subnet again.
    kept.loc[0, "top1"] = 12.5
    kept.to_csv(partial, index=False)
    done = run_cli(*args, check=True)
    assert f"resuming: {len(kept)} of 40 subnets already scored" in done.stderr
    scored = pd.read_csv(out / "dataset.csv").set_index("genome")
    assert len(scored) == 40 and scored.loc[kept.loc[0, "genome"], "top1"] == 12.5
    assert scored.loc[kept["genome"][1:], "top1"].tolist() == kept["top1"][1:].tolist()
    assert not partial.exists()

def test_latency_list_and_predict():
    out = run_cli("latency", "list", check=True).stdout
    assert "pixel4" in out and "derived" in out
    rec = json.loads(run_cli("latency", "predict", "--device", "pixel4", "--model", "torchvision:mobilenet_v2",
                             "--json", check=True).stdout)
    assert 35 < rec["latency_ms"] < 55


def test_supernet_train_resumes_an_interrupted_run_with_its_own_recipe(tmp_path):
    out = tmp_path / "sn"
    args = ["supernet", "train", "--model", "mbv2_tiny", "--limit-train", "256", "--batch-size", "128", "--out",
            str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "jcw.cli", *args, "--epochs", "3", "--weight-decay", "1e-4"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:  # stop it once the first epoch's checkpoint is written
        if line.startswith("epoch 1/3"):
            deadline = time.time() + 60
            while not (out / "checkpoint.pt").exists() and time.time() < deadline:
                time.sleep(0.2)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert not (out / "supernet.pt").exists()
    # resuming with other flags continues the recipe the run started with
    done = run_cli(*args, "--epochs", "9", "--weight-decay", "0", "--resume", check=True)
    assert "epoch 3/3" in done.stdout and "epoch 1/3" not in done.stdout
    assert json.loads((out / "train_config.json").read_text())["train"]["weight_decay"] == 1e-4
    log = pd.read_csv(out / "train_log.csv")
    assert log["epoch"].tolist() == [1, 2, 3] and log["val_top1_smallest"].notna().all()
    assert (out / "supernet.pt").exists()
