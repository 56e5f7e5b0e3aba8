"""The C engine's optimized kernels against its reference kernels and the numpy engine.

Random graphs with awkward shapes (tests/kernel_models.py: odd sizes, non-square kernels, strides, padding,
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
import json
import os
import platform
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

import config
from data import datasets
from tests.c_builds import (ISA_NAMES, ISAS, QEMU_AARCH64, TWINS, assert_one_line_error, check, check_engines,
                            command, force_large_multipliers, force_wide_requantization, missing_flags, require_isa)
from tests.c_engine import C_DIR, ROOT, assert_clean, export_graph, make_export, read_logits, result_line, run
from tests.kernel_models import ARCHS
from tests.narrow_graphs import tensors
from tests.random_models import random_quantized

CASES = [("awkward", "per_channel", 16), ("awkward", "per_tensor", 32), ("mobilenetish", "per_channel", 8),
         ("mobilenetish", "per_tensor", 16), ("tiny_mnist", "per_tensor", 16), ("tiny_mnist", "per_channel", 32),
         ("conv_pool", "per_tensor", 16), ("residual", "per_channel", 32), ("activations", "per_channel", 16),
         ("activations", "per_tensor", 32), ("data_movement", "per_channel", 16), ("data_movement", "per_tensor", 32),
         ("geometry", "per_channel", 16), ("geometry", "per_tensor", 32)]
WIDE_CASES = [("awkward", "per_channel", 8), ("mobilenetish", "per_tensor", 16)]
BUILD_RUNS = [("native", ["--reference"]), ("native", []), ("portable", []), ("omp", []), ("asan_portable", [])]


def isa_runs(isa):
    return [("native", ["--isa", isa]), ("asan", ["--isa", isa])]


@pytest.mark.parametrize("arch,mode,bits", CASES, ids=[f"{a}-{m}-{b}" for a, m, b in CASES])
def test_optimized_equals_reference(builds, exports, tmp_path, arch, mode, bits):
    check_engines(builds, tmp_path, exports(arch, mode, bits), BUILD_RUNS)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("arch,mode,bits", CASES, ids=[f"{a}-{m}-{b}" for a, m, b in CASES])
def test_each_isa_equals_reference(builds, exports, tmp_path, arch, mode, bits, isa):
    require_isa(isa)
    check_engines(builds, tmp_path, exports(arch, mode, bits), isa_runs(isa))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("arch,mode,bits", WIDE_CASES, ids=[f"{a}-{m}-{b}" for a, m, b in WIDE_CASES])
def test_wide_requantization_equals_reference(builds, exports, tmp_path, arch, mode, bits, isa):
    """Multipliers and shifts outside the optimized kernels' 32-bit requantization form."""
    require_isa(isa)
    ex = exports(arch, mode, bits, tweak=force_wide_requantization)
    check_engines(builds, tmp_path, ex, BUILD_RUNS[:1] + isa_runs(isa))


LARGE_CASES = [("mobilenetish", "per_channel", False), ("awkward", "per_tensor", False),
               ("mobilenetish", "per_tensor", True), ("awkward", "per_channel", True)]


@pytest.fixture(scope="module")
def large_exports(tmp_path_factory):
    """force_large_multipliers on a random graph, checked to exercise what it claims, exported once"""
    cache = {}

    def get(arch, mode, refused):
        if (arch, mode, refused) not in cache:
            state, quant, images = random_quantized(arch, mode, 7, archs=ARCHS, n_test=24)
            placed = force_large_multipliers(state, quant, refused)
            values = tensors(state, quant, images.numpy())
            inside, saturated = set(), set()
            for i, op in enumerate(quant):
                for c, (m, s, bias, weights) in placed.get(op["name"], {}).items():
                    out = values[i][:, c]
                    between = (out > op["qmin"]) & (out < op["qmax"]) & (out != op["zero_point"])
                    if weights == "small" and between.any():
                        inside.add((m, s))
                    if weights == "own" and (out == (op["qmax"] if bias > 0 else op["qmin"])).all():
                        saturated.add((m, s, bias))
            assert len(inside) == 4 and len(saturated) == 2 + refused, (inside, saturated)
            kinds = {("depthwise" if op.get("groups", 1) == quant[op["inputs"][0]]["shape"][0] > 1 else op["op"])
                     for op in quant if op["name"] in placed}
            assert kinds == {"conv", "depthwise", "linear"}, kinds
            folder = str(tmp_path_factory.mktemp(f"large_{arch}_{mode}_{refused}"))
            cache[arch, mode, refused] = dict(export_graph(folder, state, quant, images, 7, mode="bin"),
                                              layers=len(placed))
        return cache[arch, mode, refused]
    return get


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("arch,mode,refused", LARGE_CASES, ids=[f"{a}-{m}{'-refused' if r else ''}"
                                                                for a, m, r in LARGE_CASES])
