"""The core library (c/core, c/ops) as firmware takes it, and the Cortex-M4 build run under QEMU.

- the core compiled alone references no heap, stdio, file or OS function (host gcc always;
  arm-none-eabi-gcc for Cortex-M4, the issue's acceptance command, with the toolchain);
- EXPORT_MODE=c: the arena its header defines is the C engine's memory plan, on every random
  graph of tests/random_models.py at 8 and 4 bits and on LeNet; the arrays are the bin export's
  bytes; compiled with the core on the host (c/mcu/host_check.c), it equals the file-based engine
  on the whole LeNet test set (the shipped CIFAR models: tests/test_shipped_models.py, 500 images each);
- make -C c mcu-test: LeNet's export and 8 MNIST images in a bare-metal firmware, run by
  qemu-system-arm (MPS2 AN386, semihosting): its logits equal the numpy engine's, and it fits
  16 KB of RAM, and results/firmware_lenet.json holds this build's sizes (docs/deploy.md);
- LeNet quantized at 4 bits (quant_model.py --weight_bits=4) built the same way (MCU_TUPLE): its
  logits equal numpy's, and it fits 64 KB of flash, test images included, and 16 KB of RAM.

The toolchain and QEMU come from c/mcu/install-toolchain.sh (apt-get; .ci/run runs it); the
tests that need them skip, saying why, only when that is impossible here.
"""
import json
import os
import re
import subprocess
import sys

import pytest

from model.formats.export_format import arena_bytes, write_export
from model.formats.tuple_check import load_tuple
from tests import scripts
from tests.c_core import build_host_check, core_object, run_host_check
from tests.random_models import ARCHS, random_quantized

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_DIR = os.path.join(ROOT, "c")
# what the core may call: memory and string helpers, setjmp/longjmp, the compilers' runtime
ALLOWED = re.compile(r"^(memcpy|memset|memchr|memcmp|strcmp|_?setjmp|longjmp|__aeabi_\w+|__stack_chk_\w+)$")


