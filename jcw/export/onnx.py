"""ONNX export of a subnet file: dense weights with the zeros in place, checked against torch in onnxruntime."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from jcw.errors import JcwError
from jcw.io import atomic_path
from jcw.supernet.slicing import bake_masks
from jcw.supernet.subnet import load_subnet


def export_onnx(subnet_path: str | Path, out: str | Path) -> Path:
    """ONNX of an exported subnet (dense weights with the zeros in place), checked against torch."""
    loaded = load_subnet(subnet_path)
    arch = loaded.jcw_arch
    model = bake_masks(loaded)
    x = torch.randn(1, arch["in_channels"], arch["input_size"], arch["input_size"])
    out = Path(out)
    with atomic_path(out) as tmp:
        torch.onnx.export(model, (x,), str(tmp), input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    import onnxruntime as ort  # heavy optional runtime: only an ONNX export imports it

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x).numpy()
    got = session.run(None, {"images": x.numpy()})[0]
    if not np.allclose(expected, got, atol=1e-4, rtol=1e-4):
        raise JcwError(f"ONNX output differs from torch by {np.abs(expected - got).max():.2e}")
    return out
