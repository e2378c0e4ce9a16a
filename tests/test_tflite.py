"""XNNPACK's sparse rules, in the TFLite export and in pricing: what a phone runtime really runs sparse."""
import json

import numpy as np
import pytest
import torch

from conftest import OLD_DEFAULT, ROOT
from jcw.models import create_model
from jcw.models.graph import analyse
from jcw.xnnpack import SPARSE_FRACTION, is_1x1, runs_sparse, sparse_subgraph


def space_of(model: str, size: int, channels: int):
    return analyse(create_model(model, 10, channels), model, size, channels, 10).space


@pytest.fixture(scope="module")
def mobilenet():
    """An untrained MobileNetV2 supernet on 32 px RGB: its stem is the one XNNPACK's sparse subgraph starts at."""
    from jcw.config import SupernetConfig
    from jcw.supernet.supernet import Supernet

    torch.manual_seed(0)
    return Supernet(SupernetConfig(model="mobilenet_v2", input_size=32, in_channels=3, num_classes=10)).eval()


def test_the_sparse_subgraph_runs_from_the_rgb_stride2_stem_to_the_global_pool():
    space = space_of("mobilenet_v2", 32, 3)
    subgraph = sparse_subgraph(space.layers, 3)
    assert [space.layers[i].name for i in subgraph.convs] == [l.name for l in space.layers if is_1x1(l)]
    assert len(subgraph.convs) == 34 and subgraph.reason == ""
    demo = sparse_subgraph(space_of("mbv2_small", 28, 1).layers, 1)
    assert not demo.possible and "3x3 stride-1 conv on 1-channel images" in demo.reason
    # the demo with a stride-2 stem on 3-channel images: every 1x1 conv can run sparse, at the same block resolutions
    small, s2 = space_of("mbv2_small", 28, 1), space_of("mbv2_small_s2", 28, 3)
    ready = sparse_subgraph(s2.layers, 3)
    assert [s2.layers[i].name for i in ready.convs] == [l.name for l in s2.layers if is_1x1(l)] and ready.convs
    assert [(l.name, l.h // l.stride, l.out_group) for l in s2.layers[1:]] == \
        [(l.name, l.h // l.stride, l.out_group) for l in small.layers[1:]]
    resnet = sparse_subgraph(space_of("resnet18", 32, 3).layers, 3)
    assert not resnet.possible and "7x7 stride-2" in resnet.reason
    # a dense 3x3 conv inside the chain breaks the NCHW subgraph
    layers = list(space.layers)
    layers[5] = type(layers[5])(**{**layers[5].__dict__, "kernel": 3, "depthwise": False})
    broken = sparse_subgraph(layers, 3)
    assert not broken.possible and layers[5].name in broken.reason and "dense 3x3 conv" in broken.reason


def test_fashion_mnist_rgb_is_the_same_split_with_the_grey_channel_three_times(data):
    from jcw.data import load_dataset

    rgb = load_dataset("fashion-mnist-rgb")
    assert (rgb.name, rgb.in_channels, rgb.input_size) == ("fashion-mnist-rgb", 3, 28)
    for split in ("train", "val", "test"):  # one channel stored, three served (copied after augmenting, resizing)
        assert torch.equal(rgb.splits[split][1], data.splits[split][1]) and rgb.splits[split][0].shape[1] == 1
    assert torch.allclose(rgb.mean, data.mean.expand(3)) and torch.allclose(rgb.std, data.std.expand(3))
    grey = load_dataset("fashion-mnist", input_size=56)  # not the shared fixture: resized here
    rgb.resize(56)
    for kw in (dict(augment=True, shuffle=True, seed=3), dict(limit=64)):
        x, g = next(rgb.batches("train", 64, **kw)), next(grey.batches("train", 64, **kw))
        assert x.images.shape == (64, 3, 56, 56) and torch.equal(x.labels, g.labels)
        assert all(torch.equal(x.images[:, c], g.images[:, 0]) for c in range(3))


def test_two_thirds_of_the_1x1_weights_counted_together_must_be_zero():
    weights = np.array([300.0, 300.0])  # XNNPACK needs strictly more than two thirds zero
    assert runs_sparse(weights, weights * (1 - SPARSE_FRACTION) - 1).all()
    assert not runs_sparse(weights, weights * (1 - SPARSE_FRACTION)).any()


def export(mobilenet, tmp_path, density_index: int, name: str):
    from jcw.supernet.subnet import export_subnet

    space = mobilenet.space
    genome = space.smallest().copy()
    genome[len(space.groups):] = density_index
    return export_subnet(mobilenet, genome, tmp_path / f"{name}.pt")


def test_tflite_export_stores_sparse_1x1_weights_for_xnnpack_and_matches_torch(mobilenet, tmp_path):
    from jcw.export.tflite import deployable, export_tflite, read_report, summarise
    from jcw.latency.tflite_runtime import convert, densified_convs, interpreter, run_tflite

    space = mobilenet.space
    path = export(mobilenet, tmp_path, space.densities.index(0.2), "sparse")
    tflite, report = export_tflite(path, tmp_path / "sparse.tflite")
    baked, folded, arch = deployable(path)
    x = torch.randn(4, 3, 32, 32)
    runner = interpreter(tflite.read_bytes())
    with torch.no_grad():
        expected = baked(x).numpy()
    got = np.concatenate([run_tflite(runner, x[i:i + 1].numpy()) for i in range(4)])
    assert got.shape == (4, 10) and np.abs(got - expected).max() <= 1e-4
    rows = read_report(report)
    convs = [r for r in rows if r.op == "1x1 conv"]
    assert len(convs) == 34 and all(abs(r.density - 0.2) < 0.01 for r in convs)
    assert all(r.stored_sparse and r.xnnpack == "sparse" for r in convs)
    assert all(r.xnnpack == "dense" for r in rows if r.op != "1x1 conv")
    densified = densified_convs(tflite.read_bytes())
    assert all(any(f"{r.name}/" in name for name in densified) for r in convs)  # a DENSIFY op feeds each
    dense = convert(folded, [(1, 3, 32, 32)], sparse=False)
    assert densified_convs(dense) == [] and tflite.stat().st_size < 0.6 * len(dense)
    assert summarise(rows) == "XNNPACK will run 34 of 34 1x1 convs sparse"


def test_half_dense_1x1_weights_stay_dense_under_xnnpack(mobilenet, tmp_path):
    from jcw.export.tflite import export_tflite, read_report, summarise

    path = export(mobilenet, tmp_path, mobilenet.space.densities.index(0.5), "half")
    _, report = export_tflite(path, tmp_path / "half.tflite")
    rows = read_report(report)
    assert all(r.xnnpack == "dense" for r in rows)
    assert summarise(rows).startswith("XNNPACK will run nothing sparse: the subgraph's 1x1 weights are 50% zero")


@pytest.fixture(scope="module")
def xnnpack_table(mobilenet, tmp_path_factory):
    from jcw.latency.derive import derive_table

    return derive_table("pixel4", [mobilenet.space], out_dir=tmp_path_factory.mktemp("tables")).bind(mobilenet.space)


def with_densities(space, genome, densities):
    """`genome` with the density genes of its 1x1 convs set (one value, or one per 1x1 conv), others dense."""
    g = genome.copy()
    n = len(space.groups)
    g[n:] = 0
    convs = [l for l in space.layers if is_1x1(l)]
    for layer, d in zip(convs, np.broadcast_to(densities, len(convs))):
        g[n + layer.sparse] = space.densities.index(float(d))
    return g


def test_xnnpack_pricing_applies_sparse_1x1_times_only_past_two_thirds_zero(mobilenet, xnnpack_table):
    space, bound = mobilenet.space, xnnpack_table
    base = space.largest()
    dense = bound.latency(base)[0]
    assert bound.runs_sparse(with_densities(space, base, 0.2))[0]
    assert bound.latency(with_densities(space, base, 0.2))[0] < 0.7 * dense
    # half-dense 1x1 weights: the subgraph runs dense, so density buys nothing
    half = with_densities(space, base, 0.5)
    assert not bound.runs_sparse(half)[0] and bound.latency(half)[0] == dense
    one = with_densities(space, base, [0.2] + [1.0] * 33)  # one sparse layer among dense ones: no speed-up
    assert bound.latency(one)[0] == dense
    # counted together, by weights: the 12 largest 1x1 convs at 0.2 and 22 others at 0.9 are 69% zero
    convs = [l for l in space.layers if is_1x1(l)]
    weights = np.array([l.c_in * l.c_out for l in convs], float)
    densities = np.full(34, 0.9)
    densities[np.argsort(-weights)[:12]] = 0.2
    assert densities.mean() > 1 / 3 and (weights * densities).sum() / weights.sum() < 1 / 3
    assert bound.runs_sparse(with_densities(space, base, densities))[0]
    densities[np.argsort(-weights)[10:12]] = 0.9  # 10 of them: 66% zero, short of the threshold
    assert not bound.runs_sparse(with_densities(space, base, densities))[0]
    # one layer at 0.5 among layers at 0.2 runs sparse, and its own density is priced
    mixed = with_densities(space, base, [0.5] + [0.2] * 33)
    assert bound.runs_sparse(mixed)[0]
    all_low = bound.priced_layers(with_densities(space, base, 0.2))[0]
    mixed_ms = bound.priced_layers(mixed)[0]
    first = next(j for j, l in enumerate(space.layers) if is_1x1(l))
    assert all_low[first] < mixed_ms[first] < bound.priced_layers(base)[0][first]
    # the stem and classifier are never sparse under XNNPACK: their density genes leave the genome
    able = bound.sparse_genes()
    assert able.sum() == 34 and not able[space.layers[0].sparse] and not able[-1]


def test_the_search_gives_the_subgraphs_1x1_convs_one_density(mobilenet, xnnpack_table, tiny_supernet):
    from pymoo.core.population import Population

    from jcw.latency.table import load_table
    from jcw.search.repair import XnnpackDensities

    space = mobilenet.space
    genomes = space.sample(20, np.random.default_rng(0))
    pop = Population.new(X=genomes)
    repair = XnnpackDensities(xnnpack_table)
    repair.do(None, pop)
    tied = pop.get("X")
    assert len(repair.genes) == 34  # every 1x1 conv of the subgraph
    sparse = xnnpack_table.runs_sparse(tied)
    assert 0 < sparse.sum() < len(sparse)
    # one density for all, the first gene's where XNNPACK runs it sparse, else dense: no zeros it ignores
    assert (tied[sparse][:, repair.genes] == genomes[sparse][:, repair.genes[:1]]).all()
    assert (tied[~sparse][:, repair.genes] == 0).all()
    others = np.setdiff1d(np.arange(space.n_genes), repair.genes)
    assert np.array_equal(tied[:, others], genomes[:, others])
    # no subgraph, nothing tied: the demo on pixel4
    assert not XnnpackDensities(load_table("pixel4").bind(tiny_supernet.space)).genes


def test_pricing_and_the_tflite_export_agree_on_what_runs_sparse(mobilenet, xnnpack_table, tmp_path):
    from jcw.export.tflite import export_tflite, read_report
    from jcw.supernet.subnet import export_subnet

    space = mobilenet.space
    rng = np.random.default_rng(0)
    priced = []
    for i, densities in enumerate(([0.3] * 17 + [0.5] * 17, [0.2] * 28 + [0.5] * 6)):  # near the threshold
        genome = with_densities(space, space.smallest(), rng.permutation(densities))
        export_subnet(mobilenet, genome, tmp_path / f"{i}.pt")
        _, report = export_tflite(tmp_path / f"{i}.pt", tmp_path / f"{i}.tflite")
        exported = {r.xnnpack for r in read_report(report) if r.op == "1x1 conv"}
        priced.append(bool(xnnpack_table.runs_sparse(genome)[0]))
        assert exported == {"sparse" if priced[-1] else "dense"}
    assert priced == [False, True]


def test_the_demo_space_never_runs_sparse_on_pixel4(tiny_supernet):
    from jcw.latency.table import load_table

    space = tiny_supernet.space
    bound = load_table("pixel4").bind(space)
    assert load_table("pixel4").runtime == "tflite-xnnpack" and not bound.sparse_genes().any()
    # XNNPACK on an AVX host runs zeros dense: the host table prices nothing sparse, so no density gene is live
    assert not load_table("host-tflite").bind(space).sparse_genes().any()
    # torch runs CSR only where its table found that faster: genes of the other layers stay dense
    host = load_table("host").bind(space)
    live = host.sparse_genes()
    assert 0 < live.sum() < len(live)
    for layer, impl in zip(space.layers, host.impl):
        if layer.sparse >= 0:
            assert live[layer.sparse] == (impl != "dense").any()
    genomes = space.sample(100, np.random.default_rng(0))
    dense = genomes.copy()
    dense[:, len(space.groups):] = 0
    assert np.array_equal(bound.latency(genomes), bound.latency(dense))


def test_the_shipped_sparse_ready_supernet_runs_its_1x1_convs_sparse_on_pixel4_past_two_thirds_zero():
    from jcw.latency.table import load_table
    from jcw.search.repair import XnnpackDensities
    from jcw.supernet.supernet import load_supernet

    space = load_supernet(ROOT / "supernets/mbv2_small_s2_fmnist_rgb/supernet.pt").space
    bound = load_table("pixel4").bind(space)  # the shipped table covers its layers
    assert bound.subgraph.possible and len(XnnpackDensities(bound).genes) == 16
    dense = bound.latency(space.largest())[0]
    at = {d: bound.latency(with_densities(space, space.largest(), d))[0] for d in (0.4, 0.3, 0.2)}
    assert at[0.4] == dense > at[0.3] > at[0.2]  # 60% zero buys nothing; 70% does
    # its twin trained with --random-densities xnnpack: the same space, the recipe recorded beside it
    twin = ROOT / "supernets/mbv2_small_s2_fmnist_rgb_xnnpack"
    assert load_supernet(twin / "supernet.pt").space.layers == space.layers
    assert json.loads((twin / "train_config.json").read_text())["train"]["random_densities"] == "xnnpack"
    # and with only the densities XNNPACK runs faster: the table prices them too, down to 0.1
    fine = load_supernet(ROOT / "supernets/mbv2_small_s2_fmnist_rgb_fine/supernet.pt").space
    assert fine.densities == (1.0, 0.3, 0.25, 0.2, 0.15, 0.1) and fine.layers == space.layers
    assert load_table("pixel4").bind(fine).latency(fine.smallest())[0] < bound.latency(space.smallest())[0]


def test_xnnpack_random_densities_train_subnets_as_xnnpack_runs_them(tiny_supernet):
    from dataclasses import replace

    from jcw.accelerator import CPU
    from jcw.config import SupernetConfig, TrainConfig
    from jcw.errors import JcwError
    from jcw.xnnpack import as_xnnpack_runs
    from jcw.supernet.supernet import Supernet
    from jcw.supernet.train import _Sandwich

    net = Supernet(SupernetConfig(model="mbv2_small_s2", in_channels=3))
    space, n = net.space, len(net.space.groups)
    shared = [n + space.layers[i].sparse for i in sparse_subgraph(space.layers, 3).convs]
    sandwich = _Sandwich(net, None, replace(TrainConfig(), random_densities="xnnpack", n_random=3), CPU)
    sandwich.begin_epoch(0)
    draws = []
    for _ in range(20):
        sandwich.begin_step()
        draws += sandwich.subnets[1:]
    draws = np.array(draws)
    assert len(shared) == 16 and (draws[:, shared] == draws[:, shared[:1]]).all()
    others = np.setdiff1d(np.arange(n, space.n_genes), shared)
    assert (draws[:, others] == 0).all() and len(set(draws[:, shared[0]])) > 3 and draws[:, :n].std(0).all()
    assert np.array_equal(sandwich.subnets[0], space.smallest())  # the sandwich's smallest stays as it is
    with pytest.raises(JcwError, match="XNNPACK runs no layer of mbv2_small sparse: its stem is a 3x3 stride-1"):
        as_xnnpack_runs(tiny_supernet.space, tiny_supernet.space.largest()[None])


def test_the_whole_network_ruler_prices_zeros_only_where_xnnpack_runs_them_sparse(supernet):
    """`DeviceModel.module_ms` prices any built network (benchmarks/peers.py's ruler for other pruners' networks too):
    a 1x1 conv's density counts only inside a sparse-enough subgraph, and it agrees with the search's table."""
    from jcw.latency.device_model import fit_device
    from jcw.latency.table import load_table
    from jcw.supernet.slicing import bake_masks, subnet_from_supernet
    from jcw.supernet.supernet import load_supernet

    pixel4 = fit_device("pixel4")
    ready = load_supernet(ROOT / "supernets/mbv2_small_s2_fmnist_rgb/supernet.pt")
    space, bound = ready.space, load_table("pixel4").bind(ready.space)
    genome = space.sample(1, np.random.default_rng(3))[0]

    def price(net, g):
        return pixel4.module_ms(bake_masks(subnet_from_supernet(net, g)[0]), net.config.input_size,
                                net.config.in_channels)

    dense = price(ready, with_densities(space, genome, 1.0))
    assert price(ready, with_densities(space, genome, 0.4)) == pytest.approx(dense)  # 60% zero: XNNPACK runs dense
    sparse = with_densities(space, genome, 0.2)
    assert price(ready, sparse) < 0.9 * dense
    assert price(ready, sparse) == pytest.approx(bound.latency(sparse)[0], rel=0.03)
    # the first default's stem starts no sparse subgraph: its zeros are priced dense; the default's are priced sparse
    first = load_supernet(OLD_DEFAULT / "supernet.pt")
    for net, runs_any_sparse in ((first, False), (supernet, True)):
        zeros = net.space.sample(1, np.random.default_rng(3))[0]
        zeros[len(net.space.groups):] = len(net.space.densities) - 1
        plain = zeros.copy()
        plain[len(net.space.groups):] = 0
        assert (price(net, zeros) < 0.9 * price(net, plain)) == runs_any_sparse
        if not runs_any_sparse:
            assert price(net, zeros) == pytest.approx(price(net, plain))
