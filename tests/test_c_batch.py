"""The C engine's batches (--batch N) and threads (--threads T), bit-exact.

On the random graphs (tests/random_models.py's archs and tests/kernel_models.py's), in both weight modes,
23 images (so that batches of 3 and of 32 end in a partial one):
  inference --isa ISA --batch N             N = 1, 3, 32, every ISA this CPU runs
  inference_asan --isa ISA --batch N        the same under ASan/UBSan
  inference_omp --isa ISA --threads T       T = 1, 2, 3 with batches of 1 (each layer split across
  inference_asan_omp ...                    the threads), 3 and 32 (the batch split between them)
  inference --reference --batch 3
must each give the numpy engine's logits, in input order; so must LeNet's shipped export against
--reference; and the aarch64 builds under qemu-aarch64 (--isa neon, c99; batches of 5 and 32, and
with OpenMP 2 threads at batch 1 and 3 at batch 5) on two of the graphs.  With FPGAI_PASS_BYTES
small (1 byte: one image a pass; a few KB: passes of several, split inside the graph) the first
ops run pass by pass, the rest on the batch: the same logits, each ISA, ASan, threads.  An invalid
--batch, --threads, FPGAI_PASS_BYTES or FPGAI_AMX_ROWS is one error line and exit 1.  --profile
times every op (one row each, in order, with its kind and shape; the rows add up to the total)
without changing a logit, also pass by pass and on threads.
"""
import os
import re
import subprocess

import pytest

from model.formats.export_format import read_model_bin
from tests.c_builds import AMX_ISAS, ISAS, assert_one_line_error, check, check_engines, missing_flags, require_isa
from tests.c_engine import ROOT, result_line

N_IMAGES = 23
BATCHES = (1, 3, 32)
THREADS = (1, 2, 3)
CASES = [("awkward", "per_tensor", 32), ("mobilenetish", "per_channel", 8), ("tiny_mnist", "per_tensor", 16),
         ("conv_pool", "per_channel", 16), ("residual", "per_tensor", 32), ("activations", "per_channel", 16),
         ("data_movement", "per_tensor", 32), ("geometry", "per_channel", 16)]


def available_isas():
    return [isa for isa in ISAS if not missing_flags(isa)]


def runs(isa):
    """(binary, extra arguments) of every batch and thread count on ISA"""
    single = [(kind, ["--batch", str(n)]) for kind in ("native", "asan") for n in BATCHES]
    threaded = [(kind, ["--threads", str(t), "--batch", str(n)]) for kind in ("omp", "asan_omp")
                for t in THREADS for n in BATCHES]
    return [(kind, ["--isa", isa, *extra]) for kind, extra in single + threaded]


@pytest.mark.parametrize("arch,mode,bits", CASES, ids=[f"{a}-{m}-{b}" for a, m, b in CASES])
def test_batches_and_threads_equal_numpy(builds, exports, tmp_path, arch, mode, bits):
    ex = exports(arch, mode, bits)
    expected = ex["logits"][:N_IMAGES]
    correct = int((expected.argmax(axis=1) == ex["labels"][:N_IMAGES]).sum())
    for kind, extra in [("native", ["--reference", "--batch", "3"])] + [r for isa in available_isas() for r in runs(isa)]:
        proc = check(builds, tmp_path, ex, expected, kind, extra)
        assert result_line(proc.stdout) == (N_IMAGES, correct)


@pytest.mark.parametrize("arch,mode,bits", CASES, ids=[f"{a}-{m}-{b}" for a, m, b in CASES])
def test_passes_equal_numpy(builds, exports, tmp_path, arch, mode, bits):
    ex = exports(arch, mode, bits)
    expected = ex["logits"][:N_IMAGES]
    schedules = {}
    for budget in ("1", "3000", "30000"):
        env = dict(os.environ, FPGAI_PASS_BYTES=budget)
        for kind, extra in [("native", ["--isa", isa, "--batch", "32"]) for isa in available_isas()] + [
                ("asan", ["--batch", "5"]), ("asan_omp", ["--threads", "2", "--batch", "23"])]:
            proc = check(builds, tmp_path, ex, expected, kind, extra, env=env)
            schedules[budget, kind] = re.search(r"^kernels: .*, batches of \d+(.*?)(, AMX tiles .*)?$", proc.stdout,
                                                re.M).group(1)
    assert re.fullmatch(r" \(ops 0-\d+ in passes of 1\)", schedules["1", "native"]), schedules
    assert len(set(schedules.values())) > 1, schedules      # more than one schedule


