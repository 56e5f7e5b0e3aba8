"""Stage 3: the four columns of the original, side by side, on the test set.

  raw       the float model
  quant     the quantized torch model (exact integers, model/engines/torch_engine.py)
  np quant  the pure-numpy integer model (the specification, model/engines/np_engine.py)
  C INT8    the C engine (c/inference), built and run by this script on a fresh
            export of the same tuple

Prints accuracy, seconds and images/s per column, and how many images got
identical integer logits in quant vs np quant and np quant vs C. Exits 1 when
the integer engines disagree on any image.
Flags: --model NAME --limit N --columns raw,quant,np,c --json PATH --dump_layers DIR
--dump_layers=DIR: also write every op's uint8 output for the N images (the numpy engine) as golden
vectors: DIR/op{i:03d}_{name}.npy and .hex ($readmemh) and manifest.json (model/formats/golden.py); compare
two such folders with `python compare_dumps.py A B`.
Your own model: --model=FILE.py:NAME --test_data=FILE.npz|DIR (the checkpoint, input shape and
mean/std come from quantization/NAME_quant.tuple; options repeated must agree with it).
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

import config
import model as models
from data import datasets
from model.fileio import (ModelFileError, WriteError, atomic_open, check_not_tracked, check_output_file, check_writable,
                          stage_main)
from model.engines.np_engine import NumpyIntegerModel
from model.engines.torch_engine import TorchIntegerModel
from model import api, work
from model.formats import golden
from quant_model import load_float, load_quant

COLUMNS = {"raw": "raw", "quant": "quant", "np": "np_quant", "c": "c_int8"}
TITLES = {"raw": "raw (float)", "quant": "quant (torch int)", "np_quant": "np quant", "c_int8": "C INT8"}


def choose_columns(cfg):
    """The columns to run: --columns, else the four switches. The C column builds c/inference from a
    checkout's sources: an installed copy (pip install .) leaves it out unless asked, then refuses it."""
    if cfg.columns != "auto":
        names = [c.strip() for c in cfg.columns.split(",") if c.strip()]
        bad = [c for c in names if c not in COLUMNS]
        if bad or not names:
            raise config.ConfigError(f"--columns: unknown column(s) {', '.join(bad) or '(none)'}; "
                                     f"valid: {', '.join(COLUMNS)}")
        columns = [COLUMNS[c] for c in COLUMNS if c in names]
    else:
        switches = {"raw": cfg.raw_test, "quant": cfg.quant_test, "np": cfg.np_quant_test,
                    "c": cfg.c_test and (config.checkout() is not None or "c_test" in cfg.given)}
        columns = [COLUMNS[c] for c, on in switches.items() if on]
    if "c_int8" in columns and config.checkout() is None:
        raise config.ConfigError("the C INT8 column needs a checkout of the repository (it builds c/inference); "
                                 "this is an installed copy: leave it out")
    return columns


def batched(fn, images, batch, desc):
    outs = [fn(images[i:i + batch]) for i in tqdm(range(0, len(images), batch), desc=desc, leave=False)]
    return np.concatenate(outs)


def check_outputs(cfg):
    """The files this run writes (--json, --dump_layers), refused before any work: not a tracked file
    unless --overwrite, not a folder a dump may replace, a writable folder."""
    if cfg.json:
        check_output_file(cfg.json, "--json")
        check_not_tracked((cfg.json,), cfg.overwrite, "--json=FILE")
    if cfg.dump_layers:
        golden.check_target(cfg.dump_layers)
        check_not_tracked((cfg.dump_layers,), cfg.overwrite, "--dump_layers=DIR")
        check_writable(os.path.dirname(os.path.realpath(cfg.dump_layers)), "--dump_layers", cfg.dump_layers)


def load_test_set(cfg, dataset, quant_list, user):
    """(images, labels): --test_data, its labels within the model's outputs (the tuple's last op; a
    built-in float model's classes), or the built-in dataset's test set."""
    if cfg.test_data:
        head = quant_list[0] if quant_list else {}
        shape = head.get("input_shape") or config.parse_shape(cfg.input_shape) or (
            list(datasets.DATASETS[dataset]["shape"]) if dataset in datasets.DATASETS else None)
        classes = (int(np.prod(quant_list[-1]["shape"])) if quant_list else
                   datasets.DATASETS[dataset]["classes"] if dataset in datasets.DATASETS else None)
        return datasets.load_images(cfg.test_data, shape, classes=classes)
    if user:
        raise ModelFileError(f"--model={cfg.model} needs --test_data=FILE.npz or an ImageFolder directory")
    return datasets.load(dataset, "test", cfg.data_dir, cfg.mirror_dir)


def load_inputs(cfg, columns, user):
    """(state, quant_list, dataset, images, labels, (net, mean, std)): the tuple (None, None for the raw
    column of a built-in model alone), the test set cut to --limit, the float model for the raw column;
    the outputs checked before any of it.  The work cap is set for every engine."""
    try:
        check_outputs(cfg)
        # a user model's settings live in its tuple: load it even for the raw column alone
        state, quant_list = (load_quant(cfg) if user or set(columns) - {"raw"} or cfg.dump_layers
                             else (None, None))
        work.set_max_work(cfg.max_work)     # every engine's cap, C's too (--max-work)
        if quant_list:
            work.check(quant_list)          # refused before any column runs
        head = quant_list[0] if quant_list else {}
        dataset = head.get("dataset") or models.spec(cfg.model).dataset
        images, labels = load_test_set(cfg, dataset, quant_list, user)
        float_model = load_float(cfg, head) if "raw" in columns else (None, None, None)
    except (ModelFileError, WriteError, golden.DumpError, datasets.DatasetError) as err:
        sys.exit(f"error: {err}")
    n = min(cfg.limit or len(images), len(images))
    return state, quant_list, dataset, images[:n], labels[:n].numpy(), float_model


