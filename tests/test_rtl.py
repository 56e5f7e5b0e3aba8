"""The requantizer in Verilog (c/rtl/requantize.v, make -C c rtl-test): Icarus Verilog simulates it
on every output of LeNet's conv1 and fc1 for 3 MNIST images (the accumulators and the golden
outputs of the numpy specification) and on 4,096 vectors at the contract's edges; every output
must equal the engines'.  A requantizer with a logical instead of an arithmetic shift must fail.
iverilog comes from c/mcu/install-toolchain.sh (.ci/run runs it); the tests skip, saying why, only
when it cannot be installed here."""
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_DIR = os.path.join(ROOT, "c")
RTL = os.path.join(C_DIR, "rtl")


@pytest.fixture(scope="module")
def vectors():
    proc = subprocess.run(["sh", os.path.join(C_DIR, "mcu", "install-toolchain.sh")], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        pytest.skip("iverilog not installed and not installable: " + (proc.stderr.strip() or proc.stdout.strip()))
    proc = subprocess.run(["make", "-C", C_DIR, "rtl/build/vectors.hex"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return os.path.join(RTL, "build")


def simulate(build, design, tmp_path):
    tb = str(tmp_path / "tb")
    subprocess.run(["iverilog", "-g2005", "-Wall", "-o", tb, os.path.join(RTL, "requantize_tb.v"), design],
                   check=True, capture_output=True)
    count = open(os.path.join(build, "count")).read().strip()
    return subprocess.run(["vvp", "-n", tb, f"+vectors={os.path.join(build, 'vectors.hex')}", f"+n={count}"],
                          capture_output=True, text=True, timeout=300), int(count)


def test_requantize_v_equals_the_engines(vectors, tmp_path):
    proc = subprocess.run(["make", "-C", C_DIR, "rtl-test"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    count = int(open(os.path.join(vectors, "count")).read())
    assert count == 3 * (6 * 28 * 28 + 120) + 4096
    assert f"rtl: requantize.v equals the engines on all {count} vectors" in proc.stdout


def test_a_logical_shift_is_caught(vectors, tmp_path):
    broken = tmp_path / "requantize.v"
    broken.write_text(open(os.path.join(RTL, "requantize.v")).read().replace(">>> shift;", ">> shift;"))
    proc, count = simulate(vectors, str(broken), tmp_path)
    assert proc.returncode != 0
    assert re.search(rf"rtl: \d+ of {count} vectors differ", proc.stdout + proc.stderr)
