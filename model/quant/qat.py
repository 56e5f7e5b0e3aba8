"""Quantization-aware fine-tuning (--qat_epochs): LSQ (Esser et al. 2020, "Learned Step Size
Quantization") on the quantizer's BN-folded graph, started from the post-training result: each
weight rounds to its post-training code at its step (GPTQ's codes, not the float weights rounded
again; start_from_post_training) and each bias is the post-training one (bias correction's), so the
fine-tuning starts at the post-training accuracy. Its loss: cross-entropy on the labels, or
(--qat_loss=distill) the KL divergence from the float model's outputs.

- The weights of every conv / linear layer are fake quantized per output channel at the layer's
  weight_bits: w_hat = s_c * clamp(round(w / s_c), -Q, Q), Q = 2^(bits-1) - 1, the step s_c learned
  from the post-training method's scale, its gradient scaled by 1 / sqrt(K * Q) (K weights a channel).
- The output of every op that the integer graph quantizes on a grid of its own (conv / linear after
  its fused ReLU, add, average pool, concat, mul, a lookup table, a BatchNorm that stays) is fake
  quantized on its post-training grid at its act_bits: x_hat = s * (clamp(round(x / s) + z, qmin,
  qmax) - z), the step s learned from the calibrated scale (zero point and clamp kept), gradient
  scale 1 / sqrt(values * qmax). So at 4-bit activations a residual add's output is rounded to its
  16 levels here as in the engines, and the fine-tuning can learn to live with it.
- round is the quantizer's, floor(x + 0.5), passed straight through (gradient 1 inside the clamp).
The ops that keep their input's grid (max pool, pad, reshapes) run in float: exact on it. The integer
graph is then built from the fine-tuned weights with the learned steps as their scales, so its
integer weights are the ones the fine-tuning saw, and the learned steps as those layers' output scales.
"""
import copy
import hashlib
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from tqdm import tqdm

from model.fileio import FORMAT_VERSIONS, ModelFileError, atomic_save, error_line, load_checked
from model.ops.base import QuantizeError
from model.ops.conv import ZeroPaddedConv
from model.training import SINGLE_CPU, Processes, augment, to_float

STATE_KIND = "fpgai-qat-state"
MOMENTUM = 0.9          # SGD from cfg.qat_lr, cosine to 0: a fine-tuning, the post-training result is close
MIN_STEP = 1e-12        # a step the gradient pushed to 0 or below would divide by zero
INSIDE = 0.499          # of a step: how far from its code a weight moved into the code's interval may sit


@dataclass
class FineTuning:
    """What --qat_epochs trains on: labelled uint8 images N×C×H×W, the model's augmentation
    (model.training.augment), and where its state is kept after every epoch (None: nowhere)."""
    images: torch.Tensor
    labels: torch.Tensor
    augment_pad: int = 0
    augment_flip: bool = False
    batch_size: int = 128
    state_path: str = None
    procs: Processes = field(default_factory=lambda: SINGLE_CPU)


@dataclass
class Learned:
    """What the fine-tuning hands the integer graph: per layer (op name) its weight scales, per
    fake-quantized node (fx name) the float range whose grid is the learned one."""
    weight_scales: dict
    ranges: dict


def round_ste(x):
    """floor(x + 0.5), the quantizer's rounding, with the gradient of the identity (straight through)."""
    return x + (torch.floor(x + 0.5) - x).detach()


def scale_grad(x, factor):
    """x, with its gradient multiplied by `factor` (LSQ's step-size gradient scale)."""
    return x * factor + (x - x * factor).detach()


class WeightQuantizer(nn.Module):
    """Per-channel symmetric fake quantization of a weight at `bits`: a parametrization of it."""

    def __init__(self, scales, bits, per_channel):
        super().__init__()
        self.qmax = (1 << (bits - 1)) - 1
        self.step = nn.Parameter(torch.as_tensor(np.asarray(scales), dtype=torch.float32))
        self.grad_factor = 1.0 / math.sqrt(per_channel * self.qmax)

    def forward(self, w):
        step = scale_grad(self.step, self.grad_factor).clamp_min(MIN_STEP).view(-1, *[1] * (w.dim() - 1))
        return step * torch.clamp(round_ste(w / step), -self.qmax, self.qmax)


class ActQuantizer(nn.Module):
    """Fake quantization of an activation on the grid (scale, zero point, clamp) of its op."""

    def __init__(self, op):
        super().__init__()
        self.step = nn.Parameter(torch.tensor(float(op["scale"])))
        self.zero_point, self.qmin, self.qmax = float(op["zero_point"]), float(op["qmin"]), float(op["qmax"])
        self.top = (1 << op["act_bits"]) - 1
        self.grad_factor = 1.0 / math.sqrt(math.prod(op["shape"]) * self.top)

    def forward(self, x):
        step = scale_grad(self.step, self.grad_factor).clamp_min(MIN_STEP)
        return (torch.clamp(round_ste(x / step) + self.zero_point, self.qmin, self.qmax) - self.zero_point) * step

    def float_range(self):
        """The range that choose_qparams turns back into this grid: scale = step, the same zero point."""
        step = float(self.step.detach().clamp_min(MIN_STEP))
        return -self.zero_point * step, (self.top - self.zero_point) * step


