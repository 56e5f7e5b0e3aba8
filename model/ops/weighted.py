"""What conv and linear share: weight and bias quantization and the accumulator bound."""
import numpy as np
import torch

from model import qmath
from model.ops.base import QuantizeError

ACC_LIMIT = 2 ** 31 - 1
BIAS_LIMIT = 2 ** 30                # a floored channel's bias takes at most half the accumulator


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


def quantize_weighted(b, node, kind, weight, bias, fields):
    """Append a conv/linear op of float `weight` [Cout, ...] and `bias` (or None) reading node's
    input, with its ReLU/ReLU6 fused: int weights, int32 bias at s_in*s_w, per-channel
    multipliers, the accumulator bound proven (refused beyond int32)."""
    act, out_node = b.fused_activation(node)
    src = b.src(node)
    name = b.name_for(node)
    out_scale, _ = b.qparams(out_node)
    in_scale = b.ops[src]["scale"]
    weight = weight.detach()
    bias_f = bias.detach().double().numpy() if bias is not None else np.zeros(weight.shape[0])
    if not (torch.isfinite(weight).all() and np.isfinite(bias_f).all()):
        raise QuantizeError(f"{b.cfg.model}: layer '{name}': weight or bias is not finite")
    qw, w_scale, w_zp = quantize_weight(weight, b.cfg.weight_mode, min_scale=np.abs(bias_f) / (in_scale * BIAS_LIMIT))
    bias_q = qmath.round_half_up(bias_f / (in_scale * w_scale))
    if np.abs(bias_q).max(initial=0) > ACC_LIMIT:
        raise QuantizeError(f"{b.cfg.model}: layer '{name}': bias does not fit int32")
    op = {"op": kind, "name": name, **fields, "weight_zero_point": int(w_zp)}
    b.emit(op, [src], node, out_node, act)
    bound = accumulator_bound(qw, w_zp, bias_q, b.ops[src])
    if bound > ACC_LIMIT:
        raise QuantizeError(f"{b.cfg.model}: layer '{name}': worst-case accumulator {bound} "
                            f"exceeds int32 ({ACC_LIMIT}); the integer path could overflow")
    op["acc_bound"] = bound
    op["weight_sqnr_db"] = weight_sqnr_db(weight, qw, w_scale, w_zp)
    b.state[f"{name}.weight"] = torch.from_numpy(qw)
    b.state[f"{name}.bias"] = torch.from_numpy(bias_q.astype(np.int32))
    b.set_requant(name, *zip(*(b.multiplier(in_scale * s / out_scale, name) for s in w_scale)))
