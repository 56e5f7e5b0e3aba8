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
import math

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.optimization import fuse as fold_bn

from model.quant import graph_passes, methods, qat
from model import ops, qmath
from model.fileio import FORMAT_VERSIONS
from model.ops.base import QuantizeError, describe_node, keeps_qparams
from model.ops.input import INPUT_SCALE
from model.ops.weighted import ACC_LIMIT, BIAS_LIMIT, accumulator_bound, quantize_weight, weight_sqnr_db
from model.formats.tuple_check import TUPLE_HEADER, tuple_problem

__all__ = ["QuantizeError", "ACC_LIMIT", "BIAS_LIMIT", "INPUT_SCALE", "accumulator_bound", "quantize_weight",
           "weight_sqnr_db", "settings_fingerprint", "build_integer_graph", "TUPLE_HEADER", "tuple_problem"]

# nodes that are not ops: activations fused into the op before them, and no-ops on the data
RELU = {nn.ReLU, F.relu, torch.relu, "relu", "relu_"}
RELU6 = {nn.ReLU6, F.relu6}
# aliases: the op's output read again, unchanged in flat C,H,W order (reshapes keep the batch
# dimension; dropout in eval mode); a reshape that changes C,H,W may only feed a linear layer
ALIAS_MODULES = (nn.Flatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                 nn.FeatureAlphaDropout, nn.Identity)
DROPOUT_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout}
ALIAS_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, "flatten", "view", "reshape",
                   "squeeze", "unsqueeze", "contiguous", "view_as", "reshape_as", "detach", "clone"}
# data-permuting or otherwise unsupported spellings: the closest supported one, for the error
HINTS = {
    "transpose": "it permutes data; only reshapes that keep the flat C,H,W order are free (view, reshape, flatten, "
                 "squeeze), and channel shuffle: x.view(b, groups, c // groups, h, w).transpose(1, 2) then a view "
                 "back to b x c x h x w",
    "permute": "it permutes data; only reshapes that keep the flat C,H,W order are free (view, reshape, flatten, "
               "squeeze)",
    "interpolate": "only nearest upsampling by integer factors is supported (F.interpolate(x, scale_factor=2))",
    "Upsample": "only nearest upsampling by integer factors is supported (nn.Upsample(scale_factor=2))",
    "tensor_split": "channel split is x.chunk(n, dim=1), x.split(n, dim=1) or x[:, a:b]",
    "getitem": "only a range of channels (x[:, a:b], a piece of x.chunk / x.split on dim=1) is supported",
    "conv2d": "functional F.conv2d with its weight read as a tensor; use the module nn.Conv2d",
    "linear": "functional F.linear with its weight read as a tensor; use the module nn.Linear",
    "batch_norm": "functional F.batch_norm; use the module nn.BatchNorm2d",
    "BatchNorm1d": "use nn.BatchNorm2d on N x C x H x W",
    "AdaptiveMaxPool2d": "use nn.MaxPool2d with a uniform window, or AdaptiveAvgPool2d",
    "adaptive_max_pool2d": "use nn.MaxPool2d with a uniform window, or AdaptiveAvgPool2d",
    "mean": "only the mean over H and W (x.mean((2, 3)), keepdim or not) is an op (a global avgpool)",
    "sum": "use x.mean((2, 3)) (a global avgpool)",
    "matmul": "use nn.Linear",
    "softmax": "leave softmax out of the model (the logits' argmax is the prediction)",
    "log_softmax": "leave log_softmax out of the model (the logits' argmax is the prediction)",
    "Softmax": "leave softmax out of the model (the logits' argmax is the prediction)",
    "LogSoftmax": "leave log_softmax out of the model (the logits' argmax is the prediction)",
    "dropout": "F.dropout with training=True drops at inference too; pass training=self.training or use nn.Dropout",
}


# the widths and methods of issue 27, with their defaults: a setting at its default leaves the fingerprint of
# the tuples made before them unchanged
WIDTH_SETTINGS = {"weight_bits": 8, "act_bits": 8, "bits": {}, "weight_method": "auto", "bias_correction": "auto",
                  "qat_epochs": 0, "qat_lr": 0.01, "qat_loss": "labels"}