def test_large_multipliers_equal_numpy(builds, large_exports, tmp_path, arch, mode, refused, isa):
    """Channel multipliers M of 1/2 .. 3.7 among small ones, in conv, depthwise and linear layers: every
    layer on the 32-bit requantization form with its high part k (prepare.inc: qparams_fast), exact,
    values inside the clamp and saturated at both ends (acc ~ +-2^30); refused: a channel whose acc*M
    leaves int32 sends its layer to the 64-bit form (AVX-512) or requantize() (AVX2)."""
    require_isa(isa)
    ex = large_exports(arch, mode, refused)
    correct = int((ex["logits"].argmax(axis=1) == ex["labels"]).sum())
    for kind, extra in BUILD_RUNS[:1] + isa_runs(isa):
        proc = check(builds, tmp_path, ex, ex["logits"], kind, extra)
        assert result_line(proc.stdout) == (ex["n"], correct)
        if isa != "c99" and "--isa" in extra:      # C99 has no vector requantizer
            n = ex["layers"]
            assert f", 32-bit requantization on {0 if refused else n} of {n} layers" in proc.stdout, proc.stdout


def narrow_pairs_export(folder, mode, widths, tweak):
    """The residual graph at per-layer weight widths, its weights tweaked (tweak(state)), its first two
    images all 255 and stripes of 255 and 0 (the largest products of the u8 activations)."""
    state, quant, images = random_quantized("residual", mode, 2, weight_bits=8,
                                            bits={name: {"weight_bits": b} for name, b in widths.items()})
    tweak(state)
    images[0] = 255
    images[1] = 0
    images[1, :, ::2] = 255
    return export_graph(folder, state, quant, images, 2, mode="bin")


def avx2_narrow_layers(builds, tmp_path, ex):
    """ex through the reference kernels and AVX2 (native, ASan; batches of 1 and 32): each equal to the
    numpy engine's logits.  Returns the kernels line's count of the GEMM layers on the vpmaddubsw tile."""
    runs = [("native", ["--reference"])] + [(kind, ["--isa", "avx2", "--batch", batch])
                                            for kind in ("native", "asan") for batch in ("1", "32")]
    counts = set()
    for kind, extra in runs:
        proc = check(builds, tmp_path, ex, ex["logits"], kind, extra)
        if "--isa" in extra:
            counts.add(re.search(r"^kernels: .*, vpmaddubsw tile on (\d+ of \d+) GEMM layers", proc.stdout,
                                 re.M).group(1))
    assert len(counts) == 1, counts
    return counts.pop()


@pytest.mark.parametrize("sign", [1, -1])
def test_avx2_takes_vpmaddubsw_where_each_pair_fits(builds, tmp_path, sign):
    """AVX2 runs a layer on vpmaddubsw (u8 x s8 pairs summed in int16) where each pair of weights it sums
    keeps its positive weights' sum <= 128 and its negative ones' >= -128 (255 * 128 = 32,640 fits int16),
    else on vpmaddwd; both in one model, bit-exact.  The first conv (8 bits, on the raw pixels, 255 in
    the first images) sits on the boundaries: its pairs (depths 2j, 2j + 1 of a kernel row, 3 x 3 taps
    of 3 channels: offsets kx * 3 + ci) are 64/64, -64/-64, 127/1, 127/-127 and -127/-1; `down` (8 bits,
    else within +-64) has one pair of sign * (65, 64): 129, refused; 7-, 4- and 2-bit layers fit."""
    require_isa("avx2")

    def tweak(state):
        stem = state["stem_0.weight"]
        stem.clamp_(-64, 64)
        even = (torch.arange(3).view(1, 3) * 3 + torch.arange(3).view(3, 1)) % 2 == 0      # [ci, kx]: kx * 3 + ci
        stem[0], stem[1] = 64, -64
        for c, (first, second) in enumerate([(127, 1), (127, -127), (-127, -1)], start=2):
            stem[c] = torch.where(even, first, second).view(3, 1, 3).to(stem.dtype)
        down = state["down.weight"]
        down.clamp_(-64, 64)
        down[0, 0], down[0, 1] = sign * 65, sign * 64

    widths = {"body_0": 7, "project_0": 4, "fc": 2}
    ex = narrow_pairs_export(str(tmp_path / "ex"), "per_channel", widths, tweak)
    assert avx2_narrow_layers(builds, tmp_path, ex) == "4 of 5"      # all but `down`


def test_avx2_per_tensor_low_bit_layers_fit(builds, tmp_path):
    """Per-tensor weights of b bits are centred on 2^(b-1) (w8 = w - 2^(b-1)): 7 bits and less fit the
    vpmaddubsw tile like per-channel ones."""
    require_isa("avx2")
    ex = narrow_pairs_export(str(tmp_path / "ex"), "per_tensor",
                             {"stem_0": 7, "body_0": 6, "project_0": 4, "down": 3, "fc": 2}, lambda state: None)
    assert avx2_narrow_layers(builds, tmp_path, ex) == "5 of 5"


def test_txt_weights_and_limit_on_fast_path(builds, tmp_path):
    """txt weights through the optimized kernels, and --limit, still equal numpy."""
    ex = make_export(str(tmp_path / "ex"), "residual", "per_tensor", seed=5)
    out = str(tmp_path / "l.txt")
    proc = run(builds["asan"], ex, "--format", "txt", "--limit", "7", "--logits", out)
    assert_clean(proc)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(read_logits(out), ex["logits"][:7])