def test_lenet_batches_and_threads_equal_reference(builds, lenet_reference, tmp_path):
    expected = lenet_reference[:301]            # batches of 32 and of 3: a partial last one
    for isa in available_isas():
        for kind, extra in [("native", ["--isa", isa, "--batch", "32"]),
                            ("omp", ["--isa", isa, "--threads", "2", "--batch", "1"]),
                            ("omp", ["--isa", isa, "--threads", "3", "--batch", "32"]),
                            ("asan_omp", ["--isa", isa, "--threads", "2", "--batch", "3"])]:
            check(builds, tmp_path, None, expected, kind, extra, cwd=ROOT)


@pytest.mark.parametrize("isa", ["neon", "c99"])
def test_aarch64_batches_and_threads_equal_numpy(aarch64, exports, tmp_path, isa):
    for arch, mode, bits in CASES[:2]:
        check_engines(aarch64, tmp_path, exports(arch, mode, bits),
                      [("aarch64", ["--isa", isa, "--batch", str(n)]) for n in (5, 32)]
                      + [("aarch64_omp", ["--isa", isa, "--threads", "2", "--batch", "1"]),
                         ("aarch64_omp", ["--isa", isa, "--threads", "3", "--batch", "5"])])


PROFILE_ROW = re.compile(r"^ *(\d+)  (\S+) +(\d+)x(\d+)x(\d+) +(\S+) +([0-9.]+) +([0-9.]+)% +(\S+)$")


@pytest.mark.parametrize("kind,extra,workspaces", [("native", [], 1), ("asan", ["--batch", "3"], 1),
                                                   ("omp", ["--threads", "2", "--batch", "1"], 1),
                                                   ("asan_omp", ["--threads", "2", "--batch", "8"], 2)])
def test_profile_times_every_op(builds, exports, tmp_path, kind, extra, workspaces):
    """workspaces: 2 where the 2 threads each run their share of a batch, timing its ops at once"""
    ex = exports("residual", "per_tensor", 32)
    _, ops = read_model_bin(os.path.join(ex["dir"], ex["model"] + "_model.bin"))
    proc = check(builds, tmp_path, ex, ex["logits"][:N_IMAGES], kind, ["--profile", "--quiet", *extra],
                 env=dict(os.environ, FPGAI_PASS_BYTES="3000"))
    rows = [m for m in map(PROFILE_ROW.match, proc.stdout.splitlines()) if m]
    assert [(int(r[1]), r[2], [int(r[3]), int(r[4]), int(r[5])]) for r in rows] == [
        (i, op["op"], op["shape"]) for i, op in enumerate(ops)], proc.stdout
    for r, op in zip(rows, ops):                     # MACs and GMAC/s for the ops that multiply
        assert (r[6] != "-", r[9] != "-") == (op["op"] in ("conv", "linear"),) * 2, r[0]
    total = float(re.search(r"^profile: ([0-9.]+) seconds in the ops$", proc.stdout, re.M)[1])
    wall = float(re.search(r" seconds=([0-9.]+)$", proc.stdout)[1])
    assert 0.5 * wall <= total <= workspaces * wall + 1e-3   # the ops are most of the run, inside it
    assert sum(float(r[7]) for r in rows) == pytest.approx(total, abs=1e-3)
    assert sum(float(r[8]) for r in rows) == pytest.approx(100, abs=0.5)
    assert result_line(proc.stdout)[0] == N_IMAGES


