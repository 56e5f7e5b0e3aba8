"""The numpy integer model: runs the integer graph with each kind's numpy kernel
(model/ops/KIND.py, `run_numpy`: the executable specification of every op).

No torch inside the kernels. Activations are uint8 values held in int64 arrays (N, C, H, W).
"""
import numpy as np

from model import work
from model.ops import KINDS


def params_by_op(state_dict, convert):
    """{op name: {field: convert(tensor)}} of a state_dict keyed NAME.FIELD."""
    params = {}
    for key, value in state_dict.items():
        name, field = key.rsplit(".", 1)
        params.setdefault(name, {})[field] = convert(field, value)
    return params


def with_input_zero_points(quant_list):
    """Copies of the ops, each with `in_zero_points`: its inputs' zero points, in order."""
    return [dict(op, in_zero_points=[quant_list[i]["zero_point"] for i in op["inputs"]]) for op in quant_list]


class NumpyIntegerModel:
    """Runs the integer graph `(state_dict, quant_list)` on uint8 images; returns integer logits.
    A graph needing more than max_work operations per image (None: model/work.py's cap) is refused
    (work.WorkError), as the C engine refuses it."""

    def __init__(self, state_dict, quant_list, max_work=None):
        work.check(quant_list, max_work)
        self.ops = with_input_zero_points(quant_list)
        as_numpy = lambda v: v.numpy() if hasattr(v, "numpy") else np.asarray(v)
        self.params = params_by_op(state_dict, lambda field, v: as_numpy(v) if field == "weight"
                                   else as_numpy(v).astype(np.int64))

    def __call__(self, images):
        values = []
        for op in self.ops:
            xs = [images] if op["op"] == "input" else [values[i] for i in op["inputs"]]
            values.append(KINDS[op["op"]].numpy(xs, op, self.params.get(op["name"], {})))
        return values[-1].reshape(len(values[-1]), -1)
