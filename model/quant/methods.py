"""Post-training weight quantization at 2..8 bits, from calibration data only.

Every method returns what the integer graph stores: (q, per-channel scales, zero point), q one value
a byte (int8 symmetric per output channel, or uint8 per tensor with the zero point), and
real weight = scale[c] * (q - zero_point).

  rtn    round to nearest on the max-abs (per channel) or min-max (per tensor) range
  mse    the same grid with its range clipped: per channel (or for the tensor) the clip ratio
         that minimises the weight error, each column weighted by its input's second moment
         diag(H) when the layer's inputs are known
  gptq   GPTQ (Frantar et al. 2022): mse's grid, columns rounded in order (largest diag(H)
         first, "act-order") with each column's error spread over the columns not yet rounded
         through the inverse of H = E[x x^T]; each group of a grouped conv has its own H; then
         coordinate descent on the codes (_refine), which GPTQ's one greedy pass leaves improvable
         (mobilenet_v2's first conv: 20.2 -> 24.2 dB output SQNR at W4). With bias correction, H
         less E[x] E[x]^T: the error that correction leaves
  correct_bias   the float bias less the mean output shift, W_q E[x] - W E[x_float]: the rounding's,
                 and (empirical: x from the model whose earlier layers are already quantized) that
                 of the earlier layers' rounding too

With empirical inputs (the default below 8 bits), mse and gptq fit the float layer's output W x_float
from the inputs x the quantized earlier layers give, not W x: their target is W C H^-1 (C = E[x_float
x^T]), the least squares weights on x, with a ridge towards W. Fitting W x instead keeps the shrinkage
of the layers before, which compounds down a chain of clipped low-bit layers (vgg13 W3A8 fell to
77.7%; docs/low_bit.md).

The layer inputs (LayerInputs: H and E[x] per group, x the layer's im2col columns on the BN-folded
model) come from input_statistics / InputStatistics.
"""
import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
from torch import nn
from torch.nn import functional as F

from model import qmath

METHODS = ("rtn", "mse", "gptq")
CLIP_RATIOS = np.linspace(0.5, 1.0, 100)    # mse's search: the fraction of the full range kept
GPTQ_DAMP = 0.01                            # of the mean of diag(H), added to the diagonal
TARGET_DAMP = 0.1                           # the same for the float target's solve (_float_target)
REFINE_SWEEPS = 3                           # coordinate-descent passes after GPTQ's rounding
GPTQ_BLOCK = 128                            # columns whose errors are spread at once (lazy batch updates)
MAX_ROWS = 1 << 15                          # im2col columns per layer that H is estimated from
STATISTICS_BYTES = 1 << 29                  # H (float32) of the layers measured in one pass


def weight_range(mode, bits):
    """(lowest, highest) value of a `bits`-wide weight: per-channel symmetric (the code -2^(bits-1) is
    never used, so the range is symmetric about the zero point 0), per-tensor unsigned with a zero point."""
    return (-((1 << (bits - 1)) - 1), (1 << (bits - 1)) - 1) if mode == "per_channel" else (0, (1 << bits) - 1)


@dataclass
class LayerInputs:
    """What a layer's methods know of its input x (the im2col columns, padding as zeros), per group of a
    grouped conv (one group otherwise): hessian [G, K, K] = E[x x^T] on up to MAX_ROWS sampled columns
    (float32 as measured), mean [G, K] = E[x] on all of them.  Where x comes from the model whose
    earlier layers are already quantized (InputStatistics, sequential), float_mean is E[x] on the float
    model and cross [G, K, K] = E[x_float x^T] on the same sampled columns; else None."""
    hessian: np.ndarray
    mean: np.ndarray
    float_mean: np.ndarray = None
    cross: np.ndarray = None


def _as_rows(w):
    """The float64 weight [Cout, K] (K = Cin/groups * kh * kw for a conv) and its original shape."""
    w = w.detach().double().numpy() if isinstance(w, torch.Tensor) else np.asarray(w, dtype=np.float64)
    return w.reshape(w.shape[0], -1), w.shape


def _codes(w, scale, zero_point, low, high):
    return np.clip(qmath.round_half_up(w / scale[:, None]) + zero_point, low, high)


def dequantized(q, scale, zero_point):
    """The real weights, float64 in q's shape, of codes q [Cout, ...] on per-channel `scale` [Cout]."""
    return (np.asarray(q, dtype=np.float64) - zero_point) * np.reshape(scale, (-1, *[1] * (np.ndim(q) - 1)))


