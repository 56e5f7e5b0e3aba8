"""The C engine's builds and kernel ISAs for the tests (not a test module): each binary made when a test
first asks for it, the ISAs this CPU runs, and a run of a build checked against the expected logits."""
import functools
import os
import platform
import shutil
import subprocess

import numpy as np
import pytest

from tests.c_engine import C_DIR, assert_clean, read_logits, result_line

TARGETS = {"native": "inference", "portable": "inference_portable", "omp": "inference_omp",
           "asan": "inference_asan", "asan_portable": "inference_asan_portable", "asan_omp": "inference_asan_omp",
           "valgrind": "inference_valgrind"}
# The builds of the optimized kernels in each x86-64 binary (c/host/isa.c), with the /proc/cpuinfo
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


class Builds(dict):
    """The binaries by kind, each made (make -C c TARGET) when a test first asks for it: a run of
    some of these tests (make test-fast) builds only the binaries they use."""
    def __missing__(self, kind):
        proc = subprocess.run(["make", "-C", C_DIR, TARGETS[kind]], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        self[kind] = os.path.join(C_DIR, TARGETS[kind])
        return self[kind]


def c_builds():
    """An empty Builds (skip without make or gcc): the `builds` fixture."""
    if shutil.which("make") is None or shutil.which("gcc") is None:
        pytest.skip("make/gcc not available")
    return Builds()


def command(builds, kind):
    """How to run build `kind`: the aarch64 ones under qemu-aarch64."""
    return [*QEMU_AARCH64, builds[kind]] if kind.startswith("aarch64") else [builds[kind]]


def check(builds, tmp_path, ex, expected, kind, extra, cwd=None, env=None):
    """Build `kind` on export ex (None: the defaults, the shipped LeNet from cwd), its first
    len(expected) images: a clean run whose logits equal expected.  Returns the process."""
    out = str(tmp_path / "logits.txt")
    where = ["--dir", ex["dir"], "--model", ex["model"], *ex["data_args"]] if ex else []
    proc = subprocess.run([*command(builds, kind), *where, "--limit", str(len(expected)), "--logits", out, *extra],
                          cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=env or dict(os.environ, OMP_NUM_THREADS="2"))
    assert_clean(proc)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(read_logits(out), expected, err_msg=f"{ex and ex['dir']} {kind} {extra}")
    return proc


def check_engines(builds, tmp_path, ex, runs):
    """check() each (kind, extra) of runs on all of ex's images, and its result line"""
    correct = int((ex["logits"].argmax(axis=1) == ex["labels"]).sum())
    for kind, extra in runs:
        assert result_line(check(builds, tmp_path, ex, ex["logits"], kind, extra).stdout) == (ex["n"], correct)


def assert_one_line_error(proc, start):
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(start), proc.stderr


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


# Channel requantizations of large multipliers M = m / 2^s (tests/test_c_kernels.py), each (m, s, bias,
# weights): "small" weights (one +1 and one -1, the rest the zero point: |acc| <= 2 * 255 + |bias|, so
# the values land inside the clamp) or the layer's own.  MobileNetV2 at 4-bit weights has M up to 0.8,
# at 2 bits up to 5.5.
LARGE_MULTIPLIERS = [
    (1 << 14, 15, 3, "small"),                # M = 1/2 exactly: m << (32 - s) = 2^31, high part 1
    (25957, 15, -5, "small"),                 # M = 0.79 (MobileNetV2 W4, op 5, channel 29)
    ((1 << 20) - 1, 20, 1, "small"),          # M = 1 - 2^-20
    (30000, 13, 2, "small"),                  # M = 3.66: high part 3
    (1063004406, 30, 1 << 30, "own"),         # M = 0.99 on acc ~ 2^30: zp + acc*M still fits int32 (qmax)
    (1063004406, 30, -(1 << 30), "own"),      # ... and its negative (qmin)
]
# acc*M ~ 3 * 2^30 leaves int32: that layer's 32-bit form must be refused (its 64-bit one is exact)
BEYOND_INT32 = (3 << 13, 13, 1 << 30, "own")


def force_large_multipliers(state, quant, refused=False):
    """In every conv and linear layer, channels i and C - 1 - i take LARGE_MULTIPLIERS[i] (as many as
    C / 2 allows; the others keep their M < 1/2): both ends of the 16-channel blocks and of a depthwise
    conv's tail.  refused: channel C / 2 also takes BEYOND_INT32.  Returns {layer: {channel: spec}}."""
    placed = {}
    for op in quant:
        if op["op"] not in ("conv", "linear"):
            continue
        name = op["name"]
        mult, shift, bias = state[name + ".multiplier"], state[name + ".shift"], state[name + ".bias"]
        weight = state[name + ".weight"].view(len(mult), -1)
        C = len(mult)
        chosen = {c: spec for i, spec in enumerate(LARGE_MULTIPLIERS[:C // 2]) for c in (i, C - 1 - i)}
        if refused:
            chosen[C // 2] = BEYOND_INT32
        for c, (m, s, b, weights) in chosen.items():
            mult[c], shift[c], bias[c] = m, s, b
            if weights == "small":
                weight[c] = op["weight_zero_point"]
                weight[c, 0] += 1
                weight[c, -1] -= 1
        placed[name] = chosen
    return placed