def run_c_column(cfg, state, quant_list, dataset, images, labels):
    """(logits, seconds) of the C engine: on the dataset's own files, or the images as .npy."""
    try:
        if cfg.test_data or dataset not in datasets.DATASETS:   # the images as .npy
            return api.run_c(state, quant_list, images, labels, max_work=cfg.max_work)
        return api.run_c_files(state, quant_list, *datasets.test_files(dataset, cfg.data_dir, cfg.mirror_dir),
                               len(images), max_work=cfg.max_work)
    except (RuntimeError, subprocess.CalledProcessError) as err:
        sys.exit(f"error: {err}")


def run_columns(cfg, columns, state, quant_list, dataset, images, labels, float_model):
    """({column: logits}, {column: seconds}): each column on the images, in --test_batch batches."""
    logits, seconds = {}, {}
    for col in columns:
        t0 = time.perf_counter()
        if col == "raw":
            net, mean, std = float_model
            fnet = api.float_model(net, mean, std, images.shape[1])
            out = batched(lambda x: fnet(x.float() / 255.0).numpy(), images, cfg.test_batch, "raw")
        elif col == "quant":
            engine = TorchIntegerModel(state, quant_list)
            out = batched(lambda x: engine(x).numpy(), images, cfg.test_batch, "quant")
        elif col == "np_quant":
            engine = NumpyIntegerModel(state, quant_list)
            out = batched(lambda x: engine(x.numpy()), images, cfg.test_batch, "np quant")
        else:
            out, c_seconds = run_c_column(cfg, state, quant_list, dataset, images, labels)
        seconds[col] = c_seconds if col == "c_int8" else time.perf_counter() - t0
        logits[col] = out
    return logits, seconds


def compare(logits, labels):
    """({column: accuracy}, {"a_vs_b": share of images with identical integer logits})."""
    accuracy = {col: float((out.argmax(1) == labels).mean()) for col, out in logits.items()}
    identical = {}
    for a, b in (("quant", "np_quant"), ("np_quant", "c_int8")):
        if a in logits and b in logits:
            identical[f"{a}_vs_{b}"] = float((logits[a] == logits[b]).all(axis=1).mean())
    return accuracy, identical


def print_table(name, where, n, columns, accuracy, seconds, identical):
    print(f"\n{name} on {where}, {n} images")
    print(f"{'column':<18} {'accuracy':>9} {'seconds':>9} {'images/s':>10}")
    for col in columns:
        print(f"{TITLES[col]:<18} {accuracy[col] * 100:>8.2f}% {seconds[col]:>9.3f} {n / seconds[col]:>10.0f}")
    for key, frac in identical.items():
        a, b = key.split("_vs_")
        print(f"identical integer logits, {TITLES[a]} vs {TITLES[b]}: {round(frac * n)}/{n}")


def dump_layers(cfg, state, quant_list, images, name):
    """--dump_layers: every op's uint8 output of the images (numpy engine) as golden vectors."""
    t0 = time.perf_counter()
    try:
        values = golden.layer_outputs(state, quant_list, images, cfg.test_batch)
        golden.write_dump(cfg.dump_layers, quant_list, values, name)
    except golden.DumpError as err:
        sys.exit(f"error: {err}")
    print(f"wrote {cfg.dump_layers}: {len(quant_list)} ops x {len(images)} images "
          f"({time.perf_counter() - t0:.2f} s)")


@stage_main
def main():
    extra = {"json": ("", "also write the results as JSON to this file (\"\" = no)"),
             "dump_layers": ("", "also write every op's uint8 output of the N images (numpy engine) to this "
                                 "folder: .npy, .hex, manifest.json (\"\" = no)")}
    cfg = config.load_or_exit(extra=extra, stage="test_model.py")
    try:
        columns = choose_columns(cfg)
    except config.ConfigError as err:
        sys.exit(f"config error: {err}")
    state, quant_list, dataset, images, labels, float_model = load_inputs(cfg, columns, config.user_model(cfg.model))
    n = len(images)
    torch.set_grad_enabled(False)

    logits, seconds = run_columns(cfg, columns, state, quant_list, dataset, images, labels, float_model)
    accuracy, identical = compare(logits, labels)
    name = config.model_name(cfg)
    print_table(name, cfg.test_data or f"{dataset} test set", n, columns, accuracy, seconds, identical)
    if cfg.json:
        report = {"model": name, "dataset": dataset, "images": n, "accuracy": accuracy,
                  "identical_logits": identical, "seconds": seconds}
        with atomic_open(cfg.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {cfg.json}")
    if cfg.dump_layers:
        dump_layers(cfg, state, quant_list, images, name)
    if any(frac < 1.0 for frac in identical.values()):
        sys.exit("error: the integer engines disagree (see above)")


if __name__ == "__main__":
    main()
