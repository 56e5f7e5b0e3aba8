"""Models for the whole-model work cap and the max pool kernels (tests/test_work_cap.py; the bench in
that file's docstring): a conv, a nearest upsample and a chain of max pools, quantized at a small size
and then, where asked, grown to a hostile one by rewriting the upsample's factor (the ops after it
only move data, so the graph stays legal: the same weights, zero points and clamps, bigger shapes).

    pool_chain(...) -> (state_dict, quant_list, uint8 images N x C x H x W)
"""
import copy

import torch
from torch import nn

from model.api import make_cfg
from model.quant.quantize import build_integer_graph


class PoolChain(nn.Module):
    """conv 3x3 (pad 1) -> ReLU -> nearest upsample x factor -> n_pools max pools (kernel, stride, padding)."""

    def __init__(self, in_ch, channels, factor, kernel, stride, padding, n_pools, ceil_mode=False):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, channels, 3, padding=1)
        self.up = nn.Upsample(scale_factor=factor, mode="nearest")
        self.pools = nn.Sequential(*[nn.MaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode)
                                     for _ in range(n_pools)])

    def forward(self, x):
        return self.pools(self.up(torch.relu(self.conv(x))))


def pool_chain(name="poolchain", in_ch=1, size=8, channels=1, factor=2, kernel=31, stride=1, padding=15,
               n_pools=3, ceil_mode=False, grow=1, n_images=2, seed=0):
    """The quantized PoolChain on `size` x `size` images; `grow` > 1 then multiplies the upsample's
    factor (and every later shape) by it without running anything: a hostile model in a few bytes."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = PoolChain(in_ch, channels, factor, kernel, stride, padding, n_pools, ceil_mode).eval()
    images = torch.randint(0, 256, (16 + n_images, in_ch, size, size), generator=gen, dtype=torch.uint8)
    state, quant = build_integer_graph(net, images[:16], make_cfg(model=name), "custom", {})
    if grow > 1:
        quant = grown(quant, grow)
    return state, quant, images[16:]


def grown(quant, grow):
    """The graph with its upsample's factor times `grow`, the shapes after it recomputed (stride-1
    pools that keep their input's size only)."""
    quant = copy.deepcopy(quant)
    up = next(i for i, op in enumerate(quant) if op["op"] == "upsample")
    quant[up]["factor"] = [f * grow for f in quant[up]["factor"]]
    c, h, w = quant[quant[up]["inputs"][0]]["shape"]
    quant[up]["shape"] = [c, h * quant[up]["factor"][0], w * quant[up]["factor"][1]]
    for op in quant[up + 1:]:
        assert op["op"] == "maxpool" and op["stride"] == [1, 1] and op["kernel"] == [2 * p + 1 for p in op["padding"]]
        op["shape"] = list(quant[op["inputs"][0]]["shape"])
    return quant
