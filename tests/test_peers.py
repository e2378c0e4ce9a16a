"""benchmarks/peers.py's pruning step and fine-tune on the shipped supernet, cut to seconds, so the script cannot rot."""
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