def width_settings(cfg):
    """{setting: value} of WIDTH_SETTINGS in cfg (a namespace without them: the defaults), `bits` read
    into its per-layer map (read_bits)."""
    values = {k: getattr(cfg, k, default) for k, default in WIDTH_SETTINGS.items()}
    values["bits"] = read_bits(values["bits"])
    return values


def read_bits(bits):
    """The per-layer widths {layer: {"weight_bits": N, "act_bits": M}} of --bits: a JSON file's path, the
    map itself (a tuple's header), or "" / None for none. QuantizeError naming the file on a bad one."""
    if not bits:
        return {}
    where = "--bits" if isinstance(bits, dict) else bits
    if isinstance(bits, str):
        try:
            with open(bits) as f:
                bits = json.load(f)
        except OSError as err:
            raise QuantizeError(f"{where}: cannot read the per-layer widths ({err.strerror})") from None
        except ValueError as err:
            raise QuantizeError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(bits, dict):
        raise QuantizeError(f"{where}: expected an object of layer names, e.g. {{\"conv1\": {{\"weight_bits\": 4}}}}")
    limits = {"weight_bits": (2, 8), "act_bits": (4, 8)}
    for layer, widths in bits.items():
        if not isinstance(widths, dict) or not widths or set(widths) - set(limits):
            raise QuantizeError(f"{where}: layer '{layer}': expected {{\"weight_bits\": N, \"act_bits\": M}} "
                                f"(either or both), got {widths!r}")
        for key, value in widths.items():
            low, high = limits[key]
            if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
                raise QuantizeError(f"{where}: layer '{layer}': {key} {value!r} outside {low}..{high}")
    return {layer: dict(widths) for layer, widths in bits.items()}


def lowest_bits(cfg, kind):
    """The narrowest width of `kind` ("weight_bits" or "act_bits") cfg's settings ask for (--weight_bits /
    --act_bits, --bits)."""
    widths = width_settings(cfg)
    return min([widths[kind]] + [w[kind] for w in widths["bits"].values() if kind in w])


def settings_fingerprint(cfg, raw_header):
    """Hash of everything the integer graph depends on: a stale tuple or export is detected by it."""
    # auto with no activation below 8 bits is minmax: the tuples made before it stay current
    calib_method = "minmax" if cfg.calib_method == "auto" and lowest_bits(cfg, "act_bits") == 8 else cfg.calib_method
    keys = {"model": cfg.model, "weight_mode": cfg.weight_mode, "multiplier_bits": cfg.multiplier_bits,
            "calib_images": cfg.calib_images, "calib_method": calib_method, "seed": cfg.seed,
            "calib_percentile": cfg.calib_percentile if cfg.calib_method == "percentile" else None,
            "checkpoint_sha256": raw_header.get("sha256")}
    keys.update({k: v for k, v in width_settings(cfg).items() if v != WIDTH_SETTINGS[k]})
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def _is_dropout(node):
    """A functional dropout that is a no-op at inference (training=False, or p=0), or torchvision's
    stochastic_depth traced in eval mode."""
    t = node.target
    if t in DROPOUT_FUNCTIONS:
        p = node.args[1] if len(node.args) > 1 else node.kwargs.get("p", 0.5)
        training = node.args[2] if len(node.args) > 2 else node.kwargs.get("training", True)
        return training is False or p == 0
    if getattr(t, "__name__", None) == "stochastic_depth" and "torchvision" in getattr(t, "__module__", ""):
        training = node.args[3] if len(node.args) > 3 else node.kwargs.get("training", True)
        return training is False
    return False


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
        if t in RELU:
            return "relu"
        if t in RELU6:
            return "relu6"
        return "alias" if t in ALIAS_FUNCTIONS or _is_dropout(node) or _single_cat(node) else None
    return None


