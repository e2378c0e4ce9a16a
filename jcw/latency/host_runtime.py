"""The CPU runtime for exported subnets: what host latency tables price.

Batch norm is folded into the conv before it. A 1x1 conv or linear layer runs on torch's sparse CSR kernel where the
host latency table found that faster than dense (only at high sparsity on x86); everything else runs dense. The host
table times each entry with these same modules, so what the table predicts is what runs.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from jcw.errors import JcwError
from jcw.supernet.slicing import bake_masks


class SparseConv1x1(nn.Module):
    """A 1x1 conv (or, with spatial=False, a linear layer) as CSR weight x dense activations."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, stride: int = 1, spatial: bool = True):
        super().__init__()
        self.weight = weight.reshape(weight.shape[0], -1).to_sparse_csr()
        self.bias = None if bias is None else bias.detach().clone()
        self.stride, self.spatial = stride, spatial
        self.out_channels = weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.spatial:  # (n, c_in) -> (n, c_out)
            y = torch.sparse.mm(self.weight, x.t()).t()
            return y if self.bias is None else y + self.bias
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        n, c, h, w = x.shape
        cols = x.reshape(n, c, h * w).permute(1, 0, 2).reshape(c, n * h * w)
        y = torch.sparse.mm(self.weight, cols)
        if self.bias is not None:
            y = y + self.bias[:, None]
        return y.reshape(self.out_channels, n, h, w).permute(1, 0, 2, 3)


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv whose weights and bias absorb the batch norm after it (eval statistics)."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True)
    fused.weight.data = conv.weight.detach() * scale.view(-1, 1, 1, 1)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.data = (bias - bn.running_mean) * scale + bn.bias.detach()
    return fused


def cpu_runtime(model: nn.Module, sparse_layers: set[str] = frozenset()) -> nn.Module:
    """The deployable CPU form of an exported subnet (converted in place): BN folded; `sparse_layers` on CSR."""
    model = bake_masks(model)
    folded_bn: list[str] = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (cname, child), (nname, nxt) in zip(children, children[1:]):
                if isinstance(child, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d):
                    setattr(module, cname, fold_bn(child, nxt))
                    setattr(module, nname, nn.Identity())
                    folded_bn.append(f"{name}.{nname}" if name else nname)
    for name in sparse_layers:
        module = model.get_submodule(name)
        parent, _, child = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        if isinstance(module, nn.Linear):
            setattr(holder, child, SparseConv1x1(module.weight.detach(), module.bias, spatial=False))
        elif isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1:
            setattr(holder, child, SparseConv1x1(module.weight.detach(), module.bias, module.stride[0]))
        else:
            raise JcwError(f"layer {name} has no sparse CPU kernel (only 1x1 convs and linear layers)")
    return model.eval()
