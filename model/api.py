"""The pipeline as Python calls, for people who do not want the stage scripts (README "Python API").

    from model import api
    state, quant_list = api.quantize(net, calib_x, input_mean=[0.5], input_std=[0.25], name="MyNet")
    logits = api.run_integer(state, quant_list, test_x, engine="numpy")     # or "torch", "c"
    api.export(state, quant_list, "export_model")                           # export_model/MyNet_*

Images are raw uint8 pixels N×C×H×W (numpy or torch). The float model sees
`(pixel/255 - mean)/std` per channel (pixel/255 without mean/std); the integer graph takes
the raw pixels. The normalisation becomes a BatchNorm2d placed before the module
(`Normalized`): the quantizer turns it into a 1x1 depthwise conv, op 1 of the graph, so the
first real conv pads with the zero point that stands for a normalised 0, as in the float model.
"""
import hashlib
import json
import os
import re
import subprocess
import tempfile
import types

import numpy as np
import torch
import torch.fx as fx
from torch import nn

import config
from model.formats.export_format import write_export
from model.quant.quantize import QuantizeError, build_integer_graph
from model.fileio import atomic_save
from model import work
from model.formats.tuple_check import tuple_problem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUSTOM_DATASET = "custom"      # the dataset field of a model that is none of the built-in ones


class Normalized(nn.Module):
    """net((x - mean) / std), the normalisation as an eval-mode BatchNorm2d without affine
    (running_mean = mean, running_var = std^2, eps = 0): what the quantizer runs as a
    per-channel affine op right after the input."""

    def __init__(self, net, mean, std, channels=None):
        super().__init__()
        mean, std = list(mean), list(std)
        channels = channels or len(mean)
        if len(mean) == 1:
            mean, std = mean * channels, std * channels
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean/std have {len(mean)}/{len(std)} values for {channels} input channels")
        self.input_norm = nn.BatchNorm2d(channels, eps=0.0, affine=False)
        self.input_norm.running_mean.copy_(torch.tensor(mean, dtype=torch.float32))
        self.input_norm.running_var.copy_(torch.tensor(std, dtype=torch.float32) ** 2)
        self.net = net
        self.eval()

    def forward(self, x):
        return self.net(self.input_norm(x))


def float_model(module, input_mean=None, input_std=None, channels=None):
    """The float model the quantizer sees: module, or module with the normalisation in front: its
    torch.fx graph with an `input_norm` BatchNorm2d inserted after the input (so the layers keep
    their names), or, when module cannot be traced, Normalized(module) (the quantizer then says why)."""
    if input_mean is None and input_std is None:
        return module.eval()
    if input_mean is None or input_std is None:
        raise ValueError("input_mean and input_std go together")
    wrapped = Normalized(module, input_mean, input_std, channels).eval()
    try:
        gm = fx.symbolic_trace(module.eval())
    except Exception:
        return wrapped
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        return wrapped
    name = "input_norm"
    while hasattr(gm, name):
        name += "_"
    gm.add_submodule(name, wrapped.input_norm)
    with gm.graph.inserting_after(inputs[0]):
        norm = gm.graph.call_module(name, (inputs[0],))
    inputs[0].replace_all_uses_with(norm, delete_user_cb=lambda user: user is not norm)
    gm.recompile()
    return gm.eval()


def settings_key(checkpoint_sha256, input_mean=None, input_std=None):
    """What of the float model's identity goes into the tuple's fingerprint: the checkpoint's sha256,
    and the normalisation when there is one."""
    if input_mean is None:
        return checkpoint_sha256
    blob = json.dumps({"checkpoint": checkpoint_sha256, "mean": list(map(float, input_mean)),
                       "std": list(map(float, input_std))}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def make_cfg(**settings):
    """config.py's defaults (lower-case namespace, as config.load returns it) with `settings`."""
    cfg = types.SimpleNamespace(**{k.lower(): v for k, v in config.defaults().items()})
    for key, value in settings.items():
        if not hasattr(cfg, key):
            raise TypeError(f"unknown setting '{key}'")
        setattr(cfg, key, value)
    return cfg


def _uint8_images(images):
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"images must be uint8 N×C×H×W, got {x.dtype} of shape {list(x.shape)}")
    return x.contiguous()


def quantize(module, calib_images, *, weight_mode="per_channel", multiplier_bits=16, calib_method="auto",
             calib_percentile=99.99, input_mean=None, input_std=None, name="model", dataset=CUSTOM_DATASET,
             checkpoint_sha256="", source="", progress=None, **widths):
    """Quantize a float nn.Module on calibration images (uint8 N×C×H×W, all of them are used) to the
    integer graph (state_dict, quant_list). input_mean / input_std: per channel, on the 0..1 scale
    (one value: every channel). `name` names the files (at most 31 bytes); quant_list[0] records the
    settings (input_shape, input_mean, input_std, source, checkpoint_sha256) besides the usual header.
    `widths`: the settings of config.py's WEIGHT_BITS .. QAT_EPOCHS, lower case (weight_bits=4, bits={layer:
    {"weight_bits": 2}}, ...)."""
    x = _uint8_images(calib_images)
    cfg = make_cfg(model=name, weight_mode=weight_mode, multiplier_bits=multiplier_bits, calib_method=calib_method,
                   calib_percentile=calib_percentile, calib_images=len(x), **widths)
    return quantize_cfg(module, x, cfg, dataset, input_mean, input_std, checkpoint_sha256, source, progress)


