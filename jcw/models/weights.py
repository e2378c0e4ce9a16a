"""Starting weights for a base network: torchvision's ImageNet weights or a local file, with the user's own head.

Users prune for their own classes, so a 1000-class checkpoint must still start the backbone: the classifier (the
network's last Linear layer) is the one part allowed not to fit, and it is replaced by a freshly initialised one of
the right size. Anything else that does not fit means the file belongs to another network, which is an error.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn

from jcw.artifacts import load_torch_file
from jcw.errors import JcwError, JcwWarning


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict saved by torch, bare or inside a checkpoint ({"state_dict": ...} or torchvision's {"model": ...}).

    Keys saved from a DistributedDataParallel wrapper lose their "module." prefix.
    """
    state = load_torch_file(path, "weights file", None, "pass a file written with torch.save(model.state_dict())",
                            "save the state_dict again")
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
    tensors = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise JcwError(f"weights file {path} holds no tensors; pass a file written with "
                       f"torch.save(model.state_dict())")
    return tensors


def pretrained_state_dict(name: str, weights_enum) -> dict[str, torch.Tensor]:
    """torchvision's default ImageNet weights for `name`, from its cache or the network."""
    try:
        return weights_enum.DEFAULT.get_state_dict(progress=False)
    except Exception as exc:  # no network and nothing cached; the reason is the first line of the library's message
        reason = " ".join(str(exc).split())[:160] or exc.__class__.__name__
        raise JcwError(f"cannot load pretrained {name} weights ({reason}); put the file in "
                       f"$TORCH_HOME/hub/checkpoints, pass --weights FILE, or drop --pretrained") from None


def classifier_name(model: nn.Module) -> str:
    """The network's last Linear layer: the head that a different class count replaces."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise JcwError(f"{model.__class__.__name__} has no Linear classifier to replace")
    return linears[-1]


def load_backbone(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Copy every tensor of `state` into `model`; classifier tensors of another shape keep their fresh init.

    Returns the replaced keys and says so in one warning line.
    """
    own = model.state_dict()
    head = classifier_name(model) + "."
    replaced = [k for k in own if k.startswith(head) and k in state and state[k].shape != own[k].shape]
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]  # older checkpoints
    unexpected = [k for k in state if k not in own]
    misfit = [k for k in own if k in state and k not in replaced and state[k].shape != own[k].shape]
    problems = [f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misfit)) if keys]
    if problems:
        raise JcwError(f"{source} does not fit {model.__class__.__name__}: {'; '.join(problems)}")
    model.load_state_dict({k: state[k] if k in state and k not in replaced else own[k] for k in own})
    if replaced:
        shapes = f"{tuple(state[replaced[0]].shape)} -> {tuple(own[replaced[0]].shape)}"
        warnings.warn(f"{source}: classifier {', '.join(replaced)} replaced by a fresh one ({replaced[0]} {shapes})",
                      JcwWarning, stacklevel=2)
    return replaced
