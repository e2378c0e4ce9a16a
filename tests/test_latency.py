import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch.nn as nn
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jcw.errors import JcwError
from jcw.latency.table import LatencyTable, interpolate, load_table


def test_interpolation_is_exact_on_multilinear_functions():
    axes = [np.array([8.0, 16, 32]), np.array([8.0, 24]), np.array([0.2, 0.6, 1.0])]
    f = lambda a, b, c: 0.5 + 0.01 * a + 0.02 * b + 0.3 * c + 0.001 * a * b * c
    values = f(*np.meshgrid(*axes, indexing="ij"))
    q = [np.array([12.0, 20]), np.array([8.0, 16]), np.array([0.3, 0.9])]
    got = interpolate(axes, values, q)
    assert np.allclose(got, f(*np.meshgrid(*q, indexing="ij")))


def test_lookup_is_sum_of_layer_entries(tiny_supernet):
    table = load_table("pixel4-jcw-arm")  # a kernel that runs every layer sparse on its own
    bound = table.bind(tiny_supernet.space)
    genomes = tiny_supernet.space.sample(50, np.random.default_rng(0))
    per_layer = bound.layer_latency(genomes)
    assert np.allclose(per_layer.sum(1) + table.overhead_ms, bound.latency(genomes))
    # one layer read back from the CSV: the classifier, at its density
    space = tiny_supernet.space
    j = len(space.layers) - 1
    layer = space.layers[j]
    g = genomes[0]
    c_in = space.widths(g)[0][layer.in_group]
    d = space.density_values(g)[0][layer.sparse]
    e = table.entries
    row = e[(e.kind == "linear") & (e.c_in == c_in) & np.isclose(e.density, d)]
    assert np.isclose(per_layer[0, j], row.latency_ms.iloc[0])


def test_smaller_subnets_are_faster(tiny_supernet):
    bound = load_table("pixel4").bind(tiny_supernet.space)
    space = tiny_supernet.space
    assert bound.latency(space.smallest())[0] < bound.latency(space.largest())[0]


def test_missing_signature_is_named(tiny_supernet, tmp_path):
    table = load_table("pixel4")
    entries = table.entries[~((table.entries.kind == "conv") & (table.entries.h == 7) & (table.entries.kernel == 3))]
    with pytest.raises(JcwError, match=r"conv-7x7-k3-s1-dw"):
        LatencyTable("cut", entries, table.meta).bind(tiny_supernet.space)


def test_unknown_device_lists_known_ones():
    with pytest.raises(JcwError, match="known devices: .*pixel4"):
        load_table("iphone99")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 2000), junk=st.binary(max_size=40))
def test_mangled_tables_fail_clearly(tmp_path, cut, junk):
    from jcw.artifacts import artifact_dir

    src = artifact_dir("latency_tables")
    shutil.copy(src / "pixel4.json", tmp_path / "dev.json")
    text = (src / "pixel4.csv").read_bytes()
    (tmp_path / "dev.csv").write_bytes(text[:cut] + junk)
    try:
        table = load_table("dev", tmp_path)
    except JcwError as exc:
        assert "corrupt" in str(exc) or "incomplete" in str(exc)
    else:  # a cut on a line boundary can leave a valid, smaller table
        assert len(table.entries) >= 1


def test_derived_pixel4_prices_reference_models_within_10pct():
    from jcw.latency.device_model import fit_device, load_whole_models

    model = fit_device("pixel4")
    samples, skipped = load_whole_models("pixel4")
    assert skipped == {}, skipped
    refs = {name: (ops, ms) for name, ops, ms in samples}
    for name in ("torchvision mobilenet_v2@224", "torchvision resnet18@224"):
        ops, ms = refs[name]
        assert abs(model.model_ms(ops) - ms) / ms < 0.10, name
    meta = load_table("pixel4").meta
    assert meta["source"] == "derived" and meta["error"]["mape_pct"] > 0


def test_grouped_convs_are_priced_by_their_own_macs():
    """nn-Meter's integration data gives resnext50_32x4d and wide_resnet50_2 one latency, 1218.8905 ms to the
    digit: wide_resnet50_2's row under both names (11.4 GMACs against resnext50's 4.3). The wide ResNet checks the
    bottleneck pricing against it; resnext50's grouped 3x3 convs must price near resnet50 (4.1 GMACs), not there."""
    from jcw.latency.device_model import predict_model

    ms = {m: predict_model("pixel4", f"torchvision:{m}")["latency_ms"]
          for m in ("resnet50", "resnext50_32x4d", "wide_resnet50_2")}
    assert abs(ms["wide_resnet50_2"] - 1218.8905) / 1218.8905 < 0.10
    assert ms["resnet50"] < ms["resnext50_32x4d"] < 1.5 * ms["resnet50"] < ms["wide_resnet50_2"]



