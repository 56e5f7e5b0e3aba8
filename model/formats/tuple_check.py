"""The check of a quantization tuple `(state_dict, quant_list)`: every field, as the C loader checks
model.bin (c/fpgai.c: parse_header, parse_record and the kinds' validate functions, check_tiling,
check_overflow, plan_memory), with the limits of model/formats/export_format.py (the writer's, compared with
the C sources by tests/test_hostile_inputs.py). A tuple this accepts is one the C engine loads once
exported; one it refuses is one line naming the op, its layer and the field.

load_tuple() is how every stage loads a tuple (quant_model.load_quant); model/api.py checks the
tuples it is handed before it exports or runs them; the quantizer checks what it made.
"""
import math

import numpy as np
import torch

from model import ops
from model.formats.export_format import (BLOCK_RANGES, DATASETS, INT32_MAX, MAX_ARENA, MAX_DIM, MAX_OPS, MAX_SCRATCH,
                                  MAX_SHIFT, MAX_TENSOR, MAX_WEIGHTS, MIN_OPS, NAME_BYTES, PARAM_RANGES, WEIGHT_MODES,
                                  WEIGHT_RANGES, arena_bytes)
from model.fileio import ModelFileError, load_checked
from model.ops.weighted import accumulator_bound

# the header fields (on quant_list[0]) the later stages read
TUPLE_HEADER = ("fingerprint", "weight_mode", "multiplier_bits", "calib_images", "dataset")
_OP_FIELDS = {"op": str, "name": str, "inputs": list, "shape": list, "scale": float, "zero_point": int,
              "qmin": int, "qmax": int}
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# requantize()'s rounding constant: a product (window sum, a * b) times a multiplier plus it fits int64
_INT64_ROOM = 2 ** 63 - 1 - (1 << (MAX_SHIFT - 1))


class Problem(ValueError):
    """What is wrong with a tuple, as one phrase (str(err))."""


def load_tuple(path, model=None, hint=""):
    """(state_dict, quant_list) of a tuple file: load_checked's kind, version and model name, then
    check_tuple; ModelFileError (one line naming the file, the op and the field) otherwise."""
    state, quant_list = load_checked(path, "fpgai-quant", model, hint=hint)
    problem = tuple_problem(state, quant_list)
    if problem:
        raise ModelFileError(f"{path}: {problem}{hint}")
    return state, quant_list


def tuple_problem(state, quant_list):
    """None when the tuple is whole and every value is one the C engine accepts, else one phrase:
    'not a whole tuple: ...' for a missing or malformed field or tensor, else 'op I (NAME, KIND): ...'
    naming the field and its range."""
    try:
        check_tuple(state, quant_list)
    except Problem as err:
        return str(err)
    return None


def check_tuple(state, quant_list):
    """Raise Problem unless (state, quant_list) holds every field and tensor the engines and the
    exporter read (the op table says which), each within the range the C loader checks."""
    _check_whole(state, quant_list)
    _check_header(quant_list)
    weights = biases = 0
    for i, op in enumerate(quant_list):
        _check_record(state, quant_list, i)
        if op["op"] not in VALIDATE:
            raise Problem(f"{_where(quant_list, i)}: no rule for the kind '{op['op']}' in model/formats/tuple_check.py")
        VALIDATE[op["op"]](_Op(state, quant_list, i))
        if ops.KINDS[op["op"]].weighted:
            weights += state[op["name"] + ".weight"].numel()
            biases += op["shape"][0]
    if weights > MAX_WEIGHTS or biases > MAX_WEIGHTS // 4:
        raise Problem(f"{weights} weights / {biases} biases, over the C engine's limit of {MAX_WEIGHTS} / "
                      f"{MAX_WEIGHTS // 4}")
    for i, op in enumerate(quant_list):
        if ops.KINDS[op["op"]].weighted:
            bound = accumulator_bound(state[op["name"] + ".weight"].numpy(), op["weight_zero_point"],
                                      state[op["name"] + ".bias"].numpy(), quant_list[op["inputs"][0]])
            if bound > INT32_MAX:
                raise Problem(f"{_where(quant_list, i)}: worst-case accumulator {bound} exceeds int32 ({INT32_MAX}); "
                              f"the integer path could overflow")
    arena = arena_bytes(quant_list)
    if arena > MAX_ARENA:
        raise Problem(f"{arena} bytes of activations (the C engine's arena), over the {MAX_ARENA}-byte limit")


