"""slice: a range of channels, as ShuffleNet's channel split spells it: `x.chunk(2, dim=1)`,
`torch.chunk`, `x.split(n, dim=1)` / `torch.split` (one slice op per piece that is used: the
getitem nodes), and `x[:, a:b]`. It only moves data: it keeps its input's scale, zero point
and clamp. The output's C is the channel count:

    out[c] = in[channel_start + c]   (channel planes), c < C

What a node selects is found by applying it to a tensor of element indices: anything but a
contiguous channel range with step 1 and the whole H x W (slicing H or W, steps, the batch) is
refused.
"""
import operator

import numpy as np
import torch
import torch.fx as fx

from model.ops.base import OpKind, QuantizeError, describe, emit_same_qparams, index_tensor, meta_value
from model.ops.checks import same_qparams

SPLITS = {"chunk", "split", torch.chunk, torch.split}


def _is_split(node):
    return node.op in ("call_function", "call_method") and node.target in SPLITS


def match(gm, node):
    if _is_split(node):
        return True         # no op of its own: its getitem nodes are
    if node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[0], fx.Node):
        return True
    return None


def _selected(b, node, src_node, x_shape):
    """What the node selects of a 1 x C x H x W tensor of element indices."""
    idx = index_tensor(x_shape)

    def tensor_of(a):
        if a is src_node:
            return idx
        raise QuantizeError(f"{b.cfg.model}: slice '{node.name}': its arguments are computed from the tensor "
                            f"'{a.name}'; use constants or sizes of the sliced tensor")

    value = lambda a: meta_value(b, a, tensor_of)
    holder, key = node.args[0], node.args[1]
    if _is_split(holder):
        args, kwargs = value(holder.args), value(holder.kwargs)
        if holder.op == "call_method":
            pieces = getattr(args[0], holder.target)(*args[1:], **kwargs)
        else:
            pieces = holder.target(*args, **kwargs)
        return pieces[value(key)]
    return value(holder)[value(key)]


def quantize(b, node, mod):
    if _is_split(node):
        b.where[node] = b.where[node.args[0]]
        return
    if not node.users:
        return              # a piece nobody reads (a, _ = x.chunk(2, dim=1)): no op
    holder = node.args[0]
    src_node = holder.args[0] if _is_split(holder) else holder
    src = b.where[src_node]
    c, h, w = b.ops[src]["shape"]
    what = describe(b, holder) + " then " if _is_split(holder) else ""
    refused = (f"{b.cfg.model}: unsupported {what}{describe(b, node)} at node '{node.name}': it selects no range of "
               f"channels of {c}x{h}x{w}; supported: a channel split with step 1 and the whole H x W "
               f"(x.chunk(2, dim=1), x.split(n, dim=1), x[:, a:b])")
    try:
        piece = _selected(b, node, src_node, [c, h, w])
    except QuantizeError:
        raise
    except Exception as err:
        raise QuantizeError(f"{refused} ({err})") from None
    if not isinstance(piece, torch.Tensor) or piece.dim() != 4 or piece.shape[0] != 1 or piece.shape[1] < 1 \
            or list(piece.shape[2:]) != [h, w]:
        raise QuantizeError(refused)
    count = piece.shape[1]
    start = int(piece[0, 0, 0, 0].item()) // (h * w)
    if start + count > c or not torch.equal(piece, index_tensor([c, h, w])[:, start:start + count]):
        raise QuantizeError(refused)
    op = {"op": "slice", "name": b.name_for(node), "channel_start": start}
    emit_same_qparams(b, node, op, src, shape=[count, h, w])


def run_numpy(xs, op, p):
    start = op.channel_start
    return xs[0][:, start:start + op.shape[0]]


def run_torch(xs, op, p):
    return xs[0].narrow(1, op.channel_start, op.shape[0])


def to_onnx(g, xs, op, p):
    start = op.channel_start
    return g.node("Slice", [xs[0], g.const([start], np.int64, "starts"),
                            g.const([start + op.shape[0]], np.int64, "ends"), g.const([1], np.int64, "axes")])


def check(v):
    """The rules between fields (model/formats/tuple_check.py; c/ops/slice.c slice_validate)."""
    x = v.x()
    if x["shape"][1:] != v.op["shape"][1:]:
        v.fail(f"output {v.h}x{v.w}, its input op {v.op['inputs'][0]} is {x['shape'][1]}x{x['shape'][2]}")
    if v.op["channel_start"] + v.c > x["shape"][0]:
        v.fail(f"channels {v.op['channel_start']}..{v.op['channel_start'] + v.c - 1}, its input op "
               f"{v.op['inputs'][0]} has {x['shape'][0]}")
    same_qparams(v)


KIND = OpKind("slice", 10, (1, 1), ("channel_start",), "0", "0", False, match, quantize, run_numpy, run_torch,
              to_onnx, check=check)
