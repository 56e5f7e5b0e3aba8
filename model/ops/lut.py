"""lut: an elementwise function of one tensor as a 256-entry lookup table, computed once from the
float function, so exact by construction (LeakyReLU, ELU, Hardswish, Hardsigmoid, Sigmoid, SiLU,
Tanh, GELU, Mish, SELU, CELU, Softplus, Softsign, LogSigmoid, Hardtanh; a ReLU / ReLU6 that cannot
be fused into the op before it), a fused ReLU/ReLU6 after it:

    table[q] = clamp(round_half_up(f(s_in * (q - z_in)) / s_out) + z_out, qmin, qmax),   q = 0..255
    out      = table[x]

The table's values lie in the op's clamp, so its output does too (the engines check it at load).
state_dict `NAME.table`: int32, 256 values in 0..255 (int32 like the other requantization tensors).
"""
import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from model import qmath
from model.ops.base import OpKind, QuantizeError, matcher
from model.ops.checks import same_shape

MODULES = (nn.LeakyReLU, nn.ELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.SiLU, nn.Tanh, nn.GELU, nn.Mish,
           nn.SELU, nn.CELU, nn.Softplus, nn.Softsign, nn.LogSigmoid, nn.ReLU, nn.ReLU6, nn.Hardtanh)
FUNCTIONS = {f for f in (getattr(F, name, None) for name in (
    "leaky_relu", "leaky_relu_", "elu", "elu_", "hardswish", "hardsigmoid", "sigmoid", "silu", "tanh", "gelu",
    "mish", "selu", "celu", "softplus", "softsign", "logsigmoid", "relu", "relu_", "relu6", "hardtanh",
    "hardtanh_")) if f is not None}
FUNCTIONS |= {f for f in (getattr(torch, name, None) for name in ("sigmoid", "sigmoid_", "tanh", "tanh_", "relu",
                                                                  "relu_", "selu")) if f is not None}
METHODS = {"sigmoid", "sigmoid_", "tanh", "tanh_", "relu", "relu_"}


match = matcher(MODULES, FUNCTIONS, METHODS)


def _is_node(a):
    return isinstance(a, fx.Node)


def float_function(node, mod):
    """The node's float function of one tensor, with the node's own arguments (negative_slope,
    alpha, approximate, ...)."""
    if node.op == "call_module":
        return mod
    rest, kwargs = node.args[1:], dict(node.kwargs)
    if node.op == "call_method":
        return lambda x: getattr(x, node.target)(*rest, **kwargs)
    return lambda x: node.target(x, *rest, **kwargs)


def make_table(fn, s_in, z_in, s_out, z_out, qmin, qmax):
    """The 256 values clamp(round_half_up(f(s_in * (q - z_in)) / s_out) + z_out, qmin, qmax), int64."""
    x = torch.from_numpy(s_in * (np.arange(256, dtype=np.float64) - z_in))
    with torch.no_grad():
        y = fn(x.clone())
    y = np.asarray(y.detach().to(torch.float64).numpy(), dtype=np.float64)
    if y.shape != (256,) or not np.isfinite(y).all():
        return None
    return np.clip(qmath.round_half_up(y / s_out) + z_out, qmin, qmax)


def quantize(b, node, mod):
    tensors = [a for a in (*node.args, *node.kwargs.values()) if _is_node(a)]
    if len(tensors) != 1 or not node.args or not _is_node(node.args[0]):
        raise QuantizeError(f"{b.cfg.model}: elementwise '{node.name}' must be a function of one tensor "
                            f"(its other arguments constants)")
    src = b.where[node.args[0]]
    act, out_node = b.fused_activation(node)
    op = {"op": "lut", "name": b.name_for(node)}
    b.emit(op, [src], node, out_node, act)
    x = b.ops[src]
    table = make_table(float_function(node, mod), x["scale"], x["zero_point"], op["scale"], op["zero_point"],
                       op["qmin"], op["qmax"])
    if table is None:
        raise QuantizeError(f"{b.cfg.model}: elementwise '{node.name}' is not finite and elementwise on the "
                            f"256 input values")
    b.state[f"{op['name']}.table"] = torch.tensor(table.tolist(), dtype=torch.int32)


def run_numpy(xs, op, p):
    return p["table"][xs[0]]


def run_torch(xs, op, p):
    return torch.take(p["table"].to(torch.int64), xs[0])


def to_onnx(g, xs, op, p):
    return g.node("Gather", [g.const(p["table"], np.uint8, "table"), g.cast(xs[0], np.int64)])


def check(v):
    """The rules between fields (model/formats/tuple_check.py; c/ops/lut.c lut_validate)."""
    same_shape(v)
    table = v.tensor("table").reshape(-1).numpy()
    bad = np.flatnonzero((table < v.op["qmin"]) | (table > v.op["qmax"]))
    if bad.size:
        v.fail(f"table[{bad[0]}] = {int(table[bad[0]])} outside its clamp {v.op['qmin']}..{v.op['qmax']}")


KIND = OpKind("lut", 7, (1, 1), (), "0", "0", False, match, quantize, run_numpy, run_torch, to_onnx, n_table="256",
              check=check)