@pytest.mark.parametrize("h, c, c_out, expand, kernel, stride", [(14, 64, 64, 6, 3, 1), (28, 32, 48, 3, 5, 2)])
def test_a_block_costs_the_same_from_its_table_key_and_from_its_module(h, c, c_out, expand, kernel, stride):
    """The block path (public lookup-table keys, the device fits) and the whole-model path (any built network, the
    peers' ruler) share one pricing rule per op: the same block gets the same figure, residual add included."""
    from torchvision.models.mobilenetv2 import InvertedResidual

    from jcw.latency.device_model import block_ops, fit_device
    from jcw.latency.ops import model_ops

    skip = int(stride == 1 and c == c_out)
    key = (f"expanded_conv-input:{h}x{h}x{c}-output:{h // stride}x{h // stride}x{c_out}-expand:{expand}"
           f"-kernel:{kernel}-stride:{stride}-idskip:{skip}")
    block = InvertedResidual(c, c_out, stride, expand)
    dw = block.conv[1][0]  # torchvision's depthwise conv is 3x3: give it the key's kernel
    block.conv[1][0] = nn.Conv2d(dw.in_channels, dw.out_channels, kernel, stride, kernel // 2, groups=dw.groups,
                                 bias=False)
    pixel1 = fit_device("pixel1")
    from_key, from_module = block_ops(key, expand_is_ratio=True), model_ops(block, h, c)
    assert len(from_module) == len(from_key) == 3 + skip
    assert pixel1.model_ms(from_module) == pytest.approx(pixel1.model_ms(from_key), rel=1e-9)

def test_deriving_another_space_keeps_the_models_already_priced(tiny_supernet):
    from jcw.latency.derive import derive_table
    from jcw.supernet.supernet import Supernet, SupernetConfig

    shipped = load_table("pixel4")
    other = Supernet(SupernetConfig(model="resnet18", input_size=32, in_channels=3)).space
    table = derive_table("pixel4", [other])  # not saved: the shipped table stays as it is
    assert set(table.meta["models"]) == set(shipped.meta["models"]) | {"resnet18"}
    assert set(table.meta["input_sizes"]) == set(shipped.meta["input_sizes"]) | {32}
    genomes = tiny_supernet.space.sample(20, np.random.default_rng(0))
    assert np.allclose(table.bind(tiny_supernet.space).latency(genomes),
                       shipped.bind(tiny_supernet.space).latency(genomes))
    assert np.isfinite(table.bind(other).latency(other.sample(20, np.random.default_rng(0)))).all()


def test_spaces_sharing_a_signature_get_one_complete_grid(tiny_supernet):
    from jcw.latency.grid import space_entries
    from jcw.supernet.supernet import Supernet, SupernetConfig

    small = Supernet(SupernetConfig(model="mbv2_small")).space
    entries = space_entries([tiny_supernet.space, small], lambda layer, c_in, c_out, d: (c_in * c_out * d, 0, 1,
                                                                                         "dense"))
    table = LatencyTable(device="toy", entries=entries, meta={"overhead_ms": 0.0})
    for space in (tiny_supernet.space, small):  # both bind: every shared signature has a full product grid
        assert np.isfinite(table.bind(space).latency(space.sample(10, np.random.default_rng(0)))).all()


def test_lookup_rate_is_reported(tiny_supernet):
    """Vectorised pricing of 100k genomes (rate is measured by benchmarks/, never asserted on wall time)."""
    bound = load_table("pixel4").bind(tiny_supernet.space)
    lat = bound.latency(tiny_supernet.space.sample(100_000, np.random.default_rng(0)))
    assert lat.shape == (100_000,) and np.isfinite(lat).all()


def test_sparser_genomes_never_cost_more_and_batches_price_as_singles(tiny_supernet):
    space = tiny_supernet.space
    bound = load_table("pixel4-jcw-arm").bind(space)
    genomes = space.sample(200, np.random.default_rng(3))
    n_groups = len(space.groups)
    sparser = genomes.copy()  # one density step down on every sparse layer (gene 0 is density 1.0)
    sparser[:, n_groups:] = np.minimum(sparser[:, n_groups:] + 1, space.gene_sizes[n_groups:] - 1)
    dense, sparse = bound.latency(genomes), bound.latency(sparser)
    assert (sparse <= dense + 1e-12).all() and (sparse < dense).mean() > 0.9
    assert np.allclose(dense[:20], [bound.latency(g)[0] for g in genomes[:20]], rtol=0, atol=1e-12)