@pytest.mark.parametrize("isa", ISAS)
def test_lenet_each_isa_equals_reference(builds, lenet_reference, tmp_path, isa):
    require_isa(isa)
    for kind, n in (("native", 2000), ("asan", 300)):
        out = str(tmp_path / f"{kind}.txt")
        proc = subprocess.run([builds[kind], "--isa", isa, "--limit", str(n), "--logits", out],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert_clean(proc)
        assert proc.returncode == 0, proc.stderr
        assert f"kernels: optimized ({ISA_NAMES[isa]})" in proc.stdout
        np.testing.assert_array_equal(read_logits(out), lenet_reference[:n], err_msg=f"lenet {kind} --isa {isa}")


def test_isa_table_is_the_cpus(builds):
    """--isa-table lists ISAS best first, the twins last; it says the CPU runs exactly the builds
    whose flags /proc/cpuinfo shows (amx also needs the kernel's permission), and a run without
    --isa takes the first build it says runs."""
    if platform.machine() != "x86_64":
        pytest.skip("ISAS are the x86-64 builds")
    proc = subprocess.run([builds["native"], "--isa-table"], capture_output=True, text=True, timeout=60, check=True)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [row["isa"] for row in rows] == [isa for isa in ISAS if isa not in TWINS] + list(TWINS)
    assert [row["role"] for row in rows if row["isa"] in TWINS] == ["test twin", "emulated test twin"]
    for row in rows:
        runs = not missing_flags(row["isa"])
        assert row["runs_here"] == runs or (row["isa"] == "amx" and runs and not row["runs_here"]), row
    best = next(row["isa"] for row in rows if row["runs_here"] and row["role"] == "build")
    datasets.prepare_mnist(os.path.join(ROOT, "data"), config.MIRROR_DIR)
    proc = subprocess.run([builds["native"], "--limit", "1"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"kernels: optimized ({ISA_NAMES[best]})" in proc.stdout


@pytest.mark.parametrize("kind,isa", [("native", "sse9"), ("asan", "AVX2"), ("portable", "avx2")])
def test_unknown_isa_is_one_line(builds, kind, isa):
    proc = subprocess.run([builds[kind], "--isa", isa], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert_one_line_error(proc, f"error: --isa {isa}: unknown")


def test_isa_the_cpu_lacks_is_one_line(builds):
    """--isa avx512 on a CPU without it: directly, or on one with it under valgrind, which hides
    AVX-512 from the program."""
    command = [builds["native"], "--isa", "avx512"]
    if not missing_flags("avx512"):
        if shutil.which("valgrind") is None:
            pytest.skip("this CPU has AVX-512 and there is no valgrind to hide it")
        command = ["valgrind", "-q", builds["valgrind"], "--isa", "avx512"]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, "error: --isa avx512: this CPU lacks")


def test_avxvnni_the_cpu_lacks_is_one_line(builds):
    if not missing_flags("avxvnni"):
        pytest.skip("this CPU has AVX-VNNI")
    proc = subprocess.run([builds["native"], "--isa", "avxvnni"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert_one_line_error(proc, "error: --isa avxvnni: this CPU lacks AVX2 and AVX-VNNI")


def test_avxvnni_object_is_vex_only(builds):
    """The avxvnni build runs on CPUs without AVX-512: no zmm, no mask registers, no ymm16-31 (all
    EVEX only), and its vpdpbusd is the VEX one (the avxvnni-evex twin tested above has the EVEX one)."""
    if shutil.which("objdump") is None:
        pytest.skip("no objdump")
    obj = os.path.join(C_DIR, "build", "inference", "fast_avxvnni.o")
    text = subprocess.run(["objdump", "-d", obj], capture_output=True, text=True, check=True).stdout
    evex = [line for line in text.splitlines()
            if re.search(r"%zmm|%k[0-7]|\{k[0-7]\}|%[xy]mm(1[6-9]|2[0-9]|3[01])\b|\{evex\}", line)]
    assert not evex, "\n".join(evex[:10])
    dpbusd = [line for line in text.splitlines() if "vpdpbusd" in line]
    assert dpbusd and all("{vex} vpdpbusd %ymm" in line for line in dpbusd), "\n".join(dpbusd[:10])


@pytest.mark.parametrize("isa", ["avx2", "avxvnni", "avxvnni-evex"])
def test_ymm_tile_prefetches_its_weights(builds, isa):
    """The ymm tiles prefetch their weight stream (prefetch_weights: the 512-channel layers at batch 1
    ran at half speed without); a build where GCC dropped the prefetches still gave equal logits."""
    if shutil.which("objdump") is None:
        pytest.skip("no objdump")
    obj = os.path.join(C_DIR, "build", "inference", f"fast_{isa}.o")
    text = subprocess.run(["objdump", "-d", obj], capture_output=True, text=True, check=True).stdout
    for hint in ("prefetcht0", "prefetcht2"):
        assert re.search(rf"\b{hint}\b", text), f"{obj}: no {hint}"


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
