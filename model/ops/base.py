"""What every op kind declares (OpKind), and the helpers the kinds share.

A kind's numpy function is the executable specification of the op; its torch
function is an independent implementation that must match it bit for bit.
Both take (xs, op, p): the input tensors (uint8 values in int64 arrays, N×C×H×W),
the op (a model.graph.Op: op.shape, op.in_zero_points, op.stride, ...) and its tensors
by field (op.tensors: weight, bias, multiplier, shift; {} if none). Its quantize function
is the writer of the file format: it emits quant_list entries (dicts) through the builder.
Its onnx function writes the op as ONNX nodes (model/formats/onnx_export.py), bit-exact too: it takes
the graph being written, its inputs' tensor names (uint8), op and p as numpy's.
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.fx as fx
from numpy.lib.stride_tricks import sliding_window_view

from model import qmath


class QuantizeError(RuntimeError):
    pass


# model.bin record word -> (quant_list key, index into a list or None) of the words kinds share (a kind's
# own words: OpKind.own_params; model.ops.PARAM_KEYS holds both); the writer's offsets
# into weight.bin / bias.bin are not in the tuple, it adds them to the op it writes.  A max
# pool's padding is [h, w] (both sides), a conv's [top, left, bottom, right]
PARAM_KEYS = {"kernel_h": ("kernel", 0), "kernel_w": ("kernel", 1), "stride_h": ("stride", 0),
              "stride_w": ("stride", 1), "pad_h": ("padding", 0), "pad_w": ("padding", 1),
              "pad_top": ("padding", 0), "pad_left": ("padding", 1), "pad_bottom": ("padding", 2),
              "pad_right": ("padding", 3), "dilation_h": ("dilation", 0), "dilation_w": ("dilation", 1),
              "groups": ("groups", None), "weight_zero_point": ("weight_zero_point", None),
              "weight_offset": ("weight_offset", None), "weight_bits": ("weight_bits", None), "bias_offset": ("bias_offset", None),
              "ceil_mode": ("ceil_mode", None), "channel_start": ("channel_start", None),
              "scale_h": ("factor", 0), "scale_w": ("factor", 1)}
# how many multipliers / shifts / table values a record holds (the C engine's --op-table uses the same words)
REQUANT_COUNTS = {"0": lambda op: 0, "1": lambda op: 1, "2": lambda op: 2,
                  "C": lambda op: op["shape"][0], "n_inputs": lambda op: len(op["inputs"]), "256": lambda op: 256,
                  "HW": lambda op: op["shape"][1] * op["shape"][2]}


@dataclass(frozen=True)
class OpKind:
    name: str                   # the `op` field of a quant_list entry
    code: int                   # its type in model.bin
    inputs: tuple               # (fewest, most) input tensors
    params: tuple               # its model.bin parameter words, in record order (PARAM_KEYS)
    n_mult: str                 # multipliers in its record (REQUANT_COUNTS)
    n_shift: str                # shifts in its record
    weighted: bool              # owns a slice of weight.bin / bias.bin
    match: Callable             # (graph module, fx node) -> the node's module (or True) if it is this kind, else None
    quantize: Callable          # (builder, fx node, module) -> appends the op(s) to the integer graph
    numpy: Callable             # (xs, op, p) -> output, the specification
    torch: Callable             # (xs, op, p) -> output, bit-exact with numpy
    onnx: Callable              # (OnnxGraph, input names, op, p) -> output name: its ONNX nodes, bit-exact
                                # with numpy (model/formats/onnx_export.py)
    check: Callable             # its rules between fields in a tuple, the twin of c/ops/KIND.c's KIND_validate:
                                # (model/ops/checks.py's OpView) -> None, v.fail(phrase) on a broken one; the
                                # tuple check (model/formats/tuple_check.py) runs it. Required: pass check=check
    n_table: str = "0"          # values of its lookup table (state_dict NAME.table, 0..255)
    own_params: tuple = ()      # the words of its params no other kind has, each (word, quant_list key,
                                # index or None, lowest, highest); the shared ones are PARAM_KEYS
    widens_input: bool = False  # it keeps its input's scale but may output values beyond its input's range
                                # (a constant pad): calibration widens the input's range to hold its output's

    def __post_init__(self):
        if not callable(self.check):
            raise TypeError(f"op kind '{self.name}': its check (the rules between a tuple's fields) is not a function")


def matcher(modules=(), functions=(), methods=()):
    """The `match` of a kind found by its module types, its functions (call_function targets)
    or its tensor methods (call_method names): the module, or True, or None."""
    modules = tuple(modules)

    def match(gm, node):
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            return mod if isinstance(mod, modules) else None
        if node.op == "call_function" and node.target in functions:
            return True
        if node.op == "call_method" and node.target in methods:
            return True
        return None

    return match


def pair(v):
    return [int(v), int(v)] if isinstance(v, int) else [int(x) for x in v]


def sides(padding):
    """[top, left, bottom, right] of a padding given as [h, w] (both sides) or as those four."""
    return list(padding) * 2 if len(padding) == 2 else list(padding)


def np_windows(x, kernel, stride, padding, pad_value, dilation=(1, 1)):
    """(N, C, OH, OW, kh, kw) view of every kernel window (taps `dilation` apart); padding as sides()."""
    top, left, bottom, right = sides(padding)
    if top or left or bottom or right:
        x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=pad_value)
    extent = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    win = sliding_window_view(x, tuple(extent), axis=(2, 3))
    return win[:, :, ::stride[0], ::stride[1], ::dilation[0], ::dilation[1]]


def np_requantize(acc, op, p, view=(1, -1, 1, 1)):
    """The contract's requantizer with the op's multipliers and shifts (per channel along axis 1)."""
    return qmath.requantize(acc, p["multiplier"].reshape(view), p["shift"].reshape(view),
                            op.zero_point, op.qmin, op.qmax)


def torch_requantize(acc, m, shift, op):
    """qmath.requantize in torch int64: m and shift broadcast."""
    out = op.zero_point + ((acc * m + ((torch.ones_like(shift) << shift) >> 1)) >> shift)
    return out.clamp_(op.qmin, op.qmax)


def keeps_qparams(kind):
    """A kind that only moves data (maxpool, shuffle, slice, upsample): no requantization, no table;
    its output keeps its input's scale, zero point and clamp."""
    return kind.name != "input" and kind.n_mult == "0" and kind.n_table == "0"


