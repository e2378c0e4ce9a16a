"""End to end for the commands around a search: supernet training (blocks, resume, ImageFolder data), the latency
table commands on a freshly trained supernet, and the search's gene, survival and evaluator choices."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import OLD_DEFAULT, OLD_DEFAULT_PREDICTOR, jcw, kill_cli_when, one_clear_line, write_imagefolder

TINY_TRAIN = ["--model", "mbv2_tiny", "--epochs", "2", "--limit-train", "256", "--batch-size", "128",
              "--val-images", "500"]


def test_block_training_keeps_blocks_of_four_and_names_the_layers_that_cannot(block_supernet):
    from jcw.supernet.supernet import load_supernet

    stderr = (block_supernet.parent / "stderr.txt").read_text()
    assert "jcw: warning: --block 4:" in stderr and "classifier.1 (10 rows)" in stderr
    net = load_supernet(block_supernet)
    genome = net.space.largest()
    genome[len(net.space.groups):] = net.space.densities.index(0.5)
    net.set_genome(genome)
    modules, checked = dict(net.base.named_modules()), 0
    for name, layer in net.info.weight_layers.items():
        if layer.sparse < 0 or layer.depthwise or name == "classifier.1":
            continue
        w = modules[name].weight.detach()
        rows = w[net.group_order(layer.out_group)] if layer.out_group >= 0 else w
        blocks = (rows != 0).reshape(-1, 4, *w.shape[1:])
        assert torch.equal(blocks.all(1), blocks.any(1)), name  # each block of 4 rows is all kept or all dropped
        checked += 1
    assert checked >= 5


@pytest.mark.slow
def test_supernet_training_killed_and_resumed_ends_with_the_same_weights(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    jcw("supernet", "train", *TINY_TRAIN, "--out", str(full), check=True)
    kill_cli_when("supernet", "train", *TINY_TRAIN, "--out", str(cut), line_starts="epoch 1/2",
                  then_exists=cut / "checkpoint.pt")
    assert (cut / "checkpoint.pt").exists() and not (cut / "supernet.pt").exists()
    one_clear_line(jcw("supernet", "train", *TINY_TRAIN, "--out", str(full)), "already holds", "--resume")
    jcw("supernet", "train", "--out", str(cut), "--resume", check=True)  # the recipe comes from the folder
    a = torch.load(cut / "supernet.pt", weights_only=True)["state_dict"]
    b = torch.load(full / "supernet.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # each epoch's validation recalibrated on the 256 images the run was capped to, not on 2,000
    from jcw.data import supernet_data
    from jcw.supernet.accuracy import score_genome
    from jcw.supernet.supernet import load_supernet

    net = load_supernet(full / "supernet.pt")
    logged = pd.read_csv(full / "train_log.csv")["val_top1_largest"].iloc[-1]
    score = score_genome(net, net.space.largest(), supernet_data(net.config), calibration_images=256, eval_images=500)
    assert logged == round(score.top1, 2)


def test_imagefolder_data_trains_a_supernet_at_its_input_size(tmp_path):
    from jcw.data import load_dataset

    write_imagefolder(tmp_path / "data")
    data = load_dataset("imagefolder", tmp_path / "data", input_size=32)
    assert (data.size("train"), data.size("val"), data.size("test")) == (20, 4, 6)
    batch = next(data.batches("test", 6))
    assert tuple(batch.images.shape) == (6, 3, 32, 32) and sorted(batch.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    one_clear_line(jcw("supernet", "train", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "nothing"),
                       "--out", str(tmp_path / "x")), "train/ and val/")
    # CIFAR goes through torchvision, which checks the real archives' md5: files a test writes are refused, so only
    # the refusal is testable here, and it must say where it looked and how to get the data
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"not cifar")
    one_clear_line(jcw("supernet", "train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--out",
                       str(tmp_path / "y")), f"cifar10 not found under {tmp_path}", "download=True")


@pytest.mark.slow
def test_latency_commands_measure_validate_compare_and_derive(block_supernet, tmp_path):
    sn = str(block_supernet)
    measured = jcw("latency", "measure", "--device", "host-test", "--supernet", sn, "--repeats", "3",
                   "--out-dir", str(tmp_path), check=True)
    assert "entries measured" in measured.stdout
    meta = json.loads((tmp_path / "host-test.json").read_text())
    table = pd.read_csv(tmp_path / "host-test.csv")
    assert meta["source"] == "measured" and "median of 3 timed calls" in meta["made"]["method"]
    assert len(table) > 0 and (table["latency_ms"] > 0).all() and (table["n"] == 3).all()
    report = json.loads(jcw("latency", "validate", "--device", "host-test", "--supernet", sn, "--samples", "3",
                            "--out-dir", str(tmp_path), "--json", check=True).stdout)
    assert report["samples"] == 3 and np.isfinite(report["mape"])
    assert json.loads((tmp_path / "host-test.json").read_text())["error"]["supernet"] == sn  # what the error holds for
    same = json.loads(jcw("latency", "compare", str(tmp_path / "host-test.csv"), str(tmp_path / "host-test.csv"),
                          "--json", check=True).stdout)
    assert same["median_ratio"] == 1.0 and same["mape_pct"] == 0.0 and same["common_entries"] == len(table)
    # --extend: another supernet's missing entries only (here a 3-channel stem), the table's own rows untouched
    from jcw.latency.table import load_table
    from jcw.errors import JcwError
    from jcw.supernet.supernet import Supernet, SupernetConfig, load_supernet

    rgb = tmp_path / "rgb.pt"
    Supernet(SupernetConfig(model="mbv2_tiny", dataset="fashion-mnist-rgb", in_channels=3)).save(rgb)
    with pytest.raises(JcwError, match="only for input channels 1..1, but features.0.0 needs 3..3; measure its layers"):
        load_table(str(tmp_path / "host-test.csv")).bind(load_supernet(rgb).space)
    one_clear_line(jcw("latency", "measure", "--device", "host-test", "--supernet", str(rgb), "--threads", "2",
                       "--extend", "--out-dir", str(tmp_path)), "measured in torch at 1 thread(s)")
    extended = jcw("latency", "measure", "--device", "host-test", "--supernet", str(rgb), "--extend",
                   "--out-dir", str(tmp_path), check=True)
    grown = pd.read_csv(tmp_path / "host-test.csv")
    timed = int(extended.stdout.split(" entries measured")[0].rsplit(" ", 1)[1])
    assert 0 < timed and len(grown) == len(table) + timed and f"{len(grown)} in the table" in extended.stdout
    pd.testing.assert_frame_equal(grown[grown["c_in"] != 3].reset_index(drop=True), table)
    assert (grown[grown["c_in"] == 3]["n"] == 3).sum() == timed  # the new rows, timed as the table was
    assert json.loads((tmp_path / "host-test.json").read_text())["made"]["extended"][0]["entries_timed"] == timed
    load_table(str(tmp_path / "host-test.csv")).bind(load_supernet(rgb).space)
    for extra, needle in ((["--repeats", "5"], "extend it only at its own repeats"), ([], "nothing to extend")):
        one_clear_line(jcw("latency", "measure", "--device", "host-test", "--supernet", str(rgb), "--extend",
                           "--out-dir", str(tmp_path), *extra), needle)
    assert pd.read_csv(tmp_path / "host-test.csv").equals(grown)  # untouched by both
    derived = jcw("latency", "derive", "--device", "pixel4", "--supernet", sn, "--out-dir", str(tmp_path), check=True)
    assert "leave-one-out MAPE" in derived.stdout
    assert json.loads((tmp_path / "pixel4.json").read_text())["source"] == "derived"
    one_clear_line(jcw("latency", "validate", "--device", "pixel4", "--supernet", sn, "--out-dir", str(tmp_path)),
                   "only a table measured on this machine")


TINY_SEARCH = ["--device", "pixel4", "--population", "8", "--generations", "3",
               "--calibration-images", "100", "--val-images", "200", "--workers", "0", "--seed", "2", "--no-export"]


# at full width no subnet is under 2.5 ms on pixel4 with its 1x1 convs dense
@pytest.mark.slow
def test_a_budget_only_the_smallest_uniform_reference_meets_picks_it(supernet, tmp_path):
    """Dense, the narrowest subnet is uniform width at 0.25x: a search that never visits it still scores it as a
    reference, and it is the pick, not "no subnet fits"."""
    jcw("search", *TINY_SEARCH, "--latency", "0.392ms", "--genes", "channels", "--out", str(tmp_path / "r"),
        check=True)
    history = pd.read_csv(tmp_path / "r" / "history.csv")
    pick = pd.read_csv(tmp_path / "r" / "summary.csv").iloc[0]
    chosen = history.set_index("id").loc[int(pick["id"])]
    groups = len(supernet.space.groups)
    genome = json.loads(chosen["genome"])
    assert chosen["uniform"] and genome[:groups] == supernet.space.smallest()[:groups].tolist()
    assert not any(genome[groups:])  # dense
    assert pd.read_csv(tmp_path / "r" / "pareto.csv")["id"].tolist() == [int(pick["id"])]


@pytest.mark.slow
@pytest.mark.parametrize("genes,frozen,budget", [("channels", "density", "0.9ms"), ("density", "channels", "2.5ms")])
def test_genes_option_keeps_the_other_half_of_every_genome_full(genes, frozen, budget, supernet, tmp_path):
    extra = ["--survival", "nsga2", "--evaluator", "supernet"] if genes == "channels" else []
    jcw("search", *TINY_SEARCH, "--latency", budget, "--genes", genes, *extra, "--out", str(tmp_path / "r"), check=True)
    history = pd.read_csv(tmp_path / "r" / "history.csv")
    genomes = np.array([json.loads(g) for g in history["genome"]])
    n_groups = len(supernet.space.groups)
    fixed, free = (genomes[:, n_groups:], genomes[:, :n_groups])
    if frozen == "channels":
        fixed, free = free, fixed
    assert (fixed == 0).all() and free.any()  # gene 0: full width, density 1.0
    if genes == "channels":  # --evaluator supernet: every member's score is a true top-1
        assert history["true_top1"].notna().all()
    else:  # on the first default, whose stem XNNPACK cannot start at, a density-only search has nothing to search
        old = ["--supernet", str(OLD_DEFAULT / "supernet.pt"), "--predictor", str(OLD_DEFAULT_PREDICTOR)]
        one_clear_line(jcw("search", *TINY_SEARCH, *old, "--latency", budget, "--genes", "density", "--out",
                           str(tmp_path / "x")), "--genes density has nothing to search", "3x3 stride-1 conv")
