"""The numpy integer model: runs the integer graph with each kind's numpy kernel
(model/ops/KIND.py, `run_numpy`: the executable specification of every op).

No torch inside the kernels. Activations are uint8 values held in int64 arrays (N, C, H, W).
"""
import numpy as np

from model import work
from model.graph import Graph
from model.ops import KINDS


def numpy_tensor(field, value):
    """A tensor as the numpy kernels read it: weights as they are stored (int8 or uint8), every other
    tensor int64."""
    value = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
    return value if field == "weight" else value.astype(np.int64)


def numpy_graph(state_dict, quant_list):
    """The Graph with the tensors the numpy kernels read (numpy_tensor)."""
    return Graph.from_tuple(state_dict, quant_list, numpy_tensor)


def run_numpy(op, xs):
    """One op by its kind's numpy kernel: Graph.walk's `run` for the numpy engine."""
    return KINDS[op.kind].numpy(xs, op, op.tensors)


class NumpyIntegerModel:
    """Runs the integer graph `(state_dict, quant_list)` on uint8 images; returns integer logits.
    A graph needing more than max_work operations per image (None: model/work.py's cap) is refused
    (work.WorkError), as the C engine refuses it."""

    def __init__(self, state_dict, quant_list, max_work=None):
        work.check(quant_list, max_work)
        self.graph = numpy_graph(state_dict, quant_list)

    def __call__(self, images):
        out = self.graph.run(images, run_numpy)
        return out.reshape(len(out), -1)
