"""The C engine's optimized kernels against its reference kernels and the numpy engine.

Random graphs with awkward shapes (odd sizes, non-square kernels, strides, padding,
grouped and depthwise convs incl. a channel multiplier, channel counts that are not
multiples of 4 or 16, 1x1 convs read in place, linear layers of odd width), in both
weight modes and with 8- and 32-bit multipliers, run through:
  inference --reference     the simple kernels
  inference                 optimized, the best build of the kernels this CPU runs
  inference --isa ISA       optimized, each build: amx (AMX-INT8 tiles), avx512 (VNNI), avxvnni,
                            avx2, c99, avxvnni-evex (avxvnni's code with the EVEX vpdpbusd, for
                            CPUs with AVX-512 VNNI but no AVX-VNNI) and amx-emu (amx's code with
                            its tile instructions done in C, for CPUs without AMX); also under
  inference_asan --isa ISA  ASan/UBSan (skipped only where the CPU lacks that ISA)
  inference_portable        optimized, the C99 build alone
  inference_omp             optimized, OpenMP (2 threads: the default batch split between them)
and every one must give the numpy engine's logits exactly; so must each ISA on LeNet's
shipped export against --reference, and --isa NAME refuses a name it does not know, or an ISA
the CPU lacks, in one line; the avxvnni object holds VEX instructions only.  The aarch64 build
(make -C c aarch64, cross-compiled) does the same under qemu-aarch64: --isa neon (sdot) and c99
on the graphs and LeNet, and a CPU without the dot product (qemu's cortex-a53) takes c99 and
refuses neon.  tests/test_c_batch.py runs the batches
(--batch) and threads (--threads) the same way.
"""
import functools
import json
import os
import platform
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

import config
from data import datasets
from tests.random_models import random_quantized
from tests.test_c_engine import C_DIR, ROOT, assert_clean, export_graph, make_export, read_logits, result_line, run

TARGETS = {"native": "inference", "portable": "inference_portable", "omp": "inference_omp",
           "asan": "inference_asan", "asan_portable": "inference_asan_portable", "asan_omp": "inference_asan_omp",
           "valgrind": "inference_valgrind"}
# The builds of the optimized kernels in each x86-64 binary (c/isa.c), with the /proc/cpuinfo
# flags each one needs
AVX512 = ("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx512vbmi")
ISAS = {"amx": (*AVX512, "amx_tile", "amx_int8"), "avx512": AVX512,
        "avxvnni": ("avx2", "avx_vnni"), "avx2": ("avx2",), "c99": (),
        "avxvnni-evex": ("avx2", "avx512f", "avx512vl", "avx512_vnni"), "amx-emu": AVX512}
AMX_ISAS = ("amx", "amx-emu")
TWINS = ("avxvnni-evex", "amx-emu")         # only --isa picks them
ISA_NAMES = {"amx": "AMX-INT8", "avx512": "AVX-512 VNNI", "avxvnni": "AVX-VNNI", "avx2": "AVX2",
             "neon": "NEON dot product", "c99": "C99", "avxvnni-evex": "AVX-VNNI, EVEX test twin",
             "amx-emu": "AMX-INT8, emulated test twin"}   # the "kernels:" line's
QEMU_AARCH64 = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]


@functools.lru_cache(maxsize=None)
def cpu_flags():
    with open("/proc/cpuinfo") as f:
        return frozenset(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))


def missing_flags(isa):
    """The CPU flags ISA needs that this CPU lacks (all of them off x86-64, where only c99 exists)."""
    if isa != "c99" and platform.machine() not in ("x86_64", "AMD64"):
        return list(ISAS[isa])
    return [flag for flag in ISAS[isa] if flag not in cpu_flags()]


def require_isa(isa):
    missing = missing_flags(isa)
    if missing:
        pytest.skip(f"this CPU lacks {isa}: no {', '.join(missing)}")