def weighted_layers(gm, ptq):
    """(module holding the weight, op) of every conv / linear layer of the post-training Builder
    `ptq` that has weights to train (a BatchNorm left as a conv keeps its own)."""
    layers = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or node not in ptq.where:
            continue
        op = ptq.ops[ptq.where[node]]
        module = gm.get_submodule(node.target)
        module = module.conv if isinstance(module, ZeroPaddedConv) else module
        if op["op"] in ("conv", "linear") and isinstance(module, (nn.Conv2d, nn.Linear)):
            layers.append((module, op))
    return layers


def fine_tune(gm, ptq, data, cfg, fingerprint):
    """Fine-tune the folded graph `gm` in place from the post-training Builder `ptq` for cfg.qat_epochs
    epochs on `data` (FineTuning); the Learned steps. `fingerprint`: the tuple's settings, which a
    saved state must share to be resumed."""
    distill = cfg.qat_loss == "distill"
    if data is None or (data.labels is None and not distill):
        raise QuantizeError(f"{cfg.model}: --qat_epochs needs labelled training images to fine-tune on "
                            f"(or --qat_loss=distill, which needs no labels)")
    if cfg.weight_mode != "per_channel":
        raise QuantizeError(f"{cfg.model}: --qat_epochs learns per-channel weight steps; use "
                            f"--weight_mode=per_channel")
    layers = weighted_layers(gm, ptq)
    teacher = copy.deepcopy(gm).eval() if distill else None      # the float model, before the start moves it
    gm.requires_grad_(False)        # what the fake quantization does not cover stays as calibrated
    for module, op in layers:
        start_from_post_training(module, op, ptq)
        module.weight.requires_grad_(True)
        module.bias.requires_grad_(True)
        parametrize.register_parametrization(module, "weight", WeightQuantizer(
            ptq.weight_scales[op["name"]], op["weight_bits"], module.weight[0].numel()))
    acts = {out_node: _insert_after(gm, out_node, ActQuantizer(ptq.ops[index])) for out_node, index in ptq.own_grids}
    gm.recompile()
    try:
        _train(gm, data, cfg, fingerprint, teacher)
        return Learned({op["name"]: module.parametrizations.weight[0].step.detach().clamp_min(MIN_STEP).double().numpy()
                        for module, op in layers},
                       {out_node.name: gm.get_submodule(quant_node.target).float_range()
                        for out_node, quant_node in acts.items()})
    finally:        # gm is the float graph again, with the fine-tuned weights
        for module, _ in layers:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        for out_node, quant_node in acts.items():
            quant_node.replace_all_uses_with(out_node)
            gm.graph.erase_node(quant_node)
            gm.delete_submodule(quant_node.target)
        gm.recompile()
        gm.requires_grad_(False)


def start_from_post_training(module, op, ptq):
    """module's weight and bias (one added where it had none) set to where the post-training graph left
    them: each weight moved from its float value to the nearest value that rounds to its post-training
    code at its step (a weight GPTQ rounded the other way sits just inside its code's interval, the
    others stay: near their rounding boundaries, where the straight-through gradient can still flip
    them), the bias its int32 bias * s_x * step."""
    name, top = op["name"], (1 << (op["weight_bits"] - 1)) - 1
    steps = torch.as_tensor(np.asarray(ptq.weight_scales[name]), dtype=torch.float64)
    q = ptq.state[f"{name}.weight"].double()
    step = steps.view(-1, *[1] * (q.dim() - 1))
    low = torch.where(q <= -top, -math.inf, (q - INSIDE) * step)      # the outer codes' intervals are open
    high = torch.where(q >= top, math.inf, (q + INSIDE) * step)
    bias = ptq.state[f"{name}.bias"].double() * ptq.ops[op["inputs"][0]]["scale"] * steps
    with torch.no_grad():
        weight = torch.minimum(torch.maximum(module.weight.double().reshape(q.shape), low), high)
        module.weight.copy_(weight.reshape(module.weight.shape))
        if module.bias is None:
            module.bias = nn.Parameter(torch.zeros(len(bias)))
        module.bias.copy_(bias)


def _insert_after(gm, node, module):
    """A call of `module` on node's output, read by node's users in its place: the new node (the
    caller recompiles gm once it has inserted them all)."""
    name = f"{node.name}_act_quant"
    gm.add_submodule(name, module)
    with gm.graph.inserting_after(node):
        quant_node = gm.graph.call_module(name, (node,))
    node.replace_all_uses_with(quant_node, delete_user_cb=lambda user: user is not quant_node)
    return quant_node


