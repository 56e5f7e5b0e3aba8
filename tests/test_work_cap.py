"""The whole-model work cap (c/core/load.c check_work, model/work.py) and the max pool kernels on big windows.

A model whose ops together need more than the cap (operations per image: MACs of conv/linear, window
reads of pools, output values of the rest) is refused at load, with one line naming the total and
the op that adds the most, by the C engine, the numpy and torch engines, test_model.py and the
exporter (which then writes nothing); --max-work / --max_work raises the cap.  The optimized max pool
(separable, c/fast/hwc.inc) gives the reference kernel's bytes on every window, and is not slower.
"""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import config
from model import api, work
from model.formats.export_format import write_export
from model.engines.np_engine import NumpyIntegerModel
from model.engines.torch_engine import TorchIntegerModel
from tests.random_models import ARCHS, random_quantized
from tests.work_models import pool_chain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_DIR = os.path.join(ROOT, "c")
SANITIZER_MARKS = ("runtime error", "AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer")
C_LINE = re.compile(r"error: (\S+): model needs (\d+) operations per image \(op (\d+) (\w+) adds (\d+)\); the cap is "
                    r"(\d+) \(--max-work N raises it\)")
PY_LINE = re.compile(r"(\S+): model needs (\d+) operations per image \(op (\d+) '([^']*)' (\w+) adds (\d+)\); the cap "
                     r"is (\d+) \(--max_work=N raises it\)")


def export(folder, state, quant, images):
    """The graph's bin export (the Python writer checks no cap) and its images as .npy."""
    os.makedirs(folder, exist_ok=True)
    write_export(state, quant, str(folder), "bin")
    path = os.path.join(folder, "images.npy")
    np.save(path, np.asarray(images, dtype=np.uint8))
    return {"dir": str(folder), "model": quant[0]["model"], "images": path}


def run_c(binary, ex, *extra, timeout=120):
    logits = os.path.join(ex["dir"], "logits.txt")
    proc = subprocess.run([binary, "--dir", ex["dir"], "--model", ex["model"], "--images", ex["images"],
                           "--logits", logits, *extra], capture_output=True, text=True, timeout=timeout)
    for mark in SANITIZER_MARKS:
        assert mark not in proc.stderr, proc.stderr
    out = None
    if proc.returncode == 0:
        with open(logits) as f:
            out = np.array([[int(v) for v in line.split(",")] for line in f.read().splitlines()])
    return proc, out