def _where(quant_list, i):
    op = quant_list[i]
    return f"op {i} ({op.get('name', '?')}, {op.get('op', '?')})"


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _in_range(where, field, value, low, high):
    if not (_is_int(value) and low <= value <= high):
        raise Problem(f"{where}: {field} = {value!r} outside [{low}, {high}]")


# --- the fields the engines read, present and of their type (was quantize.tuple_problem) ------------

def _check_whole(state, quant_list):
    def whole(phrase):
        return Problem(f"not a whole tuple: {phrase}")

    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise whole("its state_dict is not a dict of names to tensors")
    if not isinstance(quant_list, list) or not quant_list or not all(isinstance(op, dict) for op in quant_list):
        raise whole("its quant_list is not a list of ops")
    lacking = [k for k in TUPLE_HEADER if k not in quant_list[0]]
    if lacking:
        raise whole(f"its header (op 0) lacks {', '.join(lacking)}")
    for i, op in enumerate(quant_list):
        where = f"op {i} ({op.get('name', '?')})"
        for key, kind in _OP_FIELDS.items():
            value = op.get(key)
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                  if kind is float else isinstance(value, kind) and (kind is not int or _is_int(value)))
            if not ok:
                raise whole(f"{where} has no valid '{key}' field")
        if op["op"] not in ops.KINDS:
            raise whole(f"{where}: unknown op kind '{op['op']}'")
        kind = ops.KINDS[op["op"]]
        if not (len(op["shape"]) == 3 and all(_is_int(d) and d > 0 for d in op["shape"])):
            raise whole(f"{where}: shape {op['shape']} is not C, H, W")
        low, high = (0, 0) if i == 0 else kind.inputs
        if not (low <= len(op["inputs"]) <= high and all(_is_int(j) and 0 <= j < i for j in op["inputs"])):
            raise whole(f"{where}: inputs {op['inputs']} are not {low}..{high} earlier ops")
        for param in kind.params:
            key, index = ops.PARAM_KEYS[param]
            if key in ("weight_offset", "bias_offset"):       # the exporter's, not the tuple's
                continue
            value = op.get(key)
            if index is not None:
                value = value[index] if isinstance(value, list) and len(value) > index else None
            if not _is_int(value):
                raise whole(f"{where} has no valid '{key}' field")
        for field, count in _expected_tensors(op).items():
            tensor = state.get(f"{op['name']}.{field}")
            if tensor is None:
                raise whole(f"{where}: the state_dict has no '{op['name']}.{field}'")
            if field == "weight" and (tensor.dim() < 2 or tensor.shape[0] != op["shape"][0]):
                raise whole(f"{where}: '{op['name']}.weight' has shape {list(tensor.shape)} for "
                            f"{op['shape'][0]} channels")
            if count is not None and tensor.numel() != count:
                raise whole(f"{where}: '{op['name']}.{field}' holds {tensor.numel()} values, not {count}")


def _expected_tensors(op):
    """{field: value count or None} of the state_dict tensors op's kind declares."""
    kind = ops.KINDS[op["op"]]
    fields = {"multiplier": kind.n_mult, "shift": kind.n_shift, "table": kind.n_table}
    expected = {f: ops.REQUANT_COUNTS[count](op) for f, count in fields.items() if count != "0"}
    if kind.weighted:
        expected.update(weight=None, bias=op["shape"][0])
    return expected


# --- model.bin's header and one record's words (c/fpgai.c parse_header, parse_record) ---------------

