"""Stage 2: quantize the trained float model to INT8 -> quantization/{model}_quant.tuple.

Folds BN, calibrates every activation's range on CALIB_IMAGES training images,
quantizes weights (int8 per channel, or uint8 per tensor), biases (int32) and
requantization multipliers (MULTIPLIER_BITS wide), and saves the integer graph as
`(state_dict, quant_list)`, loadable with torch.load(path, weights_only=True).
With --qat_epochs=N the post-training result is fine-tuned on the labelled training images
(model/quant/qat.py), its state kept in quantization/{model}_qat.pt after every epoch; several
processes with `torchrun --nproc_per_node=N quant_model.py --qat_epochs=N`.
Your own model: --model=FILE.py:NAME --checkpoint=FILE --calib_data=FILE.npz|DIR
[--input_shape=CxHxW --input_mean=a,b,c --input_std=a,b,c] -> quantization/NAME_quant.tuple,
which records these settings for test_model.py and export_quant_model.py.
"""
import os
import sys
import types

import numpy as np
import torch
from tqdm import tqdm

import config
import model as models
from data import datasets
from model import api
from model.fileio import (ModelFileError, WriteError, atomic_save, check_not_tracked, check_space, check_writable,
                          error_line, stage_main)
from model.quant.qat import FineTuning
from model.quant.quantize import WIDTH_SETTINGS, QuantizeError, read_bits, settings_fingerprint
from model.training import SINGLE_CPU, start_processes, stop_processes
from model.formats.tuple_check import load_tuple


def quant_path(cfg):
    return os.path.join(cfg.quant_dir, f"{config.model_name(cfg)}_quant.tuple")


def _same(given, stored):
    """An option given on the command line against the tuple's value (mean/std: one value = every channel)."""
    if given is None or stored is None:
        return given is None or stored is None
    if len(given) == 1 and len(stored) > 1:
        given = given * len(stored)
    return len(given) == len(stored) and all(abs(a - b) <= 1e-12 * max(1.0, abs(b)) for a, b in zip(given, stored))


# the quantization settings a tuple records (quant_list[0]); a later stage takes them from it
STORED_SETTINGS = ("weight_mode", "multiplier_bits", "calib_images", "calib_method", "calib_percentile", "seed",
                   *WIDTH_SETTINGS)


def load_quant(cfg):
    """The tuple of cfg.model, checked against the current config and checkpoint (stale = error).

    The options quant_model.py recorded in it (the quantization settings, checkpoint, input_shape,
    input_mean, input_std) need not be repeated; those given on the command line must agree with it."""
    path = quant_path(cfg)
    user = config.user_model(cfg.model)
    hint = f"; run `python quant_model.py --model={cfg.model}`" + (" with the same options" if user else "")
    state, quant_list = load_tuple(path, config.model_name(cfg), hint=hint)    # every field checked
    head = quant_list[0]
    shape, mean, std = config.check_input_settings(cfg.input_shape, cfg.input_mean, cfg.input_std)
    stored_shape = head.get("input_shape", head["shape"])
    for key, given, stored in (("input_shape", shape, stored_shape), ("input_mean", mean, head.get("input_mean")),
                               ("input_std", std, head.get("input_std"))):
        if given is not None and not (given == list(stored) if key == "input_shape" else _same(given, stored)):
            raise ModelFileError(f"{path}: stale: it was made with {key} {stored}, the command line says "
                                 f"{given}{hint}")
    ckpt = cfg.checkpoint or head.get("checkpoint") or ""
    given = getattr(cfg, "given", frozenset(STORED_SETTINGS))
    stored = {**head, **head.get("widths", {})}       # the width settings: a dict of their own
    cfg = types.SimpleNamespace(**{**vars(cfg), **{k: stored[k] for k in STORED_SETTINGS
                                                   if k in stored and k not in given}})
    if user:
        sha = models.sha256_file(ckpt) if cfg.checkpoint and os.path.isfile(ckpt) else head.get("checkpoint_sha256", "")
        if cfg.checkpoint and not os.path.isfile(ckpt):
            raise ModelFileError(f"{ckpt}: no such checkpoint file")
        named = types.SimpleNamespace(**{**vars(cfg), "model": config.model_name(cfg),
                                         "calib_images": min(cfg.calib_images, head.get("calib_available",
                                                                                         cfg.calib_images))})
    else:
        named = types.SimpleNamespace(**{**vars(cfg), "checkpoint": ckpt})
        sha = models.raw_header(named)["sha256"]
    key = api.settings_key(sha, head.get("input_mean"), head.get("input_std"))
    try:
        fingerprint = settings_fingerprint(named, {"sha256": key})
    except QuantizeError as err:          # a --bits file that cannot be read
        raise ModelFileError(str(err)) from None
    if head["fingerprint"] != fingerprint:
        raise ModelFileError(f"{path}: stale: it was made with other quantization settings "
                             f"(weight_mode={head['weight_mode']}, multiplier_bits="
                             f"{head['multiplier_bits']}, calib_images={head['calib_images']}) "
                             f"or another checkpoint than config and {ckpt or models.raw_path(cfg)} say{hint}")
    return state, quant_list


