"""pad: H and W padded on each side, `nn.ReflectionPad2d`, `nn.ReplicationPad2d`, `nn.ConstantPad2d`,
`nn.ZeroPad2d` or `F.pad(x, (left, right, top, bottom), mode, value)` (a zero pad that only convs
read is folded into their padding instead). It only moves data: it keeps its input's scale and
zero point (calibration widens the input's range to hold the constant: OpKind.widens_input), writes
the constant quantized at that scale, and its clamp widens to hold it (a constant beyond the raw
pixels' 0..1 on the graph's input saturates to 0..255).

    constant   out = pad_value outside the input
    reflect    the input mirrored about its edge rows / columns (the edge itself not repeated);
               each pad below the input's size on its axis
    replicate  the edge row / column repeated
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model import qmath
from model.ops.base import OpKind, QuantizeError, describe, matcher

MODES = ("constant", "reflect", "replicate")          # pad_mode 0, 1, 2
NUMPY_MODES = ("constant", "reflect", "edge")
MODULES = (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)

match = matcher(MODULES, {F.pad})


def _mode_pads_value(node, mod):
    """(mode, [left, right, top, bottom] or whatever was given, float value) of the node."""
    if node.op == "call_module":
        mode = ("reflect" if isinstance(mod, nn.ReflectionPad2d) else
                "replicate" if isinstance(mod, nn.ReplicationPad2d) else "constant")
        return mode, list(mod.padding), float(getattr(mod, "value", 0.0))
    args = dict(zip(("input", "pad", "mode", "value"), node.args), **node.kwargs)
    return args.get("mode") or "constant", args.get("pad"), float(args.get("value") or 0.0)


def quantize(b, node, mod):
    src = b.src(node)
    x = b.ops[src]
    c, h, w = x["shape"]
    mode, pads, value = _mode_pads_value(node, mod)
    refused = f"{b.cfg.model}: unsupported {describe(b, node)} at node '{node.name}'"
    if mode not in MODES:
        raise QuantizeError(f"{refused}: mode '{mode}'; supported: {', '.join(MODES)}")
    if not isinstance(pads, (list, tuple)) or len(pads) not in (2, 4) or not all(
            isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in pads):
        raise QuantizeError(f"{refused}: padding {pads}; supported: (left, right) or (left, right, top, bottom) "
                            f"of H and W, none negative")
    left, right, top, bottom = (*pads, 0, 0)[:4]
    if mode == "reflect" and (max(top, bottom) >= h or max(left, right) >= w):
        raise QuantizeError(f"{refused}: reflect padding {[left, right, top, bottom]} of a {h}x{w} input; each pad "
                            f"must be below the input's size on its axis")
    op = {"op": "pad", "name": b.name_for(node), "padding": [top, left, bottom, right],
          "pad_mode": MODES.index(mode), "pad_value": x["zero_point"]}
    qmin, qmax = x["qmin"], x["qmax"]
    if mode == "constant":
        q = int(np.clip(qmath.round_half_up(value / x["scale"]) + x["zero_point"], 0, 255))
        op["pad_value"], qmin, qmax = q, min(qmin, q), max(qmax, q)
    b.emit(op, [src], node, node, None, qparams=(x["scale"], x["zero_point"]), clamp=(qmin, qmax),
           shape=[c, h + top + bottom, w + left + right])


def run_numpy(xs, op, p):
    top, left, bottom, right = op.padding
    widths = ((0, 0), (0, 0), (top, bottom), (left, right))
    if op.pad_mode == 0:
        return np.pad(xs[0], widths, constant_values=op.pad_value)
    return np.pad(xs[0], widths, mode=NUMPY_MODES[op.pad_mode])


def run_torch(xs, op, p):
    top, left, bottom, right = op.padding
    if op.pad_mode == 0:
        return F.pad(xs[0], (left, right, top, bottom), value=op.pad_value)
    # reflect and replicate take floating point tensors: uint8 values are exact in float64
    return F.pad(xs[0].to(torch.float64), (left, right, top, bottom), mode=MODES[op.pad_mode]).to(torch.int64)


def to_onnx(g, xs, op, p):
    top, left, bottom, right = op.padding
    pads = g.const([0, 0, top, left, 0, 0, bottom, right], np.int64, "pads")
    if op.pad_mode == 0:
        return g.node("Pad", [xs[0], pads, g.const(op.pad_value, np.uint8, "pad_value")])
    return g.node("Pad", [xs[0], pads], mode=NUMPY_MODES[op.pad_mode])


def check(v):
    """The rules between fields (model/formats/tuple_check.py; c/ops/pad.c pad_validate)."""
    c, h, w = v.x()["shape"]
    top, left, bottom, right = v.op["padding"]
    if [v.c, v.h, v.w] != [c, h + top + bottom, w + left + right]:
        v.fail(f"output {v.c}x{v.h}x{v.w}, its input {c}x{h}x{w} padded by {v.op['padding']} (top, left, bottom, "
               f"right) is {c}x{h + top + bottom}x{w + left + right}")
    if v.op["pad_mode"] == 1 and (max(top, bottom) >= h or max(left, right) >= w):
        v.fail(f"reflect padding {v.op['padding']} (top, left, bottom, right) of a {h}x{w} input: each pad must "
               f"be below the input's size on its axis")
    x, op = v.x(), v.op
    if op["zero_point"] != x["zero_point"] or op["qmin"] > x["qmin"] or op["qmax"] < x["qmax"]:
        v.fail(f"zero point/clamp {op['zero_point']}/{op['qmin']}..{op['qmax']}: a pad keeps its input's zero point "
               f"{x['zero_point']} and a clamp holding its input's {x['qmin']}..{x['qmax']}")
    if op["pad_mode"] == 0 and not op["qmin"] <= op["pad_value"] <= op["qmax"]:
        v.fail(f"pad_value {op['pad_value']} outside its clamp {op['qmin']}..{op['qmax']}")


KIND = OpKind("pad", 13, (1, 1), ("pad_top", "pad_left", "pad_bottom", "pad_right", "pad_mode", "pad_value"),
              "0", "0", False, match, quantize, run_numpy, run_torch, to_onnx,
              own_params=(("pad_mode", "pad_mode", None, 0, 2), ("pad_value", "pad_value", None, 0, 255)),
              widens_input=True, check=check)
