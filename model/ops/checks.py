"""What the kinds' tuple rules share (each kind's own rule: `check` in model/ops/KIND.py, the Python
twin of its C file's KIND_validate): the op as a rule reads it (OpView), Problem, and the rules more
than one kind applies. model/formats/tuple_check.py runs them; this module sits below it and below
model/formats (it reads only model/limits.py), so the kinds import it without an import circle.
"""
from model.limits import INT32_MAX, MAX_SHIFT

# requantize()'s rounding constant: a product (window sum, a * b) times a multiplier plus it fits int64
INT64_ROOM = 2 ** 63 - 1 - (1 << (MAX_SHIFT - 1))


class Problem(ValueError):
    """What is wrong with a tuple, as one phrase (str(err))."""


def where(quant_list, i):
    """'op I (NAME, KIND)': how a refusal names op i."""
    op = quant_list[i]
    return f"op {i} ({op.get('name', '?')}, {op.get('op', '?')})"


class OpView:
    """Op i of a tuple, as a kind's rule reads it: its fields, its input tensors' ops, its tensors;
    v.fail(phrase) refuses it (Problem 'op I (NAME, KIND): phrase')."""

    def __init__(self, state, quant_list, i):
        self.op, self.i, self.state, self.head = quant_list[i], i, state, quant_list[0]
        self.c, self.h, self.w = self.op["shape"]
        self.xs = [quant_list[j] for j in self.op["inputs"]]
        self.where = where(quant_list, i)

    def x(self, k=0):
        return self.xs[k]

    def tensor(self, field):
        return self.state[f"{self.op['name']}.{field}"]

    def fail(self, phrase):
        raise Problem(f"{self.where}: {phrase}")


def shape_text(op):
    """'CxHxW' of an op's shape."""
    return "x".join(map(str, op["shape"]))


def max_abs_centered(x):
    """The largest |value - zero point| an op's clamp lets through."""
    return max(x["zero_point"] - x["qmin"], x["qmax"] - x["zero_point"])


def _window_out(size, extent, stride, before, after, ceil_mode):
    padded = size + before + after
    if padded < extent:
        return -1
    out = (padded - extent + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + before:
        out -= 1
    return out


def check_window(v, kernel, stride, pads, dilation=(1, 1), ceil_mode=0):
    """kernel, stride, padding (top, left, bottom, right) and dilation against the input and output sizes;
    no padding reaches as far as the kernel."""
    x = v.x()
    reach = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    for side, pad in zip(("top", "left", "bottom", "right"), pads):
        limit = reach[1] if side in ("left", "right") else reach[0]
        if pad >= limit:
            v.fail(f"{side} padding {pad} is not below the kernel's reach {limit}")
    oh = _window_out(x["shape"][1], reach[0], stride[0], pads[0], pads[2], ceil_mode)
    ow = _window_out(x["shape"][2], reach[1], stride[1], pads[1], pads[3], ceil_mode)
    if (oh, ow) != (v.h, v.w):
        v.fail(f"output {v.h}x{v.w}, but a {x['shape'][1]}x{x['shape'][2]} input with kernel {kernel[0]}x{kernel[1]}, "
               f"stride {stride[0]}x{stride[1]}, padding {','.join(map(str, pads))} (top, left, bottom, right), "
               f"dilation {dilation[0]}x{dilation[1]}{', ceil_mode' if ceil_mode else ''} gives {oh}x{ow}")


def same_channels(v):
    if v.c != v.x()["shape"][0]:
        v.fail(f"{v.c} channels, its input op {v.op['inputs'][0]} has {v.x()['shape'][0]}")


def same_shape(v, k=0):
    if v.x(k)["shape"] != v.op["shape"]:
        v.fail(f"input {k} (op {v.op['inputs'][k]}) is {shape_text(v.x(k))}, the output {shape_text(v.op)}")


def same_qparams(v):
    x = v.x()
    if (v.op["zero_point"], v.op["qmin"], v.op["qmax"]) != (x["zero_point"], x["qmin"], x["qmax"]):
        v.fail(f"zero point/clamp {v.op['zero_point']}/{v.op['qmin']}..{v.op['qmax']} differ from its input's "
               f"{x['zero_point']}/{x['qmin']}..{x['qmax']} (it only moves data)")


def check_weights(v, k_size, shape):
    """A conv/linear's weights: the zero point per-channel int8 weights have, their shape, and k_size < 2^31."""
    if v.head["weight_mode"] == "per_channel" and v.op["weight_zero_point"] != 0:
        v.fail(f"weight_zero_point {v.op['weight_zero_point']}, but per-channel weights have zero point 0")
    if v.op["weight_zero_point"] >= 1 << v.op["weight_bits"]:
        v.fail(f"weight_zero_point {v.op['weight_zero_point']} does not fit its {v.op['weight_bits']}-bit weights")
    if k_size > INT32_MAX:
        v.fail(f"kernel of {k_size} weights per output channel is too large")
    if list(v.tensor("weight").shape) != shape:
        v.fail(f"'{v.op['name']}.weight' has shape {list(v.tensor('weight').shape)}, expected {shape}")


def check_overflow(v, product, multiplier, what):
    """product (a window sum, a * b) times multiplier, plus requantize()'s rounding, fits int64."""
    if multiplier > 0 and product > INT64_ROOM // multiplier:
        v.fail(f"{what} {product} times multiplier {multiplier} overflows int64")
