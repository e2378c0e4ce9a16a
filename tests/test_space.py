import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jcw.errors import JcwError
from jcw.models import MODELS, create_model
from jcw.models.graph import analyse
from jcw.space import SearchSpace, width_choices


def test_width_choices_follow_the_grid():
    assert width_choices(64) == (64, 56, 48, 40, 32, 24, 16)
    assert width_choices(16) == (16, 8)
    assert all(c % 8 == 0 for c in width_choices(144))


def test_space_basics(tiny_supernet):
    space = tiny_supernet.space
    assert space.n_genes == len(space.groups) + len(space.sparse)
    assert space.num_subnets() == int(np.prod(space.gene_sizes.astype(object)))
    rng = np.random.default_rng(0)
    genomes = space.sample(200, rng)
    assert (genomes >= 0).all() and (genomes < space.gene_sizes).all()
    assert (space.cost(space.largest())["macs"] > space.cost(space.smallest())["macs"]).all()


def test_uniform_width_is_dense_and_spans_the_widths(tiny_supernet):
    from jcw.space import parse_genomes

    space = tiny_supernet.space
    assert (space.uniform(1.0) == space.largest()).all()
    quarter = space.uniform(0.25)
    assert (quarter[:len(space.groups)] == space.smallest()[:len(space.groups)]).all()  # min ratio 0.25
    assert (quarter[len(space.groups):] == 0).all()  # dense
    half = space.widths(space.uniform(0.5)[None])[0]
    assert all(abs(w - g.base / 2) == min(abs(c - g.base / 2) for c in g.choices) for w, g in zip(half, space.groups))
    assert space.cost(space.uniform(0.5))["macs"] < space.cost(space.largest())["macs"]
    (label, genome), = parse_genomes("uniform:0.5", space)
    assert label == "uniform:0.5" and (genome == space.uniform(0.5)).all()
    for bad in ("uniform:0", "uniform:1.5", "uniform:half", "uniform:nan"):
        with pytest.raises(JcwError, match="uniform:R"):
            parse_genomes(bad, space)


def test_check_rejects_out_of_range(tiny_supernet):
    space = tiny_supernet.space
    bad = space.largest()
    bad[0] = 99
    with pytest.raises(JcwError, match="gene 0"):
        space.check(bad)
    with pytest.raises(JcwError, match="genes"):
        space.check([0, 1])


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_encode_decode_round_trip(tiny_supernet, seed):
    space = tiny_supernet.space
    genome = space.sample(1, np.random.default_rng(seed))[0]
    readable = space.decode(genome)
    assert np.array_equal(space.encode(readable["channels"], readable["densities"]), genome)
    restored = SearchSpace.from_dict(space.to_dict())
    assert restored.fingerprint() == space.fingerprint()


def test_residual_adds_share_one_gene():
    model = create_model("resnet18", 1000, 3)
    space = analyse(model, "resnet18", 64, 3, 1000).space
    adds = [l for l in space.layers if l.kind == "add"]
    assert adds and all(l.in_group == l.out_group for l in adds)
    by_name = {l.name: l for l in space.layers}
    # the stem and every stage-1 block output feed the same adds: one shared group
    assert by_name["conv1"].out_group == by_name["layer1.0.conv2"].out_group == by_name["layer1.1.conv2"].out_group
    # depthwise convs follow their input's group in MobileNetV2
    mb = analyse(create_model("mobilenet_v2", 1000, 3), "mobilenet_v2", 64, 3, 1000).space
    for l in mb.layers:
        if l.kind == "conv" and l.depthwise:
            assert l.in_group == l.out_group and l.sparse == -1


def test_every_model_is_registered_and_traceable():
    for name in MODELS:
        in_ch = 1 if name in ("mbv2_tiny", "mbv2_small") else 3
        space = analyse(create_model(name, 10, in_ch), name, 32, in_ch, 10).space
        assert space.groups and space.sparse
