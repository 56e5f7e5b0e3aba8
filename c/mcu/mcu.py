"""The Cortex-M4 firmware's data and its check (make -C c mcu / mcu-test; run from anywhere).

  mcu.py data BUILD_DIR [N]   BUILD_DIR/lenet_model.{h,c} (export_quant_model.py's EXPORT_MODE=c
                              of quantization/lenet_quant.tuple), BUILD_DIR/firmware_data.h (the
                              first N MNIST test images as const arrays, and the names firmware.c
                              uses), BUILD_DIR/expected.txt (the numpy engine's logits of them)
  mcu.py check BUILD_DIR OUTPUT   OUTPUT (what QEMU printed) against expected.txt: every image's
                              logits equal, or one line naming the first difference and exit 1
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def write_data(build, count):
    import numpy as np
    import torch

    import config
    from data import datasets
    from model.export_format import write_export
    from model.np_engine import NumpyIntegerModel

    state, quant = torch.load(os.path.join(ROOT, "quantization", "lenet_quant.tuple"), weights_only=True)
    write_export(state, quant, build, "c")
    images, _ = datasets.load("mnist", "test", *config.dataset_dirs(ROOT))
    x = images[:count].numpy().astype(np.uint8)
    logits = NumpyIntegerModel(state, quant)(x)
    rows = [", ".join(str(v) for v in img.reshape(-1)) for img in x]
    with open(os.path.join(build, "firmware_data.h"), "w") as f:
        f.write("/* the firmware's model and test images (c/mcu/mcu.py data) */\n"
                "#include \"lenet_model.h\"\n\n"
                "#define FW_NAME \"lenet\"\n#define FW_MODEL_BIN lenet_model_bin\n"
                "#define FW_WEIGHT_BIN lenet_weight_bin\n#define FW_BIAS_BIN lenet_bias_bin\n"
                "#define FW_STORAGE_BYTES LENET_STORAGE_BYTES\n#define FW_ARENA_BYTES LENET_ARENA_BYTES\n"
                "#define FW_OUTPUTS LENET_OUTPUTS\n"
                f"#define FW_IMAGES {count}\n\n"
                f"static const uint8_t fw_images[{count}][{x[0].size}] = {{\n"
                + ",\n".join(f"    {{{r}}}" for r in rows) + "\n};\n")
    with open(os.path.join(build, "expected.txt"), "w") as f:
        f.writelines(f"logits {i}: {','.join(str(v) for v in row)}\n" for i, row in enumerate(logits.tolist()))


def check(build, output):
    want = open(os.path.join(build, "expected.txt")).read().splitlines()
    text = open(output, errors="replace").read()
    got = [ln for ln in text.splitlines() if re.match(r"^logits \d+: ", ln)]
    for line in text.splitlines():
        if line.startswith("error:"):
            sys.exit(f"{output}: the firmware said: {line}")
    for i, w in enumerate(want):
        if i >= len(got):
            sys.exit(f"{output}: {len(got)} images' logits, expected {len(want)}")
        if got[i] != w:
            sys.exit(f"{output}: image {i}: QEMU {got[i].split(': ')[1]}, numpy {w.split(': ')[1]}")
    if len(got) != len(want):
        sys.exit(f"{output}: {len(got)} images' logits, expected {len(want)}")
    print(f"mcu-test: QEMU's logits equal numpy's on all {len(want)} images")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "data":
        write_data(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 8)
    elif len(sys.argv) == 4 and sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
