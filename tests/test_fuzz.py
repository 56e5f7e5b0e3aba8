"""Fuzzing the C engine's loaders (c/fuzz/, docs/testing.md "Fuzzing") and valgrind on real LeNet runs.

- the five libFuzzer targets build (clang, -fsanitize=fuzzer,address,undefined) and run a
  few seconds each on their seed corpus plus every input that once crashed them
  (c/fuzz/regressions/<target>/); any sanitizer report or leak fails the test;
- valgrind (memcheck, leak check) on 200 real MNIST images through the whole engine, with
  the .bin and the .txt weights.

clang is installed by c/fuzz/install-clang.sh when missing (apt-get); the fuzz test skips,
saying why, only when that is impossible here.  The valgrind test skips without valgrind.
"""
import os
import shutil
import subprocess

import pytest

import config
from data import datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_DIR = os.path.join(ROOT, "c")
FUZZ_DIR = os.path.join(C_DIR, "fuzz")
TARGETS = ("model", "weights_bin", "weights_txt", "mnist", "cifar", "npy")


@pytest.fixture(scope="module")
def fuzzers():
    if shutil.which("make") is None:
        pytest.skip("make not available")
    proc = subprocess.run(["sh", os.path.join(FUZZ_DIR, "install-clang.sh")], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        pytest.skip("clang with libFuzzer is not installed and could not be installed: "
                    + (proc.stderr.strip() or proc.stdout.strip()))
    proc = subprocess.run(["make", "-C", C_DIR, "-j2", "fuzz"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {t: os.path.join(FUZZ_DIR, "bin", "fuzz_" + t) for t in TARGETS}


def test_seed_corpus_present():
    total = 0
    for t in TARGETS:
        folder = os.path.join(FUZZ_DIR, "corpus", t)
        files = os.listdir(folder)
        assert files, f"no seeds for {t}"
        total += sum(os.path.getsize(os.path.join(folder, f)) for f in files)
    assert total < 1 << 20


def test_regressions_pass(fuzzers):
    """Every saved crash input runs clean (also part of the smoke run; here one by one, named)."""
    ran = 0
    for t in TARGETS:
        folder = os.path.join(FUZZ_DIR, "regressions", t)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            proc = subprocess.run([fuzzers[t], "-malloc_limit_mb=1024", "-rss_limit_mb=2048",
                                   os.path.join(folder, name)], capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, f"{t}/{name}:\n{proc.stderr[-4000:]}"
            ran += 1
    if ran == 0:
        pytest.skip("no regression inputs saved")


def test_fuzz_smoke(fuzzers):
    proc = subprocess.run(["make", "-C", C_DIR, "fuzz-smoke", "FUZZ_SECONDS=6"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    for t in TARGETS:
        assert f"smoke: fuzz_{t} ok" in proc.stdout, proc.stdout


@pytest.fixture(scope="module")
def valgrind_binary():
    """`make -C c valgrind`: the engine at -O2 -g (valgrind 3.19 cannot decode AVX-512: it hides it, and
    the engine takes its AVX2 build)."""
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind not installed")
    proc = subprocess.run(["make", "-C", C_DIR, "valgrind"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return os.path.join(C_DIR, "inference_valgrind")


@pytest.mark.parametrize("fmt", ["bin", "txt"])
def test_valgrind_lenet(valgrind_binary, fmt):
    datasets.prepare_mnist(os.path.join(ROOT, "data"), config.MIRROR_DIR)
    proc = subprocess.run(["valgrind", "--error-exitcode=1", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
                           valgrind_binary, "--format", fmt, "--limit", "200", "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert "ERROR SUMMARY: 0 errors" in proc.stderr
    assert "result: images=200" in proc.stdout
