import copy

import numpy as np
import pytest
import torch

from jcw.supernet.slicing import subnet_from_supernet
from jcw.models import create_model
from jcw.supernet.accuracy import evaluate, recalibrate_bn
from jcw.supernet.supernet import Supernet, SupernetConfig


def test_kept_fraction_equals_density(tiny_supernet):
    net = tiny_supernet
    rng = np.random.default_rng(3)
    modules = dict(net.base.named_modules())
    for genome in net.space.sample(5, rng):
        net.set_genome(genome)
        dens = net.space.density_values(genome)[0]
        widths = net.space.widths(genome)[0]
        for name, layer in net.info.weight_layers.items():
            if layer.sparse < 0:
                continue
            w = modules[name].weight
            rows = widths[layer.out_group] if layer.out_group >= 0 else layer.c_out
            cols = widths[layer.in_group] if layer.in_group >= 0 else layer.c_in
            kept_slice = rows * cols * w.shape[2] * w.shape[3] if w.dim() == 4 else rows * cols
            assert abs(int((w != 0).sum()) - dens[layer.sparse] * kept_slice) <= 1, name


def test_block_masks_keep_groups_of_four():
    torch.manual_seed(0)
    net = Supernet(SupernetConfig(block=4)).eval()
    genome = net.space.largest()
    genome[len(net.space.groups):] = net.space.densities.index(0.5)
    net.set_genome(genome)
    name = "features.2.conv.0.0"  # a 1x1 expand conv, 96 out channels
    w = dict(net.base.named_modules())[name].weight.detach()
    order = net.group_order(net.info.weight_layers[name].out_group)
    blocks = (w[order] != 0).reshape(-1, 4, *w.shape[1:])
    assert torch.equal(blocks.all(1), blocks.any(1))  # each block of 4 is all kept or all dropped
    assert abs((w != 0).float().mean().item() - 0.5) < 0.02


@pytest.mark.parametrize("name,size,channels", [("mbv2_tiny", 28, 1), ("mbv2_small", 28, 1), ("mobilenet_v2", 64, 3),
                                                ("resnet18", 64, 3), ("resnet50", 64, 3)])
def test_largest_genome_equals_base_network(name, size, channels):
    torch.manual_seed(0)
    cfg = SupernetConfig(model=name, input_size=size, in_channels=channels, num_classes=10)
    net = Supernet(cfg).eval()
    base = create_model(name, 10, channels).eval()
    base.load_state_dict(net.raw_state_dict())
    x = torch.randn(2, channels, size, size)
    net.set_genome(net.space.largest())
    with torch.no_grad():
        assert torch.allclose(net(x), base(x), atol=1e-5)
    # and random genomes build physically smaller subnets of the right shapes
    genome = net.space.sample(1, np.random.default_rng(1))[0]
    small, arch = subnet_from_supernet(net, genome)
    widths = net.space.widths(genome)[0]
    assert arch["widths"] == [int(w) for w in widths]
    with torch.no_grad():
        assert small(x).shape == (2, 10)
    for lname, layer in net.info.weight_layers.items():
        w = small.get_submodule(lname).weight
        if layer.out_group >= 0:
            assert w.shape[0] == widths[layer.out_group]


def test_bn_recalibration_changes_stats_and_helps(supernet, data):
    net = copy.deepcopy(supernet)  # the session's supernet keeps its statistics
    net.set_genome(net.space.largest())
    recalibrate_bn(net, data, 500)
    net.set_genome(net.space.smallest())
    bn = [m for m in net.base.modules() if isinstance(m, torch.nn.BatchNorm2d)][3]
    before_mean = bn.running_mean.clone()
    stale = evaluate(net, data, "val", limit=1000).top1  # the smallest subnet on the largest's statistics
    recalibrate_bn(net, data, 500)
    assert not torch.allclose(before_mean, bn.running_mean)
    fresh = evaluate(net, data, "val", limit=1000).top1
    assert fresh > stale + 1.0