def _check_header(quant_list):
    head = quant_list[0]
    if not MIN_OPS <= len(quant_list) <= MAX_OPS:
        raise Problem(f"{len(quant_list)} ops, the C engine takes {MIN_OPS}..{MAX_OPS}")
    for field, width in NAME_BYTES.items():
        value = head.get(field)
        if not isinstance(value, str) or "\0" in value or len(value.encode()) > width:
            raise Problem(f"header (op 0): {field} {value!r} is not a string of at most {width} bytes")
    if head["dataset"] not in DATASETS:
        raise Problem(f"header (op 0): dataset '{head['dataset']}', expected {', '.join(DATASETS)}")
    if head["weight_mode"] not in WEIGHT_MODES:
        raise Problem(f"header (op 0): weight_mode {head['weight_mode']!r}, expected {' or '.join(WEIGHT_MODES)}")
    for i, op in enumerate(quant_list):
        if (op["op"] == "input") != (i == 0):
            raise Problem(f"{_where(quant_list, i)}: op 0 must be the input and only op 0")


def _check_record(state, quant_list, i):
    op, where = quant_list[i], _where(quant_list, i)
    kind = ops.KINDS[op["op"]]
    for axis, value in zip("CHW", op["shape"]):
        _in_range(where, f"shape {axis}", value, 1, MAX_DIM)
    if math.prod(op["shape"]) > MAX_TENSOR:
        raise Problem(f"{where}: output {'x'.join(map(str, op['shape']))} has more than 2^26 elements")
    _in_range(where, "zero_point", op["zero_point"], 0, 255)
    _in_range(where, "qmin", op["qmin"], 0, 255)
    _in_range(where, "qmax", op["qmax"], op["qmin"], 255)
    if not abs(op["scale"]) <= _FLOAT32_MAX:
        raise Problem(f"{where}: scale {op['scale']} is not a float32")
    for param in kind.params:
        key, index = ops.PARAM_KEYS[param]
        if key not in ("weight_offset", "bias_offset"):
            _in_range(where, key if index is None else f"{key}[{index}]",
                      op[key] if index is None else op[key][index], *PARAM_RANGES[param])
    for field, count in _expected_tensors(op).items():
        name = f"{op['name']}.{field}"
        tensor = state[name]
        want = ((torch.int8 if quant_list[0]["weight_mode"] == "per_channel" else torch.uint8)
                if field == "weight" else torch.int32)
        if tensor.dtype != want:
            raise Problem(f"{where}: '{name}' is {str(tensor.dtype).replace('torch.', '')}, expected "
                          f"{str(want).replace('torch.', '')}")
        if field in BLOCK_RANGES or field == "weight":
            values = tensor.reshape(-1).numpy()
            low, high = BLOCK_RANGES.get(field) or WEIGHT_RANGES[quant_list[0]["weight_mode"]]
            bad = np.flatnonzero((values < low) | (values > high))
            if bad.size:
                raise Problem(f"{where}: {field}[{bad[0]}] = {int(values[bad[0]])} outside [{low}, {high}]")
        if field == "bias" and list(tensor.shape) != [op["shape"][0]]:
            raise Problem(f"{where}: '{name}' has shape {list(tensor.shape)}, expected [{op['shape'][0]}]")


# --- the rules between fields, per kind (c/fpgai.c's validate functions) ------------------------------

class _Op:
    """Op i of a tuple, as a kind's rule reads it: its fields, its input tensors' ops, its tensors."""

    def __init__(self, state, quant_list, i):
        self.op, self.i, self.state, self.head = quant_list[i], i, state, quant_list[0]
        self.c, self.h, self.w = self.op["shape"]
        self.xs = [quant_list[j] for j in self.op["inputs"]]
        self.where = _where(quant_list, i)

    def x(self, k=0):
        return self.xs[k]

    def tensor(self, field):
        return self.state[f"{self.op['name']}.{field}"]

    def fail(self, phrase):
        raise Problem(f"{self.where}: {phrase}")


