"""add: residual add of two tensors of one shape, the output's (no broadcast), a fused ReLU/ReLU6.
Both inputs are rescaled to the output scale with one shared shift and rounded once:

    out = clamp(z_out + rshift_round((a - z_a)*m_a + (b - z_b)*m_b, shift), qmin, qmax)
"""
import operator

import numpy as np
import torch

from model import qmath
from model.ops.base import OpKind, QuantizeError, matcher
from model.ops.checks import same_shape

match = matcher(functions={operator.add, operator.iadd, torch.add}, methods={"add", "add_"})


def quantize(b, node, mod):
    args = [a for a in node.args if hasattr(a, "op")]
    if len(args) != 2 or len(node.args) != 2 or node.kwargs:
        raise QuantizeError(f"{b.cfg.model}: add '{node.name}' must add exactly two tensors")
    inputs = [b.where[a] for a in args]
    shapes = [b.ops[i]["shape"] for i in inputs]
    if shapes[0] != shapes[1]:
        raise QuantizeError(f"{b.cfg.model}: add '{node.name}' of shapes {'x'.join(map(str, shapes[0]))} and "
                            f"{'x'.join(map(str, shapes[1]))}; add takes two tensors of one shape (a broadcast add, "
                            f"such as CxHxW + Cx1x1, is not an op of the integer graph)")
    act, out_node = b.fused_activation(node)
    op = {"op": "add", "name": b.name_for(node)}
    b.emit(op, inputs, node, out_node, act)
    ratios = [b.ops[i]["scale"] / op["scale"] for i in inputs]
    _, shift = b.multiplier(max(ratios), op["name"])
    b.set_requant(op["name"], [int(qmath.round_half_up(r * 2.0 ** shift)) for r in ratios], [shift])


def _check_shapes(xs, op):
    """The contract's add: both inputs of the output's shape (no broadcast)."""
    c, h, w = op.shape
    shapes = [tuple(x.shape[1:]) for x in xs]
    if shapes[0] != shapes[1] or any(int(np.prod(s)) != c * h * w for s in shapes):
        raise ValueError(f"add '{op.name}': inputs of shapes {' and '.join('x'.join(map(str, s)) for s in shapes)}, "
                         f"the output {c}x{h}x{w}; add takes two tensors of its output's shape")


def run_numpy(xs, op, p):
    _check_shapes(xs, op)
    acc = sum((x - z) * m for x, z, m in zip(xs, op.in_zero_points, p["multiplier"]))
    return np.clip(op.zero_point + qmath.rshift_round(acc, p["shift"][0]), op.qmin, op.qmax)


def run_torch(xs, op, p):
    _check_shapes(xs, op)
    m, s = p["multiplier"].tolist(), int(p["shift"][0])
    acc = sum((x - z) * mi for x, z, mi in zip(xs, op.in_zero_points, m))
    return (op.zero_point + ((acc + ((1 << s) >> 1)) >> s)).clamp_(op.qmin, op.qmax)


def to_onnx(g, xs, op, p):
    a, b = (g.node("Mul", [g.int64_minus(x, z), g.const(m, np.int64, "multiplier")])
            for x, z, m in zip(xs, op.in_zero_points, p["multiplier"]))
    return g.clamp(g.rshift_round(g.node("Add", [a, b]), p["shift"][0]), op)


def check(v):
    """The rules between fields (model/formats/tuple_check.py; c/ops/add.c add_validate)."""
    for k in range(len(v.xs)):
        same_shape(v, k)


KIND = OpKind("add", 5, (2, 2), (), "2", "1", False, match, quantize, run_numpy, run_torch, to_onnx, check=check)
