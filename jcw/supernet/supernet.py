"""The weight-sharing supernet: one base network whose every subnet is selected by a genome.

Channels are ranked once, at build, by L1 norm summed over all layers of a coupled group, so a subnet of width k keeps
the k most important channels. The file format is a config plus plain tensors (no pickled code), loaded with
`torch.load(weights_only=True)`.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call
from torch.nn.utils import parametrize

from jcw import __version__
from jcw.artifacts import default_supernet_path, load_torch_file
from jcw.config import SupernetConfig
from jcw.errors import JcwError, JcwWarning
from jcw.io import torch_save
from jcw.models import create_model
from jcw.models.graph import GraphInfo, analyse
from jcw.models.handlers import take
from jcw.space import SearchSpace
from jcw.supernet.masks import ActiveSubnet, ChannelMask, WeightMask, magnitude_mask
from jcw.supernet.slicing import shrink

FORMAT = "jcw-supernet/1"


class Supernet(nn.Module):
    def __init__(self, config: SupernetConfig, state_dict: dict | None = None,
                 group_orders: list[torch.Tensor] | None = None):
        super().__init__()
        self.config = config
        base = create_model(config.model, config.num_classes, config.in_channels,
                            pretrained=config.pretrained and state_dict is None,
                            weights=config.weights if state_dict is None else None)
        if state_dict is not None:
            base.load_state_dict(state_dict)
        self.info: GraphInfo = analyse(base, config.model, config.input_size, config.in_channels, config.num_classes,
                                       config.min_ratio, config.width_step, config.divisor, config.densities)
        self.space: SearchSpace = self.info.space
        self.base = base.to(memory_format=torch.channels_last)  # about 1.5x faster on CPU for these nets
        modules = dict(base.named_modules())
        orders = group_orders or self._rank_channels(modules)
        for i, order in enumerate(orders):
            self.register_buffer(f"group_order_{i}", order.clone().long())
        self.active = ActiveSubnet()
        self.active.block = config.block
        if config.block > 1 and state_dict is None:  # said once, when the supernet is made, not on every load
            self._warn_unblockable_layers()
        self._mask_tensors(modules)
        self.genome: np.ndarray | None = None
        self.recipe: dict = {}  # how it was trained (TrainConfig), where its file records it
        self._skeletons: dict[tuple[int, ...], nn.Module] = {}
        self._by_name = modules  # looked up on every sliced pass

    def _mask_tensors(self, modules: dict[str, nn.Module]) -> None:
        """Parametrize every parameter with a channel group, so that each forward pass sees the active subnet.

        Sparse weights get a magnitude mask too. Running statistics stay whole (the batch norm's masked affine zeroes
        a removed channel), and so does a parameter of fixed width only (the classifier's bias).
        """
        for p in self.info.prunable:
            module = modules[p.name]
            for tensor, roles in p.handler.tensors.items():
                if not isinstance(getattr(module, tensor), nn.Parameter):
                    continue
                if tensor == "weight" and p.sparse >= 0:
                    row_order = self.group_order(p.out_group) if p.out_group >= 0 else None
                    mask = WeightMask(self.active, p, row_order)
                elif any(p.group(role) >= 0 for role in roles):
                    mask = ChannelMask(self.active, p, tensor)
                else:
                    continue
                parametrize.register_parametrization(module, tensor, mask, unsafe=True)

    def _warn_unblockable_layers(self) -> None:
        """Blocks need the kept rows to divide by the block size; other widths fall back to unstructured masks."""
        block = self.config.block
        odd = []
        for name, layer in self.info.weight_layers.items():
            if layer.sparse < 0 or layer.depthwise:
                continue
            widths = self.space.groups[layer.out_group].choices if layer.out_group >= 0 else (layer.c_out,)
            bad = sorted(w for w in widths if w % block)
            if bad:
                odd.append(f"{name} ({'/'.join(map(str, bad))} rows)")
        if odd:
            warnings.warn(f"--block {block}: {len(odd)} sparse layer(s) get unstructured masks at widths that do not "
                          f"divide by {block}: {', '.join(odd)}", JcwWarning, stacklevel=3)

    def group_order(self, g: int) -> torch.Tensor:
        return getattr(self, f"group_order_{g}")

    def _rank_channels(self, modules: dict[str, nn.Module]) -> list[torch.Tensor]:
        """Importance order of each group's channels: L1 norm of every producing conv's rows, summed."""
        orders = []
        for g, group in enumerate(self.space.groups):
            score = torch.zeros(group.base)
            for name in self.info.producers[g]:
                score += modules[name].weight.detach().abs().flatten(1).sum(1)
            orders.append(torch.argsort(score, descending=True, stable=True))
        return orders

    # ---- the active subnet -------------------------------------------------------------------------------------
    def set_genome(self, genome) -> None:
        """Make `genome` the subnet every forward pass uses."""
        g = self.space.check(genome)[0]
        widths = self.space.widths(g)[0]
        masks = []
        for i, group in enumerate(self.space.groups):
            m = torch.zeros(group.base)
            m[self.group_order(i)[: int(widths[i])]] = 1.0
            masks.append(m)
        self.active.channel_masks = masks
        self.active.densities = [float(d) for d in self.space.density_values(g)[0]]
        self.genome = g

    def kept_channels(self, group: int) -> torch.Tensor:
        """Indices of the active subnet's channels in `group`, in importance order."""
        width = int(self.active.channel_masks[group].sum().item())
        return self.group_order(group)[:width]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x)

    def _skeleton(self, widths: tuple[int, ...]) -> nn.Module:
        """A module of the subnet's shapes, for `forward_sliced` to run with the shared tensors swapped in.

        Built without consuming torch's random state, so sliced and masked training draw the same dropout masks.
        Cached, since the largest and smallest subnets recur every step; the cache is small and reset when full.
        """
        if widths not in self._skeletons:
            if len(self._skeletons) >= 32:
                self._skeletons.clear()
            with torch.random.fork_rng(devices=[]):
                base = create_model(self.config.model, self.config.num_classes, self.config.in_channels)
                self._skeletons[widths] = shrink(base, self.info, [torch.arange(w) for w in widths])
        return self._skeletons[widths]

    def forward_sliced(self, genome, x: torch.Tensor) -> torch.Tensor:
        """The subnet's forward pass on physically sliced tensors; gradients reach the shared weights.

        Equal to `set_genome(genome); self(x)`, but it costs what the subnet costs: the masked forward computes every
        channel of the full network. Training uses it. Groups at full width use the shared batch-norm buffers
        themselves, so the largest subnet's passes keep the supernet's running statistics current.
        """
        g = self.space.check(genome)[0]
        widths = self.space.widths(g)[0]
        densities = self.space.density_values(g)[0]
        kept = [None if int(w) == grp.base else self.group_order(i)[: int(w)]
                for i, (w, grp) in enumerate(zip(widths, self.space.groups))]
        tensors: dict[str, torch.Tensor] = {}
        for p in self.info.prunable:
            module = self._by_name[p.name]
            for tensor, roles in p.handler.tensors.items():
                if getattr(module, tensor) is None:
                    continue
                shared = (getattr(module.parametrizations, tensor).original
                          if parametrize.is_parametrized(module, tensor) else getattr(module, tensor))
                t = take(shared, roles, p.per_role(kept))
                if tensor == "weight" and p.sparse >= 0 and densities[p.sparse] < 1.0:
                    rows = torch.arange(t.shape[0])  # rows are already in importance order
                    t = t * magnitude_mask(t, torch.ones_like(t), float(densities[p.sparse]), self.config.block,
                                           rows)
                tensors[f"{p.name}.{tensor}"] = t
        skeleton = self._skeleton(tuple(int(w) for w in widths))
        skeleton.train(self.training)
        return functional_call(skeleton, tensors, (x.contiguous(memory_format=torch.channels_last),), strict=False)

    # ---- persistence -------------------------------------------------------------------------------------------
    def raw_state_dict(self) -> dict[str, torch.Tensor]:
        """The base network's state_dict, free of parametrization wrappers, on the CPU (files load anywhere)."""
        out = {}
        for k, v in self.base.state_dict().items():
            k = k.replace(".parametrizations.", ".").replace(".original", "")
            out[k] = v.detach().cpu().clone()
        return out

    def load_raw_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load weights saved by `raw_state_dict` into the parametrized network (resuming training)."""
        names = {k.replace(".parametrizations.", ".").replace(".original", ""): k for k in self.base.state_dict()}
        self.base.load_state_dict({names.get(k, k): v for k, v in state.items()})

    def checkpoint(self, extra: dict | None = None) -> dict:
        return {"format": FORMAT, "jcw_version": __version__, "config": asdict(self.config),
                "state_dict": self.raw_state_dict(),
                "group_orders": [self.group_order(i).cpu().clone() for i in range(len(self.space.groups))],
                "space": self.space.to_dict(), **(extra or {})}

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        torch_save(path, self.checkpoint(extra))


def file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def read_checkpoint(path: str | Path) -> dict:
    return load_torch_file(path, "supernet file", FORMAT, "train one with `jcw supernet train` or omit --supernet to "
                           "use the shipped default", "re-download or retrain it")


def load_supernet(path: str | Path | None = None) -> Supernet:
    """Load a supernet file, or the folder `jcw supernet train --out` wrote it to; with no path, the shipped default
    for Fashion-MNIST."""
    path = Path(path) if path else default_supernet_path()
    if path.is_dir() and (path / "supernet.pt").is_file():
        path = path / "supernet.pt"
    ckpt = read_checkpoint(path)
    try:
        net = Supernet(SupernetConfig.from_dict(ckpt["config"]), ckpt["state_dict"], ckpt["group_orders"])
    except (KeyError, RuntimeError, TypeError) as exc:
        raise JcwError(f"supernet file {path} does not match its config ({exc.__class__.__name__}: "
                       f"{str(exc).splitlines()[0]})") from None
    net.path = str(path)
    net.hash = file_hash(path)
    net.recipe = ckpt.get("training") or {}
    net.eval()
    return net
