"""Float nn.Module -> integer graph: fold BN, trace, calibrate, quantize.

The integer graph is the tuple `(state_dict, quant_list)`:
  quant_list[i]  one dict per op, in execution order; op i produces tensor i.
                 Every op has: op (its kind, model/ops), name, inputs (op indices),
                 shape [C, H, W], scale, zero_point, qmin, qmax (clamp bounds of its
                 output), plus its kind's fields (kernel, stride, padding, groups,
                 weight_zero_point, acc_bound, weight_sqnr_db).
                 quant_list[0] is the input op and carries the file header
                 (kind, version, model, dataset, fingerprint, settings).
  state_dict     integer tensors keyed NAME.FIELD: NAME.weight (int8, or uint8 with the
                 op's weight_zero_point), NAME.bias (int32) of conv/linear ops, and
                 NAME.multiplier, NAME.shift (int32) of every op that requantizes: one
                 shape for every kind, the counts its OpKind declares.
Each kind's matching and quantization lives in model/ops/KIND.py; this file walks the
graph, calibrates, and hands every node to its kind.
"""
import hashlib
import json

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.optimization import fuse as fold_bn

from model import ops, qmath
from model.fileio import FORMAT_VERSIONS
from model.ops.base import QuantizeError
from model.ops.input import INPUT_SCALE
from model.ops.weighted import ACC_LIMIT, BIAS_LIMIT, accumulator_bound, quantize_weight, weight_sqnr_db

__all__ = ["QuantizeError", "ACC_LIMIT", "BIAS_LIMIT", "INPUT_SCALE", "accumulator_bound", "quantize_weight",
           "weight_sqnr_db", "settings_fingerprint", "build_integer_graph"]

# nodes that are not ops: activations fused into the op before them, and no-ops on the data
RELU = {nn.ReLU, F.relu, torch.relu, "relu", "relu_"}
RELU6 = {nn.ReLU6, F.relu6}
ALIAS_MODULES = (nn.Flatten, nn.Dropout, nn.Identity)
ALIAS_FUNCTIONS = {torch.flatten, F.dropout, "flatten", "view", "reshape", "contiguous"}


def settings_fingerprint(cfg, raw_header):
    """Hash of everything the integer graph depends on: a stale tuple or export is detected by it."""
    keys = {"model": cfg.model, "weight_mode": cfg.weight_mode, "multiplier_bits": cfg.multiplier_bits,
            "calib_images": cfg.calib_images, "calib_method": cfg.calib_method, "seed": cfg.seed,
            "calib_percentile": cfg.calib_percentile if cfg.calib_method == "percentile" else None,
            "checkpoint_sha256": raw_header.get("sha256")}
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def _role(gm, node):
    """'relu', 'relu6', 'alias' for the nodes that are not ops of their own, else None."""
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        if isinstance(mod, nn.ReLU):
            return "relu"
        if isinstance(mod, nn.ReLU6) or (isinstance(mod, nn.Hardtanh) and (mod.min_val, mod.max_val) == (0.0, 6.0)):
            return "relu6"
        return "alias" if isinstance(mod, ALIAS_MODULES) else None
    if node.op in ("call_function", "call_method"):
        t = node.target
        return "relu" if t in RELU else "relu6" if t in RELU6 else "alias" if t in ALIAS_FUNCTIONS else None
    return None


def _describe(gm, node):
    if node.op == "call_module":
        return f"module {type(gm.get_submodule(node.target)).__name__}"
    if node.op in ("call_function", "call_method"):
        return f"function {getattr(node.target, '__name__', node.target)}"
    return node.op


class _Observer(fx.Interpreter):
    """Runs the folded float graph and records each node's output range and shape."""

    def __init__(self, gm, method, percentile):
        super().__init__(gm)
        self.method, self.percentile = method, percentile
        self.ranges, self.shapes, self.batches = {}, {}, 0

    def run_node(self, n):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            flat = out.detach().flatten()
            if self.method == "percentile":
                sample = flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[:1 << 20]]
                q = torch.quantile(sample, torch.tensor([1 - self.percentile / 100, self.percentile / 100]))
                lo, hi = q[0].item(), q[1].item()
                old = self.ranges.get(n.name, (0.0, 0.0))   # running mean over batches
                k = self.batches
                self.ranges[n.name] = ((old[0] * k + lo) / (k + 1), (old[1] * k + hi) / (k + 1))
            else:
                lo, hi = flat.min().item(), flat.max().item()
                old = self.ranges.get(n.name, (lo, hi))
                self.ranges[n.name] = (min(old[0], lo), max(old[1], hi))
            self.shapes[n.name] = list(out.shape[1:])
        return out


def _shape3(shape):
    return list(shape) + [1] * (3 - len(shape)) if len(shape) < 3 else list(shape)


def _clamp_for(act, scale, zero_point):
    """Clamp bounds of a uint8 output that a fused ReLU / ReLU6 imposes."""
    if act is None:
        return 0, 255
    qmax = 255 if act == "relu" else int(min(255, zero_point + qmath.round_half_up(6.0 / scale)))
    return int(max(0, zero_point)), qmax