def test_profile_of_the_reference_kernels_is_one_line(builds):
    proc = subprocess.run([builds["native"], "--reference", "--profile"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert_one_line_error(proc, "error: --profile: the reference kernels do not time their ops")


def test_the_run_names_its_batch_and_threads(builds):
    proc = subprocess.run([builds["omp"], "--threads", "2", "--batch", "5", "--limit", "7"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert ", 2 threads, batches of 5" in proc.stdout


@pytest.mark.parametrize("option,value,start", [
    ("--batch", "0", "error: --batch needs a positive integer, not '0'"),
    ("--batch", "-3", "error: --batch needs a positive integer, not '-3'"),
    ("--batch", "many", "error: --batch needs a positive integer, not 'many'"),
    ("--batch", "4x", "error: --batch needs a positive integer, not '4x'"),
    ("--batch", "", "error: --batch needs a positive integer, not ''"),
    ("--batch", "99999999999999999999", "error: --batch needs a positive integer"),
    ("--batch", "65537", "error: --batch 65537: at most 65536"),
    ("--threads", "0", "error: --threads needs a positive integer, not '0'"),
    ("--threads", "two", "error: --threads needs a positive integer, not 'two'"),
])
def test_invalid_counts_are_one_line(builds, option, value, start):
    proc = subprocess.run([builds["native"], option, value], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert_one_line_error(proc, start)


def test_a_batch_past_the_memory_limit_is_one_line(builds, exports):
    """65,536 images of an inverted residual's activations (over 38,400 bytes each): more than the
    1 GiB the arena may take."""
    ex = exports("mobilenetish", "per_channel", 8)
    proc = subprocess.run([builds["native"], "--dir", ex["dir"], "--model", ex["model"], *ex["data_args"],
                           "--batch", "65536"], capture_output=True, text=True, timeout=60)
    assert_one_line_error(proc, "error: --batch 65536: 65536 images' activations take ")


@pytest.mark.parametrize("isa", AMX_ISAS)
@pytest.mark.parametrize("arch,mode,bits", CASES[:4], ids=[f"{a}-{m}-{b}" for a, m, b in CASES[:4]])
def test_amx_on_every_chunk_and_on_none(builds, exports, tmp_path, arch, mode, bits, isa):
    """FPGAI_AMX_ROWS=1: every GEMM chunk on AMX tiles, a linear layer's one row at batch 1 too (the
    default, 16 rows, leaves those to the VNNI tiles); a threshold past every chunk: none.  The
    kernels line names the threshold in force."""
    require_isa(isa)
    ex = exports(arch, mode, bits)
    expected = ex["logits"][:N_IMAGES]
    for rows in ("1", "100000"):
        env = dict(os.environ, FPGAI_AMX_ROWS=rows, OMP_NUM_THREADS="2")
        for kind, extra in [("native", ["--batch", "1"]), ("asan", ["--batch", "3"]), ("asan_omp", ["--batch", "1"]),
                            ("omp", ["--batch", "23"])]:
            proc = check(builds, tmp_path, ex, expected, kind, ["--isa", isa, *extra], env=env)
            assert f"AMX tiles on GEMM chunks of {rows}+ rows" in proc.stdout


@pytest.mark.parametrize("variable,unit", [("FPGAI_PASS_BYTES", "bytes"), ("FPGAI_AMX_ROWS", "rows")])
@pytest.mark.parametrize("value", ["", "0", "-5", "lots", "12k"])
def test_invalid_tuning_variable_is_one_line(builds, variable, unit, value):
    proc = subprocess.run([builds["native"], "--limit", "3"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, **{variable: value}))
    assert_one_line_error(proc, f"error: {variable}={value}: not a positive number of {unit}")


def test_threads_without_openmp_is_one_line(builds):
    proc = subprocess.run([builds["native"], "--threads", "2"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert_one_line_error(proc, "error: --threads 2: this build runs one thread")
    proc = subprocess.run([builds["native"], "--threads", "1", "--limit", "3"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