def quantize_cfg(module, calib_images, cfg, dataset, input_mean=None, input_std=None, checkpoint_sha256="",
                 source="", progress=None, fine_tuning=None):
    """quantize() with the settings of a config namespace (cfg.model: the name files use); fine_tuning:
    the labelled images of cfg.qat_epochs (model.quant.qat.FineTuning)."""
    x = _uint8_images(calib_images)
    shape = list(x.shape[1:])
    if input_mean is not None and len(input_mean) == 1:
        input_mean, input_std = list(input_mean) * shape[0], list(input_std) * shape[0]
    net = float_model(module, input_mean, input_std, shape[0])
    state, quant_list = build_integer_graph(net, x, cfg, dataset,
                                            {"sha256": settings_key(checkpoint_sha256, input_mean, input_std)},
                                            progress=progress, fine_tuning=fine_tuning)
    quant_list[0].update(source=source, checkpoint_sha256=checkpoint_sha256, input_shape=shape,
                         input_mean=None if input_mean is None else [float(v) for v in input_mean],
                         input_std=None if input_std is None else [float(v) for v in input_std])
    problem = tuple_problem(state, quant_list)       # what a later stage's load will check
    if problem:
        raise QuantizeError(f"{cfg.model}: the integer graph is not one the C engine loads: {problem}")
    return state, quant_list


def checked(state, quant_list):
    """The tuple, if every field is one the engines accept (model/formats/tuple_check.py), else ValueError naming
    the op and the field."""
    problem = tuple_problem(state, quant_list)
    if problem:
        raise ValueError(f"the tuple is refused: {problem}")
    return state, quant_list


def run_float(module, images, input_mean=None, input_std=None, batch=256):
    """Float logits (numpy) of module on uint8 images, normalised as quantize() does."""
    x = _uint8_images(images)
    net = float_model(module, input_mean, input_std, x.shape[1])
    with torch.no_grad():
        return np.concatenate([net(x[i:i + batch].float() / 255.0).numpy() for i in range(0, len(x), batch)])


def run_integer(state, quant_list, images, engine="numpy", batch=16):
    """Integer logits (int64 numpy, N × outputs) of the graph on uint8 images, by one of the three
    engines: "numpy" (the specification), "torch", or "c" (c/inference, built with make, on an export
    to a temporary folder and the images as .npy)."""
    x = _uint8_images(images)
    checked(state, quant_list)
    if engine == "numpy":
        from model.engines.np_engine import NumpyIntegerModel
        m = NumpyIntegerModel(state, quant_list)
        return np.concatenate([m(x[i:i + batch].numpy()) for i in range(0, len(x), batch)]).astype(np.int64)
    if engine == "torch":
        from model.engines.torch_engine import TorchIntegerModel
        m = TorchIntegerModel(state, quant_list)
        with torch.no_grad():
            return np.concatenate([m(x[i:i + batch]).numpy() for i in range(0, len(x), batch)]).astype(np.int64)
    if engine == "c":
        return run_c(state, quant_list, x)[0]
    raise ValueError(f"engine must be numpy, torch or c, not {engine!r}")


def run_c(state, quant_list, images, labels=None, binary=None, max_work=None):
    """(logits, inference seconds) from the C engine on uint8 images (labels optional)."""
    with tempfile.TemporaryDirectory() as tmp:
        x_path, y_path = save_npy_pair(tmp, _uint8_images(images).numpy(),
                                       None if labels is None else np.asarray(labels))
        return run_c_files(state, quant_list, x_path, y_path, binary=binary, max_work=max_work)


def save_npy_pair(folder, images, labels=None):
    """images (and labels) as .npy files the C engine reads (--images / --labels); their paths."""
    x = os.path.join(folder, "images.npy")
    np.save(x, np.ascontiguousarray(np.asarray(images, dtype=np.uint8)))
    if labels is None:
        return x, None
    y = os.path.join(folder, "labels.npy")
    np.save(y, np.asarray(labels, dtype=np.int64))
    return x, y


def run_c_files(state, quant_list, images_path, labels_path=None, limit=None, binary=None, max_work=None):
    """(logits, inference seconds) from the C engine (built with make) on an export of the graph to a
    temporary folder and an image file it reads (.npy, MNIST idx, CIFAR-10 batch); max_work: its
    --max-work (None: model/work.py's cap)."""
    subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "c")], check=True)
    binary = binary or os.path.join(ROOT, "c", "inference")
    with tempfile.TemporaryDirectory() as tmp:
        write_export(state, quant_list, tmp, "bin")
        logits_path = os.path.join(tmp, "logits.txt")
        cmd = [binary, "--model", quant_list[0]["model"], "--dir", tmp, "--images", images_path,
               "--logits", logits_path, "--quiet", "--max-work", str(work.max_work() if max_work is None else max_work)]
        cmd += ["--labels", labels_path] if labels_path else []
        cmd += ["--limit", str(limit)] if limit else []
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"C engine failed ({proc.returncode}): {proc.stderr.strip()}")
        seconds = float(re.search(r"result: .*seconds=([0-9.eE+-]+)", proc.stdout).group(1))
        logits = np.loadtxt(logits_path, delimiter=",", dtype=np.int64, ndmin=2)
    return logits, seconds


def export(state, quant_list, folder, mode="both"):
    """Write FOLDER/{name}_{weight.txt, weight.bin, bias.bin, quant.txt, model.bin} (mode: txt, bin, both)
    for c/inference --dir FOLDER --model NAME; the paths written."""
    return write_export(*checked(state, quant_list), folder, mode)


def save(state, quant_list, path):
    """The tuple (state_dict, quant_list), atomically: torch.load(path, weights_only=True) reads it."""
    atomic_save(checked(state, quant_list), path)
