"""avgpool: window mean, rounded (no padding): AvgPool2d / F.avg_pool2d, and the adaptive pools
and means over H, W whose windows are uniform (model/ops/adaptive_avgpool.py).

    out = requantize(sum_window(x) - kh*kw*z_x, m, shift),   m / 2^shift = s_in / (kh*kw*s_out)
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.ops.base import OpKind, QuantizeError, np_requantize, np_windows, pair, torch_requantize
from model.ops.checks import check_overflow, check_window, max_abs_centered, same_channels


def match(gm, node):
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        return mod if isinstance(mod, nn.AvgPool2d) else None
    if node.op == "call_function" and node.target is F.avg_pool2d:
        return nn.AvgPool2d(*node.args[1:], **node.kwargs)
    return None


def quantize(b, node, mod):
    bad = [what for what, on in (("padding", pair(mod.padding) != [0, 0]), ("ceil_mode", mod.ceil_mode),
                                 ("divisor_override", mod.divisor_override)) if on]
    if bad:
        raise QuantizeError(f"{b.cfg.model}: avgpool '{node.name}': {', '.join(bad)} unsupported (model.bin's "
                            f"avgpool has no padding); supported: AvgPool2d(kernel, stride) without them")
    stride = mod.stride if mod.stride is not None else mod.kernel_size
    emit(b, node, b.src(node), pair(mod.kernel_size), pair(stride))


def emit(b, node, src, kernel, stride):
    """Append the avgpool op of node reading op index src (also the uniform adaptive pools')."""
    act, out_node = b.fused_activation(node)
    op = {"op": "avgpool", "name": b.name_for(node), "kernel": kernel, "stride": stride}
    b.emit(op, [src], node, out_node, act)
    b.set_requant(op["name"], *zip(b.multiplier(b.ops[src]["scale"] / (kernel[0] * kernel[1] * op["scale"]),
                                                op["name"])))


def run_numpy(xs, op, p):
    count = op.kernel[0] * op.kernel[1]
    total = np_windows(xs[0], op.kernel, op.stride, (0, 0), 0).sum(axis=(4, 5))
    return np_requantize(total - count * op.in_zero_points[0], op, p)


def run_torch(xs, op, p):
    total = F.avg_pool2d(xs[0].to(torch.float64), op.kernel, op.stride, divisor_override=1)
    count = op.kernel[0] * op.kernel[1]
    acc = total.round().to(torch.int64) - count * op.in_zero_points[0]
    return torch_requantize(acc, p["multiplier"].to(torch.int64), p["shift"].to(torch.int64), op)


def to_onnx(g, xs, op, p):
    # the window sums of x - z_x: a depthwise ConvInteger with weights 1
    c = g.shape(xs[0])[0]
    ones = g.const(np.ones((c, 1, *op.kernel)), np.uint8, "ones")
    acc = g.node("ConvInteger", [xs[0], ones, g.const(op.in_zero_points[0], np.uint8, "x_zero_point"),
                                 g.const(0, np.uint8, "weight_zero_point")],
                 kernel_shape=op.kernel, strides=op.stride, group=c)
    return g.requantize(g.cast(acc, np.int64), p["multiplier"], p["shift"], op)


def check(v):
    """The rules between fields (model/formats/tuple_check.py; c/ops/avgpool.c avgpool_validate)."""
    op = v.op
    same_channels(v)
    check_window(v, op["kernel"], op["stride"], [0, 0, 0, 0])
    n = op["kernel"][0] * op["kernel"][1]
    check_overflow(v, n * max_abs_centered(v.x()), int(v.tensor("multiplier")[0]), "window sum")


KIND = OpKind("avgpool", 4, (1, 1), ("kernel_h", "kernel_w", "stride_h", "stride_w"), "1", "1", False,
              match, quantize, run_numpy, run_torch, to_onnx, check=check)
