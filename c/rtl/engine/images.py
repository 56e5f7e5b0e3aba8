"""The testbench's images (make -C c rtl-sim): the first N test images of a model's dataset, raw.

    images.py TUPLE N OUT      -> OUT: N x C x H x W uint8 bytes, CHW, the C engine's order

The dataset is the one the quantization tuple TUPLE names (mnist or cifar10).
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT)


def main(tuple_path, count, out):
    import numpy as np
    import torch

    import config
    from data import datasets

    quant = torch.load(tuple_path, weights_only=True)[1]
    images, _ = datasets.load(quant[0]["dataset"], "test", *config.dataset_dirs(ROOT))
    images = np.asarray(images[:count], dtype=np.uint8)
    if len(images) < count:
        sys.exit(f"error: {quant[0]['dataset']} has {len(images)} test images, not {count}")
    with open(out, "wb") as f:
        f.write(images.tobytes())


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