def emit_same_qparams(b, node, op, src, shape=None):
    """Append a data-movement op reading op index src, with its input's scale, zero point and clamp."""
    same = b.ops[src]
    return b.emit(op, [src], node, node, None, qparams=(same["scale"], same["zero_point"]),
                  clamp=(same["qmin"], same["qmax"]), shape=shape)


def meta_value(b, arg, tensor_of):
    """An fx argument's value on a batch of one: a tensor node is `tensor_of(node)`, a node that
    yields no tensor (x.size(1) // 2, x.shape[-2:]) is computed from those, constants stay."""
    cache = {}

    def value(a):
        if a in cache:
            return cache[a]
        if a.name not in b.observer.meta:
            out = tensor_of(a)
        else:
            args, kwargs = fx.node.map_arg(a.args, value), fx.node.map_arg(a.kwargs, value)
            if a.op == "call_function":
                out = a.target(*args, **kwargs)
            elif a.op == "call_method":
                out = getattr(args[0], a.target)(*args[1:], **kwargs)
            else:
                raise QuantizeError(f"{b.cfg.model}: cannot evaluate '{a.name}' ({a.op}), an argument of a "
                                    f"data-movement op")
        cache[a] = out
        return out

    return value(arg) if isinstance(arg, fx.Node) else fx.node.map_arg(arg, value)


def index_tensor(shape):
    """1 x C x H x W float64 holding each element's flat C,H,W index: a data-movement function applied
    to it shows where each output element comes from."""
    return torch.arange(int(np.prod(shape)), dtype=torch.float64).reshape(1, *shape)


def short_repr(value):
    """repr(value), cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def describe_node(gm, node):
    """'module Upsample (mode='nearest', ...)', 'function interpolate (size=..., mode='bilinear')',
    'method transpose (1, 2)': what the node is, with its non-tensor arguments."""
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        extra = mod.extra_repr()
        return f"module {type(mod).__name__}" + (f" ({short_repr(extra) if len(extra) > 60 else extra})" if extra else "")
    if node.op in ("call_function", "call_method"):
        kind = "function" if node.op == "call_function" else "method"
        consts = [short_repr(a) for a in node.args if not isinstance(a, fx.Node)]
        consts += [f"{k}={short_repr(v)}" for k, v in node.kwargs.items() if not isinstance(v, fx.Node)]
        name = getattr(node.target, "__name__", node.target)
        return f"{kind} {name}" + (f" ({', '.join(consts)})" if consts else "")
    return node.op


def describe(b, node):
    """'function interpolate (scale_factor=2, mode='bilinear')': the node as the quantizer's refusals name it."""
    return describe_node(b.gm, node)