def _stored(q, mode, shape):
    return q.reshape(shape).astype(np.int8 if mode == "per_channel" else np.uint8)


def _range_grid(w, mode, bits, min_scale, ratio=1.0):
    """(scales [Cout], zero point) of a grid covering `ratio` of the weights' range: the max-abs per
    channel, floored at min_scale (see rtn), or the tensor's min..max."""
    low, high = weight_range(mode, bits)
    if mode == "per_channel":
        amax = np.abs(w).max(axis=1)
        return np.maximum(np.where(amax > 0, ratio * amax / high, 1.0), min_scale), 0
    scale, zero_point = qmath.choose_qparams(ratio * w.min(), ratio * w.max(), low, high)
    return np.full(len(w), scale), zero_point


def rtn(w, mode, bits, min_scale=0.0):
    """(q, scales, zero point) of weight w [Cout, ...] rounded to nearest on its full range.

    Per channel, no scale goes below `min_scale` (per channel): a channel whose weights BN
    folding shrank to almost nothing (a BN gamma decayed to ~0) would otherwise need a bias
    beyond int32 at scale s_in*s_w; its output is ~ its bias, so coarser weights lose nothing."""
    rows, shape = _as_rows(w)
    scale, zero_point = _range_grid(rows, mode, bits, min_scale)
    return _stored(_codes(rows, scale, zero_point, *weight_range(mode, bits)), mode, shape), scale, zero_point


