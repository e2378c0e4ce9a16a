import subprocess

import numpy as np

from jcw.latency.bundle import import_results, write_bundle
from jcw.latency.measure import measure_table
from jcw.latency.table import compare_tables
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
