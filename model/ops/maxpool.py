"""maxpool: window maximum; keeps its input's scale, zero point and clamp (max commutes with
the monotone quantizer), so no requantization. Padding never wins (pad < kernel: every
window holds a real element). ceil_mode as PyTorch's: the output size rounds up, so a last
window may reach past the padded input (what it reaches is padding too), but never starts
past the input and its left padding."""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.ops.base import OpKind, QuantizeError, np_windows, pair
from model.ops.checks import check_window, same_channels, same_qparams


def match(gm, node):
    if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.MaxPool2d):
        return gm.get_submodule(node.target)
    if node.op == "call_function" and node.target is F.max_pool2d:
        return nn.MaxPool2d(*node.args[1:], **node.kwargs)
    return None


def quantize(b, node, mod):
    if pair(mod.dilation) != [1, 1]:
        raise QuantizeError(f"{b.cfg.model}: maxpool '{node.name}': dilation {pair(mod.dilation)} unsupported; "
                            f"supported: dilation 1")
    src = b.src(node)
    stride = mod.stride if mod.stride is not None else mod.kernel_size
    op = {"op": "maxpool", "name": b.name_for(node), "kernel": pair(mod.kernel_size), "stride": pair(stride),
          "padding": pair(mod.padding), "ceil_mode": int(mod.ceil_mode)}
    same = b.ops[src]
    b.emit(op, [src], node, node, None, qparams=(same["scale"], same["zero_point"]),
           clamp=(same["qmin"], same["qmax"]))


def ceil_extra(op, size):
    """[h, w] of the padding past the end that ceil_mode's last windows reach into, input H x W `size`."""
    return [max(0, (o - 1) * s + k - (n + 2 * pad)) for o, s, k, n, pad in
            zip(op.shape[1:], op.stride, op.kernel, size, op.padding)]


def run_numpy(xs, op, p):
    # -1 is below every uint8 value, so padding never wins
    x, (oh, ow) = xs[0], op.shape[1:]
    extra = ceil_extra(op, x.shape[2:])
    x = np.pad(x, ((0, 0), (0, 0), (0, extra[0]), (0, extra[1])), constant_values=-1)
    return np_windows(x, op.kernel, op.stride, op.padding, -1)[:, :, :oh, :ow].max(axis=(4, 5))


def run_torch(xs, op, p):
    return F.max_pool2d(xs[0].to(torch.float64), op.kernel, op.stride, op.padding,
                        ceil_mode=bool(op.ceil_mode)).to(torch.int64)


def to_onnx(g, xs, op, p):
    # explicit padding, so that MaxPool's own ceil_mode rule is not involved: 0 here, as every window
    # holds a real element (>= 0) the pad never wins either; the padded input has exactly OH x OW windows
    (ph, pw), (eh, ew) = op.padding, ceil_extra(op, g.shape(xs[0])[1:])
    x = xs[0]
    if ph or pw or eh or ew:
        x = g.node("Pad", [x, g.const([0, 0, ph, pw, 0, 0, ph + eh, pw + ew], np.int64, "pads"),
                           g.const(0, np.uint8, "pad_value")])
    return g.node("MaxPool", [x], kernel_shape=op.kernel, strides=op.stride)


def check(v):
    """The rules between fields (model/formats/tuple_check.py; c/ops/maxpool.c maxpool_validate)."""
    op = v.op
    same_channels(v)
    check_window(v, op["kernel"], op["stride"], op["padding"] * 2, ceil_mode=op["ceil_mode"])
    same_qparams(v)


KIND = OpKind("maxpool", 3, (1, 1),
              ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w", "ceil_mode"),
              "0", "0", False, match, quantize, run_numpy, run_torch, to_onnx, check=check)
