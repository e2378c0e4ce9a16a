"""benchmarks/peers.py's pruning step and fine-tune on the shipped supernet, cut to seconds, and its section's goal
arithmetic, so the script cannot rot."""
import sys

import pytest
import torch

from conftest import ROOT


@pytest.fixture(scope="module")
def peers():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import peers
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return peers


@pytest.fixture(scope="module")
def full(supernet, data):
    """The supernet's largest subnet as a plain network: what Torch-Pruning prunes."""
    from jcw.supernet.slicing import bake_masks, subnet_from_supernet
    from jcw.supernet.accuracy import recalibrate_bn

    model = bake_masks(subnet_from_supernet(supernet, supernet.space.largest())[0])
    recalibrate_bn(model, data, 256)
    return model


def test_torch_pruning_fits_the_budget_on_the_shared_ruler(peers, supernet, data, full, tmp_path):
    from jcw.latency.device_model import fit_device

    ruler = peers.Ruler(fit_device("pixel4"), supernet.config.input_size, supernet.config.in_channels)
    full_ms = ruler.ms(full)
    budget = 0.5 * full_ms
    ratio = peers.tp_ratio_within(full, budget, ruler, data, supernet.config.divisor)
    assert 0 < ratio < peers.MAX_RATIO
    model = peers.tp_prune(full, "Taylor", 2, ratio, data, 0, supernet.config.divisor)
    ms = ruler.ms(model)
    assert 0.7 * budget < ms <= budget  # the largest network within the budget, not any network under it
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.out_channels % supernet.config.divisor == 0 for m in convs)
    assert sum(m.out_channels for m in convs) < sum(m.out_channels for m in full.modules()
                                                    if isinstance(m, torch.nn.Conv2d))
    assert peers.host_tflite_ms(model, ruler, repeats=3) > 0
    result = peers.finetuned(model, data, tmp_path / "ft", epochs=1, seed=0, teacher=None, limit_train=256,
                             test_images=200, val_images=200)
    assert 0 < result["test_after"] <= 100 and 0 < result["val_after"] <= 100


def test_the_section_states_each_goal_met_or_missed_by_its_margin(peers):
    """The goals are judged on the best row of each kind (means over seeds), distilled rows aside."""
    import types

    import pandas as pd

    def row(seed, budget, name, top1):
        return {"seed": seed, "budget": budget, "row": name, "fits": True, "test_after": top1, "test_before": 80.0,
                "val_after": top1, "pixel4_ms": 1.0, "host_tflite_ms": 0.1, "full_ms": 3.0, "seconds": 60,
                "commit": "abc1234", "epochs": 3}

    rows = []
    for seed, shift in ((0, 0.0), (1, 0.2)):
        rows += [row(seed, None, "full network (dense)", 93.0 + shift),
                 row(seed, 0.5, "Torch-Pruning L1, one-shot", 91.0 + shift),
                 row(seed, 0.5, "Torch-Pruning Taylor, one-shot", 90.0 + shift),
                 row(seed, 0.5, "Torch-Pruning L1, one-shot + distilled", 95.0),  # not a Torch-Pruning row to beat
                 row(seed, 0.5, "jcw channels", 92.2 + shift), row(seed, 0.5, "jcw joint", 92.9 + shift),
                 row(seed, 0.5, "jcw joint + distilled", 93.5)]
    rows[4].update(id=7, host_tflite_ms=0.1)  # seed 0's jcw rows picked one network: its two host timings
    rows[5].update(id=7, host_tflite_ms=0.11)
    args = types.SimpleNamespace(seeds=[0, 1, 2], budgets=[0.5], epochs=3, supernet="supernets/x/supernet.pt")
    text = peers.section(pd.DataFrame(rows), args)
    assert "the same network, timed in two rows, gave 0.100 and 0.110 ms (at most 10% apart)" in text
    assert "+1.90 points against the best Torch-Pruning row (2 and 2 seeds; goal +1.0: met)" in text
    assert "0.10 points below the full network's fine-tuned top-1 (goal within 0.3: met)" in text
    assert "Both distilled: jcw 93.50, Torch-Pruning 95.00 (-1.50)" in text  # each compared with its own kind
    assert "**Partial:** 14 rows so far, from seed(s) [0, 1] of [0, 1, 2]" in text
    assert "| 50% | jcw joint | 2 of 2 | 1.000 (33%) | 0.105 | 80.00 | **93.00** (0.14) | +1.90 (SE 0.14) |" in text


def test_processes_sharing_the_rows_run_each_row_once(peers, tmp_path):
    """A row another process holds is passed over, then waited for before a seed's best is chosen; a row that
    process finished is read back rather than run again."""
    import json

    protocol = object.__new__(peers.Protocol)  # only what row bookkeeping needs, no supernet
    protocol.cache, protocol.work, protocol.full_ms = tmp_path / "rows.jsonl", tmp_path, 3.0
    protocol.done, protocol.passed_over = {}, []
    protocol.args = type("Args", (), {"epochs": 3})()
    lock = tmp_path / "claims" / "s0-0.5-Torch_Pruning_L1__one_shot"
    with peers.claimed(lock, wait=False) as held:  # another process runs the row
        assert held
        protocol.row(0, 0.5, "Torch-Pruning L1, one-shot", lambda: pytest.fail("ran a row another process holds"))
        assert protocol.passed_over and not protocol.done
        with peers.claimed(lock, wait=False) as again:
            assert not again
        protocol.cache.write_text(json.dumps({"seed": 0, "budget": 0.5, "row": "Torch-Pruning L1, one-shot",
                                              "fits": False, "full_ms": 3.0}) + "\n")
    protocol.wait_for(0)
    assert not protocol.passed_over and protocol.done[(0, 0.5, "Torch-Pruning L1, one-shot")]["fits"] is False
    protocol.row(0, 0.3, "Torch-Pruning L1, one-shot", lambda: None)  # nobody holds it: runs here
    assert len(protocol.cache.read_text().splitlines()) == 2
