"""mul: elementwise product of two tensors, the second CxHxW like the first or Cx1x1 (broadcast over
H x W: a squeeze-and-excitation block's x * sigmoid(fc(gap(x)))), a fused ReLU/ReLU6. One rounding:

    out = clamp(z_out + rshift_round((a - z_a) * (b - z_b) * m, shift), qmin, qmax),
    m / 2^shift = s_a * s_b / s_out

|(a - z_a)(b - z_b)| < 2^16 and m < 2^31: the product fits int64. The record's first input is the
CxHxW one (multiplication commutes: the quantizer puts the broadcast one second).
"""
import operator

import torch
import torch.fx as fx

from model import qmath
from model.ops.base import OpKind, QuantizeError, matcher
from model.ops.checks import check_overflow, max_abs_centered, same_shape, shape_text

match = matcher(functions={operator.mul, operator.imul, torch.mul, torch.multiply},
                methods={"mul", "mul_", "multiply", "multiply_"})


def quantize(b, node, mod):
    args = list(node.args) + list(node.kwargs.values())
    tensors = [a for a in args if isinstance(a, fx.Node)]
    if len(tensors) != 2 or len(args) != 2:
        raise QuantizeError(f"{b.cfg.model}: mul '{node.name}' multiplies by a constant or takes extra arguments; "
                            f"only tensor * tensor is an op (fold a constant factor into the layer before it)")
    inputs = [b.where[a] for a in tensors]
    shapes = [b.ops[i]["shape"] for i in inputs]
    if shapes[0] != shapes[1] and shapes[0][1:] == [1, 1]:
        inputs, shapes = inputs[::-1], shapes[::-1]       # the full tensor first
    c, h, w = shapes[0]
    if shapes[1] not in ([c, h, w], [c, 1, 1]):
        raise QuantizeError(f"{b.cfg.model}: mul '{node.name}' of shapes {'x'.join(map(str, shapes[0]))} and "
                            f"{'x'.join(map(str, shapes[1]))}; only equal shapes or CxHxW * Cx1x1")
    act, out_node = b.fused_activation(node)
    op = {"op": "mul", "name": b.name_for(node)}
    b.emit(op, inputs, node, out_node, act, shape=[c, h, w])
    real = b.ops[inputs[0]]["scale"] * b.ops[inputs[1]]["scale"] / op["scale"]
    b.set_requant(op["name"], *zip(b.multiplier(real, op["name"])))


def run_numpy(xs, op, p):
    (za, zb), (m,), (s,) = op.in_zero_points, p["multiplier"], p["shift"]
    return qmath.requantize((xs[0] - za) * (xs[1] - zb), m, s, op.zero_point, op.qmin, op.qmax)


def run_torch(xs, op, p):
    (za, zb), m, s = op.in_zero_points, int(p["multiplier"][0]), int(p["shift"][0])
    acc = (xs[0] - za) * (xs[1] - zb) * m
    return (op.zero_point + ((acc + ((1 << s) >> 1)) >> s)).clamp_(op.qmin, op.qmax)


def to_onnx(g, xs, op, p):
    a, b = (g.int64_minus(x, z) for x, z in zip(xs, op.in_zero_points))
    return g.requantize(g.node("Mul", [a, b]), p["multiplier"], p["shift"], op)


def check(v):
    """The rules between fields (model/formats/tuple_check.py; c/ops/mul.c mul_validate)."""
    same_shape(v)
    b = v.x(1)
    if b["shape"] not in (v.op["shape"], [v.c, 1, 1]):
        v.fail(f"input 1 (op {v.op['inputs'][1]}) is {shape_text(b)}, neither the output's {shape_text(v.op)} nor "
               f"{v.c}x1x1")
    check_overflow(v, max_abs_centered(v.x()) * max_abs_centered(b), int(v.tensor("multiplier")[0]), "product")


KIND = OpKind("mul", 8, (2, 2), (), "1", "1", False, match, quantize, run_numpy, run_torch, to_onnx, check=check)
