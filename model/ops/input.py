"""input: op 0, the raw uint8 pixels (scale 1/255, zero point 0: the float model sees pixel/255)."""
import numpy as np
import torch

from model.ops.base import OpKind, QuantizeError

INPUT_SCALE = 1.0 / 255.0


def match(gm, node):
    return True if node.op == "placeholder" else None


def quantize(b, node, mod):
    if b.ops:
        raise QuantizeError(f"{b.cfg.model}: only single-input models are supported")
    b.emit({"op": "input", "name": "input"}, [], node, node, None,
           qparams=(INPUT_SCALE, 0), shape=list(b.input_shape))


def check(v):
    """The rules between fields (model/formats/tuple_check.py; c/ops/input.c input_validate)."""
    if (v.op["zero_point"], v.op["qmin"], v.op["qmax"]) != (0, 0, 255):
        v.fail("raw pixels need zero point 0 and clamp 0..255")


KIND = OpKind("input", 0, (0, 0), (), "0", "0", False, match, quantize,
              lambda xs, op, p: np.asarray(xs[0], dtype=np.int64),
              lambda xs, op, p: xs[0].to(torch.int64), lambda g, xs, op, p: xs[0], check=check)