def cbr(cin, cout, k, stride=1, padding=0, groups=1, act=nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, stride=stride, padding=padding, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class AwkwardNet(nn.Module):
    """CIFAR-shaped, every conv path of the optimized engine."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 5, (3, 5), stride=(1, 2), padding=(1, 2))          # 5x32x16, K = 45
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)                        # 5x16x8
        self.expand = cbr(5, 20, 1, act=nn.ReLU6)                               # 1x1, C % 4 != 0: im2col
        self.dw = cbr(20, 20, 3, stride=2, padding=1, groups=20, act=nn.ReLU6)  # depthwise, 8x4
        self.project = cbr(20, 40, 1, act=None)                                 # 1x1 read in place
        self.grouped = cbr(40, 36, 3, padding=1, groups=4)                      # cin_g 10, cout_g 9
        self.dw_mult = cbr(36, 72, 3, padding=1, groups=36)                     # cin_g 1, cout_g 2: GEMM path
        self.body = cbr(72, 72, 1, act=None)
        self.relu = nn.ReLU()
        self.wide = cbr(72, 70, 3, padding=1)                                   # 5 blocks of 16, last 6
        self.down = nn.Conv2d(70, 33, 2, stride=2)                              # 4x2, with bias
        self.avg = nn.AvgPool2d(2)                                              # 33x2x1
        self.fc1 = nn.Linear(66, 37)                                            # K % 4 != 0
        self.fc2 = nn.Linear(37, 10)

    def forward(self, x):
        x = self.dw_mult(self.grouped(self.project(self.dw(self.expand(self.pool(self.stem(x)))))))
        x = self.relu(self.body(x) + x)
        x = self.avg(self.down(self.wide(x)))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


class MobileNetish(nn.Module):
    """CIFAR-shaped: an inverted residual with a wide depthwise (tails of 16-channel
    vectors; the VNNI kernel's 64-channel chunks and a last one of at most 32), stride 2, a linear
    bottleneck add, a 5x5 depthwise of 40 channels (more than one 4-row group, in a 64-channel
    chunk), global average pool."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 24, 3, stride=2, padding=1)                          # 24x16x16
        self.expand = cbr(24, 150, 1, act=nn.ReLU6)
        self.dw = cbr(150, 150, 3, padding=1, groups=150, act=nn.ReLU6)
        self.project = cbr(150, 24, 1, act=None)
        self.widen = cbr(24, 40, 1)
        self.dw2 = cbr(40, 40, 5, stride=2, padding=2, groups=40)               # 5x5 depthwise, 8x8
        self.head = cbr(40, 100, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(100, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.dw(self.expand(x)))
        x = self.head(self.dw2(self.widen(x)))
        return self.fc(torch.flatten(self.gap(x), 1))


class TinyMnist(nn.Module):
    """MNIST-shaped: single-channel input, 5x5 kernels, odd channel counts, a ceil_mode max pool
    whose last windows reach past the padded input."""

    def __init__(self):
        super().__init__()
        self.c1 = cbr(1, 7, 5, padding=2)
        self.pool = nn.MaxPool2d(2)
        self.c2 = cbr(7, 17, 5)                                                 # 10x10
        self.pool2 = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)       # 6x6 (5x5 without ceil_mode)
        self.fc = nn.Linear(17 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool2(self.c2(self.pool(self.c1(x)))), 1))


ARCHS = {"awkward": (AwkwardNet, "cifar10", (3, 32, 32)), "mobilenetish": (MobileNetish, "cifar10", (3, 32, 32)),
         "tiny_mnist": (TinyMnist, "mnist", (1, 28, 28))}


class Builds(dict):
    """The binaries by kind, each made (make -C c TARGET) when a test first asks for it: a run of
    some of these tests (make test-fast) builds only the binaries they use."""
    def __missing__(self, kind):
        proc = subprocess.run(["make", "-C", C_DIR, TARGETS[kind]], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        self[kind] = os.path.join(C_DIR, TARGETS[kind])
        return self[kind]


@pytest.fixture(scope="module")
def binaries():
    if shutil.which("make") is None or shutil.which("gcc") is None:
        pytest.skip("make/gcc not available")
    return Builds()


CASES = [("awkward", "per_channel", 16), ("awkward", "per_tensor", 32), ("mobilenetish", "per_channel", 8),
         ("mobilenetish", "per_tensor", 16), ("tiny_mnist", "per_tensor", 16), ("tiny_mnist", "per_channel", 32),
         ("conv_pool", "per_tensor", 16), ("residual", "per_channel", 32), ("activations", "per_channel", 16),
         ("activations", "per_tensor", 32), ("data_movement", "per_channel", 16), ("data_movement", "per_tensor", 32),
         ("geometry", "per_channel", 16), ("geometry", "per_tensor", 32)]


def force_wide_requantization(state, quant):
    """In every conv and linear layer, channel 0 gets a multiplier of 31 bits with shift 31 and
    channel 1 one with shift 58: the optimized kernels' 32-bit requantization form does not
    exist for them, so those layers take the 64-bit one (the other channels keep theirs)."""
    for op in quant:
        if op["op"] in ("conv", "linear"):
            mult, shift = state[op["name"] + ".multiplier"], state[op["name"] + ".shift"]
            mult[0], shift[0] = 2 ** 30 + 12345, 31
            if len(mult) > 1:
                mult[1], shift[1] = 2 ** 31 - 1, 58


def export(folder, arch, mode, seed, bits, tweak=None):
    """Like test_c_engine.make_export, for the graphs here as well as tests/random_models.py's."""
    if arch not in ARCHS:
        return make_export(folder, arch, mode, seed=seed, multiplier_bits=bits)
    state, quant, images = random_quantized(arch, mode, seed, multiplier_bits=bits, archs=ARCHS, n_test=24)
    if tweak:
        tweak(state, quant)
    return export_graph(folder, state, quant, images, seed, mode="bin")


WIDE_CASES = [("awkward", "per_channel", 8), ("mobilenetish", "per_tensor", 16)]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """export(), once per graph for the module's tests."""
    @functools.lru_cache(maxsize=None)
    def get(arch, mode, bits, tweak=None):
        return export(str(tmp_path_factory.mktemp("ex")), arch, mode, 7, bits, tweak)
    return get


BUILD_RUNS = [("native", ["--reference"]), ("native", []), ("portable", []), ("omp", []), ("asan_portable", [])]


def isa_runs(isa):
    return [("native", ["--isa", isa]), ("asan", ["--isa", isa])]


@pytest.mark.parametrize("arch,mode,bits", CASES, ids=[f"{a}-{m}-{b}" for a, m, b in CASES])
def test_optimized_equals_reference(binaries, exports, tmp_path, arch, mode, bits):
    check_engines(binaries, tmp_path, exports(arch, mode, bits), BUILD_RUNS)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("arch,mode,bits", CASES, ids=[f"{a}-{m}-{b}" for a, m, b in CASES])
def test_each_isa_equals_reference(binaries, exports, tmp_path, arch, mode, bits, isa):
    require_isa(isa)
    check_engines(binaries, tmp_path, exports(arch, mode, bits), isa_runs(isa))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("arch,mode,bits", WIDE_CASES, ids=[f"{a}-{m}-{b}" for a, m, b in WIDE_CASES])
def test_wide_requantization_equals_reference(binaries, exports, tmp_path, arch, mode, bits, isa):
    """Multipliers and shifts outside the optimized kernels' 32-bit requantization form."""
    require_isa(isa)
    ex = exports(arch, mode, bits, tweak=force_wide_requantization)
    check_engines(binaries, tmp_path, ex, BUILD_RUNS[:1] + isa_runs(isa))


def command(binaries, kind):
    """How to run build `kind`: the aarch64 ones under qemu-aarch64."""
    return [*QEMU_AARCH64, binaries[kind]] if kind.startswith("aarch64") else [binaries[kind]]


def check(binaries, tmp_path, ex, expected, kind, extra, cwd=None, env=None):
    """Build `kind` on export ex (None: the defaults, the shipped LeNet from cwd), its first
    len(expected) images: a clean run whose logits equal expected.  Returns the process."""
    out = str(tmp_path / "logits.txt")
    where = ["--dir", ex["dir"], "--model", ex["model"], *ex["data_args"]] if ex else []
    proc = subprocess.run([*command(binaries, kind), *where, "--limit", str(len(expected)), "--logits", out, *extra],
                          cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=env or dict(os.environ, OMP_NUM_THREADS="2"))
    assert_clean(proc)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(read_logits(out), expected, err_msg=f"{ex and ex['dir']} {kind} {extra}")
    return proc


def check_engines(binaries, tmp_path, ex, runs):
    """check() each (kind, extra) of runs on all of ex's images, and its result line"""
    correct = int((ex["logits"].argmax(axis=1) == ex["labels"]).sum())
    for kind, extra in runs:
        assert result_line(check(binaries, tmp_path, ex, ex["logits"], kind, extra).stdout) == (ex["n"], correct)


def test_txt_weights_and_limit_on_fast_path(binaries, tmp_path):
    """txt weights through the optimized kernels, and --limit, still equal numpy."""
    ex = make_export(str(tmp_path / "ex"), "residual", "per_tensor", seed=5)
    out = str(tmp_path / "l.txt")
    proc = run(binaries["asan"], ex, "--format", "txt", "--limit", "7", "--logits", out)
    assert_clean(proc)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(read_logits(out), ex["logits"][:7])


@pytest.fixture(scope="module")
def lenet_reference(binaries, tmp_path_factory):
    """LeNet's shipped export on 2,000 MNIST test images: the reference kernels' logits."""
    datasets.prepare_mnist(os.path.join(ROOT, "data"), config.MIRROR_DIR)
    out = str(tmp_path_factory.mktemp("lenet") / "reference.txt")
    proc = subprocess.run([binaries["native"], "--reference", "--limit", "2000", "--logits", out],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return read_logits(out)


@pytest.mark.parametrize("isa", ISAS)
def test_lenet_each_isa_equals_reference(binaries, lenet_reference, tmp_path, isa):
    require_isa(isa)
    for kind, n in (("native", 2000), ("asan", 300)):
        out = str(tmp_path / f"{kind}.txt")
        proc = subprocess.run([binaries[kind], "--isa", isa, "--limit", str(n), "--logits", out],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert_clean(proc)
        assert proc.returncode == 0, proc.stderr
        assert f"kernels: optimized ({ISA_NAMES[isa]})" in proc.stdout
        np.testing.assert_array_equal(read_logits(out), lenet_reference[:n], err_msg=f"lenet {kind} --isa {isa}")


def test_isa_table_is_the_cpus(binaries):
    """--isa-table lists ISAS best first, the twins last; it says the CPU runs exactly the builds
    whose flags /proc/cpuinfo shows (amx also needs the kernel's permission), and a run without
    --isa takes the first build it says runs."""
    if platform.machine() != "x86_64":
        pytest.skip("ISAS are the x86-64 builds")
    proc = subprocess.run([binaries["native"], "--isa-table"], capture_output=True, text=True, timeout=60, check=True)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [row["isa"] for row in rows] == [isa for isa in ISAS if isa not in TWINS] + list(TWINS)
    assert [row["role"] for row in rows if row["isa"] in TWINS] == ["test twin", "emulated test twin"]
    for row in rows:
        runs = not missing_flags(row["isa"])
        assert row["runs_here"] == runs or (row["isa"] == "amx" and runs and not row["runs_here"]), row
    best = next(row["isa"] for row in rows if row["runs_here"] and row["role"] == "build")
    datasets.prepare_mnist(os.path.join(ROOT, "data"), config.MIRROR_DIR)
    proc = subprocess.run([binaries["native"], "--limit", "1"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"kernels: optimized ({ISA_NAMES[best]})" in proc.stdout


def assert_one_line_error(proc, start):
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(start), proc.stderr


@pytest.mark.parametrize("kind,isa", [("native", "sse9"), ("asan", "AVX2"), ("portable", "avx2")])
def test_unknown_isa_is_one_line(binaries, kind, isa):
    proc = subprocess.run([binaries[kind], "--isa", isa], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert_one_line_error(proc, f"error: --isa {isa}: unknown")


def test_isa_the_cpu_lacks_is_one_line(binaries):
    """--isa avx512 on a CPU without it: directly, or on one with it under valgrind, which hides
    AVX-512 from the program."""
    command = [binaries["native"], "--isa", "avx512"]
    if not missing_flags("avx512"):
        if shutil.which("valgrind") is None:
            pytest.skip("this CPU has AVX-512 and there is no valgrind to hide it")
        command = ["valgrind", "-q", binaries["valgrind"], "--isa", "avx512"]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, "error: --isa avx512: this CPU lacks")


def test_avxvnni_the_cpu_lacks_is_one_line(binaries):
    if not missing_flags("avxvnni"):
        pytest.skip("this CPU has AVX-VNNI")
    proc = subprocess.run([binaries["native"], "--isa", "avxvnni"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert_one_line_error(proc, "error: --isa avxvnni: this CPU lacks AVX2 and AVX-VNNI")


def test_avxvnni_object_is_vex_only(binaries):
    """The avxvnni build runs on CPUs without AVX-512: no zmm, no mask registers, no ymm16-31 (all
    EVEX only), and its vpdpbusd is the VEX one (the avxvnni-evex twin tested above has the EVEX one)."""
    if shutil.which("objdump") is None:
        pytest.skip("no objdump")
    obj = os.path.join(C_DIR, "build", "inference", "kernels_fast_avxvnni.o")
    text = subprocess.run(["objdump", "-d", obj], capture_output=True, text=True, check=True).stdout
    evex = [line for line in text.splitlines()
            if re.search(r"%zmm|%k[0-7]|\{k[0-7]\}|%[xy]mm(1[6-9]|2[0-9]|3[01])\b|\{evex\}", line)]
    assert not evex, "\n".join(evex[:10])
    dpbusd = [line for line in text.splitlines() if "vpdpbusd" in line]
    assert dpbusd and all("{vex} vpdpbusd %ymm" in line for line in dpbusd), "\n".join(dpbusd[:10])


@pytest.mark.parametrize("isa", ["avx2", "avxvnni", "avxvnni-evex"])
def test_ymm_tile_prefetches_its_weights(binaries, isa):
    """The ymm tiles prefetch their weight stream (prefetch_weights: the 512-channel layers at batch 1
    ran at half speed without); a build where GCC dropped the prefetches still gave equal logits."""
    if shutil.which("objdump") is None:
        pytest.skip("no objdump")
    obj = os.path.join(C_DIR, "build", "inference", f"kernels_fast_{isa}.o")
    text = subprocess.run(["objdump", "-d", obj], capture_output=True, text=True, check=True).stdout
    for hint in ("prefetcht0", "prefetcht2"):
        assert re.search(rf"\b{hint}\b", text), f"{obj}: no {hint}"


@pytest.fixture(scope="module")
def aarch64(binaries):
    """binaries plus the aarch64 cross builds, without and with OpenMP (c/mcu/install-toolchain.sh
    installs the cross compiler and qemu-user)."""
    for tool in ("aarch64-linux-gnu-gcc", "qemu-aarch64"):
        if shutil.which(tool) is None:
            pytest.skip(f"no {tool} (c/mcu/install-toolchain.sh installs it)")
    proc = subprocess.run(["make", "-C", C_DIR, "aarch64", "aarch64-omp"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    binaries.update(aarch64=os.path.join(C_DIR, "inference_aarch64"),
                    aarch64_omp=os.path.join(C_DIR, "inference_aarch64_omp"))
    return binaries


AARCH64_CASES = [(a, m, b, False) for a, m, b in CASES] + [(a, m, b, True) for a, m, b in WIDE_CASES]


@pytest.mark.parametrize("isa", ["neon", "c99"])
@pytest.mark.parametrize("arch,mode,bits,wide", AARCH64_CASES,
                         ids=[f"{a}-{m}-{b}{'-wide' if w else ''}" for a, m, b, w in AARCH64_CASES])
def test_aarch64_equals_reference(aarch64, exports, tmp_path, arch, mode, bits, wide, isa):
    """qemu-aarch64 emulates a CPU with the dot product (its default, max)."""
    ex = exports(arch, mode, bits, tweak=force_wide_requantization) if wide else exports(arch, mode, bits)
    check_engines(aarch64, tmp_path, ex, [("aarch64", ["--isa", isa])])


@pytest.mark.parametrize("isa", ["neon", "c99"])
def test_aarch64_lenet_equals_reference(aarch64, lenet_reference, tmp_path, isa):
    out = str(tmp_path / "logits.txt")
    proc = subprocess.run([*command(aarch64, "aarch64"), "--isa", isa, "--limit", "1000", "--logits", out],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"kernels: optimized ({ISA_NAMES[isa]})" in proc.stdout
    np.testing.assert_array_equal(read_logits(out), lenet_reference[:1000], err_msg=f"aarch64 --isa {isa}")


def test_aarch64_without_dot_product(aarch64):
    """A Cortex-A53 (ARMv8.0, no sdot): the default takes c99, --isa neon is one error line."""
    cpu = [*QEMU_AARCH64, "-cpu", "cortex-a53", aarch64["aarch64"], "--limit", "5"]
    proc = subprocess.run(cpu, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "kernels: optimized (C99)" in proc.stdout
    proc = subprocess.run([*cpu, "--isa", "neon"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, "error: --isa neon: this CPU lacks")
