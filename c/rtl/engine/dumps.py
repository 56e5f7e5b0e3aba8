"""make -C c rtl-sim DUMP=DIR: the testbench's per-op tensors as golden vectors (model/formats/golden.py),
which compare_dumps.py checks against test_model.py --dump_layers and c/inference --dump-layers.

    dumps.py TUPLE N LAYERS DIR

LAYERS: engine_sim's fifth argument's file, N images, each every op's output (C*H*W bytes, CHW) in op
order; the ops and their shapes are those of the quantization tuple TUPLE.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT)


def main(tuple_path, count, layers, folder):
    import numpy as np
    import torch

    from model.formats import golden

    quant = torch.load(tuple_path, weights_only=True)[1]
    model = quant[0]["model"]
    sizes = [int(np.prod(op["shape"])) for op in quant]
    raw = np.fromfile(layers, dtype=np.uint8)
    if raw.size != count * sum(sizes):
        sys.exit(f"error: {layers}: {raw.size} bytes, not {count} images of {sum(sizes)} ({len(quant)} ops of {model})")
    per_image = raw.reshape(count, -1)
    ends = np.cumsum(sizes)
    values = [per_image[:, end - size:end] for size, end in zip(sizes, ends)]
    try:
        golden.write_dump(folder, quant, values, model)
    except golden.DumpError as err:
        sys.exit(f"error: {err}")
    print(f"wrote {folder}: {len(quant)} ops x {count} images")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
