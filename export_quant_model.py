"""Stage 4: write the files the C engine (and hardware) read -> export_model/{model}_*.

EXPORT_MODE selects the weight files: txt (weight.txt), bin (weight.bin + bias.bin)
or both; quant.txt and the versioned graph file model.bin are always written.
Prints each layer's worst-case accumulator magnitude against the int32 limit.
"""
import sys

import config
from model.export_format import write_export
from model.fileio import ModelFileError
from model.quantize import ACC_LIMIT
from quant_model import load_quant


def main():
    cfg = config.load_or_exit()
    try:
        state, quant_list = load_quant(cfg)
    except ModelFileError as err:
        sys.exit(f"error: {err}")
    print(f"{'layer':<24} {'op':<7} {'|acc| bound':>12} {'of int32':>9}")
    for op in quant_list:
        if "acc_bound" in op:
            print(f"{op['name'][:24]:<24} {op['op']:<7} {op['acc_bound']:>12} {op['acc_bound'] / ACC_LIMIT:>8.2%}")
    for path in write_export(state, quant_list, cfg.export_dir, cfg.export_mode):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