class Builder:
    """The integer graph under construction; what an op kind's quantize() works with."""

    def __init__(self, gm, observer, cfg, input_shape):
        self.gm, self.observer, self.cfg, self.input_shape = gm, observer, cfg, input_shape
        self.ops, self.state, self.where, self.skip = [], {}, {}, set()
        self.users = {n: list(n.users) for n in gm.graph.nodes}

    def src(self, node):
        """The op index of node's first tensor input."""
        return self.where[next(a for a in node.args if isinstance(a, fx.Node))]

    def name_for(self, node):
        name = node.target.replace(".", "_") if node.op == "call_module" else node.name
        taken = {op["name"] for op in self.ops}
        base, k = name, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        return name

    def shape_of(self, node):
        return _shape3(self.observer.shapes[node.name])

    def qparams(self, node):
        """(scale, zero_point) of node's output from its calibrated range."""
        return qmath.choose_qparams(*self.observer.ranges[node.name])

    def fused_activation(self, node):
        """(act, node whose output is this op's output): fold a single following ReLU/ReLU6."""
        if len(self.users[node]) == 1:
            nxt = self.users[node][0]
            role = _role(self.gm, nxt)
            if role in ("relu", "relu6"):
                return role, nxt
        return None, node

    def emit(self, op, inputs, node, out_node, act, qparams=None, clamp=None, shape=None):
        """Append op (its fields filled in: inputs, shape, scale, zero point, clamp); node and
        out_node (its fused activation, or node) now stand for its output."""
        scale, zp = qparams if qparams is not None else self.qparams(out_node)
        qmin, qmax = clamp if clamp is not None else _clamp_for(act, scale, zp)
        op.update(inputs=list(inputs), shape=shape or self.shape_of(out_node), scale=scale, zero_point=zp,
                  qmin=qmin, qmax=qmax)
        self.ops.append(op)
        self.where[node] = self.where[out_node] = len(self.ops) - 1
        self.skip.add(out_node)
        return op

    def multiplier(self, real, name):
        """(m, shift) of a real requantization multiplier, with the layer named on failure."""
        try:
            return qmath.quantize_multiplier(real, self.cfg.multiplier_bits)
        except ValueError as err:
            raise QuantizeError(f"{self.cfg.model}: layer '{name}': {err}") from None

    def set_requant(self, name, multipliers, shifts):
        self.state[f"{name}.multiplier"] = torch.tensor([int(m) for m in multipliers], dtype=torch.int32)
        self.state[f"{name}.shift"] = torch.tensor([int(s) for s in shifts], dtype=torch.int32)


def build_integer_graph(model, calib_images, cfg, dataset, raw_header, progress=None):
    """The whole of stage 2 on an in-memory model; returns (state_dict, quant_list).

    calib_images: uint8 tensor N×C×H×W (raw pixels)."""
    model = model.eval().float()
    try:
        gm = fold_bn(fx.symbolic_trace(model))     # conv+BN -> conv with folded weight/bias
    except Exception as err:
        raise QuantizeError(f"{cfg.model}: cannot trace the model with torch.fx ({err})") from None

    observer = _Observer(gm, cfg.calib_method, cfg.calib_percentile)
    batches = torch.split(calib_images, 250)
    with torch.no_grad():
        for x in (progress(batches) if progress else batches):
            observer.run(x.float() / 255.0)
            observer.batches += 1

    b = Builder(gm, observer, cfg, _shape3(list(calib_images.shape[1:])))
    for node in gm.graph.nodes:
        if node in b.skip:
            continue
        if node.op == "output":
            out_node = node.args[0]
            if not isinstance(out_node, fx.Node) or b.where[out_node] != len(b.ops) - 1:
                raise QuantizeError(f"{cfg.model}: the graph output must be its last op")
            continue
        if node.op == "get_attr":
            raise QuantizeError(f"{cfg.model}: node '{node.name}' reads a parameter directly; unsupported")
        role = _role(gm, node)
        if role == "alias":
            b.where[node] = b.src(node)
            continue
        if role in ("relu", "relu6"):
            raise QuantizeError(f"{cfg.model}: {role} '{node.name}' does not directly follow an op with a "
                                f"single user that can fuse it (conv, linear, add, concat, avgpool)")
        kind, mod = ops.match(gm, node)
        if kind is None:
            raise QuantizeError(f"{cfg.model}: unsupported {_describe(gm, node)} at node '{node.name}'")
        kind.quantize(b, node, mod)

    b.ops[0].update(kind="fpgai-quant", version=FORMAT_VERSIONS["fpgai-quant"], model=cfg.model, dataset=dataset,
                    fingerprint=settings_fingerprint(cfg, raw_header), weight_mode=cfg.weight_mode,
                    multiplier_bits=cfg.multiplier_bits, calib_images=int(len(calib_images)),
                    calib_method=cfg.calib_method)
    return b.state, b.ops
