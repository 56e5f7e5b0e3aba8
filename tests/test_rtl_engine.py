"""The generic RTL engine (c/rtl/engine/, docs/fpga.md): Verilator runs the shipped LeNet's
export_mode=rtl files on MNIST test images and every logit must equal the numpy specification's
(which the C engine equals: tests/test_c_engine.py); a design whose requantizer truncates must fail;
requant_serial.v alone must equal the engines on the requantizer's vectors, fed back to back; the
exporter refuses what the engine cannot run in one line naming the op.  The tools come from
c/rtl/install-tools.sh (.ci/run runs it); the simulation tests skip, saying why, only when they cannot
be installed here."""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

import config
from data import datasets
from model.fileio import ModelFileError
from model.formats import rtl_export
from model.formats.golden import layer_outputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_DIR = os.path.join(ROOT, "c")
ENGINE = os.path.join(C_DIR, "rtl", "engine")
BUILD = os.path.join(C_DIR, "rtl", "build", "lenet")
IMAGES = 32


@pytest.fixture(scope="module")
def lenet():
    return torch.load(os.path.join(ROOT, "quantization", "lenet_quant.tuple"), weights_only=True)


@pytest.fixture(scope="module")
def tools():
    proc = subprocess.run(["sh", os.path.join(C_DIR, "rtl", "install-tools.sh")], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        pytest.skip("verilator/iverilog not installed and not installable: " + (proc.stderr or proc.stdout).strip())


@pytest.fixture(scope="module")
def simulated(tools, tmp_path_factory):
    """make -C c rtl-sim on the first IMAGES test images: (logits file, make's output)."""
    logits = str(tmp_path_factory.mktemp("rtl") / "logits.txt")
    proc = subprocess.run(["make", "-C", C_DIR, "rtl-sim", "MODEL=lenet", f"N={IMAGES}", f"LOGITS={logits}"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return logits, proc.stdout


def expected_logits(state, quant, count):
    images, _ = datasets.load("mnist", "test", *config.dataset_dirs(ROOT))
    return layer_outputs(state, quant, images[:count])[-1].reshape(count, -1)


def read_logits(path):
    return np.array([[int(v) for v in line.split(",")] for line in open(path).read().splitlines()])


def test_verilator_logits_equal_the_engines(simulated, lenet):
    logits, out = simulated
    assert np.array_equal(read_logits(logits), expected_logits(*lenet, IMAGES))
    cycles = int(re.search(rf"rtl-sim: {IMAGES} images, (\d+) cycles per image", out).group(1))
    assert cycles < 100_000        # 416,520 MACs on 8 lanes: at least 52,065


def test_a_requantizer_that_truncates_is_caught(simulated, lenet, tmp_path):
    """requant_serial.v without its + 2^(shift-1): it truncates instead of rounding half up."""
    for name in os.listdir(ENGINE):
        if name.endswith(".v") and not name.endswith("_tb.v"):
            shutil.copy(os.path.join(ENGINE, name), tmp_path / name)
    unit = tmp_path / "requant_serial.v"
    source = unit.read_text()
    assert "{r1 + half, r1_sh, r1_addr}" in source
    unit.write_text(source.replace("{r1 + half, r1_sh, r1_addr}", "{r1, r1_sh, r1_addr}"))
    sources = sorted(str(p) for p in tmp_path.glob("*.v"))
    model_dir = os.path.join(BUILD, "export", "lenet_rtl")
    proc = subprocess.run(["verilator", "--cc", "--exe", "--build", "-Wno-fatal", "-Wno-lint", "--top-module",
                           "fpgai_engine", f"-I{model_dir}", "-Mdir", str(tmp_path / "obj"), "-o", "engine_sim",
                           *sources, os.path.join(ENGINE, "sim_main.cpp")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = str(tmp_path / "logits.txt")
    proc = subprocess.run([str(tmp_path / "obj" / "engine_sim"), model_dir, os.path.join(model_dir, "tb_images.bin"),
                           "8", out], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not np.array_equal(read_logits(out), expected_logits(*lenet, 8))


def test_requant_serial_alone_equals_the_engines(tools):
    proc = subprocess.run(["make", "-C", C_DIR, "rtl-unit"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"rtl: requant_serial.v equals the engines on all \d+ vectors", proc.stdout)


@pytest.mark.parametrize("change, words", [
    (dict(op="avgpool"), "op 2 (features_3) is avgpool: the RTL engine runs conv, linear, maxpool only"),
    (dict(weight_bits=4), "op 2 (features_3) has 4-bit weights: the RTL engine takes 8 bits only"),
    (dict(inputs=[0]), "op 2 (features_3) reads op [0]: the RTL engine runs a chain"),
])
def test_what_the_engine_cannot_run_is_refused_in_one_line(lenet, change, words):
    quant = [dict(op) for op in lenet[1]]
    if "weight_bits" in change:
        quant[2] = dict(quant[1], name="features_3", inputs=[1])     # a conv in op 2's place, then its width
    quant[2].update(change)
    with pytest.raises(ModelFileError) as err:
        rtl_export.check(quant)
    assert str(err.value).startswith(f"rtl export: {words}")
    assert "\n" not in str(err.value)


def test_the_export_command_refuses_in_one_line(lenet, tmp_path):
    """export_quant_model.py --export_mode=rtl on a tuple whose pool became an average pool."""
    state, quant = lenet
    quant = [dict(op) for op in quant]
    quant[2].update(op="avgpool", kernel=[2, 2], stride=[2, 2])
    state = dict(state, **{"features_3.multiplier": torch.tensor([1 << 28], dtype=torch.int32),
                           "features_3.shift": torch.tensor([30], dtype=torch.int32)})     # s_in / (4 s_out)
    os.makedirs(tmp_path / "q")
    torch.save((state, quant), tmp_path / "q" / "lenet_quant.tuple")
    proc = subprocess.run([os.path.join(ROOT, ".venv", "bin", "python"), "export_quant_model.py", "--export_mode=rtl",
                           f"--quant_dir={tmp_path / 'q'}", f"--export_dir={tmp_path / 'out'}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "(features_3) is avgpool" in proc.stderr
