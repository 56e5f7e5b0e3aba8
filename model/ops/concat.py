"""concat: tensors of one H x W joined on channels (torch.cat(..., dim=1)), a fused ReLU/ReLU6.
Each input is requantized to the output's scale on its own, one rounding:

    out[channels of input i] = clamp(z_out + rshift_round((x_i - z_i) * m_i, shift_i), qmin, qmax)
"""
import numpy as np
import torch

from model import qmath
from model.limits import MAX_INPUTS
from model.ops.base import OpKind, QuantizeError, matcher


match = matcher(functions={torch.cat, torch.concat})


def quantize(b, node, mod):
    tensors = node.args[0]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if not isinstance(tensors, (list, tuple)) or not 2 <= len(tensors) <= MAX_INPUTS:
        raise QuantizeError(f"{b.cfg.model}: concat '{node.name}' must join 2 to {MAX_INPUTS} tensors")
    if dim not in (1, -3):
        raise QuantizeError(f"{b.cfg.model}: concat '{node.name}' joins on dim {dim}; only channels (dim=1)")
    act, out_node = b.fused_activation(node)
    inputs = [b.where[t] for t in tensors]
    op = {"op": "concat", "name": b.name_for(node)}
    b.emit(op, inputs, node, out_node, act)
    b.set_requant(op["name"], *zip(*(b.multiplier(b.ops[i]["scale"] / op["scale"], op["name"]) for i in inputs)))


def run_numpy(xs, op, p):
    parts = [op.zero_point + qmath.rshift_round((x - z) * m, s)
             for x, z, m, s in zip(xs, op.in_zero_points, p["multiplier"], p["shift"])]
    return np.clip(np.concatenate(parts, axis=1), op.qmin, op.qmax)


def run_torch(xs, op, p):
    parts = [op.zero_point + (((x - z) * m + ((1 << s) >> 1)) >> s)
             for x, z, m, s in zip(xs, op.in_zero_points, p["multiplier"].tolist(), p["shift"].tolist())]
    return torch.cat(parts, dim=1).clamp_(op.qmin, op.qmax)


def to_onnx(g, xs, op, p):
    # z_out added to the joined parts, then one clamp: the numpy kernel's clamp of the joined parts
    parts = [g.rshift_round(g.node("Mul", [g.int64_minus(x, z), g.const(m, np.int64, "multiplier")]), s)
             for x, z, m, s in zip(xs, op.in_zero_points, p["multiplier"], p["shift"])]
    return g.clamp(g.node("Concat", parts, axis=1), op)


def check(v):
    """The rules between fields (model/formats/tuple_check.py; c/ops/concat.c concat_validate)."""
    for k, x in enumerate(v.xs):
        if x["shape"][1:] != v.op["shape"][1:]:
            v.fail(f"input {k} (op {v.op['inputs'][k]}) is {x['shape'][1]}x{x['shape'][2]}, the output {v.h}x{v.w}")
    channels = sum(x["shape"][0] for x in v.xs)
    if channels != v.c:
        v.fail(f"its inputs have {channels} channels together, the output {v.c}")


KIND = OpKind("concat", 6, (2, MAX_INPUTS), (), "n_inputs", "n_inputs", False, match, quantize, run_numpy, run_torch,
              to_onnx, check=check)
