import numpy as np
import pytest
import torch

from jcw.supernet.subnet import export_subnet, load_subnet
from jcw.supernet.accuracy import evaluate, recalibrate_bn


def _genome(space, seed=5):
    return space.sample(1, np.random.default_rng(seed))[0]


def test_exported_subnet_matches_supernet(supernet, data, tmp_path):
    genome = _genome(supernet.space)
    path = export_subnet(supernet, genome, tmp_path / "s.pt", data=data, calibration_images=500)
    model = load_subnet(path)
    supernet.set_genome(genome)
    recalibrate_bn(supernet, data, 500)
    supernet.eval()
    x = next(data.batches("val", 32)).images
    with torch.no_grad():  # each form re-estimates batch norm with its own float sums: logits up to 5 differ by 2e-4
        assert torch.allclose(model(x), supernet(x), atol=1e-3)
    # masks hold the density of every sparse layer, and the parameter count is the kept nonzeros
    dens = supernet.space.density_values(genome)[0]
    total = 0
    for name, layer in supernet.info.weight_layers.items():
        w = model.get_submodule(name).weight
        nz = int((w != 0).sum())
        total += nz
        if layer.sparse >= 0:
            assert abs(nz - dens[layer.sparse] * w.numel()) <= 1, name
    expected = supernet.space.cost(genome)["params"][0]
    assert abs(total - expected) <= len(supernet.info.weight_layers)
    assert model.jcw_metadata["genome"] == [int(v) for v in genome]


def test_exported_test_top1_is_the_saved_networks(supernet, data, tmp_path):
    """The test top-1 written at export is scored on a folded twin; the file it describes still holds its masks."""
    genome = _genome(supernet.space, 3)
    path = export_subnet(supernet, genome, tmp_path / "s.pt", data=data, calibration_images=500, test=True)
    model = load_subnet(path)
    assert any(hasattr(m, "parametrizations") for m in model.modules())
    # folding batch norm changes rounding only: an image or two of 10,000 may flip
    assert model.jcw_metadata["test_top1"] == pytest.approx(evaluate(model, data, "test").top1, abs=0.03)


def test_masks_hold_through_training(supernet, data, tmp_path):
    """As fine-tuning trains: channels_last on the CPU too (Accelerator.network), the same function as before."""
    from jcw.accelerator import CPU

    path = export_subnet(supernet, _genome(supernet.space, 7), tmp_path / "s.pt")
    images = next(data.batches("val", 32)).images
    with torch.no_grad():
        before = load_subnet(path).eval()(images)
    model = CPU.network(load_subnet(path)).eval()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.parametrizations.weight.original.is_contiguous(memory_format=torch.channels_last)
               if hasattr(c, "parametrizations") else c.weight.is_contiguous(memory_format=torch.channels_last)
               for c in convs)
    with torch.no_grad():
        # float rounding differs by layout (by over 1e-4 at 2 threads)
        assert torch.allclose(model(images), before, atol=1e-3)
    model.train()
    zero = {n: (m.weight == 0) for n, m in model.named_modules() if hasattr(m, "parametrizations")}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for i, batch in enumerate(data.batches("train", 64)):
        if i == 20:
            break
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(batch.images), batch.labels).backward()
        opt.step()
    for n, m in model.named_modules():
        if n in zero:
            assert (m.weight[zero[n]] == 0).all(), n


def test_distillation_loss_is_half_the_teachers_soft_labels(supernet, data, tmp_path):
    from jcw.config import FinetuneConfig
    from jcw.accelerator import CPU
    from jcw.finetune import _MasksHeld

    model = load_subnet(export_subnet(supernet, _genome(supernet.space, 7), tmp_path / "s.pt")).eval()  # no dropout
    teacher = load_subnet(export_subnet(supernet, supernet.space.largest(), tmp_path / "t.pt")).eval()
    batch = next(data.batches("train", 64))
    with torch.no_grad():
        logits = model(batch.images)
        hard = torch.nn.functional.cross_entropy(logits, batch.labels).item()
        soft = torch.nn.functional.cross_entropy(logits, torch.softmax(teacher(batch.images), 1)).item()
    plain = _MasksHeld(model, data, FinetuneConfig(), None, 0.0, CPU).step(batch, 0, torch.Tensor.backward)
    assert plain == pytest.approx(hard, rel=1e-5)
    distilled = _MasksHeld(model, data, FinetuneConfig(), teacher, 0.0, CPU).step(batch, 0, torch.Tensor.backward)
    assert distilled == pytest.approx(0.5 * hard + 0.5 * soft, rel=1e-5) and abs(soft - hard) > 1e-3


def test_cpu_runtime_matches_and_uses_sparse_kernels(supernet, tmp_path):
    from jcw.latency.host_runtime import SparseConv1x1, cpu_runtime

    genome = supernet.space.smallest()
    path = export_subnet(supernet, genome, tmp_path / "s.pt")
    model = load_subnet(path)
    sparse = {l.name for l in supernet.space.layers if l.sparse >= 0 and l.kind == "conv" and l.kernel == 1}
    runtime = cpu_runtime(load_subnet(path), sparse | {"classifier.1"})
    assert sum(isinstance(m, SparseConv1x1) for m in runtime.modules()) == len(sparse) + 1
    c = supernet.config
    x = torch.randn(2, c.in_channels, c.input_size, c.input_size)
    with torch.no_grad():
        assert torch.allclose(runtime(x), model(x), atol=1e-4)