def _column_weights(rows, inputs):
    """[Cout, K] importance of each weight: its input's second moment diag(H) (all ones without inputs)."""
    if inputs is None:
        return np.ones_like(rows)
    diag = np.diagonal(inputs.hessian, axis1=1, axis2=2)           # [G, K]
    return np.repeat(diag, len(rows) // len(diag), axis=0)


def mse_grid(rows, mode, bits, min_scale=0.0, inputs=None):
    """(scales, zero point) of the clip ratio in CLIP_RATIOS with the least weighted squared weight
    error, chosen per channel (per_channel) or for the whole tensor (per_tensor)."""
    low, high = weight_range(mode, bits)
    importance = _column_weights(rows, inputs)
    best_error, best_ratio = np.full(len(rows), np.inf), np.ones(len(rows))
    for ratio in CLIP_RATIOS:
        scale, zero_point = _range_grid(rows, mode, bits, min_scale, ratio)
        error = (importance * (rows - dequantized(_codes(rows, scale, zero_point, low, high), scale, zero_point)) ** 2)
        error = error.sum(axis=1) if mode == "per_channel" else np.full(len(rows), error.sum())
        better = error < best_error
        best_error[better], best_ratio[better] = error[better], ratio
    return _range_grid(rows, mode, bits, min_scale, best_ratio if mode == "per_channel" else best_ratio[0])


def mse(w, mode, bits, min_scale=0.0, inputs=None):
    """(q, scales, zero point) of w (its float target, with empirical inputs) rounded to nearest on
    mse_grid's clipped range."""
    shape = np.shape(w)
    rows = _float_target(w, inputs)
    scale, zero_point = mse_grid(rows, mode, bits, min_scale, inputs)
    return _stored(_codes(rows, scale, zero_point, *weight_range(mode, bits)), mode, shape), scale, zero_point


def _inverse_cholesky(hessian):
    """R, upper triangular with H^-1 = R^T R, of each group's H [G, K, K] damped by GPTQ_DAMP of its
    mean diagonal (ten times more, up to four times, while H is not positive definite).

    H = U U^T with U upper (the Cholesky factor of H with its rows and columns reversed, reversed
    back), so R = U^-1: one factorization and one triangular solve, no full inverse; in float32, as
    GPTQ's own code (the damping keeps it well conditioned)."""
    hessian = torch.from_numpy(hessian).float()
    eye = torch.eye(hessian.shape[-1], dtype=hessian.dtype)
    damp = GPTQ_DAMP * hessian.diagonal(dim1=1, dim2=2).mean(dim=1)[:, None, None]
    for _ in range(5):
        lower, info = torch.linalg.cholesky_ex((hessian + damp * eye).flip(1, 2))
        if not info.any():
            return torch.linalg.solve_triangular(lower.flip(1, 2), eye, upper=True).double().numpy()
        damp = damp * 10
    raise np.linalg.LinAlgError("the layer's input second moment is not positive definite, even damped")


def _float_target(w, inputs):
    """The weights [Cout, K] that best make the float layer's output W x_float from the inputs x
    (least squares): W C H^-1 = W + W (C - H) H^-1, C = E[x_float x^T]; W itself where the inputs are
    the float model's (no cross moment) or unknown. H is damped by TARGET_DAMP of its mean diagonal, a
    ridge that pulls the target towards W: a direction the quantized inputs barely vary along (a unit
    the earlier layers' rounding nearly silenced) would otherwise take a weight many times W's
    (mobilenet_v2 W4: a projection's target 20 times its weights at GPTQ's 0.01)."""
    rows, _ = _as_rows(w)
    if inputs is None or inputs.cross is None:
        return rows
    groups, k = inputs.mean.shape
    hessian = inputs.hessian.astype(np.float64)
    diagonal = np.diagonal(hessian, axis1=1, axis2=2)
    damped = hessian + (TARGET_DAMP * diagonal.mean(axis=1)[:, None, None] + (diagonal == 0)[:, None, :]) * np.eye(k)
    grouped = rows.reshape(groups, -1, k)
    moved = grouped @ (inputs.cross.astype(np.float64) - hessian)                  # [G, R, K]
    return (grouped + np.linalg.solve(damped, moved.transpose(0, 2, 1)).transpose(0, 2, 1)).reshape(rows.shape)


def gptq(w, mode, bits, inputs, min_scale=0.0, act_order=True):
    """(q, scales, zero point) of w on mse_grid's grid, its columns rounded one after another, each
    one's rounding error compensated on the columns still to round (GPTQ, Frantar et al. 2022)."""
    shape = np.shape(w)
    rows = _float_target(w, inputs)
    low, high = weight_range(mode, bits)
    scale, zero_point = mse_grid(rows, mode, bits, min_scale, inputs)
    groups, k = inputs.mean.shape
    target = rows.reshape(groups, -1, k).copy()                     # [G, Cout/G, K]
    step = scale.reshape(groups, -1)
    hessian = inputs.hessian.copy()
    dead = np.diagonal(hessian, axis1=1, axis2=2) == 0              # inputs that never vary: any weight will do
    hessian[:, np.arange(k), np.arange(k)] += dead
    target[np.broadcast_to(dead[:, None, :], target.shape)] = 0
    order = (np.argsort(-np.diagonal(hessian, axis1=1, axis2=2), axis=1, kind="stable") if act_order
             else np.broadcast_to(np.arange(k), (groups, k)))
    target = np.take_along_axis(target, order[:, None, :], axis=2)
    work = target.copy()
    hessian = np.stack([h[np.ix_(o, o)] for h, o in zip(hessian, order)])
    inv = _inverse_cholesky(hessian)                                # [G, K, K], upper
    codes = np.empty_like(work)
    for start in range(0, k, GPTQ_BLOCK):
        end = min(start + GPTQ_BLOCK, k)
        errors = np.empty(work.shape[:2] + (end - start,))
        for j in range(start, end):
            column = work[:, :, j]
            codes[:, :, j] = np.clip(qmath.round_half_up(column / step) + zero_point, low, high)
            error = (column - (codes[:, :, j] - zero_point) * step) / inv[:, j, j][:, None]
            work[:, :, j:end] -= error[:, :, None] * inv[:, None, j, j:end]
            errors[:, :, j - start] = error
        work[:, :, end:] -= errors @ inv[:, start:end, end:]
    codes = _refine(target, codes, step, zero_point, low, high, hessian)
    restored = np.empty_like(codes)
    np.put_along_axis(restored, np.broadcast_to(order[:, None, :], codes.shape), codes, axis=2)
    return _stored(restored.reshape(len(rows), k), mode, shape), scale, zero_point


def _refine(rows, codes, step, zero_point, low, high, hessian):
    """codes [G, R, K] of rows [G, R, K] (steps [G, R]) after coordinate descent on each channel's output
    error e^T H e, e = (codes - zero point) * step - rows: column after column, a code moves by one step
    where that lowers the error, for up to REFINE_SWEEPS passes or until no code moves."""
    codes = codes.copy()
    error = (codes - zero_point) * step[:, :, None] - rows
    slope = error @ hessian                                          # [G, R, K]: H e per channel (H symmetric)
    for _ in range(REFINE_SWEEPS):
        moved = False
        for j in range(rows.shape[2]):
            for sign in (1, -1):
                gain = 2 * sign * step * slope[:, :, j] + step ** 2 * hessian[:, j, j][:, None]
                g, r = np.nonzero((gain < 0) & (codes[:, :, j] + sign >= low) & (codes[:, :, j] + sign <= high))
                if len(g):
                    codes[g, r, j] += sign
                    slope[g, r] += (sign * step[g, r])[:, None] * hessian[g, j]
                    moved = True
        if not moved:
            break
    return codes


def correct_bias(bias, w, q, scale, zero_point, inputs):
    """The float bias [Cout] less the mean output shift, per channel: W_q E[x] - W E[x_float], the
    rounding's and (where the inputs come from the quantized earlier layers) theirs."""
    rows, _ = _as_rows(w)
    groups, k = inputs.mean.shape
    float_mean = inputs.mean if inputs.float_mean is None else inputs.float_mean
    quantized = dequantized(q.reshape(len(rows), -1), scale, zero_point).reshape(groups, -1, k)
    shift = (np.einsum("gck,gk->gc", quantized, inputs.mean)
             - np.einsum("gck,gk->gc", rows.reshape(groups, -1, k), float_mean))
    return bias - shift.reshape(-1)


def _centered(inputs):
    """inputs with H = E[x x^T] less E[x] E[x]^T: the output error bias correction leaves (it removes the
    mean shift (W_q - W) E[x]), which is what the rounding should then minimise."""
    mean = inputs.mean
    covariance = inputs.hessian.astype(np.float64) - np.einsum("gi,gj->gij", mean, mean)
    # an input that never varies (its variance lost in rounding against its mean) is dead to GPTQ
    constant = np.diagonal(covariance, axis1=1, axis2=2) <= 1e-6 * np.diagonal(inputs.hessian, axis1=1, axis2=2)
    covariance[np.broadcast_to(constant[:, :, None], covariance.shape)] = 0
    covariance[np.broadcast_to(constant[:, None, :], covariance.shape)] = 0
    cross = None
    if inputs.cross is not None:        # E[x_float x^T] less E[x_float] E[x]^T, a constant x's column 0
        cross = inputs.cross.astype(np.float64) - np.einsum("gi,gj->gij", inputs.float_mean, mean)
        cross[np.broadcast_to(constant[:, None, :], cross.shape)] = 0
    return LayerInputs(covariance.astype(np.float32), mean, inputs.float_mean, cross)


def resolve(method, bias_correction, bits):
    """(method, whether to correct the bias) of the settings WEIGHT_METHOD and BIAS_CORRECTION at a
    layer's width: auto is rtn at 8 bits (W8 results stay as they were) and gptq below, where
    rounding to nearest loses points; bias correction auto below 8 bits (on the inputs `sequential`
    says), on and empirical at every width."""
    chosen = method if method != "auto" else "rtn" if bits == 8 else "gptq"
    return chosen, bias_correction in ("on", "empirical") or (bias_correction == "auto" and bits < 8)


def sequential(bias_correction, lowest_weight_bits):
    """Whether the layers' inputs come from the model quantized so far (InputStatistics, sequential):
    bias correction empirical, or auto where some layer's weights are below 8 bits: at a calibration
    pass a layer, the better post-training result on the CIFAR-10 networks (docs/low_bit.md)."""
    return bias_correction == "empirical" or (bias_correction == "auto" and lowest_weight_bits < 8)


def quantize_layer(w, bias, mode, bits, method, min_scale=0.0, inputs=None, bias_correction=False):
    """(q, scales, zero point, float bias) of a conv/linear layer by `method` (METHODS); `inputs`
    (LayerInputs) for gptq and bias correction, and for mse's weighting when given."""
    if method == "rtn":
        q, scale, zero_point = rtn(w, mode, bits, min_scale)
    elif method == "mse":
        q, scale, zero_point = mse(w, mode, bits, min_scale, inputs)
    elif method == "gptq":
        q, scale, zero_point = gptq(w, mode, bits, _centered(inputs) if bias_correction else inputs, min_scale)
    else:
        raise ValueError(f"unknown weight method {method!r}; choices: {', '.join(METHODS)}")
    if bias_correction:
        bias = correct_bias(bias, w, q, scale, zero_point, inputs)
    return q, scale, zero_point, bias


# --- the layer inputs -------------------------------------------------------------------------------

def _compute_module(mod):
    """The nn.Conv2d / nn.Linear / nn.BatchNorm2d that does a node's arithmetic (a module wrapping one,
    such as a conv reading a folded zero pad, holds exactly one)."""
    return next(m for m in mod.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)))