def test_score_genome_on_sliced_subnet_equals_masked_supernet(supernet, data):
    """Scoring slices the subnet out; that must give the masked supernet's own score."""
    from torch.nn.utils import parametrize

    from jcw.supernet.accuracy import score_genome

    genome = supernet.space.sample(1, np.random.default_rng(7))[0]
    sliced = score_genome(supernet, genome, data, calibration_images=500, eval_images=1000)
    state = {k: v.clone() for k, v in supernet.base.state_dict().items() if "running" in k}
    supernet.set_genome(genome)
    with parametrize.cached():
        recalibrate_bn(supernet, data, 500)
        masked = evaluate(supernet, data, "val", limit=1000)
    supernet.base.load_state_dict(state, strict=False)
    assert abs(sliced.top1 - masked.top1) <= 0.1  # at most one image in 1000 flips on float rounding
    assert abs(sliced.loss - masked.loss) < 1e-3


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_sliced_forward_matches_masked_forward_and_gradients(mode):
    """Training runs on sliced subnets: outputs and the shared weights' gradients must equal the masked path's."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    net = Supernet(SupernetConfig()).train(mode == "train").double()  # float32 noise grows through train-mode BN
    x, y = torch.randn(16, 1, 28, 28, dtype=torch.float64), torch.arange(16) % 10
    state = {k: v.clone() for k, v in net.state_dict().items()}
    head = net.info.weight_layers["classifier.1"].in_group
    for genome in [net.space.smallest(), *net.space.sample(2, np.random.default_rng(5))]:
        genome[head] = 0  # full-width head: both paths draw the same dropout mask
        results = []
        for path in ("masked", "sliced"):
            net.load_state_dict(state)  # train-mode passes move running statistics; start both paths equal
            net.zero_grad()
            torch.manual_seed(1)
            if path == "masked":
                net.set_genome(genome)
                out = net(x)
            else:
                out = net.forward_sliced(genome, x)
            F.cross_entropy(out, y).backward()
            results.append((out, {n: p.grad if p.grad is not None else torch.zeros_like(p)
                                  for n, p in net.named_parameters()}))
        (masked, g_masked), (sliced, g_sliced) = results
        assert torch.allclose(masked, sliced, atol=1e-9)
        for n in g_masked:
            assert torch.allclose(g_masked[n], g_sliced[n], atol=1e-9), n


def test_raw_state_dict_round_trips_into_a_parametrized_supernet(tiny_supernet):
    import torch

    from jcw.supernet.supernet import Supernet, SupernetConfig

    torch.manual_seed(1)
    other = Supernet(SupernetConfig())
    other.load_raw_state_dict(tiny_supernet.raw_state_dict())
    mine, theirs = tiny_supernet.raw_state_dict(), other.raw_state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_a_resized_dataset_with_a_larger_validation_split_keeps_the_smaller_splits_images():
    """`--input 56 --val-split 15000`: batches come at 56 px, the split holds every image of the default 5,000 (the
    first of one permutation), training never sees them, and the test set is untouched."""
    import torch

    from jcw.data import load_dataset

    small, large = load_dataset("fashion-mnist-rgb"), load_dataset("fashion-mnist-rgb", input_size=56, val_size=15000)
    assert (large.size("train"), large.size("val"), large.size("test")) == (45000, 15000, 10000)
    assert torch.equal(large.splits["val"][0][:5000], small.splits["val"][0])
    batch = next(large.batches("val", 8))
    assert batch.images.shape == (8, 3, 56, 56)
    # the same images, twice the side: pooled back to 28 px they are near the stored ones (bilinear blurs the edges)
    # and far from the other images of the batch
    pixels = batch.images * large.std[None, :, None, None] + large.mean[None, :, None, None]
    pooled = torch.nn.functional.avg_pool2d(pixels, 2) * 255
    stored = small.splits["val"][0][:8].float()
    assert (pooled - stored).abs().mean() < 10 < (pooled - stored.roll(1, 0)).abs().mean()


def test_a_supernet_folder_loads_the_file_it_holds():
    """`--supernet supernets/NAME` as the folders are listed, or as `jcw supernet train --out` wrote it."""
    from conftest import OLD_DEFAULT
    from jcw.supernet.supernet import load_supernet

    by_folder, by_file = load_supernet(OLD_DEFAULT), load_supernet(OLD_DEFAULT / "supernet.pt")
    assert by_folder.path == str(OLD_DEFAULT / "supernet.pt") and by_folder.hash == by_file.hash