def load_float(cfg, head=None):
    """(float nn.Module without normalisation, mean, std) of cfg.model; a user model's checkpoint and
    normalisation come from the tuple's header `head` unless given on the command line."""
    head = head or {}
    shape, mean, std = config.check_input_settings(cfg.input_shape, cfg.input_mean, cfg.input_std)
    mean = mean if mean is not None else head.get("input_mean")
    std = std if std is not None else head.get("input_std")
    ckpt = cfg.checkpoint or head.get("checkpoint") or ""
    user = config.user_model(cfg.model)
    if not user:
        return models.load_raw(types.SimpleNamespace(**{**vars(cfg), "checkpoint": ckpt}))[0], mean, std
    net, sha = user_float(cfg.model, ckpt)
    if head.get("checkpoint_sha256") and sha != head["checkpoint_sha256"]:
        raise ModelFileError(f"{ckpt}: changed since it was quantized (sha256 differs from the tuple's); "
                             f"run `python quant_model.py --model={cfg.model}` again")
    return net.eval(), mean, std


def user_float(model, checkpoint):
    """(module with the checkpoint's weights, the checkpoint's sha256) of a user model FILE.py:NAME."""
    if not checkpoint:
        raise ModelFileError(f"--model={model} needs --checkpoint=FILE (a torch.save(model.state_dict()) file)")
    net = models.load_user_module(*config.user_model(model))
    state, sha = models.read_checkpoint(checkpoint)
    return models.load_state(net, state, checkpoint), sha


def summary(state, quant_list):
    lines = [f"{'op':<8} {'name':<22} {'shape':<14} {'bits':<5} {'scale':>10} {'zp':>4} {'clamp':>9} "
             f"{'|acc| bound':>12} {'weight SQNR':>11}"]
    for op in quant_list:
        shape = "x".join(map(str, op["shape"]))
        bound = f"{op['acc_bound']:>12}" if "acc_bound" in op else ""
        sqnr = f"{op['weight_sqnr_db']:>8.1f} dB" if "weight_sqnr_db" in op else ""
        bits = (f"W{op['weight_bits']}" if "weight_bits" in op else "") + f"A{op.get('act_bits', 8)}"
        lines.append(f"{op['op']:<8} {op['name'][:22]:<22} {shape:<14} {bits:<5} {op['scale']:>10.6f} "
                     f"{op['zero_point']:>4} {op['qmin']:>4}..{op['qmax']:<3} {bound} {sqnr}")
    weighted = [op for op in quant_list if "weight_sqnr_db" in op]
    if weighted:
        worst = min(weighted, key=lambda op: op["weight_sqnr_db"])
        median = np.median([op["weight_sqnr_db"] for op in weighted])
        lines.append(f"weight SQNR: median {median:.1f} dB, worst {worst['weight_sqnr_db']:.1f} dB ({worst['name']})")
    return "\n".join(lines)