def _sample_columns(mod, x, keep, generator):
    """(up to `keep` of the columns [G, K, keep'] picked at random, the sum of all of them [G, K], their
    count) of the input x of a compute module: the im2col columns of a conv (padding as zeros, torch's
    own padding rule), a BatchNorm2d's channels as a depthwise 1x1 conv, a linear's rows."""
    if isinstance(mod, (nn.Linear, nn.BatchNorm2d)):
        cols = x.reshape(len(x), -1).T[None] if isinstance(mod, nn.Linear) else x.transpose(0, 1).flatten(1)[:, None]
        pick = torch.randperm(cols.shape[-1], generator=generator)[:keep]
        return cols[:, :, pick], cols.sum(dim=2, dtype=torch.float64), cols.shape[-1]
    x = F.pad(x, mod._reversed_padding_repeated_twice)             # "same" / "valid" / numbers, as torch pads
    (kh, kw), (sh, sw), (dh, dw) = mod.kernel_size, mod.stride, mod.dilation
    out_h, out_w = (x.shape[2] - dh * (kh - 1) - 1) // sh + 1, (x.shape[3] - dw * (kw - 1) - 1) // sw + 1
    # every column sums to the column of the images' sum (im2col is linear): all columns, cheaply
    total = F.unfold(x.sum(dim=0, keepdim=True), (kh, kw), dilation=(dh, dw), stride=(sh, sw))
    total = total.sum(dim=2, dtype=torch.float64).reshape(mod.groups, -1)
    if not keep:
        return x.new_zeros(mod.groups, total.shape[1], 0), total, len(x) * out_h * out_w
    # the picked columns gathered straight from x: image n, output row oy and column ox
    pick = torch.randperm(len(x) * out_h * out_w, generator=generator)[:keep]
    n, oy, ox = pick // (out_h * out_w), pick // out_w % out_h, pick % out_w
    in_rows = (oy * sh)[:, None] + torch.arange(kh) * dh
    in_cols = (ox * sw)[:, None] + torch.arange(kw) * dw
    patches = x[n[:, None, None], :, in_rows[:, :, None], in_cols[:, None, :]]          # [keep, kh, kw, C]
    patches = patches.permute(0, 3, 1, 2).reshape(len(pick), mod.groups, -1).permute(1, 2, 0)
    return patches, total, len(x) * out_h * out_w


