"""Float nn.Module -> integer graph: fold BN, trace, calibrate, quantize.

The integer graph is the tuple `(state_dict, quant_list)`:
  quant_list[i]  one dict per op, in execution order; op i produces tensor i.
                 Every op has: op, name, inputs (op indices), shape [C, H, W],
                 scale, zero_point, qmin, qmax (clamp bounds of its output).
                 quant_list[0] is the input op and carries the file header
                 (kind, version, model, dataset, fingerprint, settings).
  state_dict     integer tensors of conv/linear ops, keyed by op name:
                 NAME.weight (int8, or uint8 with NAME.weight_zero_point),
                 NAME.bias (int32), NAME.multiplier and NAME.shift (int32, per
                 output channel; all equal in per-tensor mode).
Op-specific fields: conv: stride, padding, groups, weight_zero_point, acc_bound;
linear: weight_zero_point, acc_bound; maxpool/avgpool: kernel, stride, padding
(+ multiplier, shift for avgpool); add: multipliers [m_a, m_b], shift.
"""
import hashlib
import json
import operator

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.optimization import fuse as fold_bn

from model import qmath
from model.fileio import FORMAT_VERSION

ACC_LIMIT = 2 ** 31 - 1
BIAS_LIMIT = 2 ** 30                # a floored channel's bias takes at most half the accumulator
INPUT_SCALE = 1.0 / 255.0          # the float model sees pixel / 255: input q = pixel, zero point 0

RELU = {nn.ReLU, F.relu, torch.relu}
RELU6 = {nn.ReLU6, F.relu6}
ADD = {operator.add, operator.iadd, torch.add}
ALIAS_MODULES = (nn.Flatten, nn.Dropout, nn.Identity)
ALIAS_FUNCTIONS = {torch.flatten, F.dropout}
POOL_FUNCTIONS = {F.max_pool2d: nn.MaxPool2d, F.avg_pool2d: nn.AvgPool2d, F.adaptive_avg_pool2d: nn.AdaptiveAvgPool2d}


class QuantizeError(RuntimeError):
    pass


def settings_fingerprint(cfg, raw_header):
    """Hash of everything the integer graph depends on: a stale tuple or export is detected by it."""
    keys = {"model": cfg.model, "weight_mode": cfg.weight_mode, "multiplier_bits": cfg.multiplier_bits,
            "calib_images": cfg.calib_images, "calib_method": cfg.calib_method, "seed": cfg.seed,
            "calib_percentile": cfg.calib_percentile if cfg.calib_method == "percentile" else None,
            "checkpoint_sha256": raw_header.get("sha256")}
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def _kind(gm, node):
    """Normalise a node to (kind, module-or-None)."""
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        for kind, types in (("conv", (nn.Conv2d,)), ("linear", (nn.Linear,)), ("relu", (nn.ReLU,)),
                            ("relu6", (nn.ReLU6,)), ("maxpool", (nn.MaxPool2d,)),
                            ("avgpool", (nn.AvgPool2d, nn.AdaptiveAvgPool2d)), ("alias", ALIAS_MODULES)):
            if isinstance(mod, types):
                return kind, mod
        if isinstance(mod, nn.Hardtanh) and (mod.min_val, mod.max_val) == (0.0, 6.0):
            return "relu6", mod
        return f"module {type(mod).__name__}", mod
    if node.op in ("call_function", "call_method"):
        t = node.target
        if t in RELU or t == "relu":
            return "relu", None
        if t in RELU6:
            return "relu6", None
        if t in ADD or t in ("add", "add_"):
            return "add", None
        if t in ALIAS_FUNCTIONS or t in ("flatten", "view", "reshape", "contiguous"):
            return "alias", None
        if t in POOL_FUNCTIONS:   # the functional form, as the equivalent module
            cls = POOL_FUNCTIONS[t]
            return ("maxpool" if cls is nn.MaxPool2d else "avgpool"), cls(*node.args[1:], **node.kwargs)
        return f"function {getattr(t, '__name__', t)}", None
    return node.op, None


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


def _pair(v):
    return [int(v), int(v)] if isinstance(v, int) else [int(x) for x in v]


def quantize_weight(w, mode, min_scale=0.0):
    """(q, per-channel scales, zero_point) of a float weight [Cout, ...].

    Per channel, no scale goes below `min_scale` (per channel): a channel whose weights BN
    folding shrank to almost nothing (a BN gamma decayed to ~0) would otherwise need a bias
    beyond int32 at scale s_in*s_w; its output is ~ its bias, so coarser weights lose nothing."""
    w = w.detach().double().numpy()
    cout = w.shape[0]
    if mode == "per_channel":                      # int8 symmetric per output channel, [-127, 127]
        amax = np.abs(w.reshape(cout, -1)).max(axis=1)
        scale = np.maximum(np.where(amax > 0, amax / 127.0, 1.0), min_scale)
        q = np.clip(qmath.round_half_up(w / scale.reshape(-1, *[1] * (w.ndim - 1))), -127, 127)
        return q.astype(np.int8), scale, 0
    scale, zp = qmath.choose_qparams(w.min(), w.max())   # per tensor uint8 with a zero point
    q = np.clip(qmath.round_half_up(w / scale) + zp, 0, 255)
    return q.astype(np.uint8), np.full(cout, scale), zp