def _shape(op):
    return "x".join(map(str, op["shape"]))


def _max_abs_centered(x):
    return max(x["zero_point"] - x["qmin"], x["qmax"] - x["zero_point"])


def _window_out(size, extent, stride, before, after, ceil_mode):
    padded = size + before + after
    if padded < extent:
        return -1
    out = (padded - extent + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + before:
        out -= 1
    return out


def _check_window(v, kernel, stride, pads, dilation=(1, 1), ceil_mode=0):
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


def _same_channels(v):
    if v.c != v.x()["shape"][0]:
        v.fail(f"{v.c} channels, its input op {v.op['inputs'][0]} has {v.x()['shape'][0]}")


def _same_shape(v, k=0):
    if v.x(k)["shape"] != v.op["shape"]:
        v.fail(f"input {k} (op {v.op['inputs'][k]}) is {_shape(v.x(k))}, the output {_shape(v.op)}")


def _same_qparams(v):
    x = v.x()
    if (v.op["zero_point"], v.op["qmin"], v.op["qmax"]) != (x["zero_point"], x["qmin"], x["qmax"]):
        v.fail(f"zero point/clamp {v.op['zero_point']}/{v.op['qmin']}..{v.op['qmax']} differ from its input's "
               f"{x['zero_point']}/{x['qmin']}..{x['qmax']} (it only moves data)")


def _weights(v, k_size, shape):
    """A conv/linear's weights: the zero point per-channel int8 weights have, their shape, and k_size < 2^31."""
    if v.head["weight_mode"] == "per_channel" and v.op["weight_zero_point"] != 0:
        v.fail(f"weight_zero_point {v.op['weight_zero_point']}, but per-channel int8 weights have zero point 0")
    if k_size > INT32_MAX:
        v.fail(f"kernel of {k_size} weights per output channel is too large")
    if list(v.tensor("weight").shape) != shape:
        v.fail(f"'{v.op['name']}.weight' has shape {list(v.tensor('weight').shape)}, expected {shape}")


def _overflow(v, product, multiplier, what):
    if multiplier > 0 and product > _INT64_ROOM // multiplier:
        v.fail(f"{what} {product} times multiplier {multiplier} overflows int64")


def _input(v):
    if (v.op["zero_point"], v.op["qmin"], v.op["qmax"]) != (0, 0, 255):
        v.fail("raw pixels need zero point 0 and clamp 0..255")


def _conv(v):
    op, x = v.op, v.x()
    groups = op["groups"]
    if x["shape"][0] % groups or v.c % groups:
        v.fail(f"groups {groups} does not divide its input's {x['shape'][0]} channels and its {v.c}")
    _check_window(v, op["kernel"], op["stride"], op["padding"], op["dilation"])
    k = x["shape"][0] // groups * op["kernel"][0] * op["kernel"][1]
    _weights(v, k, [v.c, x["shape"][0] // groups, *op["kernel"]])
    plane = (v.h * v.w + 7) // 8 * 8
    pads = op["padding"]
    for what, elems in (("im2col", k * plane),
                        ("padded input", (x["shape"][1] + pads[0] + pads[2]) * (x["shape"][2] + pads[1] + pads[3])
                         * x["shape"][0])):
        if elems > MAX_SCRATCH:
            v.fail(f"{elems} {what} elements, over the C engine's {MAX_SCRATCH} limit")


def _linear(v):
    if (v.h, v.w) != (1, 1):
        v.fail(f"output shape {_shape(v.op)}, expected {v.c}x1x1")
    _weights(v, math.prod(v.x()["shape"]), [v.c, math.prod(v.x()["shape"])])


def _maxpool(v):
    op = v.op
    _same_channels(v)
    _check_window(v, op["kernel"], op["stride"], op["padding"] * 2, ceil_mode=op["ceil_mode"])
    _same_qparams(v)


def _avgpool(v):
    op = v.op
    _same_channels(v)
    _check_window(v, op["kernel"], op["stride"], [0, 0, 0, 0])
    n = op["kernel"][0] * op["kernel"][1]
    _overflow(v, n * _max_abs_centered(v.x()), int(v.tensor("multiplier")[0]), "window sum")


def _add(v):
    for k in range(len(v.xs)):
        _same_shape(v, k)


def _concat(v):
    for k, x in enumerate(v.xs):
        if x["shape"][1:] != v.op["shape"][1:]:
            v.fail(f"input {k} (op {v.op['inputs'][k]}) is {x['shape'][1]}x{x['shape'][2]}, the output {v.h}x{v.w}")
    channels = sum(x["shape"][0] for x in v.xs)
    if channels != v.c:
        v.fail(f"its inputs have {channels} channels together, the output {v.c}")


def _lut(v):
    _same_shape(v)
    table = v.tensor("table").reshape(-1).numpy()
    bad = np.flatnonzero((table < v.op["qmin"]) | (table > v.op["qmax"]))
    if bad.size:
        v.fail(f"table[{bad[0]}] = {int(table[bad[0]])} outside its clamp {v.op['qmin']}..{v.op['qmax']}")


def _mul(v):
    _same_shape(v)
    b = v.x(1)
    if b["shape"] not in (v.op["shape"], [v.c, 1, 1]):
        v.fail(f"input 1 (op {v.op['inputs'][1]}) is {_shape(b)}, neither the output's {_shape(v.op)} nor {v.c}x1x1")
    _overflow(v, _max_abs_centered(v.x()) * _max_abs_centered(b), int(v.tensor("multiplier")[0]), "product")


def _shuffle(v):
    _same_shape(v)
    if v.c % v.op["groups"]:
        v.fail(f"groups {v.op['groups']} does not divide its {v.c} channels")
    _same_qparams(v)


def _slice(v):
    x = v.x()
    if x["shape"][1:] != v.op["shape"][1:]:
        v.fail(f"output {v.h}x{v.w}, its input op {v.op['inputs'][0]} is {x['shape'][1]}x{x['shape'][2]}")
    if v.op["channel_start"] + v.c > x["shape"][0]:
        v.fail(f"channels {v.op['channel_start']}..{v.op['channel_start'] + v.c - 1}, its input op "
               f"{v.op['inputs'][0]} has {x['shape'][0]}")
    _same_qparams(v)


def _upsample(v):
    (c, h, w), (sh, sw) = v.x()["shape"], v.op["factor"]
    if [c, h * sh, w * sw] != v.op["shape"]:
        v.fail(f"output {_shape(v.op)}, but its input op {v.op['inputs'][0]} of {c}x{h}x{w} by {sh}x{sw} gives "
               f"{c}x{h * sh}x{w * sw}")
    _same_qparams(v)


def _adaptive_avgpool(v):
    _same_channels(v)
    _, h, w = v.x()["shape"]
    mag = _max_abs_centered(v.x())
    multipliers = v.tensor("multiplier").reshape(-1).tolist()

    def window(o, out, size):
        return o * size // out, ((o + 1) * size + out - 1) // out

    for oy in range(v.h):
        y0, y1 = window(oy, v.h, h)
        for ox in range(v.w):
            x0, x1 = window(ox, v.w, w)
            _overflow(v, (y1 - y0) * (x1 - x0) * mag, multipliers[oy * v.w + ox], "window sum")


# every kind's rule (tests/test_hostile_inputs.py: one for each kind of model/ops)
VALIDATE = {"input": _input, "conv": _conv, "linear": _linear, "maxpool": _maxpool, "avgpool": _avgpool,
            "add": _add, "concat": _concat, "lut": _lut, "mul": _mul, "shuffle": _shuffle, "slice": _slice,
            "upsample": _upsample, "adaptive_avgpool": _adaptive_avgpool,
            **{kind.name: kind.check for kind in ops.KINDS.values() if kind.check is not None}}