def c_refusal(proc):
    """(total, op, kind, most, cap) of the C engine's one-line refusal."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    m = C_LINE.fullmatch(lines[0])
    assert m, lines[0]
    return int(m.group(2)), int(m.group(3)), m.group(4), int(m.group(5)), int(m.group(6))


def py_refusal(err):
    """(total, op, name, kind, most, cap) of a WorkError."""
    text = str(err)
    assert "\n" not in text
    m = PY_LINE.fullmatch(text)
    assert m, text
    return int(m.group(2)), int(m.group(3)), m.group(4), m.group(5), int(m.group(6)), int(m.group(7))


def hostile():
    """A conv, a nearest upsample to 2048x2048 and nine 31x31 max pools (stride 1, padding 15): each
    pool under the old 2^32 per-op limit, together 3.6e10 window reads, over the default cap."""
    state, quant, images = pool_chain(name="hostile", size=8, factor=2, n_pools=9, grow=128, n_images=1)
    assert quant[-1]["shape"] == [1, 2048, 2048]
    return state, quant, images


# --- the defaults -----------------------------------------------------------------------------

def test_one_default_everywhere(binaries):
    """config.MAX_WORK, model/work.py and c/inference's default are one number, 2^35."""
    proc = subprocess.run([binaries["fast"], "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    shown = re.search(r"--max-work N .*?\(default (\d+)\)", proc.stdout, re.S)
    assert shown and int(shown.group(1)) == 2 ** 35
    assert config.MAX_WORK == work.DEFAULT_MAX_WORK == 2 ** 35


def test_shipped_lenet_is_well_inside_the_default(binaries, tmp_path):
    state, quant = torch.load(os.path.join(ROOT, "quantization", "lenet_quant.tuple"), weights_only=True)
    total, top, most = work.model_work(quant)
    assert (total, top, most) == (423608, 3, 240000)        # conv2: 16x10x10 outputs x 6x5x5 MACs
    assert work.check(quant) == total
    images = np.random.default_rng(0).integers(0, 256, (4, 1, 28, 28), dtype=np.uint8)
    logits = NumpyIntegerModel(state, quant)(images)
    np.testing.assert_array_equal(TorchIntegerModel(state, quant)(torch.from_numpy(images)).numpy(), logits)
    np.save(tmp_path / "x.npy", images)
    for kind in ("asan", "fast"):                           # the shipped export, the default cap
        proc = subprocess.run([binaries[kind], "--dir", os.path.join(ROOT, "export_model"), "--model", "lenet",
                               "--images", str(tmp_path / "x.npy"), "--logits", "-", "--quiet"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        got = np.array([[int(v) for v in line.split(",")] for line in proc.stdout.splitlines()[:-1]])
        np.testing.assert_array_equal(got, logits)


# --- a model over the default cap -------------------------------------------------------------

def test_hostile_model_refused_by_every_engine(binaries, tmp_path):
    state, quant, images = hostile()
    total, top, most = work.model_work(quant)
    assert total > 2 ** 35 and all(work.op_work(op, quant) < 2 ** 32 for op in quant)
    ex = export(tmp_path, state, quant, images)
    for kind in ("asan", "fast"):
        for extra in ([], ["--reference"]):
            proc, _ = run_c(binaries[kind], ex, *extra)
            assert c_refusal(proc) == (total, top, "maxpool", most, 2 ** 35)
            assert proc.stdout == ""
    for engine in (NumpyIntegerModel, TorchIntegerModel):
        with pytest.raises(work.WorkError) as err:
            engine(state, quant)
        assert py_refusal(err.value) == (total, top, quant[top]["name"], "maxpool", most, 2 ** 35)
    with pytest.raises(work.WorkError):
        api.run_integer(state, quant, images, engine="numpy")


def test_max_work_raises_the_cap_for_the_hostile_model(binaries, tmp_path):
    """With --max-work at its total the C engine loads it and runs an image: the separable max pool
    takes well under a second for what was 3.6e10 window reads."""
    state, quant, images = hostile()
    total = work.model_work(quant)[0]
    ex = export(tmp_path, state, quant, images)
    proc, _ = run_c(binaries["fast"], ex, "--max-work", str(total - 1))
    assert c_refusal(proc)[4] == total - 1
    proc, logits = run_c(binaries["fast"], ex, "--max-work", str(total), "--quiet", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert logits.shape == (1, 2048 * 2048)
    assert work.check(quant, total) == total         # and the Python engines' check passes


@pytest.mark.parametrize("arch", list(ARCHS))
def test_cap_at_the_total_runs_and_one_below_is_refused(binaries, tmp_path, arch):
    """Every op kind (the random graphs hold them all): C and Python count the same work; at a cap of
    exactly the total every engine runs, bit-exact; one below, every engine refuses, naming the same op."""
    state, quant, images = random_quantized(arch, n_test=3)
    total, top, most = work.model_work(quant)
    ex = export(tmp_path, state, quant, images.numpy())
    proc, _ = run_c(binaries["asan"], ex, "--max-work", str(total - 1))
    assert c_refusal(proc) == (total, top, quant[top]["op"], most, total - 1)
    for engine in (NumpyIntegerModel, TorchIntegerModel):
        with pytest.raises(work.WorkError) as err:
            engine(state, quant, max_work=total - 1)
        assert py_refusal(err.value) == (total, top, quant[top]["name"], quant[top]["op"], most, total - 1)
    logits = NumpyIntegerModel(state, quant, max_work=total)(images.numpy())
    np.testing.assert_array_equal(TorchIntegerModel(state, quant, max_work=total)(images).numpy(), logits)
    for kind, extra in (("asan", []), ("asan", ["--reference"]), ("fast", [])):
        proc, got = run_c(binaries[kind], ex, "--max-work", str(total), *extra)
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_array_equal(got, logits)


def test_api_passes_the_cap_to_the_c_engine(binaries):
    state, quant = torch.load(os.path.join(ROOT, "quantization", "lenet_quant.tuple"), weights_only=True)
    images = np.zeros((2, 1, 28, 28), dtype=np.uint8)
    with pytest.raises(RuntimeError, match=r"error: \S+: model needs 423608 operations per image \(op 3 conv adds "
                                           r"240000\); the cap is 423607 \(--max-work N raises it\)"):
        api.run_c(state, quant, images, max_work=423607)
    logits, _ = api.run_c(state, quant, images, max_work=423608)
    assert logits.shape == (2, 10)


def test_c_max_work_option_is_checked(binaries):
    for value in ("0", "-5", "+5", " 5", "5x", "", "18446744073709551616"):
        proc = subprocess.run([binaries["fast"], "--max-work", value], capture_output=True, text=True, timeout=30)
        assert proc.returncode != 0 and len(proc.stderr.splitlines()) == 1, (value, proc.stderr)
        assert "--max-work" in proc.stderr


# --- the stages ---------------------------------------------------------------------------------

def stage(script, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_exporter_refuses_a_model_over_the_cap_and_writes_nothing(tmp_path):
    out = tmp_path / "e"
    proc = stage("export_quant_model.py", "--max_work=423607", f"--export_dir={out}")
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert py_refusal(proc.stderr.strip()[len("error: "):]) == (423608, 3, "features_4", "conv", 240000, 423607)
    assert not out.exists() or os.listdir(out) == []
    proc = stage("export_quant_model.py", "--max_work=423608", f"--export_dir={out}", "--export_mode=bin")
    assert proc.returncode == 0, proc.stderr
    assert (out / "lenet_model.bin").exists()


def test_test_model_refuses_before_any_column_and_passes_the_cap_on():
    proc = stage("test_model.py", "--max_work=423607", "--limit=4", "--columns=quant,np,c")
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert py_refusal(proc.stderr.strip()[len("error: "):])[:2] == (423608, 3)
    assert "accuracy" not in proc.stdout
    proc = stage("test_model.py", "--max_work=423608", "--limit=4", "--columns=quant,np,c")
    assert proc.returncode == 0, proc.stderr
    assert "identical integer logits, np quant vs C INT8: 4/4" in proc.stdout


# --- max pool: the separable fast kernel --------------------------------------------------------

# name: pool_chain arguments, every path of fast_maxpool (one run of columns or one a window, stride 1
# or not, one channel or more)
POOLS = {
    "k31_s1_c1": dict(size=8, factor=4, kernel=31, stride=1, padding=15, n_pools=2),
    "k31_s1_c69": dict(size=6, channels=69, factor=4, kernel=31, stride=1, padding=15, n_pools=2),
    "k31_s4_c3": dict(size=8, channels=3, factor=8, kernel=31, stride=4, padding=15, n_pools=1),
    "k9x5_s2_ceil_c5": dict(size=9, channels=5, factor=3, kernel=(9, 5), stride=(2, 3), padding=(4, 2), n_pools=2,
                            ceil_mode=True),
    "k2_s5_c1": dict(size=10, factor=3, kernel=2, stride=5, padding=1, n_pools=1),
    "k3x1_s3_c7": dict(size=12, channels=7, factor=2, kernel=(3, 1), stride=3, padding=(1, 0), n_pools=1),
    "k1_s1_c2": dict(size=5, channels=2, factor=2, kernel=1, stride=1, padding=0, n_pools=1),
    "k4x3_s1x2_c16": dict(size=11, channels=16, factor=2, kernel=(4, 3), stride=(1, 2), padding=(2, 1), n_pools=2,
                          ceil_mode=True),
}


def isas(binary):
    """The optimized kernels' builds this CPU runs (--isa-table)."""
    import json
    proc = subprocess.run([binary, "--isa-table"], capture_output=True, text=True, timeout=30)
    return [row["isa"] for row in map(json.loads, proc.stdout.splitlines()) if row["runs_here"]]


@pytest.mark.parametrize("name", list(POOLS))
def test_max_pool_bit_exact_on_big_and_odd_windows(binaries, tmp_path, name):
    state, quant, images = pool_chain(name=name[:31], n_images=2, **POOLS[name])
    assert any(op["op"] == "maxpool" for op in quant)
    logits = NumpyIntegerModel(state, quant)(images.numpy())
    ex = export(tmp_path, state, quant, images.numpy())
    proc, ref = run_c(binaries["asan"], ex, "--reference")
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(ref, logits)
    for isa in isas(binaries["fast"]):
        for kind in ("asan", "fast"):
            proc, got = run_c(binaries[kind], ex, "--isa", isa)
            assert proc.returncode == 0, proc.stderr
            np.testing.assert_array_equal(got, ref, err_msg=f"{name} {isa} {kind}")


def seconds(binary, ex, *extra):
    proc = subprocess.run([binary, "--dir", ex["dir"], "--model", ex["model"], "--images", ex["images"], "--quiet",
                           *extra], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return float(re.search(r"seconds=([0-9.]+)", proc.stdout).group(1))


def test_fast_max_pool_not_slower_than_the_reference_on_a_big_window(binaries, tmp_path):
    """One channel, 31x31 windows on 256x256: the old 64-channel loop took 5x the reference's time
    (AMD EPYC, Zen 3), the separable kernel under a hundredth of it; the margin here is 2x."""
    state, quant, images = pool_chain(name="bigwindow", size=16, factor=16, n_pools=3, n_images=2)
    ex = export(tmp_path, state, quant, images.numpy())
    fast = min(seconds(binaries["fast"], ex) for _ in range(2))
    ref = min(seconds(binaries["fast"], ex, "--reference") for _ in range(2))
    assert 2 * fast < ref, (fast, ref)