def weight_sqnr_db(w, q, scale, zero_point):
    """Signal-to-quantization-noise ratio of a quantized weight, in dB (higher is better):
    where per-tensor weights lose to per-channel ones shows up here first."""
    w = w.detach().double().numpy()
    noise = ((w - (q.astype(np.float64) - zero_point) * scale.reshape(-1, *[1] * (w.ndim - 1))) ** 2).sum()
    return float("inf") if noise == 0 else float(10 * np.log10((w ** 2).sum() / noise))


def accumulator_bound(qweight, weight_zp, bias, in_op):
    """Worst-case |acc| of a conv/linear: max over channels of
    sum|w - z_w| * max|x - z_x| + |bias|, x within the input's clamp bounds."""
    w = qweight.reshape(qweight.shape[0], -1).astype(np.int64) - weight_zp
    x_mag = max(in_op["zero_point"] - in_op["qmin"], in_op["qmax"] - in_op["zero_point"])
    return int((np.abs(w).sum(axis=1) * x_mag + np.abs(bias.astype(np.int64))).max())


def _clamp_for(act, scale, zero_point):
    """Clamp bounds of a uint8 output that a fused ReLU / ReLU6 imposes."""
    if act is None:
        return 0, 255
    qmax = 255 if act == "relu" else int(min(255, zero_point + qmath.round_half_up(6.0 / scale)))
    return int(max(0, zero_point)), qmax


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

    nodes = list(gm.graph.nodes)
    users = {n: list(n.users) for n in nodes}
    ops, state, where = [], {}, {}                 # where: fx node -> op index producing its value

    def add_op(node_for_range, op, inputs, act=None):
        lo, hi = observer.ranges[node_for_range.name]
        scale, zp = qmath.choose_qparams(lo, hi)
        qmin, qmax = _clamp_for(act, scale, zp)
        op.update(inputs=inputs, shape=_shape3(observer.shapes[node_for_range.name]),
                  scale=scale, zero_point=zp, qmin=qmin, qmax=qmax)
        ops.append(op)
        return len(ops) - 1

    def fused_activation(node):
        """(act, node whose output is this op's output): fold a single following ReLU/ReLU6."""
        if len(users[node]) == 1:
            nxt = users[node][0]
            kind, _ = _kind(gm, nxt)
            if kind in ("relu", "relu6"):
                return kind, nxt
        return None, node

    skip = set()
    for node in nodes:
        if node in skip:
            continue
        kind, mod = _kind(gm, node)
        if node.op == "placeholder":
            if ops:
                raise QuantizeError(f"{cfg.model}: only single-input models are supported")
            ops.append({"op": "input", "name": "input", "inputs": [],
                        "shape": _shape3(list(calib_images.shape[1:])), "scale": INPUT_SCALE,
                        "zero_point": 0, "qmin": 0, "qmax": 255})
            where[node] = 0
            continue
        if node.op == "output":
            out_node = node.args[0]
            if not isinstance(out_node, fx.Node) or where[out_node] != len(ops) - 1:
                raise QuantizeError(f"{cfg.model}: the graph output must be its last op")
            continue
        if node.op == "get_attr":
            raise QuantizeError(f"{cfg.model}: node '{node.name}' reads a parameter directly; unsupported")
        args = [a for a in node.args if isinstance(a, fx.Node)]
        if kind == "alias":
            where[node] = where[args[0]]
            continue
        if kind in ("conv", "linear"):
            act, out_node = fused_activation(node)
            skip.add(out_node)
            src = where[args[0]]
            name = node.target.replace(".", "_")
            lo, hi = observer.ranges[out_node.name]
            out_scale, _ = qmath.choose_qparams(lo, hi)
            in_scale = ops[src]["scale"]
            bias_f = (mod.bias.detach().double().numpy() if mod.bias is not None
                      else np.zeros(mod.weight.shape[0]))
            qw, w_scale, w_zp = quantize_weight(mod.weight, cfg.weight_mode,
                                                min_scale=np.abs(bias_f) / (in_scale * BIAS_LIMIT))
            bias_q = qmath.round_half_up(bias_f / (in_scale * w_scale))
            if np.abs(bias_q).max(initial=0) > ACC_LIMIT:
                raise QuantizeError(f"{cfg.model}: layer '{name}': bias does not fit int32")
            mult = [qmath.quantize_multiplier(in_scale * s / out_scale, cfg.multiplier_bits) for s in w_scale]
            op = {"op": kind, "name": name, "weight_zero_point": int(w_zp)}
            if kind == "conv":
                if mod.padding_mode != "zeros" or _pair(mod.dilation) != [1, 1]:
                    raise QuantizeError(f"{cfg.model}: conv '{name}': only zero padding and dilation 1")
                if isinstance(mod.padding, str):
                    raise QuantizeError(f"{cfg.model}: conv '{name}': string padding '{mod.padding}' unsupported")
                op.update(stride=_pair(mod.stride), padding=_pair(mod.padding), groups=int(mod.groups))
            where[node] = where[out_node] = add_op(out_node, op, [src], act)
            bound = accumulator_bound(qw, w_zp, bias_q, ops[src])
            if bound > ACC_LIMIT:
                raise QuantizeError(f"{cfg.model}: layer '{name}': worst-case accumulator {bound} "
                                    f"exceeds int32 ({ACC_LIMIT}); the integer path could overflow")
            op["acc_bound"] = bound
            op["weight_sqnr_db"] = weight_sqnr_db(mod.weight, qw, w_scale, w_zp)
            state[f"{name}.weight"] = torch.from_numpy(qw)
            state[f"{name}.bias"] = torch.from_numpy(bias_q.astype(np.int32))
            state[f"{name}.multiplier"] = torch.tensor([m for m, _ in mult], dtype=torch.int32)
            state[f"{name}.shift"] = torch.tensor([s for _, s in mult], dtype=torch.int32)
            continue
        if kind == "maxpool":
            if mod.ceil_mode or _pair(mod.dilation) != [1, 1]:
                raise QuantizeError(f"{cfg.model}: maxpool '{node.name}': ceil_mode/dilation unsupported")
            src = where[args[0]]
            # max commutes with the monotone quantizer: output keeps the input's parameters exactly
            op = {"op": "maxpool", "name": node.name, "inputs": [src], "kernel": _pair(mod.kernel_size),
                  "stride": _pair(mod.stride), "padding": _pair(mod.padding),
                  "shape": _shape3(observer.shapes[node.name])}
            op.update({k: ops[src][k] for k in ("scale", "zero_point", "qmin", "qmax")})
            ops.append(op)
            where[node] = len(ops) - 1
            continue
        if kind == "avgpool":
            src = where[args[0]]
            _, h, w = ops[src]["shape"]
            oh, ow = observer.shapes[node.name][1:]
            if isinstance(mod, nn.AdaptiveAvgPool2d):
                if h % oh or w % ow:
                    raise QuantizeError(f"{cfg.model}: adaptive avgpool '{node.name}' {h}x{w}->{oh}x{ow} is not uniform")
                kernel = stride = [h // oh, w // ow]
            else:
                if _pair(mod.padding) != [0, 0] or mod.ceil_mode or mod.divisor_override:
                    raise QuantizeError(f"{cfg.model}: avgpool '{node.name}': padding/ceil_mode/divisor unsupported")
                kernel, stride = _pair(mod.kernel_size), _pair(mod.stride)
            act, out_node = fused_activation(node)
            skip.add(out_node)
            op = {"op": "avgpool", "name": node.name, "kernel": kernel, "stride": stride, "padding": [0, 0]}
            idx = add_op(out_node, op, [src], act)
            where[node] = where[out_node] = idx
            op["multiplier"], op["shift"] = qmath.quantize_multiplier(
                ops[src]["scale"] / (kernel[0] * kernel[1] * op["scale"]), cfg.multiplier_bits)
            continue
        if kind == "add":
            if len(args) != 2 or len(node.args) != 2:
                raise QuantizeError(f"{cfg.model}: add '{node.name}' must add exactly two tensors")
            act, out_node = fused_activation(node)
            skip.add(out_node)
            a, b = where[args[0]], where[args[1]]
            op = {"op": "add", "name": node.name}
            idx = add_op(out_node, op, [a, b], act)
            where[node] = where[out_node] = idx
            # both inputs rescaled to the output scale with one shared shift, one rounding
            ra, rb = ops[a]["scale"] / op["scale"], ops[b]["scale"] / op["scale"]
            _, shift = qmath.quantize_multiplier(max(ra, rb), cfg.multiplier_bits)
            op["multipliers"] = [int(qmath.round_half_up(r * 2.0 ** shift)) for r in (ra, rb)]
            op["shift"] = shift
            continue
        if kind in ("relu", "relu6"):
            raise QuantizeError(f"{cfg.model}: {kind} '{node.name}' does not directly follow a conv, "
                                f"linear, add or avgpool with a single user; it cannot be fused")
        raise QuantizeError(f"{cfg.model}: unsupported {kind} at node '{node.name}'")

    ops[0].update(kind="fpgai-quant", version=FORMAT_VERSION, model=cfg.model, dataset=dataset,
                  fingerprint=settings_fingerprint(cfg, raw_header), weight_mode=cfg.weight_mode,
                  multiplier_bits=cfg.multiplier_bits, calib_images=int(len(calib_images)),
                  calib_method=cfg.calib_method)
    return state, ops
