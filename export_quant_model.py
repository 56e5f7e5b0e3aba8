"""Stage 4: write the files the C engine (and hardware) read -> export_model/{model}_*.

EXPORT_MODE selects the weight files: txt (weight.txt), bin (weight.bin + bias.bin)
or both; quant.txt and the versioned graph file model.bin are always written.
Proves each layer's worst-case accumulator magnitude again from the integers it exports
and prints it against the int32 limit (a tuple edited by hand cannot smuggle in an overflow).
Your own model: --model=FILE.py:NAME -> export_model/NAME_* (the other settings come from the tuple).
"""
import sys

import config
from model.export_format import write_export
from model.fileio import ModelFileError
from model.ops import weighted_ops
from model.quantize import ACC_LIMIT, accumulator_bound
from quant_model import load_quant


def main():
    cfg = config.load_or_exit(stage="export_quant_model.py")
    try:
        state, quant_list = load_quant(cfg)
    except ModelFileError as err:
        sys.exit(f"error: {err}")
    print(f"{'layer':<24} {'op':<7} {'|acc| bound':>12} {'of int32':>9}")
    for op in weighted_ops(quant_list):
        bound = accumulator_bound(state[op["name"] + ".weight"].numpy(), op["weight_zero_point"],
                                  state[op["name"] + ".bias"].numpy(), quant_list[op["inputs"][0]])
        print(f"{op['name'][:24]:<24} {op['op']:<7} {bound:>12} {bound / ACC_LIMIT:>8.2%}")
        if bound > ACC_LIMIT:
            sys.exit(f"error: {op['name']}: worst-case accumulator {bound} exceeds int32 ({ACC_LIMIT})")
    for path in write_export(state, quant_list, cfg.export_dir, cfg.export_mode):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
