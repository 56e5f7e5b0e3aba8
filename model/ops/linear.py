"""linear: fully connected on the input read flat (CHW order), bias, a fused ReLU/ReLU6.

    acc[c] = bias[c] + sum_k (x[k] - z_x)(w[c][k] - z_w);   out = requantize(acc, m[c], shift[c])
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.ops.base import OpKind, matcher, np_requantize, torch_requantize
from model.ops.checks import check_weights, shape_text
from model.ops.weighted import quantize_weighted


match = matcher(modules=(nn.Linear,))


def quantize(b, node, mod):
    quantize_weighted(b, node, "linear", mod.weight, mod.bias, {})


def run_numpy(xs, op, p):
    x = (xs[0].reshape(len(xs[0]), -1) - op.in_zero_points[0]).astype(np.float64)
    w = p["weight"].astype(np.float64) - op.weight_zero_point
    acc = np.rint(x @ w.T).astype(np.int64) + p["bias"]
    return np_requantize(acc, op, p, (1, -1)).reshape(len(x), -1, 1, 1)


def run_torch(xs, op, p):
    x = (xs[0] - op.in_zero_points[0]).to(torch.float64).flatten(1)
    w = p["weight"].to(torch.float64) - op.weight_zero_point
    acc = F.linear(x, w).round().to(torch.int64) + p["bias"].to(torch.int64)
    out = torch_requantize(acc, p["multiplier"].to(torch.int64), p["shift"].to(torch.int64), op)
    return out[:, :, None, None]


def to_onnx(g, xs, op, p):
    w, wz = g.weight(p["weight"].T, op.weight_zero_point)
    x = g.node("Flatten", [xs[0]], axis=1)
    acc = g.node("MatMulInteger", [x, w, g.const(op.in_zero_points[0], np.uint8, "x_zero_point"), wz])
    acc = g.node("Add", [acc, g.const(p["bias"], np.int32, "bias")])
    out = g.requantize(g.cast(acc, np.int64), p["multiplier"], p["shift"], op)
    return g.node("Unsqueeze", [out, g.const([2, 3], np.int64, "axes")])


def check(v):
    """The rules between fields (model/formats/tuple_check.py; c/ops/linear.c linear_validate)."""
    if (v.h, v.w) != (1, 1):
        v.fail(f"output shape {shape_text(v.op)}, expected {v.c}x1x1")
    check_weights(v, math.prod(v.x()["shape"]), [v.c, math.prod(v.x()["shape"])])


KIND = OpKind("linear", 2, (1, 1), ("weight_zero_point", "weight_offset", "bias_offset", "weight_bits"), "C", "C", True,
              match, quantize, run_numpy, run_torch, to_onnx, check=check)
