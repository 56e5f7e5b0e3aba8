"""upsample: nearest-neighbour upsampling by integer factors, `nn.Upsample(scale_factor=k,
mode='nearest')`, `nn.UpsamplingNearest2d`, `F.interpolate(x, scale_factor=k)` or `size=` giving
integer factors (mode 'nearest' or 'nearest-exact': the same at integer factors). It only moves
data: it keeps its input's scale, zero point and clamp.

    out[c][y][x] = in[c][y / scale_h][x / scale_w]      (integer division)

The node is applied to a tensor of element indices and must give exactly that; other modes
(bilinear, bicubic, ...) and non-integer factors are refused.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.ops.base import OpKind, QuantizeError, describe, emit_same_qparams, index_tensor, matcher, meta_value
from model.ops.checks import same_qparams, shape_text

MODULES = (nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)
FUNCTIONS = {F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear}
NEAREST = ("nearest", "nearest-exact")


match = matcher(MODULES, FUNCTIONS)


def _mode(node, mod):
    if node.op == "call_module":
        return "bilinear" if isinstance(mod, nn.UpsamplingBilinear2d) else mod.mode
    if node.target is F.upsample_bilinear:
        return "bilinear"
    if node.target is F.upsample_nearest:
        return "nearest"
    mode = node.args[3] if len(node.args) > 3 else node.kwargs.get("mode", "nearest")
    return mode


def quantize(b, node, mod):
    src_node = node.args[0]
    src = b.where[src_node]
    c, h, w = b.ops[src]["shape"]
    oc, oh, ow = b.shape_of(node)
    mode = _mode(node, mod)
    if mode not in NEAREST:
        raise QuantizeError(f"{b.cfg.model}: unsupported {describe(b, node)} at node '{node.name}': upsampling "
                            f"mode '{mode}'; supported: mode='nearest' with integer factors "
                            f"(nn.Upsample(scale_factor=2, mode='nearest'), F.interpolate(x, scale_factor=2))")
    refused = (f"{b.cfg.model}: unsupported {describe(b, node)} at node '{node.name}': upsampling {c}x{h}x{w} to "
               f"{oc}x{oh}x{ow} is not by integer factors; supported: nearest upsampling by integer factors "
               f"(scale_factor=2 or (2, 1), or a size that is a multiple of the input's)")
    if oc != c or oh % h or ow % w or oh < h or ow < w:
        raise QuantizeError(refused)
    factor = [oh // h, ow // w]
    idx = index_tensor([c, h, w])

    def tensor_of(a):
        if a is src_node:
            return idx
        raise QuantizeError(f"{b.cfg.model}: upsampling '{node.name}': its arguments are computed from the tensor "
                            f"'{a.name}'; use constants or sizes of its input")

    args, kwargs = meta_value(b, node.args, tensor_of), meta_value(b, node.kwargs, tensor_of)
    with torch.no_grad():
        got = mod(*args, **kwargs) if node.op == "call_module" else node.target(*args, **kwargs)
    want = idx.repeat_interleave(factor[0], dim=2).repeat_interleave(factor[1], dim=3)
    if got.shape != want.shape or not torch.equal(got, want):
        raise QuantizeError(refused)
    op = {"op": "upsample", "name": b.name_for(node), "factor": factor}
    emit_same_qparams(b, node, op, src, shape=[c, oh, ow])


def run_numpy(xs, op, p):
    sh, sw = op.factor
    return xs[0].repeat(sh, axis=2).repeat(sw, axis=3)


def run_torch(xs, op, p):
    sh, sw = op.factor
    n, c, h, w = xs[0].shape
    return xs[0].reshape(n, c, h, 1, w, 1).expand(n, c, h, sh, w, sw).reshape(n, c, h * sh, w * sw)


def to_onnx(g, xs, op, p):
    # each element repeated (the torch kernel's expand): no coordinate rule of Resize involved
    (sh, sw), (c, h, w) = op.factor, g.shape(xs[0])
    x = g.node("Expand", [g.reshape(xs[0], [0, c, h, 1, w, 1]), g.const([1, 1, 1, sh, 1, sw], np.int64, "repeats")])
    return g.reshape(x, [0, c, h * sh, w * sw])


def check(v):
    """The rules between fields (model/formats/tuple_check.py; c/ops/upsample.c upsample_validate)."""
    (c, h, w), (sh, sw) = v.x()["shape"], v.op["factor"]
    if [c, h * sh, w * sw] != v.op["shape"]:
        v.fail(f"output {shape_text(v.op)}, but its input op {v.op['inputs'][0]} of {c}x{h}x{w} by {sh}x{sw} gives "
               f"{c}x{h * sh}x{w * sw}")
    same_qparams(v)


KIND = OpKind("upsample", 11, (1, 1), ("scale_h", "scale_w"), "0", "0", False, match, quantize, run_numpy,
              run_torch, to_onnx, check=check)