class _Sums:
    """Running sums of one layer's columns: all of them for the mean, a random sample for H (float32;
    max_rows 0: the mean only); with the float model's input beside (paired), its mean and the cross
    moment on the same sampled columns."""

    def __init__(self, max_rows, total_images, generator):
        self.max_rows, self.total_images, self.generator = max_rows, total_images, generator
        self.outer = self.total = self.cross = self.float_total = None
        self.count = self.sampled = 0

    def add(self, mod, x, x_float=None):
        keep = math.ceil(self.max_rows * len(x) / self.total_images)
        picks = self.generator.get_state()
        sample, total, count = _sample_columns(mod, x.float(), keep, self.generator)
        if self.total is None:
            self.total = torch.zeros(total.shape, dtype=torch.float64)
            if self.max_rows:
                self.outer = torch.zeros(sample.shape[0], sample.shape[1], sample.shape[1])
        if self.max_rows:
            self.outer.baddbmm_(sample, sample.transpose(1, 2))
        self.total += total
        self.count, self.sampled = self.count + count, self.sampled + sample.shape[-1]
        if x_float is not None:
            self.generator.set_state(picks)         # the same columns of the float input
            float_sample, float_total, _ = _sample_columns(mod, x_float.float(), keep, self.generator)
            if self.float_total is None:
                self.float_total = torch.zeros_like(self.total)
                self.cross = torch.zeros_like(self.outer) if self.max_rows else None
            if self.max_rows:
                self.cross.baddbmm_(float_sample, sample.transpose(1, 2))
            self.float_total += float_total

    def result(self):
        mean = (self.total / self.count).numpy()
        inputs = LayerInputs((self.outer / self.sampled).numpy() if self.max_rows else None, mean)
        if self.float_total is not None:
            inputs.float_mean = (self.float_total / self.count).numpy()
            inputs.cross = (self.cross / self.sampled).numpy() if self.max_rows else None
        return inputs


class _Done(Exception):
    """The pass has measured its last layer: the rest of the graph need not run."""


