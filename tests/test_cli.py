"""The `jcw` command's surface: help, answers to bad input, and the commands that need no search run."""
import json

import numpy as np
import pytest

from conftest import ROOT, jcw, one_clear_line, run_cli


def test_help_and_version():
    out = run_cli("--help", check=True).stdout  # a fresh process: the console entry point itself
    for cmd in ("search", "supernet", "predictor", "latency", "export", "pick", "plot", "finetune"):
        assert cmd in out
    assert run_cli("--version", check=True).stdout.startswith("jcw ")
    search = " ".join(run_cli("search", "--help", check=True).stdout.split())
    assert "--rescore RESCORE front members re-scored on the supernet (default: 8)" in search  # from SearchConfig
    assert "--population POPULATION default: 64" in search


@pytest.mark.parametrize("args,needles", [
    (["bogus"], ["invalid choice"]),
    (["search", "--device", "pixel4", "--latency", "1ms", "--frobnicate"], ["unrecognized"]),
    (["search", "--device", "nokia3310", "--latency", "1ms"], ["unknown device", "pixel4"]),
    (["search", "--device", "pixel4", "--latency", "fast"], ["cannot read latency budget"]),
    (["search", "--device", "pixel4", "--latency=-5ms"], ["latency budget"]),
    (["search", "--device", "pixel4", "--latency", "30 parsecs"], ["latency budget"]),
    (["search", "--device", "pixel4", "--latency", ""], ["empty latency budget"]),
    (["search", "--device", "pixel4", "--latency", "1us"], ["least achievable"]),
    (["supernet", "train", "--input", "4", "--out", "/tmp/jcw-x"], ["--input 4", "from 8 to 512 px"]),
    (["supernet", "train", "--densities", "1,0.5,0.7", "--out", "/tmp/jcw-x"], ["densities 1, 0.5, 0.7", "from 1"]),
    (["supernet", "train", "--densities", "0.5,0.2", "--out", "/tmp/jcw-x"],
     ["densities 0.5, 0.2", "dense, the first"]),
    (["supernet", "train", "--random-densities", "xnnpack", "--out", "/tmp/jcw-x"],
     ["XNNPACK runs no layer of mbv2_small sparse", "3-channel images"]),
    (["search", "--device", "pixel4", "--latency", "0.1ms,30ms"], ["budget 0.1ms is below", "least achievable"]),
    (["supernet", "train", "--dataset", "imagefolder", "--data-dir", "/nonexistent", "--out", "/tmp/jcw-x"],
     ["train/ and val/"]),
    (["search", "--device", "pixel4", "--latency", "1ms", "--ray-address", "127.0.0.1:1"], ["does not answer"]),
    (["supernet", "eval", "--genome", "random:many"], ["random:N"]),
    (["supernet", "eval", "--genome", "uniform:2"], ["uniform:R", "(0, 1]"]),
    (["pick", "/nonexistent-run", "--latency", "1ms"], ["not a finished search run"]),
    # counts out of range: a negative one would slice from the end of a split, a zero one divide by it
    (["search", "--device", "pixel4", "--latency", "1ms", "--calibration-images", "-5"],
     ["--calibration-images must be at least 1, not -5"]),
    (["search", "--device", "pixel4", "--latency", "1ms", "--val-images", "0"], ["--val-images must be at least 1"]),
    (["search", "--device", "pixel4", "--latency", "1ms", "--rescore", "-1"], ["--rescore must be at least 0"]),
    (["search", "--device", "pixel4", "--latency", "1ms", "--workers", "-1"], ["--workers must be at least 0"]),
    (["search", "--device", "pixel4", "--latency", "1ms", "--population", "3"], ["--population must be at least 4"]),
    (["supernet", "train", "--batch-size", "0", "--out", "/tmp/jcw-x"], ["--batch-size must be at least 1, not 0"]),
    (["supernet", "train", "--label-smoothing", "2", "--out", "/tmp/jcw-x"],
     ["--label-smoothing must be between 0 and 1, not 2"]),
    (["predictor", "fit", "--samples", "-1", "--out", "/tmp/jcw-x"], ["--samples must be at least 0"]),
    (["predictor", "fit", "--samples", "3", "--out", "/tmp/jcw-x"], ["at least 10 scored subnets", "--samples 3"]),
    (["finetune", "/nonexistent.pt", "--epochs", "0"], ["--epochs must be at least 1"]),
    (["supernet", "eval", "--genome", "largest", "--calibration-images", "-1"],
     ["--calibration-images must be at least 1"]),
    (["supernet", "eval", "--genome", "random:-2"], ["random:N", "1 or more"]),
    (["search", "--device", "pixel4", "--latency", "1ms", "--seed", "-1"], ["--seed must be at least 0, not -1"]),
    (["supernet", "train", "--min-ratio", "3", "--out", "/tmp/jcw-x"], ["--min-ratio must be between 0 and 1"]),
    # a folder that cannot be written, named as the user wrote it (/proc takes no new files, even from root)
    (["search", "--device", "pixel4", "--latency", "1ms", "--out", "/proc/jcw-run"], ["/proc/jcw-run", "No such"]),
    (["latency", "measure", "--device", "host", "--threads", "0", "--out-dir", "/tmp/jcw-x"],
     ["--threads must be at least 1, not 0"]),
])
def test_bad_input_is_one_clear_line(args, needles, tmp_path):
    if "--ray-address" in args:
        args = args + ["--out", str(tmp_path / "r")]
    one_clear_line(jcw(*args), *needles)


