"""conv: 2-D convolution (any stride and dilation, zero padding on each side, groups), bias and a
fused ReLU/ReLU6.  A zero pad before it (F.pad, nn.ZeroPad2d) is folded into its padding.

    acc[co] = bias[co] + sum (x - z_x)(w - z_w)   over the window of the group of co (taps
              dilation apart), padding holding z_x (so it adds 0); int32, bound proven
    out     = requantize(acc, m[co], shift[co])

Also the home of a BatchNorm that cannot be folded into a conv (after a ReLU, or on the
input): y = gamma (x - mean) / sqrt(var + eps) + beta is a 1x1 depthwise conv.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.limits import MAX_SCRATCH
from model.ops.base import OpKind, QuantizeError, matcher, np_requantize, np_windows, pair, sides, torch_requantize
from model.ops.checks import check_weights, check_window
from model.ops.weighted import quantize_weighted

COLUMN_BUDGET = 1 << 25     # float64 im2col elements per chunk of images (256 MB)


class ZeroPaddedConv(nn.Module):
    """A Conv2d reading a zero pad (F.pad, nn.ZeroPad2d) that graph_passes.fold_zero_padding folded
    into it: `pads` [top, left, bottom, right] added to the conv's own padding; the same float function."""

    def __init__(self, conv, pads):
        super().__init__()
        self.conv, self.pads = conv, list(pads)

    def forward(self, x):
        top, left, bottom, right = self.pads
        return self.conv(F.pad(x, (left, right, top, bottom)))


match = matcher(modules=(nn.Conv2d, nn.BatchNorm2d, ZeroPaddedConv))


