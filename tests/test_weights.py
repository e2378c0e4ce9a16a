"""Starting weights with the user's own head: torchvision's weights API (through its cache) and local files.

The CLI side (`supernet train --weights`) runs in test_imagenet's end-to-end test."""
import subprocess
import sys

import pytest
import torch
import torchvision.models as tvm

from jcw.errors import JcwError, JcwWarning
from jcw.models.registry import PRETRAINED, create_model
from jcw.models.weights import classifier_name



def _imagenet_file(name: str, path, wrap=lambda sd: sd):
    torch.manual_seed(1)
    state = getattr(tvm, name)(weights=None).state_dict()  # 1000 classes, random: what a user's file looks like
    torch.save(wrap(state), path)
    return state


def _assert_backbone_from(model, state, classes: int) -> None:
    head = classifier_name(model) + "."
    own = model.state_dict()
    backbone = [k for k in own if not k.startswith(head)]
    assert backbone and all(torch.equal(own[k], state[k]) for k in backbone)
    assert own[head + "weight"].shape[0] == classes and own[head + "bias"].shape == (classes,)


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_weights_file_starts_the_backbone_and_the_head_fits_the_classes(name, tmp_path):
    state = _imagenet_file(name, tmp_path / "w.pt")
    with pytest.warns(JcwWarning, match=r"classifier .*replaced by a fresh one .*\(1000, \d+\) -> \(37, \d+\)"):
        model = create_model(name, 37, 3, weights=str(tmp_path / "w.pt"))
    _assert_backbone_from(model, state, 37)


def test_checkpoint_wrappers_and_1000_classes_load_whole(tmp_path, recwarn):
    # torchvision's reference scripts save {"model": ...}; DistributedDataParallel prefixes "module."
    state = _imagenet_file("resnet18", tmp_path / "w.pt",
                           lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3})
    model = create_model("resnet18", 1000, 3, weights=str(tmp_path / "w.pt"))
    own = model.state_dict()
    assert all(torch.equal(own[k], state[k]) for k in own)  # head included: it fits
    assert not [w for w in recwarn if issubclass(w.category, JcwWarning)]


def test_a_file_of_another_network_is_a_clear_error(tmp_path):
    _imagenet_file("resnet18", tmp_path / "r18.pt")
    with pytest.raises(JcwError, match=r"does not fit MobileNetV2: missing: .*unexpected: .*"):
        create_model("mobilenet_v2", 10, 3, weights=str(tmp_path / "r18.pt"))
    _imagenet_file("resnet18", tmp_path / "cut.pt", lambda sd: {k: v for k, v in sd.items()
                                                                          if k != "layer1.0.conv1.weight"})
    with pytest.raises(JcwError, match=r"missing: layer1\.0\.conv1\.weight \(1\)"):
        create_model("resnet18", 10, 3, weights=str(tmp_path / "cut.pt"))
    with pytest.raises(JcwError, match="no pretrained weights"):
        create_model("mbv2_tiny", 10, 1, pretrained=True)


def test_pretrained_comes_through_torchvisions_weights_api_with_a_new_head(tmp_path, monkeypatch):
    """No network here: the weights API finds the file where it caches downloads, under the name it expects."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(JcwError, match=r"cannot load pretrained resnet18 weights .*--weights FILE"):
        create_model("resnet18", 37, 3, pretrained=True)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)  # the failed download made it
    state = _imagenet_file("resnet18", cache / tvm.ResNet18_Weights.DEFAULT.url.rsplit("/", 1)[-1])
    with pytest.warns(JcwWarning, match="--pretrained resnet18: classifier fc.weight, fc.bias replaced"):
        model = create_model("resnet18", 37, 3, pretrained=True)
    _assert_backbone_from(model, state, 37)



def test_building_a_network_leaves_torch_dynamo_unimported_until_it_is_used():
    """Start-up time: torchvision's ops import torch._dynamo (over a second) for a function jcw never calls."""
    code = ("import sys, torch\n"
            "from jcw.models import create_model\n"
            "create_model('mbv2_small', 10, 1)\n"
            "print('torch._dynamo' in sys.modules)\n"
            "import torchvision\n"
            "box = torchvision.ops.roi_align(torch.ones(1, 1, 8, 8), torch.tensor([[0, 0, 0, 4, 4.]]), 2)\n"
            "import torch._dynamo.utils as utils\n"
            "print(float(box.sum()), utils.is_compile_supported('cpu'), hasattr(torch._dynamo, 'optimize'))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["False", "4.0", "True", "True"]
