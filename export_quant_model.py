"""Stage 4: write the files the C engine (and hardware) read -> export_model/{model}_*.

EXPORT_MODE selects the weight files: txt (weight.txt), bin (weight.bin + bias.bin)
or both; quant.txt and the versioned graph file model.bin are always written.
Proves each layer's worst-case accumulator magnitude again from the integers it exports
and prints it against the int32 limit (a tuple edited by hand cannot smuggle in an overflow).
Your own model: --model=FILE.py:NAME -> export_model/NAME_* (the other settings come from the tuple).
--report=PATH.json also writes the per-layer report (model/report.py): a table, PATH.json and PATH.png.
"""
import os
import sys

import torch

import config
from data import datasets
from model import report, work
from model.formats import rtl_export
from model.formats.export_format import export_targets, write_export
from model.fileio import (ModelFileError, WriteError, check_not_tracked, check_output_file, check_space, check_writable,
                          error_line, stage_main)
from model.ops import weighted_ops
from model.quant.quantize import ACC_LIMIT, accumulator_bound
from quant_model import load_float, load_quant


def calibration_sample(cfg, head, count=report.REPORT_IMAGES):
    """The first `count` of the images the quantizer calibrated on: the same seeded pick of the tuple's
    calib_data, or of the built-in dataset's training set."""
    if head.get("calib_data"):
        images, _ = datasets.load_images(head["calib_data"], head.get("input_shape"), need_labels=False)
    else:
        images, _ = datasets.load(head["dataset"], "train", cfg.data_dir, cfg.mirror_dir)
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed))
    return images[pick[:min(count, head.get("calib_images") or count)]]


def write_report(cfg, state, quant_list):
    """The per-layer report: printed, and written to cfg.report (JSON) and beside it (PNG)."""
    net = images = note = None
    try:
        net = load_float(cfg, quant_list[0])[0]
        images = calibration_sample(cfg, quant_list[0])
    except (ModelFileError, datasets.DatasetError) as err:
        note = f"no float model or calibration images ({error_line(err)})"
    rep = report.layer_report(state, quant_list, net, images, note=note)
    print(report.table(rep))
    for path in report.write(rep, cfg.report):
        print(f"wrote {path}")


def write_rtl(cfg, state, quant_list):
    """--export_mode=rtl: the RTL engine's files, with testbench images of a built-in dataset."""
    head = quant_list[0]
    images = (datasets.load(head["dataset"], "test", cfg.data_dir, cfg.mirror_dir)[0]
              if head["dataset"] in ("mnist", "cifar10") else None)
    return rtl_export.write_export(state, quant_list, cfg.export_dir, images, cfg.rtl_target)


@stage_main
def main():
    cfg = config.load_or_exit(extra={"report": ("", "also write the per-layer report (MACs, bytes, accumulator "
                                                    "and multiplier bits, weight and activation SQNR) to this "
                                                    "JSON file, a table and a PNG beside it (\"\" = no)"),
                                     "rtl_target": ("up5k", "--export_mode=rtl: the FPGA the engine's files are "
                                                            f"for, its lanes and memories ({', '.join(rtl_export.TARGETS)})")},
                              stage="export_quant_model.py")
    if cfg.report and os.path.isdir(cfg.report):
        sys.exit(f"error: --report={cfg.report}: is a directory (give a PATH.json)")
    try:
        check_writable(cfg.export_dir, "--export_dir")      # before any work
        if cfg.report:                                      # the JSON and the PNG beside it
            for path in filter(None, (cfg.report, report.png_path(cfg.report))):
                check_output_file(path, "--report")
                check_not_tracked((path,), cfg.overwrite, "--report=PATH")
        state, quant_list = load_quant(cfg)
        work.set_max_work(cfg.max_work)
        work.check(quant_list)          # no model.bin that the engines would refuse
        rtl = cfg.export_mode == "rtl"
        if rtl:
            if cfg.rtl_target not in rtl_export.TARGETS:
                raise ModelFileError(f"--rtl_target={cfg.rtl_target}: not one of {', '.join(rtl_export.TARGETS)}")
            rtl_export.check(quant_list)    # one line naming the first op the RTL engine cannot run
        check_not_tracked((rtl_export.targets if rtl else export_targets)(cfg.export_dir, quant_list[0]["model"],
                                                                          *() if rtl else (cfg.export_mode,)),
                          cfg.overwrite, "--export_dir=DIR")
        # weight.txt writes a weight in up to 5 characters, the bins and the C arrays in 1 to 6
        check_space(cfg.export_dir, 8 * sum(t.numel() for t in state.values()) + 2 ** 20, "--export_dir")
    except (ModelFileError, WriteError) as err:
        sys.exit(f"error: {err}")
    print(f"{'layer':<24} {'op':<7} {'|acc| bound':>12} {'of int32':>9}")
    for op in weighted_ops(quant_list):
        bound = accumulator_bound(state[op["name"] + ".weight"].numpy(), op["weight_zero_point"],
                                  state[op["name"] + ".bias"].numpy(), quant_list[op["inputs"][0]])
        print(f"{op['name'][:24]:<24} {op['op']:<7} {bound:>12} {bound / ACC_LIMIT:>8.2%}")
        if bound > ACC_LIMIT:
            sys.exit(f"error: {op['name']}: worst-case accumulator {bound} exceeds int32 ({ACC_LIMIT})")
    for path in (write_rtl(cfg, state, quant_list) if rtl else
                 write_export(state, quant_list, cfg.export_dir, cfg.export_mode)):
        print(f"wrote {path}")
    if cfg.report:
        try:
            write_report(cfg, state, quant_list)
        except OSError as err:
            text = str(err) if cfg.report in str(err) else f"{cfg.report}: {error_line(err)}"
            sys.exit(f"error: {text}")


if __name__ == "__main__":
    main()