def undefined_symbols(nm, obj):
    out = subprocess.run([nm, "-u", obj], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


@pytest.fixture(scope="module")
def toolchain():
    proc = subprocess.run(["sh", os.path.join(C_DIR, "mcu", "install-toolchain.sh")], capture_output=True,
                          text=True, timeout=900)
    if proc.returncode != 0:
        pytest.skip("arm-none-eabi-gcc / qemu-system-arm not installed and not installable: "
                    + (proc.stderr.strip() or proc.stdout.strip()))


def test_the_core_calls_no_heap_stdio_file_or_os_function(tmp_path):
    obj = core_object("gcc", "ld", ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror"], str(tmp_path))
    calls = undefined_symbols("nm", obj)
    assert calls and all(ALLOWED.match(s) for s in calls), sorted(calls)
    assert not calls & {"malloc", "calloc", "realloc", "free", "printf", "fprintf", "snprintf", "fopen", "exit"}


def test_the_cortex_m4_core_calls_no_heap_stdio_file_or_os_function(toolchain, tmp_path):
    obj = core_object("arm-none-eabi-gcc", "arm-none-eabi-ld", ["-mcpu=cortex-m4", "-mthumb", "-O2"], str(tmp_path))
    calls = undefined_symbols("arm-none-eabi-nm", obj)
    assert all(ALLOWED.match(s) for s in calls), sorted(calls)


@pytest.fixture(scope="module")
def engine():
    proc = subprocess.run(["make", "-C", C_DIR, "inference"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return os.path.join(C_DIR, "inference")


def c_arena(engine, folder, model, images):
    """The bytes of activations c/inference plans for an export (its first report line)."""
    proc = subprocess.run([engine, "--dir", folder, "--model", model, *images, "--limit", "1"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return int(re.search(r"(\d+) bytes of activations", proc.stdout).group(1))


@pytest.mark.parametrize("weight_bits", [8, 4])       # below 8 bits the reference kernels unpack a weight row
@pytest.mark.parametrize("arch", list(ARCHS))
def test_the_exported_arena_is_the_engines_plan(engine, tmp_path, arch, weight_bits):
    import numpy as np
    state, quant, images = random_quantized(arch, "per_channel", seed=4, n_test=1, weight_bits=weight_bits)
    write_export(state, quant, str(tmp_path), "bin")
    np.save(tmp_path / "x.npy", images.numpy())
    model = quant[0]["model"]
    assert c_arena(engine, str(tmp_path), model, ["--images", str(tmp_path / "x.npy")]) == arena_bytes(quant)
    write_export(state, quant, str(tmp_path / "c"), "c")
    header = (tmp_path / "c" / f"{model}_model.h").read_text()
    assert f"#define {model.upper()}_ARENA_BYTES {arena_bytes(quant)} " in header
    assert f"FPGAI_STORAGE_BYTES({len(quant)}, {os.path.getsize(tmp_path / f'{model}_model.bin')})" in header


def test_the_c_arrays_are_the_sealed_bin_files(tmp_path):
    state, quant = load_tuple(os.path.join(ROOT, "quantization", "lenet_quant.tuple"))
    write_export(state, quant, str(tmp_path / "bin"), "bin")
    assert write_export(state, quant, str(tmp_path / "c"), "c") == [str(tmp_path / "c" / f"lenet_model.{k}")
                                                                      for k in ("c", "h")]
    source = (tmp_path / "c" / "lenet_model.c").read_text()
    for name in ("model.bin", "weight.bin", "bias.bin"):
        body = re.search(r"lenet_" + name.replace(".", "_") + r"\[(\d+)\] = \{([^}]*)\}", source)
        data = bytes(int(v, 16) for v in body.group(2).replace("\n", "").split(","))
        assert int(body.group(1)) == len(data)
        assert data == (tmp_path / "bin" / f"lenet_{name}").read_bytes(), name


def test_the_c_export_with_the_core_equals_the_file_engine_on_lenet(engine, tmp_path):
    from data import datasets
    import config
    state, quant = load_tuple(os.path.join(ROOT, "quantization", "lenet_quant.tuple"))
    write_export(state, quant, str(tmp_path), "c")
    binary = build_host_check(str(tmp_path), "lenet", str(tmp_path / "check"))
    images = datasets.load("mnist", "test", *config.dataset_dirs(ROOT))[0].numpy()
    got = run_host_check(binary, images.tobytes())
    logits = tmp_path / "file_engine.txt"
    proc = subprocess.run([engine, "--dir", os.path.join(ROOT, "export_model"), "--model", "lenet", "--logits",
                           str(logits), "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert got.count("\n") == len(images) == 10000 and got == logits.read_text()


def mcu_test(*settings):
    """make -C c mcu-test with settings (MCU_TUPLE=..., MCU_BUILD=...): QEMU's logits equal numpy's"""
    proc = subprocess.run(["make", "-C", C_DIR, "mcu-test", *settings], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "mcu-test: QEMU's logits equal numpy's on all 8 images" in proc.stdout


def flash_and_ram(elf):
    """(flash, RAM) of a firmware: text + data, data + bss (the arena, the storage, a 4 KB stack)"""
    size = subprocess.run(["arm-none-eabi-size", elf], capture_output=True, text=True, check=True).stdout
    text, data, bss = map(int, size.splitlines()[1].split()[:3])
    return text + data, data + bss


def test_firmware_under_qemu_equals_numpy(toolchain):
    mcu_test()
    flash, ram = flash_and_ram(os.path.join(C_DIR, "mcu", "build", "firmware.elf"))
    assert ram <= 16 * 1024, f"RAM {ram} bytes"
    assert flash > 61470                                             # LeNet's weights are in flash


def test_lenet_at_4_bits_fits_64_kb_of_flash(toolchain, tmp_path):
    proc = scripts.run("quant_model.py", "--model=lenet", "--weight_bits=4", f"--quant_dir={tmp_path}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    build = tmp_path / "build"
    mcu_test(f"MCU_TUPLE={tmp_path / 'lenet_quant.tuple'}", f"MCU_BUILD={build}")
    nm = subprocess.run(["arm-none-eabi-nm", str(build / "firmware.elf")], capture_output=True, text=True, check=True)
    linked = {line.split()[-1] for line in nm.stdout.splitlines()}
    assert {"conv_reference", "linear_reference", "maxpool_reference"} <= linked     # the kinds LeNet uses,
    assert not {"add_reference", "pad_reference", "lut_reference"} & linked           # no other
    flash, ram = flash_and_ram(str(build / "firmware.elf"))
    assert flash <= 64 * 1024, f"flash {flash} bytes"
    assert ram <= 16 * 1024, f"RAM {ram} bytes"
    assert flash > 30735                                             # its 4-bit weights are in flash


def test_firmware_sizes_in_the_docs_are_this_builds(toolchain, tmp_path):
    """results/firmware_lenet.json (the docs' firmware table) is what `make -C c mcu-size` gives for
    this tree: a change to the core or the export that moves a byte fails here until it is rerun."""
    proc = subprocess.run(["make", "-C", C_DIR, "mcu"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    fresh = tmp_path / "firmware.json"
    subprocess.run([sys.executable, os.path.join(C_DIR, "mcu", "mcu.py"), "size", os.path.join(C_DIR, "mcu", "build"), str(fresh)],
                   check=True, capture_output=True, text=True)
    with open(os.path.join(ROOT, "results", "firmware_lenet.json")) as f:
        shipped = json.load(f)
    got = json.loads(fresh.read_text())
    for key in ("flash_bytes", "flash_parts", "ram_bytes", "ram_parts", "images"):
        assert got[key] == shipped[key], f"{key}: this build {got[key]}, results/firmware_lenet.json " \
                                         f"{shipped[key]}: run make -C c mcu-size, then make docs"