def test_a_file_that_cannot_be_written_is_named_as_asked_not_by_its_temporary_twin():
    from jcw.io import write_text

    with pytest.raises(OSError) as raised:
        write_text("/proc/jcw-x.txt", "x")
    assert raised.value.filename == "/proc/jcw-x.txt" and "cannot write here" in str(raised.value)


def test_the_python_api_refuses_the_counts_the_cli_refuses():
    from jcw.config import FinetuneConfig, SearchConfig, TrainConfig
    from jcw.errors import JcwError

    with pytest.raises(JcwError, match="--val-images must be at least 1, not -3"):
        SearchConfig(device="pixel4", budgets_ms=[1.0], val_images=-3)
    with pytest.raises(JcwError, match="--accumulate must be at least 1, not 0"):
        TrainConfig(accumulate=0)
    with pytest.raises(JcwError, match="--limit-train must be at least 0, not -5"):
        FinetuneConfig(limit_train=-5)
    with pytest.raises(JcwError, match="latency budgets"):
        SearchConfig(device="pixel4", budgets_ms=[])
    with pytest.raises(JcwError, match="latency budgets"):
        SearchConfig(device="pixel4", budgets_ms=[float("nan")])
    assert SearchConfig(device="pixel4", budgets_ms=[1.0], val_images=None, workers=None).val_images is None


def test_a_table_that_lacks_a_layer_names_the_command_that_adds_it(monkeypatch):
    """The shipped host-tflite table covers the defaults' stems, not the s2 demo's (28 px, stride 2)."""
    monkeypatch.setattr("jcw.latency.table.other_cpu", lambda *a: "")  # on another CPU it also warns, rightly
    s2 = ROOT / "supernets" / "mbv2_small_s2_fmnist_rgb" / "supernet.pt"
    one_clear_line(jcw("search", "--device", "host-tflite", "--latency", "1ms", "--supernet", str(s2)),
                   "does not cover layer features.0.0",
                   "jcw latency measure --device host-tflite --runtime tflite-xnnpack --supernet S --extend")


def test_a_data_dir_without_the_data_says_why_the_download_failed(tmp_path):
    """A named --data-dir is used alone (never silently swapped for another copy); the failed download is named."""
    proc = jcw("supernet", "eval", "--genome", "smallest", "--data-dir", str(tmp_path))
    one_clear_line(proc, f"Fashion-MNIST not found in {tmp_path}", "downloading it into", "failed (")


def test_corrupt_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x02garbage")
    one_clear_line(jcw("supernet", "eval", "--supernet", str(bad)), "corrupt")
    one_clear_line(jcw("search", "--device", "pixel4", "--latency", "1ms", "--predictor", str(tmp_path),
                       "--out", str(tmp_path / "o")), "predictor")
    one_clear_line(jcw("plot", str(tmp_path)), "not a finished search run")
    (tmp_path / "genomes.json").write_bytes(b"\xff\xfe not json")
    one_clear_line(jcw("supernet", "eval", "--genome", str(tmp_path / "genomes.json")), "JSON list of genomes")