def _single_cat(node):
    """torch.cat of one tensor (DenseNet's first layer: torch.cat([x], 1)): the tensor itself."""
    return (node.target in (torch.cat, torch.concat) and len(node.args) >= 1
            and isinstance(node.args[0], (list, tuple)) and len(node.args[0]) == 1)


def _alias_source(node):
    return node.args[0][0] if _single_cat(node) else next(a for a in node.args if isinstance(a, fx.Node))


def _target_name(gm, node):
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    return str(getattr(node.target, "__name__", node.target))


def _supported():
    return ("supported op kinds: " + ", ".join(ops.KINDS) + " (plus fused ReLU/ReLU6, and free reshapes / dropout / "
            "identity; see docs/contract.md, 'The op kinds')")


def unsupported_message(gm, node, cfg):
    """The one line naming an unsupported node, its op, and the closest supported spelling."""
    hint = HINTS.get(_target_name(gm, node))
    tail = hint if hint else _supported()
    return f"{cfg.model}: unsupported {describe_node(gm, node)} at node '{node.name}'; {tail}"


HISTOGRAM_BINS = 2048                        # calib_method=mse: each tensor's counts over its min..max
MSE_RATIOS = np.linspace(0.005, 1.0, 200)    # its search: the fraction of the min..max range kept


class _Observer(fx.Interpreter):
    """Runs the folded float graph and records each node's output range and shape; with calib_method
    mse (auto, where some activation is narrower than 8 bits), a second pass (_Histograms) records
    each node's value counts over that range, from which the range is chosen at the width the op
    takes (range_of)."""

    def __init__(self, gm, method, percentile):
        super().__init__(gm)
        self.method, self.percentile = method, percentile
        self.ranges, self.shapes, self.batches = {}, {}, 0
        self.batch, self.meta = {}, set()     # each tensor's batch size; the nodes that yield no tensor
        self.histograms, self.chosen = {}, {}

    def range_of(self, name, bits):
        """The range whose grid node `name`'s output takes at `bits`: the recorded one, or where there is
        a histogram (mse; auto below 8 bits) the part of it whose grid makes the least squared error on
        the calibration values."""
        if name not in self.histograms or (self.method == "auto" and bits == 8):
            return self.ranges[name]
        if (name, bits) not in self.chosen:
            self.chosen[(name, bits)] = mse_range(self.histograms[name], *self.ranges[name], (1 << bits) - 1)
        return self.chosen[(name, bits)]

    def set_range(self, name, lo, hi):
        """Node `name`'s range is (lo, hi) as given (a widened or a learned one): no mse choice on it."""
        self.ranges[name] = (lo, hi)
        self.histograms.pop(name, None)

    def run_node(self, n):
        out = super().run_node(n)
        if not _holds_tensor(out):
            self.meta.add(n.name)                 # x.size(0), x.shape[0], ...: ints feeding a view, not ops
        elif isinstance(out, torch.Tensor) and out.dim() > 0:
            self.batch[n.name] = out.shape[0]
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


class _Histograms(fx.Interpreter):
    """calib_method=mse's second pass: every observed node's values counted in HISTOGRAM_BINS bins over
    its range, into observer.histograms (float64: ReLU outputs put millions of zeros in one bin)."""

    def __init__(self, gm, observer):
        super().__init__(gm)
        self.observer = observer

    def run_node(self, n):
        out = super().run_node(n)
        lo, hi = self.observer.ranges.get(n.name, (0.0, 0.0))
        if isinstance(out, torch.Tensor) and out.is_floating_point() and hi > lo:
            counts = torch.histc(out.detach().float(), HISTOGRAM_BINS, lo, hi).double()
            self.observer.histograms[n.name] = self.observer.histograms.get(n.name, 0) + counts
        return out