def test_reference_models_that_cannot_be_traced_are_named(tmp_path):
    from jcw.errors import JcwWarning
    from jcw.latency.device_model import load_whole_models, reference_dir

    table = pd.read_csv(reference_dir() / "published_whole_model.csv")
    rows = table[(table.device == "pixel4") & (table.threads == 1)].head(2).copy()
    bogus = rows.iloc[:1].assign(model="torchvision not_a_model")
    pd.concat([rows, bogus]).to_csv(tmp_path / "whole.csv", index=False)
    with pytest.warns(JcwWarning, match="left out torchvision not_a_model"):
        samples, skipped = load_whole_models("pixel4", source=tmp_path / "whole.csv")
    assert list(skipped) == ["not_a_model"] and len(samples) == 2


def test_user_tables_shadow_shipped_ones_and_a_host_table_from_another_cpu_warns(monkeypatch, tmp_path):
    import json
    import warnings

    from jcw.artifacts import artifact_dir
    from jcw.errors import JcwWarning
    from jcw.latency.cpu import cpu_identity
    from jcw.latency.table import list_tables, user_table_dir

    monkeypatch.setenv("JCW_HOME", str(tmp_path))
    mine = user_table_dir()
    mine.mkdir(parents=True)
    shipped = artifact_dir("latency_tables")
    assert load_table("host").folder == shipped
    shutil.copy(shipped / "host.csv", mine / "host.csv")
    meta = json.loads((shipped / "host.json").read_text())
    meta["cpu"] = cpu_identity()
    (mine / "host.json").write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter("error", JcwWarning)  # measured on this CPU: no warning
        assert load_table("host").folder == mine
    # one model name, another generation: virtual machines report "AMD EPYC" for chips that time 2x apart
    meta["cpu"] = {**cpu_identity(), "generation": "cpu family 1 model 1 stepping 1"}
    (mine / "host.json").write_text(json.dumps(meta))
    with pytest.warns(JcwWarning, match="generation: cpu family 1 model 1 stepping 1 there"):
        load_table("host")
    meta["cpu"] = {**cpu_identity(), "model": "Some Other CPU", "flags": ["neon"]}
    (mine / "host.json").write_text(json.dumps(meta))
    with pytest.warns(JcwWarning, match="measured on another CPU .model: Some Other CPU there") as caught:
        table = load_table("host")
    assert table.folder == mine and "jcw latency measure --device host --runtime torch" in str(caught[0].message)
    listed = {row["device"]: row for row in list_tables()}
    assert listed["host"]["other_cpu"] and listed["host"]["folder"] == str(mine)
    assert (shipped / "host.json").read_text() != (mine / "host.json").read_text()


def test_validating_a_shipped_table_writes_a_report_and_leaves_the_table_where_it_is(monkeypatch, tmp_path):
    from jcw.artifacts import artifact_dir
    from jcw.latency.table import user_table_dir
    from jcw.latency.validate import validate_table

    monkeypatch.setenv("JCW_HOME", str(tmp_path))
    shipped = (artifact_dir("latency_tables") / "host.json").read_text()
    with pytest.raises(JcwError, match="--samples and --rounds must each be at least 1"):
        validate_table("host", rounds=0)
    # the shipped host table was measured for the first demo's layers (supernets/mbv2_small_fmnist)
    report = validate_table("host", ROOT / "supernets/mbv2_small_fmnist/supernet.pt", samples=2, rounds=1, repeats=3)
    assert report["samples"] == 2 and Path(report["report"]).parent == user_table_dir()
    assert report["supernet"].endswith("mbv2_small_fmnist/supernet.pt") and len(report["supernet_hash"]) == 16
    # a copy in the user's folder would hide every later update of the shipped table
    assert not (user_table_dir() / "host.csv").exists()
    assert (artifact_dir("latency_tables") / "host.json").read_text() == shipped


