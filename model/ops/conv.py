"""conv: 2-D convolution (any stride, zero padding, groups), bias and a fused ReLU/ReLU6.

    acc[co] = bias[co] + sum (x - z_x)(w - z_w)   over the window of the group of co,
              padding holding z_x (so it adds 0); int32, bound proven at quantization
    out     = requantize(acc, m[co], shift[co])

Also the home of a BatchNorm that cannot be folded into a conv (after a ReLU, or on the
input): y = gamma (x - mean) / sqrt(var + eps) + beta is a 1x1 depthwise conv.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.ops.base import OpKind, QuantizeError, matcher, np_requantize, np_windows, pair, torch_requantize
from model.ops.weighted import quantize_weighted

COLUMN_BUDGET = 1 << 25     # float64 im2col elements per chunk of images (256 MB)


match = matcher(modules=(nn.Conv2d, nn.BatchNorm2d))


def conv_padding(b, name, mod):
    """[pad_h, pad_w] of a Conv2d: model.bin's conv pads symmetrically with zeros and has no dilation."""
    where = f"{b.cfg.model}: conv '{name}'"
    if pair(mod.dilation) != [1, 1]:
        raise QuantizeError(f"{where}: dilation {tuple(mod.dilation)} unsupported (model.bin v2's conv record has no "
                            f"dilation field); supported: dilation=1")
    if mod.padding_mode != "zeros":
        raise QuantizeError(f"{where}: padding_mode='{mod.padding_mode}' unsupported; supported: "
                            f"padding_mode='zeros'")
    if mod.padding == "valid":
        return [0, 0]
    if mod.padding == "same":      # torch pads (k - 1) // 2 before and the rest after (stride 1)
        kernel = pair(mod.kernel_size)
        if any(k % 2 == 0 for k in kernel):
            raise QuantizeError(f"{where}: padding='same' with the even kernel {tuple(kernel)} pads asymmetrically "
                                f"(one more row/column after), which model.bin v2's symmetric pad_h/pad_w cannot "
                                f"express; supported: odd kernels (padding='same' = (k - 1) / 2 on each side)")
        return [(k - 1) // 2 for k in kernel]
    if isinstance(mod.padding, str):
        raise QuantizeError(f"{where}: padding='{mod.padding}' unsupported; supported: an int, a pair, 'same' "
                            f"(odd kernels), 'valid'")
    return pair(mod.padding)


def quantize(b, node, mod):
    if isinstance(mod, nn.BatchNorm2d):
        if not mod.track_running_stats or mod.running_var is None:
            raise QuantizeError(f"{b.cfg.model}: batchnorm '{node.target}' has no running statistics")
        gamma = mod.weight.detach() if mod.affine else torch.ones_like(mod.running_var)
        beta = mod.bias.detach() if mod.affine else torch.zeros_like(mod.running_mean)
        scale = gamma / torch.sqrt(mod.running_var + mod.eps)
        weight, bias = scale.view(-1, 1, 1, 1), beta - mod.running_mean * scale
        fields = {"kernel": [1, 1], "stride": [1, 1], "padding": [0, 0], "groups": mod.num_features}
        return quantize_weighted(b, node, "conv", weight, bias, fields)
    name = b.name_for(node)
    fields = {"kernel": pair(mod.kernel_size), "stride": pair(mod.stride), "padding": conv_padding(b, name, mod),
              "groups": int(mod.groups)}
    return quantize_weighted(b, node, "conv", mod.weight, mod.bias, fields)


def run_numpy(xs, op, p):
    x = xs[0]
    w = p["weight"].astype(np.float64) - op["weight_zero_point"]
    cout, cin_g, kh, kw = w.shape
    groups = op["groups"]
    w = w.reshape(groups, cout // groups, -1)
    c, oh, ow = x.shape[1], op["shape"][1], op["shape"][2]
    chunk = max(1, COLUMN_BUDGET // (c * kh * kw * oh * ow))
    parts = []
    # sums of products as float64 matmuls: every partial sum is an integer below 2^53 (the
    # quantizer proves |acc| < 2^31), so BLAS computes them exactly
    for i in range(0, len(x), chunk):
        xs_ = (x[i:i + chunk] - op["in_zero_points"][0]).astype(np.float64)   # padding with 0 here = with z_x
        win = np_windows(xs_, (kh, kw), op["stride"], op["padding"], 0.0)
        n = len(xs_)
        # (N, G, Cg*kh*kw, OH*OW) columns against (G, Cout/G, Cg*kh*kw) weights
        cols = win.reshape(n, groups, cin_g, oh, ow, kh, kw).transpose(0, 1, 2, 5, 6, 3, 4)
        parts.append(np.matmul(w, cols.reshape(n, groups, cin_g * kh * kw, oh * ow)))
    acc = np.rint(np.concatenate(parts)).astype(np.int64).reshape(len(x), cout, oh, ow)
    return np_requantize(acc + p["bias"].reshape(1, -1, 1, 1), op, p)


def _depthwise(x, w, stride, padding):
    """Depthwise conv as kh*kw shifted products summed in exact int64: faster here than torch's
    float64 grouped conv (MobileNetV2's quant column: 101 vs 78 images/s)."""
    kh, kw = w.shape[2:]
    oh = (x.shape[2] + 2 * padding[0] - kh) // stride[0] + 1
    ow = (x.shape[3] + 2 * padding[1] - kw) // stride[1] + 1
    padded = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    acc = torch.zeros(x.shape[0], x.shape[1], oh, ow, dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            window = padded[:, :, i:i + stride[0] * (oh - 1) + 1:stride[0], j:j + stride[1] * (ow - 1) + 1:stride[1]]
            acc += w[:, 0, i, j].view(1, -1, 1, 1) * window
    return acc


def run_torch(xs, op, p):
    x = xs[0] - op["in_zero_points"][0]
    w = p["weight"].to(torch.int64) - op["weight_zero_point"]
    if op["groups"] == x.shape[1] == w.shape[0]:
        acc = _depthwise(x, w, op["stride"], op["padding"])
    else:
        acc = F.conv2d(x.to(torch.float64), w.to(torch.float64), stride=op["stride"], padding=op["padding"],
                       groups=op["groups"]).round().to(torch.int64)
    view = (1, -1, 1, 1)
    acc = acc + p["bias"].to(torch.int64).view(view)
    return torch_requantize(acc, p["multiplier"].to(torch.int64).view(view), p["shift"].to(torch.int64).view(view), op)


KIND = OpKind("conv", 1, (1, 1), ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w", "groups",
                                   "weight_zero_point", "weight_offset", "bias_offset"),
              "C", "C", True, match, quantize, run_numpy, run_torch)
