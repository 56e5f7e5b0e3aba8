"""The numpy integer model: the executable specification of every op.

No torch inside. Activations are uint8 values held in int64 arrays (N, C, H, W).
Sums of products run through float64 matmuls: every partial sum is an integer
below 2^53 (the quantizer proves |acc| < 2^31), so BLAS computes them exactly.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from model.qmath import requantize, rshift_round


def _windows(x, kernel, stride, padding, pad_value):
    """(N, C, OH, OW, kh, kw) view of every kernel window."""
    ph, pw = padding
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    win = sliding_window_view(x, tuple(kernel), axis=(2, 3))
    return win[:, :, ::stride[0], ::stride[1]]


COLUMN_BUDGET = 1 << 25     # float64 im2col elements per chunk of images (256 MB)


def conv(x, op, p):
    w = p["weight"].astype(np.float64) - op["weight_zero_point"]
    cout, cin_g, kh, kw = w.shape
    groups = op["groups"]
    w = w.reshape(groups, cout // groups, -1)
    c, oh, ow = x.shape[1], op["shape"][1], op["shape"][2]
    chunk = max(1, COLUMN_BUDGET // (c * kh * kw * oh * ow))
    parts = []
    for i in range(0, len(x), chunk):
        xs = (x[i:i + chunk] - op["in_zero_point"]).astype(np.float64)   # padding with 0 here = padding with z_x
        win = _windows(xs, (kh, kw), op["stride"], op["padding"], 0.0)
        n = len(xs)
        # (N, G, Cg*kh*kw, OH*OW) columns against (G, Cout/G, Cg*kh*kw) weights
        cols = win.reshape(n, groups, cin_g, oh, ow, kh, kw).transpose(0, 1, 2, 5, 6, 3, 4)
        parts.append(np.matmul(w, cols.reshape(n, groups, cin_g * kh * kw, oh * ow)))
    acc = np.rint(np.concatenate(parts)).astype(np.int64).reshape(len(x), cout, oh, ow)
    acc += p["bias"].reshape(1, -1, 1, 1)
    return requantize(acc, p["multiplier"].reshape(1, -1, 1, 1), p["shift"].reshape(1, -1, 1, 1),
                      op["zero_point"], op["qmin"], op["qmax"])


def linear(x, op, p):
    xs = (x.reshape(len(x), -1) - op["in_zero_point"]).astype(np.float64)
    w = p["weight"].astype(np.float64) - op["weight_zero_point"]
    acc = np.rint(xs @ w.T).astype(np.int64) + p["bias"]
    out = requantize(acc, p["multiplier"], p["shift"], op["zero_point"], op["qmin"], op["qmax"])
    return out.reshape(len(x), -1, 1, 1)


def maxpool(x, op, p):
    # -1 is below every uint8 value, so padding never wins (each window holds a real pixel)
    return _windows(x, op["kernel"], op["stride"], op["padding"], -1).max(axis=(4, 5))


def avgpool(x, op, p):
    count = op["kernel"][0] * op["kernel"][1]
    total = _windows(x, op["kernel"], op["stride"], (0, 0), 0).sum(axis=(4, 5))
    return requantize(total - count * op["in_zero_point"], op["multiplier"], op["shift"],
                      op["zero_point"], op["qmin"], op["qmax"])


def add(a, b, op):
    ma, mb = op["multipliers"]
    acc = (a - op["in_zero_points"][0]) * ma + (b - op["in_zero_points"][1]) * mb
    return np.clip(op["zero_point"] + rshift_round(acc, op["shift"]), op["qmin"], op["qmax"])


KERNELS = {"conv": conv, "linear": linear, "maxpool": maxpool, "avgpool": avgpool}


class NumpyIntegerModel:
    """Runs the integer graph `(state_dict, quant_list)` on uint8 images; returns integer logits."""

    def __init__(self, state_dict, quant_list):
        self.ops = []
        for op in quant_list:
            op = dict(op)
            if op["op"] != "input":
                zps = [quant_list[i]["zero_point"] for i in op["inputs"]]
                op["in_zero_point"], op["in_zero_points"] = zps[0], zps
            self.ops.append(op)
        self.params = {}
        for key, value in state_dict.items():
            name, field = key.rsplit(".", 1)
            arr = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
            self.params.setdefault(name, {})[field] = arr if field == "weight" else arr.astype(np.int64)

    def __call__(self, images):
        values = []
        for op in self.ops:
            if op["op"] == "input":
                out = np.asarray(images, dtype=np.int64)
            elif op["op"] == "add":
                out = add(values[op["inputs"][0]], values[op["inputs"][1]], op)
            else:
                out = KERNELS[op["op"]](values[op["inputs"][0]], op, self.params.get(op["name"]))
            values.append(out)
        return values[-1].reshape(len(values[-1]), -1)