def mse_range(counts, lo, hi, top):
    """The part [r*lo, r*hi] of a histogram's range (r in MSE_RATIOS) whose grid of values 0..top
    (qmath.choose_qparams) gives its bin centres the least summed squared rounding and clipping error."""
    counts = counts.numpy()
    centres = lo + (np.arange(len(counts)) + 0.5) * (hi - lo) / len(counts)
    best, best_error = (lo, hi), np.inf
    for r in MSE_RATIOS:
        scale, zero_point = qmath.choose_qparams(r * lo, r * hi, 0, top)
        q = np.clip(qmath.round_half_up(centres / scale) + zero_point, 0, top)
        error = float((counts * (centres - scale * (q - zero_point)) ** 2).sum())
        if error < best_error:
            best, best_error = (r * lo, r * hi), error
    return best


def _holds_tensor(value):
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (list, tuple)):
        return any(_holds_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_tensor(v) for v in value.values())
    return False


def _shape3(shape):
    return list(shape) + [1] * (3 - len(shape)) if len(shape) < 3 else list(shape)


def _clamp_for(act, scale, zero_point, top):
    """Clamp bounds of an output of values 0..top that a fused ReLU / ReLU6 imposes."""
    if act is None:
        return 0, top
    qmax = top if act == "relu" else int(min(top, zero_point + qmath.round_half_up(6.0 / scale)))
    return int(max(0, zero_point)), qmax


class Builder:
    """The integer graph under construction; what an op kind's quantize() works with."""

    def __init__(self, gm, observer, cfg, input_shape, dry=False, weight_scales=None, layer_inputs=None):
        self.gm, self.observer, self.cfg, self.input_shape = gm, observer, cfg, input_shape
        # {fx node name: methods.LayerInputs} of the conv / linear layers, for the weight methods
        self.layer_inputs = layer_inputs
        # per conv / linear layer its weight scales: those given (learned by qat.fine_tune) are used as
        # they are, the others are recorded as the weight method chooses them
        self.weight_scales = dict(weight_scales or {})
        self.ops, self.state, self.where, self.skip = [], {}, {}, set()
        # dry: the walk before calibration (build_integer_graph), on a two-image observer: every
        # structural refusal (an unsupported node, add / mul shapes, a reshape, a constant) comes out,
        # no numeric one can (scale 1, zero point 0, clamp 0..0, multiplier 1 / 2^0), nothing is kept
        self.dry = dry
        # users that read a tensor (x.size(0) and the like only feed reshapes: they do not block fusing)
        self.users = {n: [u for u in n.users if u.name not in observer.meta] for n in gm.graph.nodes}
        self.widths = width_settings(cfg)
        self.act_bits = 8           # of the op being made (_walk sets it from widths before each node)
        self.widths_used = set()    # (layer, "weight_bits" / "act_bits") of the --bits entries applied
        self.own_widths = {"weight_bits": [], "act_bits": []}    # the layers that take each width
        # (fx node, op index) of every op that quantizes its output on a grid of its own (not its
        # input's): where the integer graph rounds, which quantization-aware fine-tuning simulates
        self.own_grids = []

    def layer_bits(self, name, key, default=None, applied=True):
        """weight_bits or act_bits of layer `name`: its --bits entry, else `default`, else the setting's
        value; `applied`: the layer takes it (its entry counts as used)."""
        entry = self.widths["bits"].get(name, {})
        if applied:
            self.own_widths[key].append(name)
            if key in entry:
                self.widths_used.add((name, key))
        return entry.get(key, self.widths[key] if default is None else default)

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
        """(scale, zero_point) of node's output from its calibrated range; QuantizeError naming the node
        when the float model's values there are not finite (weights too large: float overflow)."""
        lo, hi = self.observer.ranges[node.name]     # min..max: its finiteness is the float model's
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise QuantizeError(f"{self.cfg.model}: layer '{node.name}': the float model's output there spans "
                                f"[{lo}, {hi}] on the calibration images, not finite values; check its weights")
        if self.dry:
            return 1.0, 0
        try:
            return qmath.choose_qparams(*self.observer.range_of(node.name, self.act_bits), 0, (1 << self.act_bits) - 1)
        except ValueError as err:
            raise QuantizeError(f"{self.cfg.model}: layer '{node.name}': {err}") from None

    def fused_activation(self, node):
        """(act, node whose output is this op's output): fold a single following ReLU/ReLU6."""
        if len(self.users[node]) == 1:
            nxt = self.users[node][0]
            role = _role(self.gm, nxt)
            if role in ("relu", "relu6"):
                return role, nxt
        return None, node

    def emit(self, op, inputs, node, out_node, act, qparams=None, clamp=None, shape=None):
        """Append op (its fields filled in: inputs, shape, scale, zero point, clamp, act_bits); node and
        out_node (its fused activation, or node) now stand for its output. An op given its qparams
        keeps its input's scale (maxpool, pad, ...), and its width with them."""
        scale, zp = qparams if qparams is not None else self.qparams(out_node)
        if self.dry and clamp is None:
            clamp = (0, 0)          # |x - z_x| = 0 for the next layer: no accumulator bound to refuse
        # the input op's width is its pixels'; the others keep their input's or take the layer's
        act_bits = 8 if not inputs else self.ops[inputs[0]]["act_bits"] if qparams is not None else self.act_bits
        if inputs and qparams is None:
            self.layer_bits(op["name"], "act_bits")
            self.own_grids.append((out_node, len(self.ops)))
        qmin, qmax = clamp if clamp is not None else _clamp_for(act, scale, zp, (1 << act_bits) - 1)
        op.update(inputs=list(inputs), shape=shape or self.shape_of(out_node), scale=scale, zero_point=zp,
                  qmin=qmin, qmax=qmax, act_bits=act_bits)
        self.ops.append(op)
        self.where[node] = self.where[out_node] = len(self.ops) - 1
        self.skip.add(out_node)
        return op

    def multiplier(self, real, name):
        """(m, shift) of a real requantization multiplier, with the layer named on failure."""
        if self.dry:
            return 1, 0
        try:
            return qmath.quantize_multiplier(real, self.cfg.multiplier_bits)
        except ValueError as err:
            raise QuantizeError(f"{self.cfg.model}: layer '{name}': {err}") from None

    def set_requant(self, name, multipliers, shifts):
        self.state[f"{name}.multiplier"] = torch.tensor([int(m) for m in multipliers], dtype=torch.int32)
        self.state[f"{name}.shift"] = torch.tensor([int(s) for s in shifts], dtype=torch.int32)