@stage_main
def main():
    cfg = config.load_or_exit(stage="quant_model.py")
    user = config.user_model(cfg.model)
    name = config.model_name(cfg)
    shape, mean, std = config.check_input_settings(cfg.input_shape, cfg.input_mean, cfg.input_std)
    try:
        read_bits(cfg.bits)                               # before any work, as the rest
    except QuantizeError as err:
        sys.exit(f"error: {err}")
    try:
        check_writable(cfg.quant_dir, "--quant_dir")
        check_not_tracked((quant_path(cfg),), cfg.overwrite, "--quant_dir=DIR")
        if user:
            if cfg.checkpoint and not cfg.calib_data:     # (no checkpoint: user_float says so first)
                raise ModelFileError(f"--model={cfg.model} needs --calib_data=FILE.npz or an ImageFolder directory")
            net, sha = user_float(cfg.model, cfg.checkpoint)
            dataset = api.CUSTOM_DATASET
        else:
            net, raw_header = models.load_raw(cfg)
            sha, dataset = raw_header["sha256"], models.spec(cfg.model).dataset
            if shape is not None and shape != list(datasets.DATASETS[dataset]["shape"]):
                raise ModelFileError(f"--input_shape={cfg.input_shape}: {cfg.model} takes "
                                     f"{'x'.join(map(str, datasets.DATASETS[dataset]['shape']))} images")
        # the tuple: a byte per weight, four per bias, its records
        check_space(cfg.quant_dir, 2 * sum(p.numel() for p in net.parameters()) + 2 ** 20, "--quant_dir")
        if cfg.calib_data:
            images, labels = datasets.load_images(cfg.calib_data, shape, need_labels=False)
        else:
            images, labels = datasets.load(dataset, "train", cfg.data_dir, cfg.mirror_dir)
    except (ModelFileError, WriteError, datasets.DatasetError) as err:
        sys.exit(f"error: {err}")
    if cfg.qat_epochs and labels is None and cfg.qat_loss == "labels":
        sys.exit(f"error: --qat_epochs={cfg.qat_epochs} fine-tunes on labelled images, and {cfg.calib_data} has no "
                 f"labels (an array y); add them, fine-tune with --qat_loss=distill, or leave --qat_epochs out")
    if mean is not None and len(mean) not in (1, images.shape[1]):
        sys.exit(f"error: --input_mean/--input_std have {len(mean)} values for {images.shape[1]} input channels")
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.calib_images]
    calib = images[pick]
    # the name files use; a user model's calibration count is what its data allowed
    named = types.SimpleNamespace(**{**vars(cfg), "model": name,
                                     "calib_images": len(calib) if user else cfg.calib_images})
    widths = f"{cfg.weight_bits}-bit weights, {cfg.act_bits}-bit activations" + (f" ({cfg.bits} per layer)" if cfg.bits else "")
    print(f"quantizing {name}: {widths}, weights {cfg.weight_mode}, {cfg.multiplier_bits}-bit multipliers, "
          f"{cfg.calib_method} calibration on {len(calib)} {'images of ' + cfg.calib_data if cfg.calib_data else 'training images'}"
          + (f", input normalised by mean {mean} std {std}" if mean is not None else ""))
    procs = start_processes(cfg) if cfg.qat_epochs else SINGLE_CPU
    spec = None if user else models.spec(cfg.model)      # the built-in model's augmentation and batch
    fine_tuning = FineTuning(images, labels, spec.augment_pad if spec else 0, bool(spec and spec.augment_flip),
                             spec.batch_size if spec else 128, os.path.join(cfg.quant_dir, f"{name}_qat.pt"),
                             procs) if cfg.qat_epochs else None
    try:
        state, quant_list = api.quantize_cfg(net, calib, named, dataset, mean, std, sha,
                                             source=(f"{os.path.abspath(user[0])}:{name}" if user else cfg.model),
                                             progress=lambda it: tqdm(it, desc="calibrating", leave=False),
                                             fine_tuning=fine_tuning)
    except QuantizeError as err:
        sys.exit(f"error: {err}")
    except (RuntimeError, ValueError, TypeError, IndexError) as err:   # the float model itself failed
        sys.exit(f"error: {name}: the float model failed on the {'x'.join(map(str, calib.shape[1:]))} calibration "
                 f"images ({error_line(err)}); check --input_shape and the model")
    quant_list[0].update(checkpoint=os.path.abspath(cfg.checkpoint) if cfg.checkpoint else None,
                         calib_data=os.path.abspath(cfg.calib_data) if cfg.calib_data else None,
                         calib_available=int(len(images)))
    stop_processes(procs)
    if not procs.main:          # under torchrun: one process saves
        return
    path = quant_path(cfg)
    atomic_save((state, quant_list), path)
    print(summary(state, quant_list))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