def conv_geometry(b, name, mod):
    """(padding [top, left, bottom, right], dilation [h, w]) of a Conv2d, a folded zero pad included."""
    extra = mod.pads if isinstance(mod, ZeroPaddedConv) else [0, 0, 0, 0]
    mod = mod.conv if isinstance(mod, ZeroPaddedConv) else mod
    dilation = pair(mod.dilation)
    if mod.padding_mode != "zeros":
        raise QuantizeError(f"{b.cfg.model}: conv '{name}': padding_mode='{mod.padding_mode}' unsupported; "
                            f"supported: padding_mode='zeros'")
    if mod.padding == "valid":
        own = [0, 0, 0, 0]
    elif mod.padding == "same":     # torch's rule: d (k - 1) in all, the smaller half before
        total = [d * (k - 1) for k, d in zip(pair(mod.kernel_size), dilation)]
        own = [total[0] // 2, total[1] // 2, total[0] - total[0] // 2, total[1] - total[1] // 2]
    else:
        own = sides(pair(mod.padding))
    padding = [a + e for a, e in zip(own, extra)]
    extent = [d * (k - 1) + 1 for k, d in zip(pair(mod.kernel_size), dilation)]
    if any(p >= extent[i % 2] for i, p in enumerate(padding)):
        raise QuantizeError(f"{b.cfg.model}: conv '{name}': padding {padding} (top, left, bottom, right) reaches "
                            f"past its {extent[0]}x{extent[1]} window, so some outputs would see padding only; "
                            f"supported: padding below the window on each side")
    return padding, dilation


def quantize(b, node, mod):
    if isinstance(mod, nn.BatchNorm2d):
        if not mod.track_running_stats or mod.running_var is None:
            raise QuantizeError(f"{b.cfg.model}: batchnorm '{node.target}' has no running statistics")
        gamma = mod.weight.detach() if mod.affine else torch.ones_like(mod.running_var)
        beta = mod.bias.detach() if mod.affine else torch.zeros_like(mod.running_mean)
        scale = gamma / torch.sqrt(mod.running_var + mod.eps)
        weight, bias = scale.view(-1, 1, 1, 1), beta - mod.running_mean * scale
        fields = {"kernel": [1, 1], "stride": [1, 1], "padding": [0, 0, 0, 0], "dilation": [1, 1],
                  "groups": mod.num_features}
        return quantize_weighted(b, node, "conv", weight, bias, fields)
    padding, dilation = conv_geometry(b, b.name_for(node), mod)
    conv = mod.conv if isinstance(mod, ZeroPaddedConv) else mod
    fields = {"kernel": pair(conv.kernel_size), "stride": pair(conv.stride), "padding": padding,
              "dilation": dilation, "groups": int(conv.groups)}
    return quantize_weighted(b, node, "conv", conv.weight, conv.bias, fields)


def run_numpy(xs, op, p):
    x = xs[0]
    w = p["weight"].astype(np.float64) - op.weight_zero_point
    cout, cin_g, kh, kw = w.shape
    groups = op.groups
    w = w.reshape(groups, cout // groups, -1)
    c, oh, ow = x.shape[1], op.shape[1], op.shape[2]
    chunk = max(1, COLUMN_BUDGET // (c * kh * kw * oh * ow))
    parts = []
    # sums of products as float64 matmuls: every partial sum is an integer below 2^53 (the
    # quantizer proves |acc| < 2^31), so BLAS computes them exactly
    for i in range(0, len(x), chunk):
        xs_ = (x[i:i + chunk] - op.in_zero_points[0]).astype(np.float64)   # padding with 0 here = with z_x
        win = np_windows(xs_, (kh, kw), op.stride, op.padding, 0.0, op.dilation)
        n = len(xs_)
        # (N, G, Cg*kh*kw, OH*OW) columns against (G, Cout/G, Cg*kh*kw) weights
        cols = win.reshape(n, groups, cin_g, oh, ow, kh, kw).transpose(0, 1, 2, 5, 6, 3, 4)
        parts.append(np.matmul(w, cols.reshape(n, groups, cin_g * kh * kw, oh * ow)))
    acc = np.rint(np.concatenate(parts)).astype(np.int64).reshape(len(x), cout, oh, ow)
    return np_requantize(acc + p["bias"].reshape(1, -1, 1, 1), op, p)


def _depthwise(x, w, stride, dilation, oh, ow):
    """Depthwise conv (x padded) as kh*kw shifted products summed in exact int64: faster here
    than torch's float64 grouped conv (MobileNetV2's quant column: 101 vs 78 images/s)."""
    kh, kw = w.shape[2:]
    acc = torch.zeros(x.shape[0], x.shape[1], oh, ow, dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            y0, x0 = i * dilation[0], j * dilation[1]
            window = x[:, :, y0:y0 + stride[0] * (oh - 1) + 1:stride[0], x0:x0 + stride[1] * (ow - 1) + 1:stride[1]]
            acc += w[:, 0, i, j].view(1, -1, 1, 1) * window
    return acc


def run_torch(xs, op, p):
    top, left, bottom, right = op.padding
    x = F.pad(xs[0] - op.in_zero_points[0], (left, right, top, bottom))     # padding with 0 here = with z_x
    w = p["weight"].to(torch.int64) - op.weight_zero_point
    if op.groups == x.shape[1] == w.shape[0]:
        acc = _depthwise(x, w, op.stride, op.dilation, *op.shape[1:])
    else:
        acc = F.conv2d(x.to(torch.float64), w.to(torch.float64), stride=op.stride, dilation=op.dilation,
                       groups=op.groups).round().to(torch.int64)
    view = (1, -1, 1, 1)
    acc = acc + p["bias"].to(torch.int64).view(view)
    return torch_requantize(acc, p["multiplier"].to(torch.int64).view(view), p["shift"].to(torch.int64).view(view), op)


def to_onnx(g, xs, op, p):
    top, left, bottom, right = op.padding
    zx = op.in_zero_points[0]
    x = xs[0]
    if top or left or bottom or right:          # padding holding z_x adds 0, as in the numpy kernel
        x = g.node("Pad", [x, g.const([0, 0, top, left, 0, 0, bottom, right], np.int64, "pads"),
                           g.const(zx, np.uint8, "pad_value")])
    w, wz = g.weight(p["weight"], op.weight_zero_point)
    acc = g.node("ConvInteger", [x, w, g.const(zx, np.uint8, "x_zero_point"), wz], kernel_shape=op.kernel,
                 strides=op.stride, dilations=op.dilation, group=op.groups)
    acc = g.node("Add", [acc, g.const(p["bias"].reshape(1, -1, 1, 1), np.int32, "bias")])
    view = (1, -1, 1, 1)
    return g.requantize(g.cast(acc, np.int64), p["multiplier"].reshape(view), p["shift"].reshape(view), op)


def check(v):
    """The rules between fields (model/formats/tuple_check.py; c/ops/conv.c conv_validate)."""
    op, x = v.op, v.x()
    groups = op["groups"]
    if x["shape"][0] % groups or v.c % groups:
        v.fail(f"groups {groups} does not divide its input's {x['shape'][0]} channels and its {v.c}")
    check_window(v, op["kernel"], op["stride"], op["padding"], op["dilation"])
    k = x["shape"][0] // groups * op["kernel"][0] * op["kernel"][1]
    check_weights(v, k, [v.c, x["shape"][0] // groups, *op["kernel"]])
    plane = (v.h * v.w + 7) // 8 * 8
    pads = op["padding"]
    for what, elems in (("im2col", k * plane),
                        ("padded input", (x["shape"][1] + pads[0] + pads[2]) * (x["shape"][2] + pads[1] + pads[3])
                         * x["shape"][0])):
        if elems > MAX_SCRATCH:
            v.fail(f"{elems} {what} elements, over the C engine's {MAX_SCRATCH} limit")


KIND = OpKind("conv", 1, (1, 1), ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_top", "pad_left",
                                   "pad_bottom", "pad_right", "dilation_h", "dilation_w", "groups",
                                   "weight_zero_point", "weight_offset", "bias_offset", "weight_bits"),
              "C", "C", True, match, quantize, run_numpy, run_torch, to_onnx, check=check)
