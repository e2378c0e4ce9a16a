"""224 px end to end, as a user with their own classes runs it: an ImageNet-layout folder and a weights file, then
supernet training, a pixel4 table, a predictor, a 30 ms search, pick, ONNX export and fine-tuning, all via the CLI."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision.models as tvm

from conftest import jcw, one_clear_line, write_imagefolder


@pytest.mark.slow
def test_mobilenet_v2_at_224px_from_a_weights_file_to_a_finetuned_30ms_subnet(tmp_path):
    import onnxruntime as ort

    from jcw.data import load_dataset
    from jcw.supernet.subnet import load_subnet

    data = write_imagefolder(tmp_path / "data", classes=3, per_class=12)
    torch.manual_seed(1)
    torch.save(tvm.mobilenet_v2(weights=None).state_dict(), tmp_path / "imagenet.pt")  # 1000 classes
    sn, d = tmp_path / "sn", ["--data-dir", str(data)]
    train = ["supernet", "train", "--model", "mobilenet_v2", "--dataset", "imagefolder", *d, "--epochs", "1",
             "--batch-size", "8", "--n-random", "0"]
    ran = jcw(*train, "--weights", str(tmp_path / "imagenet.pt"), "--out", str(sn), check=True)
    replaced = [line for line in ran.stderr.splitlines() if "replaced" in line]
    assert len(replaced) == 1 and "classifier.1.weight, classifier.1.bias" in replaced[0]
    assert "-> (3, 1280)" in replaced[0]
    config = torch.load(sn / "supernet.pt", weights_only=True)["config"]
    assert (config["input_size"], config["num_classes"], config["weights"]) == (224, 3, str(tmp_path / "imagenet.pt"))

    jcw("latency", "derive", "--device", "pixel4", "--supernet", str(sn / "supernet.pt"), "--out-dir",
        str(tmp_path / "tables"), check=True)
    table = str(tmp_path / "tables" / "pixel4.csv")
    jcw("predictor", "fit", "--supernet", str(sn / "supernet.pt"), "--out", str(tmp_path / "pred"), *d,
        "--samples", "12", "--calibration-images", "8", "--workers", "0", check=True)
    # the fit kept which validation images each subnet got right, and the ceiling they put on any predictor's tau
    noise = json.loads((tmp_path / "pred" / "report.json").read_text())["label_noise"]
    scored = pd.read_csv(tmp_path / "pred" / "dataset.csv")
    with np.load(tmp_path / "pred" / "correct.npz") as labels:
        assert labels["bits"].shape[0] == len(scored) == noise["subnets"] and int(labels["images"]) == noise["images"]
    assert noise["perfect_predictor_tau"] is None or -1 <= noise["perfect_predictor_tau"] <= 1
    assert noise["images"] == 7 and noise["top1_sd_points"] >= 0  # 36 training images: a fifth of them
    run = tmp_path / "run"
    jcw("search", "--device", table, "--latency", "30ms", "--supernet", str(sn / "supernet.pt"), "--predictor",
        str(tmp_path / "pred"), *d, "--population", "8", "--generations", "2", "--rescore", "2",
        "--calibration-images", "8", "--workers", "0", "--no-export", "--out", str(run), check=True)
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    assert resolved["smallest_ms"] < 30 < resolved["largest_ms"]  # a 224 px space spans a 30 ms Pixel 4 budget
    history = pd.read_csv(run / "history.csv")
    assert history["latency_ms"].min() < 30 < history["latency_ms"].max()
    assert pd.read_csv(run / "summary.csv")["largest_fits"].tolist() == [False]

    picked = jcw("pick", str(run), "--latency", "30ms", *d, "--out", str(tmp_path / "picked.pt"), check=True)
    assert float(picked.stdout.split("ms, top-1")[0].rsplit(": ", 1)[1]) <= 30
    member = int(picked.stdout.split("picked id ")[1].split(":")[0])
    jcw("export", str(run), "--id", str(member), "--onnx", *d, "--out", str(tmp_path / "x.pt"), check=True)
    model = load_subnet(tmp_path / "x.pt")
    x = next(load_dataset("imagefolder", data).batches("test", 4)).images
    assert tuple(x.shape) == (4, 3, 224, 224)
    with torch.no_grad():
        expected = model(x).numpy()
    got = ort.InferenceSession(str(tmp_path / "x.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"images": x.numpy()})[0]
    assert got.shape == (4, 3) and np.allclose(got, expected, rtol=1e-5, atol=1e-4)  # logits near 20: float noise

    tuned = jcw("finetune", str(tmp_path / "picked.pt"), *d, "--epochs", "1", "--batch-size", "8",
                "--distill-from", str(sn / "supernet.pt"), "--out", str(tmp_path / "ft"), check=True)
    assert "test top-1:" in tuned.stdout and load_subnet(tmp_path / "ft" / "subnet.pt").jcw_arch["input_size"] == 224

    # a file of another network, or two sources of weights, are refused before any training
    torch.save(tvm.resnet18(weights=None).state_dict(), tmp_path / "r18.pt")
    one_clear_line(jcw(*train, "--weights", str(tmp_path / "r18.pt"), "--out", str(tmp_path / "x")),
                   "does not fit MobileNetV2", "unexpected")
    one_clear_line(jcw(*train, "--weights", str(tmp_path / "imagenet.pt"), "--pretrained", "--out",
                       str(tmp_path / "y")), "pass one")
