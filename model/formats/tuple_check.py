"""The check of a quantization tuple `(state_dict, quant_list)`: every field, as the C loader checks
model.bin (c/fpgai.c: parse_header, parse_record and the kinds' validate functions, check_tiling,
check_overflow, plan_memory), with the limits of model/limits.py and the ranges of
model/formats/export_format.py (the writer's, compared with the C sources by tests/test_hostile_inputs.py).
The rules between an op's fields are its kind's: `check` in model/ops/KIND.py (VALIDATE below).
A tuple this accepts is one the C engine loads once exported; one it refuses is one line naming the op,
its layer and the field.

load_tuple() is how every stage loads a tuple (quant_model.load_quant); model/api.py checks the
tuples it is handed before it exports or runs them; the quantizer checks what it made.
"""
import math

import numpy as np
import torch

from model import ops
from model.fileio import ModelFileError, load_checked
from model.formats.export_format import BLOCK_RANGES, DATASETS, NAME_BYTES, PARAM_RANGES, WEIGHT_MODES, arena_bytes
from model.limits import INT32_MAX, MAX_ARENA, MAX_DIM, MAX_OPS, MAX_TENSOR, MAX_WEIGHTS, MIN_OPS
from model.ops.checks import OpView, Problem, where as _where
from model.ops.weighted import accumulator_bound, weight_range

# the header fields (on quant_list[0]) the later stages read
TUPLE_HEADER = ("fingerprint", "weight_mode", "multiplier_bits", "calib_images", "dataset")
_OP_FIELDS = {"op": str, "name": str, "inputs": list, "shape": list, "scale": float, "zero_point": int,
              "qmin": int, "qmax": int}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def load_tuple(path, model=None, hint=""):
    """(state_dict, quant_list) of a tuple file: load_checked's kind, version and model name, then
    check_tuple; ModelFileError (one line naming the file, the op and the field) otherwise. A tuple
    written before the widths (docs/contract.md) reads as 8-bit weights."""
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


def fill_widths(quant_list):
    """A tuple written before the widths (docs/contract.md) gets them: 8-bit weights and activations."""
    for op in quant_list if isinstance(quant_list, list) else []:
        if isinstance(op, dict):
            op.setdefault("act_bits", 8)
            if getattr(ops.KINDS.get(op.get("op")), "weighted", False):
                op.setdefault("weight_bits", 8)


def check_tuple(state, quant_list):
    """Raise Problem unless (state, quant_list) holds every field and tensor the engines and the
    exporter read (the op table says which), each within the range the C loader checks. A tuple from
    before the widths gets them first (fill_widths)."""
    fill_widths(quant_list)
    _check_whole(state, quant_list)
    _check_header(quant_list)
    weights = biases = 0
    for i, op in enumerate(quant_list):
        _check_record(state, quant_list, i)
        VALIDATE[op["op"]](OpView(state, quant_list, i))
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
    act_bits = op["act_bits"]
    _in_range(where, "act_bits", act_bits, 4, 8)
    for field in ("zero_point", "qmax"):
        _in_range(where, f"{field} of a {act_bits}-bit tensor", op[field], 0, (1 << act_bits) - 1)
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
            low, high = BLOCK_RANGES.get(field) or weight_range(quant_list[0]["weight_mode"], op["weight_bits"])
            bad = np.flatnonzero((values < low) | (values > high))
            if bad.size:
                raise Problem(f"{where}: {field}[{bad[0]}] = {int(values[bad[0]])} outside [{low}, {high}]")
        if field == "bias" and list(tensor.shape) != [op["shape"][0]]:
            raise Problem(f"{where}: '{name}' has shape {list(tensor.shape)}, expected [{op['shape'][0]}]")


# --- the rules between fields, per kind (c/ops/KIND.c's KIND_validate): each kind's `check` in its
# model/ops/KIND.py, the helpers they share in model/ops/checks.py

# every kind's rule (tests/test_hostile_inputs.py: one for each kind of model/ops)
VALIDATE = {kind.name: kind.check for kind in ops.KINDS.values() if callable(kind.check)}
