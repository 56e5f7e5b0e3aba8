"""adaptive_avgpool: AdaptiveAvgPool2d / F.adaptive_avg_pool2d and the mean over H, W
(`x.mean((2, 3))`, `torch.mean(x, dim=[-1, -2], keepdim=True)`: without keepdim its output is
C (x1x1), the flatten it implies being free).  Uniform windows (the output size divides the input
size: the global mean, VGG's 7x7 on a 7x7 map) are an avgpool op; otherwise each output position
has its own window, PyTorch's

    rows [floor(oy*H/OH), ceil((oy+1)*H/OH)), columns [floor(ox*W/OW), ceil((ox+1)*W/OW))

(windows overlap, and repeat the input when OH > H), n_p = its size, and its own requantization:

    out[c][p] = requantize(sum_window_p(x) - n_p*z_x, m[p], shift[p]),  m[p] / 2^shift[p] = s_in / (n_p*s_out)
"""
import itertools

import numpy as np
import torch
from torch import nn

from model.ops import avgpool
from model.ops.base import OpKind, matcher, np_requantize, torch_requantize
from model.ops.checks import check_overflow, max_abs_centered, same_channels

MEAN = {torch.mean, "mean"}
_adaptive = matcher(modules=(nn.AdaptiveAvgPool2d,), functions={nn.functional.adaptive_avg_pool2d})


def _global_mean(node):
    """AdaptiveAvgPool2d(1) for a mean over exactly dims 2 and 3 (of N x C x H x W), else None."""
    args = list(node.args[1:])
    dims = args[0] if args else node.kwargs.get("dim", node.kwargs.get("axis"))
    keepdim = args[1] if len(args) > 1 else node.kwargs.get("keepdim", False)
    if isinstance(dims, int) or dims is None or len(args) > 2 or node.kwargs.get("dtype") is not None:
        return None
    if not isinstance(keepdim, bool) or not all(isinstance(d, int) for d in dims):
        return None
    return nn.AdaptiveAvgPool2d(1) if sorted(d % 4 for d in dims) == [2, 3] and len(dims) == 2 else None


def match(gm, node):
    if node.op in ("call_function", "call_method") and node.target in MEAN:
        return _global_mean(node)
    return _adaptive(gm, node)


def windows(size, out):
    """[(lo, hi)] of each output index along one axis: PyTorch's adaptive pooling windows."""
    return [(o * size // out, -(-(o + 1) * size // out)) for o in range(out)]


def quantize(b, node, mod):
    src = b.src(node)
    _, h, w = b.ops[src]["shape"]
    oh, ow = b.shape_of(node)[1:]
    if h % oh == 0 and w % ow == 0:
        return avgpool.emit(b, node, src, [h // oh, w // ow], [h // oh, w // ow])
    act, out_node = b.fused_activation(node)
    op = b.emit({"op": "adaptive_avgpool", "name": b.name_for(node)}, [src], node, out_node, act)
    counts = [(y1 - y0) * (x1 - x0) for y0, y1 in windows(h, oh) for x0, x1 in windows(w, ow)]
    b.set_requant(op["name"], *zip(*(b.multiplier(b.ops[src]["scale"] / (n * op["scale"]), op["name"])
                                     for n in counts)))


def _sums(x, oh, ow):
    """(N, C, OH*OW) window sums and the (OH*OW,) window sizes."""
    rows, cols = windows(x.shape[2], oh), windows(x.shape[3], ow)
    sums = [x[:, :, y0:y1, x0:x1].sum(axis=(2, 3)) for y0, y1 in rows for x0, x1 in cols]
    counts = [(y1 - y0) * (x1 - x0) for y0, y1 in rows for x0, x1 in cols]
    return sums, counts


def run_numpy(xs, op, p):
    oh, ow = op.shape[1:]
    sums, counts = _sums(xs[0], oh, ow)
    acc = np.stack(sums, axis=2) - np.array(counts) * op.in_zero_points[0]
    out = np_requantize(acc, op, p, view=(1, 1, -1))
    return out.reshape(len(out), -1, oh, ow)


def run_torch(xs, op, p):
    oh, ow = op.shape[1:]
    sums, counts = _sums(xs[0], oh, ow)
    acc = torch.stack(sums, dim=2) - torch.tensor(counts) * op.in_zero_points[0]
    out = torch_requantize(acc, p["multiplier"].to(torch.int64), p["shift"].to(torch.int64), op)
    return out.reshape(len(out), -1, oh, ow)


def to_onnx(g, xs, op, p):
    # the window sums of x - z_x: MatMulInteger of the flat H*W with a 0/1 matrix, a column a window
    (c, h, w), (oh, ow) = g.shape(xs[0]), op.shape[1:]
    member = np.zeros((h, w, oh * ow))
    for i, ((y0, y1), (x0, x1)) in enumerate(itertools.product(windows(h, oh), windows(w, ow))):
        member[y0:y1, x0:x1, i] = 1
    flat = g.reshape(xs[0], [0, c, h * w])
    acc = g.node("MatMulInteger", [flat, g.const(member.reshape(h * w, -1), np.uint8, "windows"),
                                   g.const(op.in_zero_points[0], np.uint8, "x_zero_point"),
                                   g.const(0, np.uint8, "windows_zero_point")])
    return g.reshape(g.requantize(g.cast(acc, np.int64), p["multiplier"], p["shift"], op), [0, c, oh, ow])


def check(v):
    """The rules between fields (model/formats/tuple_check.py; c/ops/adaptive_avgpool.c
    adaptive_avgpool_validate): every window's sum times its multiplier fits int64."""
    same_channels(v)
    _, h, w = v.x()["shape"]
    mag = max_abs_centered(v.x())
    multipliers = v.tensor("multiplier").reshape(-1).tolist()
    for oy, (y0, y1) in enumerate(windows(h, v.h)):
        for ox, (x0, x1) in enumerate(windows(w, v.w)):
            check_overflow(v, (y1 - y0) * (x1 - x0) * mag, multipliers[oy * v.w + ox], "window sum")


KIND = OpKind("adaptive_avgpool", 12, (1, 1), (), "HW", "HW", False, match, quantize, run_numpy, run_torch, to_onnx,
              check=check)
