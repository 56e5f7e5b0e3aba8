"""Stage 2: quantize the trained float model to INT8 -> quantization/{model}_quant.tuple.

Folds BN, calibrates every activation's range on CALIB_IMAGES training images,
quantizes weights (int8 per channel, or uint8 per tensor), biases (int32) and
requantization multipliers (MULTIPLIER_BITS wide), and saves the integer graph as
`(state_dict, quant_list)`, loadable with torch.load(path, weights_only=True).
"""
import os
import sys

import numpy as np
import torch
from tqdm import tqdm

import config
import model as models
from data import datasets
from model.fileio import ModelFileError, atomic_save, load_checked
from model.quantize import QuantizeError, build_integer_graph, settings_fingerprint


def quant_path(cfg):
    return os.path.join(cfg.quant_dir, f"{cfg.model}_quant.tuple")


def load_quant(cfg):
    """The tuple of cfg.model, checked against the current config and raw checkpoint (stale = error)."""
    path = quant_path(cfg)
    hint = f"; run `python quant_model.py --model={cfg.model}`"
    state, quant_list = load_checked(path, "fpgai-quant", cfg.model, hint=hint)
    if quant_list[0]["fingerprint"] != settings_fingerprint(cfg, models.raw_header(cfg)):
        raise ModelFileError(f"{path}: stale: it was made with other quantization settings "
                             f"(weight_mode={quant_list[0]['weight_mode']}, multiplier_bits="
                             f"{quant_list[0]['multiplier_bits']}, calib_images={quant_list[0]['calib_images']}) "
                             f"or another checkpoint than config and {models.raw_path(cfg)} say{hint}")
    return state, quant_list


def summary(state, quant_list):
    lines = [f"{'op':<8} {'name':<22} {'shape':<14} {'scale':>10} {'zp':>4} {'clamp':>9} {'|acc| bound':>12} "
             f"{'weight SQNR':>11}"]
    for op in quant_list:
        shape = "x".join(map(str, op["shape"]))
        bound = f"{op['acc_bound']:>12}" if "acc_bound" in op else ""
        sqnr = f"{op['weight_sqnr_db']:>8.1f} dB" if "weight_sqnr_db" in op else ""
        lines.append(f"{op['op']:<8} {op['name'][:22]:<22} {shape:<14} {op['scale']:>10.6f} "
                     f"{op['zero_point']:>4} {op['qmin']:>4}..{op['qmax']:<3} {bound} {sqnr}")
    weighted = [op for op in quant_list if "weight_sqnr_db" in op]
    if weighted:
        worst = min(weighted, key=lambda op: op["weight_sqnr_db"])
        median = np.median([op["weight_sqnr_db"] for op in weighted])
        lines.append(f"weight SQNR: median {median:.1f} dB, worst {worst['weight_sqnr_db']:.1f} dB ({worst['name']})")
    return "\n".join(lines)


def main():
    cfg = config.load_or_exit()
    spec = models.spec(cfg.model)
    try:
        net, raw_header = models.load_raw(cfg)
        images, _ = datasets.load(spec.dataset, "train", cfg.data_dir, cfg.mirror_dir)
    except (ModelFileError, datasets.DatasetError) as err:
        sys.exit(f"error: {err}")
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.calib_images]
    calib = images[pick]
    print(f"quantizing {cfg.model}: weights {cfg.weight_mode}, {cfg.multiplier_bits}-bit multipliers, "
          f"{cfg.calib_method} calibration on {len(calib)} training images")
    try:
        state, quant_list = build_integer_graph(net, calib, cfg, spec.dataset, raw_header,
                                                progress=lambda it: tqdm(it, desc="calibrating", leave=False))
    except QuantizeError as err:
        sys.exit(f"error: {err}")
    path = quant_path(cfg)
    atomic_save((state, quant_list), path)
    print(summary(state, quant_list))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
