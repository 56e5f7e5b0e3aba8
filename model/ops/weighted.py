"""What conv and linear share: weight and bias quantization and the accumulator bound."""
import numpy as np
import torch

from model import qmath
from model.ops.base import QuantizeError
from model.quant import methods
from model.quant.methods import weight_range

ACC_LIMIT = 2 ** 31 - 1
BIAS_LIMIT = 2 ** 30                # a floored channel's bias takes at most half the accumulator


def quantize_weight(w, mode, min_scale=0.0, bits=8):
    """(q, per-channel scales, zero_point) of a float weight [Cout, ...], rounded to nearest at `bits`
    (methods.rtn: the range, the scale floor `min_scale`, one value a byte)."""
    return methods.rtn(w, mode, bits, min_scale)


def weight_sqnr_db(w, q, scale, zero_point):
    """Signal-to-quantization-noise ratio of a quantized weight, in dB (higher is better):
    where per-tensor weights lose to per-channel ones shows up here first."""
    w = w.detach().double().numpy()
    noise = ((w - methods.dequantized(q, scale, zero_point)) ** 2).sum()
    return float("inf") if noise == 0 else float(10 * np.log10((w ** 2).sum() / noise))


def weight_count(op, x):
    """The weights of a conv or linear op (a quant_list entry) reading the op `x`: C * K."""
    c_in, h, w = x["shape"]
    k = c_in // op["groups"] * op["kernel"][0] * op["kernel"][1] if op["op"] == "conv" else c_in * h * w
    return op["shape"][0] * k


def accumulator_bound(qweight, weight_zp, bias, in_op):
    """Worst-case |acc| of a conv/linear: max over channels of
    sum|w - z_w| * max|x - z_x| + |bias|, x within the input's clamp bounds."""
    w = qweight.reshape(qweight.shape[0], -1).astype(np.int64) - weight_zp
    x_mag = max(in_op["zero_point"] - in_op["qmin"], in_op["qmax"] - in_op["zero_point"])
    return int((np.abs(w).sum(axis=1) * x_mag + np.abs(bias.astype(np.int64))).max())


def scale_floor(bias, in_scale):
    """Each channel's smallest weight scale: the one at which its bias, stored at s_in * s_w, stays
    within BIAS_LIMIT."""
    return np.abs(bias) / (in_scale * BIAS_LIMIT)


def quantize_layer_weights(b, node, name, weight, bias, in_scale, bits):
    """(q, per-channel scales, zero point, float bias) of a layer's weights at `bits`, by the
    quantizer's weight method and bias correction (model/quant/methods.py; the dry walk rounds to
    nearest), or at the scales the layer was given (b.weight_scales: the steps that
    quantization-aware fine-tuning learned, model/quant/qat.py)."""
    min_scale = scale_floor(bias, in_scale)
    if name in b.weight_scales:
        scale = np.maximum(b.weight_scales[name], min_scale)
        w = weight.detach().double().numpy()
        q = np.clip(qmath.round_half_up(w / scale.reshape(-1, *[1] * (w.ndim - 1))), *weight_range("per_channel", bits))
        return q.astype(np.int8), scale, 0, bias
    method, correct = ("rtn", False) if b.dry else methods.resolve(b.widths["weight_method"],
                                                                    b.widths["bias_correction"], bits)
    inputs = b.layer_inputs[node.name] if method != "rtn" or correct else None
    q, scale, zero_point, bias = methods.quantize_layer(weight, bias, b.cfg.weight_mode, bits, method, min_scale,
                                                        inputs, correct)
    if inputs is not None:
        b.layer_inputs.quantized(node.name, q, scale, zero_point, bias)
    return q, scale, zero_point, bias


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
    bits = b.layer_bits(name, "weight_bits")
    qw, w_scale, w_zp, bias_f = quantize_layer_weights(b, node, name, weight, bias_f, in_scale, bits)
    b.weight_scales[name] = w_scale
    bias_q = qmath.round_half_up(bias_f / (in_scale * w_scale))
    if np.abs(bias_q).max(initial=0) > ACC_LIMIT:
        raise QuantizeError(f"{b.cfg.model}: layer '{name}': bias does not fit int32")
    op = {"op": kind, "name": name, **fields, "weight_zero_point": int(w_zp), "weight_bits": bits}
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