class _Recorder(fx.Interpreter):
    """Runs the graph and hands the input of each measured node's compute module to take(name, module,
    input); stops after the last."""

    def __init__(self, gm, names, take):
        super().__init__(gm)
        self.names, self.take = set(names), take
        self.last = [n.name for n in gm.graph.nodes if n.name in self.names][-1]

    def run_node(self, n):
        if n.name not in self.names:
            return super().run_node(n)
        mod = _compute_module(self.module.get_submodule(n.target))
        seen = []
        handle = mod.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
        try:
            out = super().run_node(n)
        finally:
            handle.remove()
        self.take(n.name, mod, seen[0])
        if n.name == self.last:
            raise _Done
        return out

    def measure(self, x):
        try:
            self.run(x)
        except _Done:
            pass


def input_statistics(gm, images, names, max_rows=MAX_ROWS, batch=32, seed=0, progress=None, float_gm=None):
    """{node name: LayerInputs} of the conv / linear nodes `names` (call_module nodes) of the fx
    GraphModule gm, run on `images` (float, as the model reads them) `batch` at a time, in one pass;
    float_gm: the float model gm departs from (the same graph), run beside it for LayerInputs.float_mean
    and .cross; progress: a tqdm-like wrapper of the batches."""
    unknown = set(names) - {n.name for n in gm.graph.nodes if n.op == "call_module"}
    if unknown:
        raise ValueError(f"no module nodes named {sorted(unknown)} in the graph")
    generator = torch.Generator().manual_seed(seed)
    sums = {name: _Sums(max_rows, len(images), generator) for name in names}
    float_seen = {}
    recorder = _Recorder(gm, names, lambda name, mod, x: sums[name].add(mod, x, float_seen.get(name)))
    float_recorder = _Recorder(float_gm, names, lambda name, _, x: float_seen.update({name: x})) \
        if float_gm is not None else None
    batches = torch.split(images, batch)
    with torch.no_grad():
        for x in (progress(batches) if progress else batches):
            if float_recorder:
                float_recorder.measure(x)
            recorder.measure(x)
    return {name: s.result() for name, s in sums.items()}


class InputStatistics:
    """LayerInputs of the conv / linear nodes `names` of gm (in graph order) on demand: a pass measures
    the next layers whose H together take at most `budget` bytes, so memory stays bounded.

    sequential (see sequential(): bias correction empirical, or auto below 8 bits): each layer's inputs
    are measured in a pass of their own on the model whose earlier layers hold their weights as
    `quantized` set them (a copy of gm), the float model gm run beside it for LayerInputs.float_mean and
    .cross: bias correction then makes up for the mean shift of every earlier layer's rounding too, and
    mse / gptq fit the float output."""

    def __init__(self, gm, images, names, seed=0, progress=None, budget=STATISTICS_BYTES, sequential=False):
        self.images, self.names, self.seed, self.progress = images, list(names), seed, progress
        self.budget, self.ready = budget, {}
        self.float_gm = gm if sequential else None
        self.gm = copy.deepcopy(gm) if sequential else gm

    def _module(self, name):
        return _compute_module(self.gm.get_submodule(next(n for n in self.gm.graph.nodes if n.name == name).target))

    def _bytes(self, name):
        mod = self._module(name)
        if isinstance(mod, nn.Linear):
            return 4 * mod.in_features ** 2
        if isinstance(mod, nn.BatchNorm2d):
            return 4 * mod.num_features
        k = mod.in_channels // mod.groups * math.prod(mod.kernel_size)
        return 4 * mod.groups * k * k

    def __getitem__(self, name):
        if name not in self.ready:
            chunk, used = [], 0
            for later in self.names[self.names.index(name):]:
                if chunk and (self.float_gm is not None or used + self._bytes(later) > self.budget):
                    break
                chunk.append(later)
                used += self._bytes(later)
            self.ready = input_statistics(self.gm, self.images, chunk, seed=self.seed, progress=self.progress,
                                          float_gm=self.float_gm)
        return self.ready[name]

    def quantized(self, name, q, scale, zero_point, bias):
        """Layer `name`'s weight as its codes q, scales and zero point give it, and its float bias, from
        now on, where sequential (a BatchNorm2d's stay float)."""
        mod = self._module(name) if self.float_gm is not None else None
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            weight = dequantized(q, scale, zero_point)
            mod.weight.data = torch.as_tensor(weight, dtype=mod.weight.dtype).reshape(mod.weight.shape)
            if mod.bias is not None:
                mod.bias.data = torch.as_tensor(bias, dtype=mod.bias.dtype)
