import subprocess

import numpy as np
import pandas as pd
import pytest

from jcw.latency.bundle import import_results, write_bundle
from jcw.latency.measure import measure_table
from jcw.latency.table import compare_tables
from jcw.latency.tflite_bundle import write_bundle as write_tflite_bundle
from jcw.space import ChannelGroup, Layer, SearchSpace


def tiny_space() -> SearchSpace:
    groups = [ChannelGroup("stem", 16, (16, 8)), ChannelGroup("mid", 32, (32, 16))]
    layers = [Layer("stem", "conv", 8, 8, 3, 1, False, -1, 0, 1, 16, sparse=0),
              Layer("dw", "conv", 8, 8, 3, 1, True, 0, 0, 16, 16),
              Layer("pw", "conv", 8, 8, 1, 1, False, 0, 1, 16, 32, sparse=1),
              Layer("pool", "pool", 8, 8, 8, 8, True, 1, 1, 32, 32),
              Layer("fc", "linear", 1, 1, in_group=1, c_in=32, c_out=10, sparse=2)]
    return SearchSpace("tiny", 8, 1, 10, groups, layers, ["stem", "pw", "fc"], densities=(1.0, 0.5))


def test_bundle_local_run_import_round_trip(tmp_path):
    space = tiny_space()
    bundle = write_bundle("myphone", space, tmp_path / "bundle")
    manifest = (bundle / "manifest.csv").read_text().splitlines()
    assert len(manifest) - 1 == len(list((bundle / "models").glob("*.onnx")))
    import os
    import sys

    env = dict(os.environ, REPEATS="5", PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    subprocess.run(["bash", str(bundle / "run.sh"), "--local"], check=True, capture_output=True, env=env)
    table = import_results(bundle)
    assert table.meta["source"] == "measured" and table.device == "myphone"
    assert (table.entries.latency_ms > 0).all()
    bound = table.bind(space)
    lat = bound.latency(space.sample(20, np.random.default_rng(0)))
    assert (lat > 0).all() and bound.latency(space.smallest())[0] < bound.latency(space.largest())[0] * 1.5

    # the same micro-models measured directly: every entry lines up, so `jcw latency compare` can judge the round trip
    direct = measure_table("host-ort", [space], repeats=5, runtime="onnxruntime")
    assert "onnxruntime" in direct.meta["runtime"] and (direct.entries.impl == "dense").all()
    report = compare_tables(direct, table)
    assert report["common_entries"] == len(direct.entries) == len(table.entries)
    assert report["median_ratio"] > 0


BENCHMARK_MODEL_OUTPUT = """STARTING!
Num threads: [1]
Graph: [/data/local/tmp/jcw_bundle/m.tflite]
Use xnnpack: [1]
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
The input model file size (MB): 0.0123
Initialized session in 3.24ms.
Running benchmark for at least 10 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=2315 first=523 curr=201 min=195 max=523 avg={warm} std=19

Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=4612 first=210 curr=212 min=196 max=402 avg={avg} std={std}

Inference timings in us: Init: 3240, First inference: 523, Warmup (avg): {warm}, Inference (avg): {avg}
"""


def test_tflite_bundle_times_sparse_1x1_entries_inside_a_sparse_subgraph_and_imports_benchmark_model_output(
        tmp_path):
    from jcw.errors import JcwError
    from jcw.latency.bundle import import_bundle
    from jcw.latency.tflite_runtime import densified_convs

    space = tiny_space()
    bundle = write_tflite_bundle("myphone", space, tmp_path / "bundle")
    manifest = pd.read_csv(bundle / "manifest.csv", keep_default_na=False)
    files = {p.stem for p in (bundle / "models").glob("*.tflite")}
    assert files == set(manifest["file"]) | set(manifest["baseline"]) - {""}
    wrapped = manifest[manifest["baseline"] != ""]
    # only the 1x1 conv below density 1 runs sparse; it is timed with a baseline, everything else alone and dense
    assert len(wrapped) == 4 and (wrapped["kernel"] == 1).all() and (wrapped["density"] == 0.5).all()
    assert (wrapped["impl"] == "sparse_xnnpack").all() and (manifest.loc[manifest["baseline"] == "", "impl"] ==
                                                            "dense").all()
    # the wrapper stores the entry and the all-zero ballast sparse, so XNNPACK's delegate asks for sparse inference
    assert len(densified_convs((bundle / "models" / f"{wrapped['file'].iloc[0]}.tflite").read_bytes())) == 2

    with pytest.raises(JcwError, match="rerun run.sh"):
        import_bundle(bundle, out_dir=tmp_path / "tables")
    (bundle / "results").mkdir()
    avg = {name: 100.0 + 10 * i for i, name in enumerate(sorted(files))}  # us
    for name, a in avg.items():
        (bundle / "results" / f"{name}.txt").write_text(BENCHMARK_MODEL_OUTPUT.format(warm=a + 5, avg=a, std=4))
    table, csv_path, _ = import_bundle(bundle, out_dir=tmp_path / "tables")
    assert table.runtime == "tflite-xnnpack" and table.meta["source"] == "measured" and csv_path.exists()
    got = table.entries.reset_index(drop=True)
    for row, entry in zip(manifest.itertuples(), got.itertuples()):
        expected = avg[row.file] - (avg[row.baseline] if row.baseline else 0)
        assert entry.latency_ms == pytest.approx(expected / 1000) and entry.n == 4612
    assert (got.loc[manifest["baseline"] == "", "std_ms"] == 0.004).all()
    (bundle / "manifest.csv").write_text("file\nx\n")  # a damaged manifest is one clear error, not a KeyError
    with pytest.raises(JcwError, match="manifest.csv lacks columns"):
        import_bundle(bundle, out_dir=tmp_path / "tables")
    (bundle / "bundle.json").write_text("{not json")
    with pytest.raises(JcwError, match="bundle.json is corrupt"):
        import_bundle(bundle, out_dir=tmp_path / "tables")