def _settings(data, cfg, fingerprint, steps_per_epoch):
    """What a fine-tuning run is made of: a saved state resumes only a run with the same."""
    digest = hashlib.sha256(data.images.numpy().tobytes())
    if data.labels is not None:
        digest.update(data.labels.numpy().astype(np.int64).tobytes())
    return {"fingerprint": fingerprint, "epochs": cfg.qat_epochs, "images_sha256": digest.hexdigest(),
            "augment": [data.augment_pad, data.augment_flip], "batch_size": data.batch_size,
            "steps_per_epoch": steps_per_epoch, "lr": cfg.qat_lr, "processes": data.procs.world}


def _loss(out, x, y, teacher):
    """Cross-entropy on the labels y, or (a teacher) the KL divergence of out's softmax from the float
    model's on the same images: every logit's target, not only the right class's."""
    if teacher is None:
        return F.cross_entropy(out, y)
    with torch.no_grad():
        target = F.log_softmax(teacher(x), 1)
    return F.kl_div(F.log_softmax(out, 1), target, log_target=True, reduction="batchmean")


def _train(gm, data, cfg, fingerprint, teacher=None):
    """cfg.qat_epochs epochs of SGD on the fake-quantized gm (eval mode: no dropout, and a BatchNorm
    that stays keeps its statistics), over this process's share of the shuffled images; the loss
    against the labels, or the float `teacher`'s outputs where given (--qat_loss=distill)."""
    procs, epochs = data.procs, cfg.qat_epochs
    gm.to(procs.device).eval()
    if teacher is not None:
        teacher.to(procs.device)
    net = nn.parallel.DistributedDataParallel(gm, device_ids=[procs.device.index] if procs.use_cuda else None) \
        if procs.distributed else gm
    steps_per_epoch = math.ceil(len(data.images) / (data.batch_size * procs.world))
    opt = torch.optim.SGD([p for p in gm.parameters() if p.requires_grad], lr=cfg.qat_lr, momentum=MOMENTUM)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    settings = _settings(data, cfg, fingerprint, steps_per_epoch)
    start = _resume(data.state_path, cfg.model, settings, gm, opt, sched, procs)
    for epoch in range(start, epochs):
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)     # the same order after a resume
        order = torch.randperm(len(data.images), generator=gen)[procs.rank::procs.world]
        total_loss, correct, seen = 0.0, 0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"QAT epoch {epoch + 1}/{epochs}", disable=not procs.main,
                   leave=False, dynamic_ncols=True, mininterval=1.0)
        for step in bar:
            idx = order[step * data.batch_size:(step + 1) * data.batch_size]
            if len(idx) == 0:        # uneven shard tail: every rank takes as many steps
                idx = order[:data.batch_size]
            x = data.images[idx]
            y = data.labels[idx].to(procs.device) if data.labels is not None else None
            if data.augment_pad:
                x = augment(x, gen, data.augment_pad, data.augment_flip)
            x = to_float(x.to(procs.device))
            out = net(x)
            loss = _loss(out, x, y, teacher)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item()
            if y is not None:
                correct += (out.detach().argmax(1) == y).sum().item()
                seen += len(y)
            bar.set_postfix(loss=f"{total_loss / (step + 1):.4f}", refresh=False)
        if not math.isfinite(total_loss):
            raise QuantizeError(f"{cfg.model}: quantization-aware fine-tuning diverged in epoch {epoch + 1} "
                                f"(loss {total_loss})")
        if procs.main:
            if data.state_path:
                save_state(data.state_path, cfg.model, settings, epoch + 1, gm, opt, sched)
            accuracy = f"  train {100 * correct / seen:.2f}% (fake-quantized, its batches)" if seen else ""
            print(f"QAT epoch {epoch + 1}/{epochs}: loss {total_loss / steps_per_epoch:.4f}{accuracy}", flush=True)
    gm.cpu()


def save_state(path, model, settings, epoch, gm, opt, sched):
    """The fine-tuning state after `epoch` epochs, atomically: what a later run resumes from."""
    atomic_save({"header": {"kind": STATE_KIND, "version": FORMAT_VERSIONS[STATE_KIND], "model": model,
                            "epoch": epoch, "settings": settings},
                 "model": gm.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, path)


def _resume(path, model, settings, gm, opt, sched, procs):
    """The epoch to start from: that of the state at `path`, loaded into gm / opt / sched, when it was
    saved by a run of the same settings; else 0 (a fresh start, which overwrites it)."""
    if not (path and os.path.exists(path)):
        return 0
    try:
        state = load_checked(path, STATE_KIND, model)
    except ModelFileError as err:
        raise QuantizeError(f"{err}; delete it to start the fine-tuning over") from None
    if state["header"].get("settings") != settings:
        if procs.main:
            print(f"QAT: {path} was saved by a run of other settings; starting over", flush=True)
        return 0
    try:
        gm.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise QuantizeError(f"{path}: its state does not fit ({error_line(err)}); delete it to start the "
                            f"fine-tuning over") from None
    if procs.main:
        print(f"QAT: resuming from {path} at epoch {state['header']['epoch']}/{settings['epochs']}", flush=True)
    return int(state["header"]["epoch"])
