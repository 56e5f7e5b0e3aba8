"""add: residual add of two tensors of one shape, a fused ReLU/ReLU6. Both inputs are rescaled
to the output scale with one shared shift and rounded once:

    out = clamp(z_out + rshift_round((a - z_a)*m_a + (b - z_b)*m_b, shift), qmin, qmax)
"""
import operator

import numpy as np
import torch

from model import qmath
from model.ops.base import OpKind, QuantizeError, matcher

match = matcher(functions={operator.add, operator.iadd, torch.add}, methods={"add", "add_"})


def quantize(b, node, mod):
    args = [a for a in node.args if hasattr(a, "op")]
    if len(args) != 2 or len(node.args) != 2 or node.kwargs:
        raise QuantizeError(f"{b.cfg.model}: add '{node.name}' must add exactly two tensors")
    act, out_node = b.fused_activation(node)
    inputs = [b.where[a] for a in args]
    op = {"op": "add", "name": b.name_for(node)}
    b.emit(op, inputs, node, out_node, act)
    ratios = [b.ops[i]["scale"] / op["scale"] for i in inputs]
    _, shift = b.multiplier(max(ratios), op["name"])
    b.set_requant(op["name"], [int(qmath.round_half_up(r * 2.0 ** shift)) for r in ratios], [shift])


def run_numpy(xs, op, p):
    acc = sum((x - z) * m for x, z, m in zip(xs, op["in_zero_points"], p["multiplier"]))
    return np.clip(op["zero_point"] + qmath.rshift_round(acc, p["shift"][0]), op["qmin"], op["qmax"])


def run_torch(xs, op, p):
    m, s = p["multiplier"].tolist(), int(p["shift"][0])
    acc = sum((x - z) * mi for x, z, mi in zip(xs, op["in_zero_points"], m))
    return (op["zero_point"] + ((acc + ((1 << s) >> 1)) >> s)).clamp_(op["qmin"], op["qmax"])


def to_onnx(g, xs, op, p):
    a, b = (g.node("Mul", [g.int64_minus(x, z), g.const(m, np.int64, "multiplier")])
            for x, z, m in zip(xs, op["in_zero_points"], p["multiplier"]))
    return g.clamp(g.rshift_round(g.node("Add", [a, b]), p["shift"][0]), op)


KIND = OpKind("add", 5, (2, 2), (), "2", "1", False, match, quantize, run_numpy, run_torch, to_onnx)
