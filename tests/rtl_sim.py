"""The RTL engine's Verilator testbench for the tests (c/rtl/engine/sim_main.cpp): build it on an export
folder (export_quant_model.py --export_mode=rtl, or rtl_export.write_export), run it on images."""
import os
import subprocess

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE = os.path.join(ROOT, "c", "rtl", "engine")
SOURCES = sorted(os.path.join(ENGINE, n) for n in os.listdir(ENGINE) if n.endswith(".v") and not n.endswith("_tb.v"))


def need_tools():
    """c/rtl/install-tools.sh (.ci/run runs it); skip, saying why, only when the tools cannot be installed."""
    proc = subprocess.run(["sh", os.path.join(ROOT, "c", "rtl", "install-tools.sh")], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        pytest.skip("verilator/iverilog not installed and not installable: " + (proc.stderr or proc.stdout).strip())


def build(model_dir, obj_dir, sources=SOURCES):
    """engine_sim for the export in model_dir (its params.vh); returns its path.  -O0 C++: these designs
    are small, and the build is most of a test's time."""
    proc = subprocess.run(["verilator", "--cc", "--exe", "--build", "-Wno-fatal", "-Wno-lint", "--top-module",
                           "fpgai_engine", f"-I{model_dir}", "-Mdir", str(obj_dir), "-o", "engine_sim",
                           "-CFLAGS", "-O0", *sources, os.path.join(ENGINE, "sim_main.cpp")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return os.path.join(str(obj_dir), "engine_sim")


def run(sim, model_dir, images, work, layers=False):
    """(logits (N x OUT_SIZE), every op's output bytes per image (N x total) or None, stdout) of the
    uint8 images (N x C x H x W)."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    images.tofile(os.path.join(work, "images.bin"))
    logits, raw = os.path.join(work, "logits.txt"), os.path.join(work, "layers.bin")
    proc = subprocess.run([sim, model_dir, os.path.join(work, "images.bin"), str(len(images)), logits,
                           *([raw] if layers else [])], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = np.array([[int(v) for v in line.split(",")] for line in open(logits).read().splitlines()])
    return out, np.fromfile(raw, dtype=np.uint8).reshape(len(images), -1) if layers else None, proc.stdout