def test_squeeze_excite_and_hswish_blocks_are_priced_from_the_plain_blocks_fit():
    """Once-for-All's Note10 tables time blocks with squeeze-excite and h-swish beside plain ones. Fit on the 72
    plain blocks and layers, the op model must price the 216 others (their pool, 1x1 convs on the pooled vector,
    h-sigmoid, multiply and h-swish ops) out of sample, without a parameter of their own."""
    import re

    from jcw.latency.device_model import features, fit_device, fit_linear, load_blocks

    samples = load_blocks("note10")
    fancy = [s for s in samples if re.search(r"se:1|hs:1", s[0])]
    assert len(samples) == 288 and len(fancy) == 216
    theta, _ = fit_linear([s for s in samples if s not in fancy])
    errors = [abs(features(ops) @ theta - ms) / ms for _, ops, ms in fancy]
    assert np.mean(errors) < 0.06
    assert fit_device("note10").fit["loo_mape_pct"] < 5.0


def test_pixel1_blocks_are_priced_within_10pct_out_of_sample_and_each_is_reported():
    """One megabyte rate for feature maps and weights alike missed ProxylessNAS's 112 and 56 px Pixel 1 blocks by
    25-60% (leave-one-out 41%): their large maps cost far more per byte than a linear layer's streamed weights."""
    from jcw.latency.device_model import fit_device

    fit = fit_device("pixel1").fit
    assert fit["loo_mape_pct"] <= 10.0
    assert len(fit["per_point"]) == fit["samples"] == 56
    errors = [p["loo_error_pct"] for p in fit["per_point"] if "input:112x112x16" in p["block"]]
    assert len(errors) == 5 and all(abs(e) < 30 for e in errors)


def test_a_mobilenet_v3_space_prices_the_same_in_its_table_and_as_a_built_network(tmp_path):
    """Squeeze-excite couples its scale to the block's width and runs inside XNNPACK's sparse subgraph; h-swish and
    the multiply are ops of the space, so the derived table prices the whole network as the whole-model path does."""
    from jcw.config import SupernetConfig
    from jcw.latency.derive import derive_table
    from jcw.latency.device_model import fit_device
    from jcw.models.graph import analyse
    from jcw.models.registry import create_model
    from jcw.supernet.slicing import bake_masks, subnet_from_supernet
    from jcw.supernet.supernet import Supernet
    from jcw.xnnpack import sparse_subgraph

    net = Supernet(SupernetConfig(model="mobilenet_v3_small", input_size=64, in_channels=3, num_classes=10,
                                  densities=(1.0,)))  # dense: the table and the ruler then price every op alike
    space = net.space
    kinds = {layer.kind for layer in space.layers}
    assert {"act", "mul"} <= kinds
    assert len(analyse(create_model("mobilenet_v3_small", 10, 3), "m", 64, 3, 10).space.groups) == len(space.groups)
    subgraph = sparse_subgraph(space.layers, 3)
    assert subgraph.possible and any(space.layers[i].h == 1 for i in subgraph.convs)  # squeeze-excite's 1x1 convs
    table = derive_table("pixel4", [space], out_dir=tmp_path).bind(space)
    pixel4 = fit_device("pixel4")
    rng = np.random.default_rng(0)
    for genome in (space.largest(), *rng.integers(0, space.gene_sizes, size=(2, space.n_genes))):
        built = bake_masks(subnet_from_supernet(net, genome)[0])
        assert table.latency(genome[None])[0] == pytest.approx(pixel4.module_ms(built, 64, 3), rel=1e-4)


@pytest.mark.parametrize("kind", ["act", "mul", "concat", "add", "pool"])
def test_every_op_kind_has_a_micro_model_that_each_runtime_runs(kind):
    """Host measurement and phone bundles time a table entry by its kind's micro-model: the kinds a MobileNetV3 space
    adds (h-swish, the excite multiply) must run in torch, onnxruntime and LiteRT alike, to the same numbers."""
    from jcw.latency.measure import onnx_micro_op
    from jcw.latency.ops import micro_model
    from jcw.latency.tflite_runtime import convert, interpreter, set_inputs
    from jcw.space import Layer

    layer = Layer(name="x", kind=kind, h=7, w=7, kernel=7 if kind == "pool" else 1, depthwise=True)
    module, inputs = micro_model(layer, 16, 16, 1.0)
    expected = module(*inputs).detach().numpy()
    assert np.allclose(onnx_micro_op(layer, 16, 16, 1.0)()[0], expected, atol=1e-5)
    runner = interpreter(convert(module, [tuple(x.shape) for x in inputs]))
    set_inputs(runner, *(x.numpy() for x in inputs))
    runner.invoke()
    out = runner.get_tensor(runner.get_output_details()[0]["index"])
    out = out.transpose(0, 3, 1, 2) if out.ndim == 4 else out  # NHWC back to torch's layout
    assert out.shape == expected.shape and np.allclose(out, expected, atol=1e-5)