def build_integer_graph(model, calib_images, cfg, dataset, raw_header, progress=None, fine_tuning=None):
    """The whole of stage 2 on an in-memory model; returns (state_dict, quant_list).
    fine_tuning: the labelled images of --qat_epochs (qat.FineTuning).

    calib_images: uint8 tensor N×C×H×W (raw pixels). Every node is checked against the op table
    (an unsupported layer, add / mul shapes, reshapes, constants) on two images before the
    calibration starts, so a model the integer graph cannot hold is refused before any work."""
    model = model.eval().float()
    try:
        traced = fx.symbolic_trace(model)
    except Exception as err:
        raise QuantizeError(f"{cfg.model}: cannot trace the model with torch.fx ({err})") from None
    try:     # (x - mean) / std on the input -> one per-channel affine (a standalone BatchNorm2d)
        graph_passes.fold_input_normalisation(traced, int(calib_images.shape[1]))
    except graph_passes.NormalisationError as err:
        raise QuantizeError(f"{cfg.model}: {err}") from None
    gm = fold_bn(traced)                           # conv+BN -> conv with folded weight/bias
    graph_passes.fold_zero_padding(gm)             # F.pad / ZeroPad2d -> the padding of the conv(s) reading it

    input_shape = _shape3(list(calib_images.shape[1:]))
    _walk(gm, _observe(gm, calib_images[:2], cfg), cfg, input_shape, dry=True)    # refusals before calibration
    b = _walk(gm, _observe(gm, calib_images, cfg, progress), cfg, input_shape,
              layer_inputs=_layer_inputs(gm, calib_images, cfg, progress))
    if b.widths["qat_epochs"]:      # fine-tune gm from this post-training graph, then build it again
        learned = qat.fine_tune(gm, b, fine_tuning, cfg, settings_fingerprint(cfg, raw_header))
        observer = _observe(gm, calib_images, cfg, progress)
        for name, (lo, hi) in learned.ranges.items():
            observer.set_range(name, lo, hi)
        _widen_shared_ranges(gm, observer)
        b = _walk(gm, observer, cfg, input_shape, weight_scales=learned.weight_scales,
                  layer_inputs=_layer_inputs(gm, calib_images, cfg, progress))
    b.ops[0].update(kind="fpgai-quant", version=FORMAT_VERSIONS["fpgai-quant"], model=cfg.model, dataset=dataset,
                    fingerprint=settings_fingerprint(cfg, raw_header), weight_mode=cfg.weight_mode,
                    multiplier_bits=cfg.multiplier_bits, calib_images=int(len(calib_images)),
                    calib_method=cfg.calib_method, calib_percentile=cfg.calib_percentile, seed=cfg.seed,
                    widths=b.widths)
    return b.state, b.ops


