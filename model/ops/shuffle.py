"""shuffle: ShuffleNet's channel shuffle, `x.view(b, groups, C // groups, h, w)` -> `transpose(1, 2)`
-> (`.contiguous()`) -> `.view(b, -1, h, w)`. The views keep the flat data order (aliases); the
transpose is this op. It only moves data: it keeps its input's scale, zero point and clamp.

    out[j * groups + i] = in[i * (C / groups) + j],   i < groups, j < C / groups   (channel planes)
"""
import torch
import torch.fx as fx

from model.ops.base import OpKind, QuantizeError, describe, emit_same_qparams
from model.ops.checks import same_qparams, same_shape

VIEWS = {"view", "reshape", torch.reshape}


def _dims(node):
    """The two dims a transpose node swaps, or None when they are not constants."""
    args = list(node.args[1:]) + [node.kwargs[k] for k in ("dim0", "dim1") if k in node.kwargs]
    return tuple(args) if len(args) == 2 and all(isinstance(a, int) for a in args) else None


def match(gm, node):
    """A transpose of dims 1 and 2 of a 5-D view (the shape is checked by quantize)."""
    if not ((node.op == "call_function" and node.target is torch.transpose) or
            (node.op == "call_method" and node.target == "transpose")):
        return None
    src = node.args[0] if node.args else None
    dims = _dims(node)
    if not isinstance(src, fx.Node) or src.op not in ("call_function", "call_method") or src.target not in VIEWS:
        return None
    if dims is None or sorted(d % 5 for d in dims) != [1, 2]:
        return None
    return True


def quantize(b, node, mod):
    view = node.args[0]
    src = b.where[view]
    x = b.ops[src]
    vshape = b.observer.shapes.get(view.name, [])
    c, h, w = x["shape"]
    if len(vshape) != 4 or vshape[0] * vshape[1] != c or list(vshape[2:]) != [h, w] or vshape[0] < 1:
        raise QuantizeError(f"{b.cfg.model}: unsupported {describe(b, node)} at node '{node.name}': of a view of "
                            f"{c}x{h}x{w} to {'x'.join(map(str, vshape))}, not a channel shuffle; supported: "
                            f"x.view(b, groups, c // groups, h, w).transpose(1, 2), then a view back to b x c x h x w")
    op = {"op": "shuffle", "name": b.name_for(node), "groups": int(vshape[0])}
    emit_same_qparams(b, node, op, src, shape=[c, h, w])


def run_numpy(xs, op, p):
    n, c, h, w = xs[0].shape
    g = op.groups
    return xs[0].reshape(n, g, c // g, h, w).transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)


def run_torch(xs, op, p):
    n, c, h, w = xs[0].shape
    g = op.groups
    index = torch.arange(c).reshape(g, c // g).t().reshape(-1)      # out channel j*g + i <- i*(c/g) + j
    return xs[0].index_select(1, index)


def to_onnx(g, xs, op, p):
    c, h, w = g.shape(xs[0])
    grouped = g.reshape(xs[0], [0, op.groups, c // op.groups, h, w])
    return g.reshape(g.node("Transpose", [grouped], perm=[0, 2, 1, 3, 4]), [0, c, h, w])


def check(v):
    """The rules between fields (model/formats/tuple_check.py; c/ops/shuffle.c shuffle_validate)."""
    same_shape(v)
    if v.c % v.op["groups"]:
        v.fail(f"groups {v.op['groups']} does not divide its {v.c} channels")
    same_qparams(v)


KIND = OpKind("shuffle", 9, (1, 1), ("groups",), "0", "0", False, match, quantize, run_numpy, run_torch, to_onnx,
              check=check)