def test_supernet_eval_json_is_the_librarys_score(supernet, data, tmp_path):
    """The command's top-1 for a genome file is what scoring that genome in the library gives."""
    from jcw.supernet.accuracy import score_genome

    genomes = supernet.space.sample(1, np.random.default_rng(4))
    (tmp_path / "g.json").write_text(json.dumps([g.tolist() for g in genomes]))
    rows = json.loads(jcw("supernet", "eval", "--genome", f"smallest,{tmp_path / 'g.json'}", "--split", "val",
                          "--calibration-images", "200", "--json", check=True).stdout)
    assert [r["label"] for r in rows] == ["smallest", "g0"]
    for row, genome in zip(rows[1:], genomes):
        assert row["genome"] == genome.tolist()
        expected = score_genome(supernet, genome, data, "val", 200)
        assert row["top1"] == pytest.approx(expected.top1, abs=0.05) and row["loss"] == pytest.approx(expected.loss,
                                                                                                   abs=1e-3)
    assert rows[0]["genome"] == supernet.space.smallest().tolist()


def test_latency_list_and_predict():
    out = jcw("latency", "list", check=True).stdout
    assert "pixel4" in out and "derived" in out and "prices: Cortex-A76 big core (Snapdragon 855)" in out
    rec = json.loads(jcw("latency", "predict", "--device", "pixel4", "--model", "torchvision:mobilenet_v2",
                         "--json", check=True).stdout)
    # the fit's own estimate of this model (latency_tables/pixel4.json), against nn-Meter's 43.96 ms
    assert rec["latency_ms"] == pytest.approx(44.48, abs=0.05) and rec["source"] == "derived"
    assert "nn-Meter predictions" in rec["loo_on"]  # what the stated error was measured on


def test_a_reader_that_stops_early_gets_no_traceback():
    """`jcw latency list | head -1`: the pipe closes before jcw has written."""
    import subprocess
    import sys

    from conftest import cli_env

    proc = subprocess.Popen([sys.executable, "-m", "jcw.cli", "latency", "list"], cwd=ROOT, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    assert proc.wait(timeout=120) == 141 and proc.stderr.read() == b""


def test_a_budget_the_largest_subnet_meets_is_said_before_the_search_and_kept_in_the_summary(tmp_path):
    import pandas as pd

    ran = jcw("search", "--device", "pixel4", "--latency", "1ms,30ms", "--population", "4", "--generations", "1",
              "--rescore", "0", "--calibration-images", "100", "--val-images", "200", "--workers", "0",
              "--no-export", "--out", str(tmp_path / "r"), check=True)
    lines = ran.stdout.splitlines()
    note = [i for i, l in enumerate(lines) if l.startswith("note: budget 30ms constrains nothing")]
    first_gen = next(i for i, l in enumerate(lines) if l.startswith("gen "))
    assert len(note) == 1 and note[0] < first_gen and "ImageNet-size networks" in lines[note[0]]
    largest = float(lines[note[0]].split("takes ")[1].split("ms")[0])
    assert 1 < largest < 30  # the shipped supernet's largest subnet on a Pixel 4
    summary = pd.read_csv(tmp_path / "r" / "summary.csv")
    assert summary["largest_fits"].tolist() == [False, True]
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["resolved"]["largest_ms"] == pytest.approx(largest, rel=1e-3)


@pytest.mark.skipif(__import__("torch").cuda.is_available(),
                    reason="torch sees a GPU here: --accelerator cuda is valid")
@pytest.mark.parametrize("args", [
    ["supernet", "eval", "--genome", "smallest"],
    ["supernet", "train", "--out", "{tmp}/sn", "--epochs", "1"],
    ["predictor", "fit", "--samples", "10", "--out", "{tmp}/p", "--workers", "0"],
    ["search", "--device", "pixel4", "--latency", "1ms", "--workers", "0", "--out", "{tmp}/run"],
    ["finetune", "{tmp}/subnet.pt"],
])
def test_cuda_without_a_gpu_is_one_clear_line_before_any_work(args, tmp_path):
    """Asking for CUDA where torch sees none stops at once: no silent CPU run, nothing written."""
    proc = jcw(*[a.format(tmp=tmp_path) for a in args], "--accelerator", "cuda")
    one_clear_line(proc, "--accelerator cuda", "no CUDA device")
    assert list(tmp_path.iterdir()) == []