def _float_input(images):
    """What the float model reads of uint8 pixels: pixel / 255."""
    return images.float() / 255.0


def _layer_inputs(gm, images, cfg, progress=None):
    """The conv / linear layers' input statistics on `images`, measured when a weight method asks."""
    weighted = [n.name for n in gm.graph.nodes if getattr(ops.match(gm, n)[0], "weighted", False)]
    correction = getattr(cfg, "bias_correction", WIDTH_SETTINGS["bias_correction"])
    return methods.InputStatistics(gm, _float_input(images), weighted, seed=cfg.seed, progress=progress,
                                   sequential=methods.sequential(correction, lowest_bits(cfg, "weight_bits")))


def _observe(gm, images, cfg, progress=None):
    """The calibration: the folded float graph run on `images` in batches of 250, every node's
    output range and shape recorded."""
    observer = _Observer(gm, cfg.calib_method, cfg.calib_percentile)
    batches = torch.split(images, 250)
    with torch.no_grad():
        for x in (progress(batches) if progress else batches):
            observer.run(_float_input(x))
            observer.batches += 1
        if cfg.calib_method == "mse" or (cfg.calib_method == "auto" and lowest_bits(cfg, "act_bits") < 8):
            counter = _Histograms(gm, observer)
            for x in (progress(batches) if progress else batches):
                counter.run(_float_input(x))
    _widen_shared_ranges(gm, observer)
    return observer


def _widen_shared_ranges(gm, observer):
    """A kind that keeps its input's scale and zero point but may write values beyond its input's range
    (OpKind.widens_input) gets an input range holding its output's: the range of the op whose scale it
    keeps, through aliases and other data-movement ops (keeps_qparams), last node first."""
    for node in reversed(gm.graph.nodes):
        kind, _ = ops.match(gm, node)
        if kind is None or not kind.widens_input or node.name not in observer.ranges:
            continue
        out_lo, out_hi = observer.ranges[node.name]
        src = next(a for a in node.args if isinstance(a, fx.Node))
        while src.name in observer.ranges:
            lo, hi = observer.ranges[src.name]
            observer.set_range(src.name, min(lo, out_lo), max(hi, out_hi))
            src_kind, _ = ops.match(gm, src)
            if _role(gm, src) != "alias" and (src_kind is None or not keeps_qparams(src_kind)):
                break
            src = _alias_source(src) if _role(gm, src) == "alias" else next(a for a in src.args if isinstance(a, fx.Node))


