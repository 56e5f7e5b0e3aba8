"""avgpool: window mean, rounded (no padding); AdaptiveAvgPool2d / F.adaptive_avg_pool2d when the
windows are uniform; the global mean over H, W (`x.mean((2, 3))`, `torch.mean(x, dim=[-1, -2],
keepdim=True)`): without keepdim its output is C (x1x1), the flatten it implies being free.

    out = requantize(sum_window(x) - kh*kw*z_x, m, shift),   m / 2^shift = s_in / (kh*kw*s_out)
"""
import torch
import torch.nn.functional as F
from torch import nn

from model.ops.base import OpKind, QuantizeError, np_requantize, np_windows, pair, torch_requantize


MEAN = {torch.mean, "mean"}


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
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        return mod if isinstance(mod, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)) else None
    if node.op == "call_function" and node.target is F.avg_pool2d:
        return nn.AvgPool2d(*node.args[1:], **node.kwargs)
    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
        return nn.AdaptiveAvgPool2d(*node.args[1:], **node.kwargs)
    return None


def quantize(b, node, mod):
    src = b.src(node)
    _, h, w = b.ops[src]["shape"]
    oh, ow = b.shape_of(node)[1:]
    if isinstance(mod, nn.AdaptiveAvgPool2d):
        if h % oh or w % ow:
            raise QuantizeError(f"{b.cfg.model}: adaptive avgpool '{node.name}' {h}x{w}->{oh}x{ow}: windows not "
                                f"uniform (the output size must divide the input size); supported: "
                                f"AdaptiveAvgPool2d to a divisor of {h}x{w} (e.g. 1, global), or AvgPool2d")
        kernel = stride = [h // oh, w // ow]
    else:
        bad = [what for what, on in (("padding", pair(mod.padding) != [0, 0]), ("ceil_mode", mod.ceil_mode),
                                     ("divisor_override", mod.divisor_override)) if on]
        if bad:
            raise QuantizeError(f"{b.cfg.model}: avgpool '{node.name}': {', '.join(bad)} unsupported (model.bin's "
                                f"avgpool has no padding); supported: AvgPool2d(kernel, stride) without them")
        kernel = pair(mod.kernel_size)
        stride = pair(mod.stride if mod.stride is not None else mod.kernel_size)
    act, out_node = b.fused_activation(node)
    op = {"op": "avgpool", "name": b.name_for(node), "kernel": kernel, "stride": stride}
    b.emit(op, [src], node, out_node, act)
    b.set_requant(op["name"], *zip(b.multiplier(b.ops[src]["scale"] / (kernel[0] * kernel[1] * op["scale"]),
                                                op["name"])))


def run_numpy(xs, op, p):
    count = op["kernel"][0] * op["kernel"][1]
    total = np_windows(xs[0], op["kernel"], op["stride"], (0, 0), 0).sum(axis=(4, 5))
    return np_requantize(total - count * op["in_zero_points"][0], op, p)


def run_torch(xs, op, p):
    total = F.avg_pool2d(xs[0].to(torch.float64), op["kernel"], op["stride"], divisor_override=1)
    count = op["kernel"][0] * op["kernel"][1]
    acc = total.round().to(torch.int64) - count * op["in_zero_points"][0]
    return torch_requantize(acc, p["multiplier"].to(torch.int64), p["shift"].to(torch.int64), op)


KIND = OpKind("avgpool", 4, (1, 1), ("kernel_h", "kernel_w", "stride_h", "stride_w"), "1", "1", False,
              match, quantize, run_numpy, run_torch)
