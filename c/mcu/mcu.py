"""The Cortex-M4 firmware's data and its check (make -C c mcu / mcu-test; run from anywhere).

  mcu.py data BUILD_DIR N TUPLE   BUILD_DIR/MODEL_model.{h,c} (export_quant_model.py's EXPORT_MODE=c
                              of TUPLE, e.g. quantization/lenet_quant.tuple), BUILD_DIR/firmware_data.h
                              (the first N test images of its dataset as const arrays, and the names
                              firmware.c uses), BUILD_DIR/expected.txt (the numpy engine's logits of
                              them), and last BUILD_DIR/firmware.mk (the model's name and the op kinds
                              it uses: the only ones the firmware links)
  mcu.py check BUILD_DIR OUTPUT   OUTPUT (what QEMU printed) against expected.txt: every image's
                              logits equal, or one line naming the first difference and exit 1
  mcu.py size BUILD_DIR OUT.json  the firmware's flash and RAM, split by part (arm-none-eabi-size,
                              -nm and the link map of firmware.elf): results/firmware_lenet.json, which
                              the docs' firmware table shows (make -C c mcu-size)
"""
import json
import os
import re
import subprocess
import sys

C_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(C_DIR)
sys.path.insert(0, ROOT)


def write_data(build, count, tuple_path):
    import numpy as np

    import config
    from data import datasets
    from model.formats.export_format import c_identifier, write_export
    from model.formats.tuple_check import load_tuple
    from model.engines.np_engine import NumpyIntegerModel

    state, quant = load_tuple(tuple_path)
    name, dataset = quant[0]["model"], quant[0]["dataset"]
    low, up = c_identifier(name).lower(), c_identifier(name).upper()
    write_export(state, quant, build, "c")
    images, _ = datasets.load(dataset, "test", *config.dataset_dirs(ROOT))
    x = images[:count].numpy().astype(np.uint8)
    logits = NumpyIntegerModel(state, quant)(x)
    rows = [", ".join(str(v) for v in img.reshape(-1)) for img in x]
    with open(os.path.join(build, "firmware_data.h"), "w") as f:
        f.write("/* the firmware's model and test images (c/mcu/mcu.py data) */\n"
                f"#include \"{name}_model.h\"\n\n"
                f"#define FW_NAME \"{name}\"\n#define FW_MODEL_BIN {low}_model_bin\n"
                f"#define FW_WEIGHT_BIN {low}_weight_bin\n#define FW_BIAS_BIN {low}_bias_bin\n"
                f"#define FW_STORAGE_BYTES {up}_STORAGE_BYTES\n#define FW_ARENA_BYTES {up}_ARENA_BYTES\n"
                f"#define FW_OUTPUTS {up}_OUTPUTS\n"
                f"#define FW_IMAGES {count}\n\n"
                f"static const uint8_t fw_images[{count}][{x[0].size}] = {{\n"
                + ",\n".join(f"    {{{r}}}" for r in rows) + "\n};\n")
    with open(os.path.join(build, "expected.txt"), "w") as f:
        f.writelines(f"logits {i}: {','.join(str(v) for v in row)}\n" for i, row in enumerate(logits.tolist()))
    kinds = sorted({op["op"] for op in quant})
    with open(os.path.join(build, "firmware.mk"), "w") as f:
        f.write("# the firmware's model and the op kinds it uses, the only c/ops files it links (c/mcu/mcu.py data)\n"
                f"MCU_MODEL := {name}\nMCU_SYMBOL := {low}\nMCU_KINDS := {' '.join(kinds)}\n")


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


def symbol_sizes(path):
    """{name: bytes} of the symbols arm-none-eabi-nm lists with a size."""
    out = subprocess.run(["arm-none-eabi-nm", "-S", path], capture_output=True, text=True, check=True).stdout
    return {parts[3]: int(parts[1], 16) for parts in (line.split() for line in out.splitlines()) if len(parts) == 4}


def flash_by_input(map_path):
    """{input file (its path as the link named it): bytes of its .text, .rodata and .data sections
    kept in the link}, from ld's map
    (a section's name may stand on a line of its own, its address, size and file on the next)."""
    with open(map_path) as f:
        text = f.read()
    sizes, section = {}, None
    for line in text[text.index("Linker script and memory map"):].splitlines():
        m = re.match(r"^ (\.\S+)(?:\s+0x[0-9a-f]+\s+0x([0-9a-f]+)\s+(\S+))?$", line)
        if m and m.group(2) is None:
            section = m.group(1)
            continue
        m2 = m or re.match(r"^\s+0x[0-9a-f]+\s+0x([0-9a-f]+)\s+(\S+)$", line)
        name = m.group(1) if m else section
        section = None
        if m2 and name and name.split(".")[1] in ("text", "rodata", "data"):
            size, where = (m2.group(2), m2.group(3)) if m else (m2.group(1), m2.group(2))
            key = where.split("(")[0]
            sizes[key] = sizes.get(key, 0) + int(size, 16)
    return sizes


def write_size(build, out_path):
    elf = os.path.join(build, "firmware.elf")
    lines = subprocess.run(["arm-none-eabi-size", elf], capture_output=True, text=True, check=True).stdout
    text, data, bss = (int(v) for v in lines.splitlines()[1].split()[:3])
    syms, inputs = symbol_sizes(elf), flash_by_input(os.path.join(build, "firmware.map"))
    core_dirs = {os.path.join(os.path.abspath(build), d) for d in ("core", "ops")}   # the map's paths: from c/
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "mps2.ld")) as f:
        stack = int(re.search(r"STACK_BYTES\s*=\s*(\d+)", f.read()).group(1))
    with open(os.path.join(build, "firmware_data.h")) as f:
        images = int(re.search(r"#define FW_IMAGES (\d+)", f.read()).group(1))
    with open(os.path.join(build, "firmware.mk")) as f:
        symbol = re.search(r"^MCU_SYMBOL := (\w+)$", f.read(), re.M).group(1)
    flash = {"weights": syms[f"{symbol}_weight_bin"], "biases": syms[f"{symbol}_bias_bin"],
             "model.bin": syms[f"{symbol}_model_bin"], "test images": syms["fw_images"],
             "the core (c/core, c/ops)": sum(v for k, v in inputs.items()
                                             if os.path.dirname(os.path.join(C_DIR, k)) in core_dirs),
             "libgcc and newlib-nano": sum(v for k, v in inputs.items()
                                           if os.path.basename(k) in ("libgcc.a", "libc_nano.a"))}
    flash["start-up and the firmware's loop"] = text + data - sum(flash.values())
    ram = {"arena": syms["arena"], "storage (ops and their arrays)": syms["storage"], "stack": stack}
    ram["other"] = data + bss - sum(ram.values())
    compiler = subprocess.run(["arm-none-eabi-gcc", "--version"], capture_output=True, text=True).stdout
    report = {"what": "LeNet's Cortex-M4 firmware (make -C c mcu): firmware.elf split by part",
              "toolchain": f"{compiler.splitlines()[0]}, -mcpu=cortex-m4 -mthumb -O2, newlib-nano",
              "recorded_from": "c/mcu/mcu.py size (make -C c mcu-size)", "images": images,
              "flash_bytes": text + data, "flash_parts": flash, "ram_bytes": data + bss,
              "ram_parts": {k: v for k, v in ram.items() if v}}
    with open(out_path + ".tmp", "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    os.replace(out_path + ".tmp", out_path)
    print(f"wrote {out_path}: flash {text + data:,} bytes, RAM {data + bss:,} bytes")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "data":
        write_data(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif len(sys.argv) == 4 and sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "size":
        write_size(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