def _walk(gm, observer, cfg, input_shape, dry=False, weight_scales=None, layer_inputs=None):
    """Every node of the graph handed to its kind (model/ops): the Builder holding the integer graph.
    dry: the structural walk before calibration; weight_scales, layer_inputs: see Builder."""
    b = Builder(gm, observer, cfg, input_shape, dry=dry, weight_scales=weight_scales, layer_inputs=layer_inputs)
    const = graph_passes.constant_nodes(gm.graph)
    reshaped = set()        # aliases whose C,H,W differ from their op's: only a linear layer reads them (flat)
    logits = _logits_node(gm)
    batch = None
    for node in gm.graph.nodes:
        if node in b.skip:
            continue
        if node.op == "output":
            out_node = node.args[0]
            if not isinstance(out_node, fx.Node) or b.where[out_node] != len(b.ops) - 1:
                raise QuantizeError(f"{cfg.model}: the graph output must be its last op (one tensor)")
            continue
        if node.op == "placeholder":
            batch = observer.batch.get(node.name)
        if node in const or node.name in observer.meta:
            continue        # constants are reported where used; sizes and shapes only feed reshapes
        tensors = [a for a in node.all_input_nodes if a not in const and a.name not in observer.meta]
        if graph_passes.arith_kind(node) and len(tensors) < len(node.all_input_nodes) + sum(
                not isinstance(a, fx.Node) for a in list(node.args) + list(node.kwargs.values())):
            raise QuantizeError(f"{cfg.model}: unsupported constant arithmetic {describe_node(gm, node)} at node "
                                f"'{node.name}'; a constant is folded only in a normalisation directly on the "
                                f"input ((x - mean) / std, x * 2 - 1); elsewhere fold it into the layer before "
                                f"(ops of two tensors: {', '.join(k for k in ('add', 'mul') if k in ops.KINDS)})")
        role = _role(gm, node)
        if role == "alias":
            if observer.batch.get(node.name) != batch:
                raise QuantizeError(f"{cfg.model}: {describe_node(gm, node)} at node '{node.name}' changes the batch "
                                    f"dimension; reshapes must keep it (x.view(x.size(0), -1), torch.flatten(x, 1))")
            b.where[node] = b.where[_alias_source(node)]
            if b.shape_of(node) != b.ops[b.where[node]]["shape"]:
                reshaped.add(node)
            continue
        # a relu / relu6 not fused into the op before it (it is not that op's only user, or that op
        # cannot fuse it) falls through to the lut kind (model/ops/lut.py): a 256-entry table
        kind, mod = ops.match(gm, node)
        if kind is None:
            raise QuantizeError(unsupported_message(gm, node, cfg))
        for a in node.all_input_nodes:
            if a in const:
                raise QuantizeError(f"{cfg.model}: {describe_node(gm, node)} at node '{node.name}' reads the constant "
                                    f"tensor '{a.name}'; constants are folded only in a normalisation directly on "
                                    f"the input; use modules (nn.Conv2d, nn.Linear, nn.BatchNorm2d) for weights")
            if a in reshaped and kind.name not in ("linear", "shuffle"):    # shuffle checks its 5-D view
                raise QuantizeError(f"{cfg.model}: {kind.name} '{node.name}' reads '{a.name}', a reshape of "
                                    f"{'x'.join(map(str, b.ops[b.where[a]]['shape']))} to "
                                    f"{'x'.join(map(str, b.shape_of(a)))}; a reshape that changes C,H,W may only "
                                    f"feed a linear layer (flatten before nn.Linear)")
        # the width of the op(s) this node makes: the logits stay at 8 bits unless --bits says otherwise
        # (their argmax is the prediction: 16 levels would tie)
        b.act_bits = b.layer_bits(b.name_for(node), "act_bits", 8 if node is logits else None, applied=False)
        kind.quantize(b, node, mod)
    if not dry:
        _check_widths_used(b)
    return b


def _logits_node(gm):
    """The node whose op outputs the logits: the graph's output through aliases and a fused ReLU."""
    node = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    while isinstance(node, fx.Node) and _role(gm, node) is not None:
        node = _alias_source(node) if _role(gm, node) == "alias" else node.args[0]
    return node


def _check_widths_used(b):
    """Every --bits entry named a layer and a width it has: a misspelt name is an error, not a no-op."""
    for layer, entry in b.widths["bits"].items():
        for key in entry:
            if (layer, key) not in b.widths_used:
                raise QuantizeError(f"{b.cfg.model}: --bits: no layer '{layer}' takes {key}; the layers that do: "
                                    f"{', '.join(b.own_widths[key])}")
