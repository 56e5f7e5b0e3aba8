"""The quantized torch model: the same integer graph computed with each kind's torch kernel
(model/ops/KIND.py, `run_torch`): an independent implementation of the numpy specification
(direct F.conv2d instead of im2col, depthwise convs as shifted int64 products, avg_pool2d as
a window sum). Activations are int64 tensors holding uint8 values; float64 convolutions are
exact because every partial sum is an integer below 2^53. Results must match the numpy model
bit for bit.
"""
import torch

from model import work
from model.graph import Graph
from model.ops import KINDS


class TorchIntegerModel(torch.nn.Module):
    """The graph on uint8 images (int64 tensors); refused over the work cap as NumpyIntegerModel."""

    def __init__(self, state_dict, quant_list, max_work=None):
        super().__init__()
        work.check(quant_list, max_work)
        self.graph = Graph.from_tuple(state_dict, quant_list)

    @torch.no_grad()
    def forward(self, images):
        return self.graph.run(images, lambda op, xs: KINDS[op.kind].torch(xs, op, op.tensors)).flatten(1)
