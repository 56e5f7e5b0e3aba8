"""The generic RTL engine (c/rtl/engine/, docs/fpga.md): Verilator runs the shipped LeNet's
export_mode=rtl files on MNIST test images and every logit must equal the numpy specification's
(which the C engine equals: tests/test_c_engine.py); its per-op dumps (make rtl-sim DUMP=DIR) must
equal the numpy and C engines' by compare_dumps.py; a design whose requantizer truncates must fail;
requant_serial.v alone must equal the engines on the requantizer's vectors, fed back to back, and
on residual adds fed as pairs; the
exporter refuses what the engine cannot run in one line naming the op, and places tensors so that no
two alive at one time overlap.  The tools come from
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
from model.formats import golden, rtl_export
from model.formats.golden import layer_outputs
from tests import narrow_graphs, rtl_sim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_DIR = os.path.join(ROOT, "c")
ENGINE = os.path.join(C_DIR, "rtl", "engine")
BUILD = os.path.join(C_DIR, "rtl", "build", "lenet-up5k")
IMAGES = 32
DUMP_IMAGES = 4


@pytest.fixture(scope="module")
def lenet():
    return torch.load(os.path.join(ROOT, "quantization", "lenet_quant.tuple"), weights_only=True)


@pytest.fixture(scope="module")
def tools():
    rtl_sim.need_tools()


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
    assert "addend <= c2_add ? r2 : half;" in source
    unit.write_text(source.replace("addend <= c2_add ? r2 : half;", "addend <= c2_add ? r2 : 64'sd0;"))
    model_dir = os.path.join(BUILD, "export", "lenet_rtl")
    sim = rtl_sim.build(model_dir, tmp_path / "obj", sorted(str(p) for p in tmp_path.glob("*.v")))
    images = np.fromfile(os.path.join(model_dir, "tb_images.bin"), dtype=np.uint8).reshape(8, 1, 28, 28)
    logits = rtl_sim.run(sim, model_dir, images, str(tmp_path))[0]
    assert not np.array_equal(logits, expected_logits(*lenet, 8))


def test_per_op_dumps_equal_the_numpy_and_c_dumps(tools, lenet, binaries, tmp_path):
    """make rtl-sim DUMP=DIR against the numpy engine's golden vectors and c/inference --dump-layers,
    by compare_dumps.py: every op, every byte, of DUMP_IMAGES images."""
    rtl, np_dump, c_dump = (str(tmp_path / name) for name in ("rtl", "np", "c"))
    proc = subprocess.run(["make", "-C", C_DIR, "rtl-sim", "MODEL=lenet", f"N={DUMP_IMAGES}",
                           f"LOGITS={tmp_path / 'logits.txt'}", f"DUMP={rtl}"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    state, quant = lenet
    images, _ = datasets.load("mnist", "test", *config.dataset_dirs(ROOT))
    golden.write_dump(np_dump, quant, layer_outputs(state, quant, images[:DUMP_IMAGES]), "lenet")
    proc = subprocess.run([binaries["fast"], "--dir", os.path.join(ROOT, "export_model"), "--limit", str(DUMP_IMAGES),
                           "--dump-layers", c_dump, "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for other in ([np_dump], [c_dump, "--ignore_names"]):          # the C engine's ops have no names
        proc = subprocess.run([os.path.join(ROOT, ".venv", "bin", "python"), "compare_dumps.py", rtl, *other], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and proc.stdout.startswith(f"identical: {DUMP_IMAGES} images, {len(quant)} ops"), \
            proc.stdout + proc.stderr


def test_requant_serial_alone_equals_the_engines(tools):
    proc = subprocess.run(["make", "-C", C_DIR, "rtl-unit"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"rtl: requant_serial.v equals the engines on all \d+ vectors", proc.stdout)
    assert "rtl: requant_serial.v equals the engines on all 4096 adds" in proc.stdout      # the pairs


@pytest.mark.parametrize("kind", ["adaptive_avgpool", "concat", "mul", "lut", "shuffle", "slice", "upsample", "pad"])
def test_what_the_engine_cannot_run_is_refused_in_one_line(lenet, kind):
    quant = [dict(op) for op in lenet[1]]
    quant[2].update(op=kind)
    with pytest.raises(ModelFileError) as err:
        rtl_export.check(quant)
    assert str(err.value) == (f"rtl export: op 2 (features_3) is {kind}: the RTL engine runs conv, linear, maxpool, "
                              f"avgpool, add only")


def test_the_export_command_refuses_in_one_line(lenet, tmp_path):
    """export_quant_model.py --export_mode=rtl on a tuple whose pool became an adaptive average pool (a
    multiplier for each of its 14 x 14 outputs)."""
    state, quant = lenet
    quant = [dict(op) for op in quant]
    quant[2] = {k: v for k, v in quant[2].items() if k not in ("kernel", "stride", "padding", "ceil_mode")}
    quant[2].update(op="adaptive_avgpool")
    state = dict(state, **{"features_3.multiplier": torch.full((196,), 1 << 28, dtype=torch.int32),
                           "features_3.shift": torch.full((196,), 30, dtype=torch.int32)})     # s_in / (4 s_out)
    os.makedirs(tmp_path / "q")
    torch.save((state, quant), tmp_path / "q" / "lenet_quant.tuple")
    proc = subprocess.run([os.path.join(ROOT, ".venv", "bin", "python"), "export_quant_model.py", "--export_mode=rtl",
                           f"--quant_dir={tmp_path / 'q'}", f"--export_dir={tmp_path / 'out'}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "(features_3) is adaptive_avgpool" in proc.stderr


def test_targets_and_their_memories_are_checked_in_one_line(lenet, monkeypatch, tmp_path):
    state, quant = lenet
    with pytest.raises(ModelFileError, match=r"^rtl export: target 'zynq' is not one of up5k, ecp5$"):
        rtl_export.compile_graph(state, quant, "zynq")
    sizes = rtl_export.compile_graph(state, quant, "ecp5")[3]
    assert (sizes["P"], sizes["WEIGHTS_STREAMED"]) == (32, 0)
    monkeypatch.setitem(rtl_export.TARGETS, "ecp5", dict(rtl_export.TARGETS["ecp5"], ram_bytes=65536))
    with pytest.raises(ModelFileError, match=r"^rtl export: 71008 weight bytes and 5880 activation bytes; ecp5's block "
                                             r"RAM holds 65536$"):
        rtl_export.compile_graph(state, quant, "ecp5")
    proc = subprocess.run([os.path.join(ROOT, ".venv", "bin", "python"), "export_quant_model.py", "--export_mode=rtl",
                           "--rtl_target=zynq", f"--export_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0 and proc.stderr.strip() == "error: --rtl_target=zynq: not one of up5k, ecp5"


def test_tensors_alive_together_never_share_a_byte(lenet):
    """rtl_export.allocate on LeNet (a chain: 5,880 bytes, as two alternating halves would take) and on
    graphs with residual adds: every two tensors alive at one time lie apart."""
    graphs = [lenet[1]] + [narrow_graphs.build(case, n_test=1)[1]
                           for case in ("add_clamp_excludes_zp", "concat_mixed_zps")]
    for quant in graphs:
        bases, total = rtl_export.allocate(quant)
        last = [max([i] + [j for j, op in enumerate(quant) if i in op.get("inputs", [])]) for i in range(len(quant))]
        spans = [(b, b + int(np.prod(op["shape"]))) for b, op in zip(bases, quant)]
        assert total == max(hi for _, hi in spans)
        for i in range(len(quant)):
            for j in range(i):
                if j <= last[i] and i <= last[j]:
                    assert spans[i][1] <= spans[j][0] or spans[j][1] <= spans[i][0], (quant[0]["model"], i, j)
    assert rtl_export.allocate(lenet[1])[1] == 5880


def test_activations_that_do_not_fit_are_refused_naming_the_op(lenet):
    """LeNet's first conv made 84 channels wide: its output (65,856 bytes) and the pool's reading it do
    not fit 64 KiB."""
    state, quant = lenet
    quant = [dict(op) for op in quant]
    quant[1]["shape"] = [84, 28, 28]
    with pytest.raises(ModelFileError, match=r"^rtl export: op 2 \(features_3\): its output and the tensors alive "
                                             r"with it take 67032 bytes; the RTL engine addresses 65536 bytes"):
        rtl_export.compile_graph(state, quant, "up5k")
