"""The op table: every integer op kind, declared once (one file per kind, TFLite Micro style).

Each model/ops/KIND.py declares an OpKind (model/ops/base.py): how the kind is found in a
torch.fx graph, how it is quantized, its numpy kernel (the specification), its torch kernel,
its ONNX nodes, its model.bin record (code, inputs, parameters by name, multiplier/shift counts)
and its tuple rule (check: the rules between an op's fields; shared ones in model/ops/checks.py).
The quantizer, both Python engines, the exporter, the reader, the fuzz corpus and the tests
read KINDS; the C engine declares the same table (`c/inference --op-table`, checked equal by
tests/test_op_table.py). docs/contract.md "Adding an op kind" lists every place a new kind touches.
"""
import importlib
import pkgutil

from model.ops import base
from model.ops.base import REQUANT_COUNTS, OpKind, QuantizeError

# every module of this package that declares a KIND is a kind: adding one is adding its file
_declared = [getattr(importlib.import_module(f"{__name__}.{m.name}"), "KIND", None) for m in pkgutil.iter_modules(__path__)]
KINDS = {k.name: k for k in sorted((k for k in _declared if k is not None), key=lambda k: k.code)}
BY_CODE = {k.code: k for k in KINDS.values()}
assert len(BY_CODE) == len(KINDS), "two op kinds share a model.bin code"
assert list(BY_CODE) == list(range(len(BY_CODE))), "model.bin codes must be 0, 1, 2, ..."
# every parameter word -> (quant_list key, index or None): the shared ones and each kind's own
PARAM_KEYS = {**base.PARAM_KEYS, **{w[0]: (w[1], w[2]) for k in KINDS.values() for w in k.own_params}}
OWN_PARAM_RANGES = {w[0]: (w[3], w[4]) for k in KINDS.values() for w in k.own_params}


def match(gm, node):
    """(kind, module) of an fx node, or (None, None) when no kind claims it."""
    for kind in KINDS.values():
        mod = kind.match(gm, node)
        if mod is not None:
            return kind, mod
    return None, None


def weighted_ops(quant_list):
    return [op for op in quant_list if KINDS[op["op"]].weighted]


def param_words(op):
    """The kind's parameter words of an op (a quant_list entry, plus weight/bias offsets if weighted)."""
    words = []
    for name in KINDS[op["op"]].params:
        key, index = PARAM_KEYS[name]
        words.append(int(op[key] if index is None else op[key][index]))
    return words


def params_from_words(kind, words, params=None):
    """The inverse of param_words: {quant_list key: value} of a record's parameter words (`params`: their
    names, the kind's by default)."""
    fields = {}
    for name, value in zip(kind.params if params is None else params, words):
        key, index = PARAM_KEYS[name]
        if index is None:
            fields[key] = value
        else:
            fields.setdefault(key, [])
            fields[key] += [0] * (index + 1 - len(fields[key]))
            fields[key][index] = value
    return fields


__all__ = ["KINDS", "BY_CODE", "PARAM_KEYS", "OWN_PARAM_RANGES", "OpKind", "QuantizeError", "REQUANT_COUNTS", "match", "weighted_ops",
           "param_words", "params_from_words"]
