"""Helpers the test modules share (not a test module): the C binaries, a refused run's one line, a
folder's digest."""
import hashlib
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_DIR = os.path.join(ROOT, "c")


def c_binaries():
    """{"fast": c/inference, "asan": c/inference_asan}, made first (skip without make or gcc)."""
    if shutil.which("make") is None or shutil.which("gcc") is None:
        pytest.skip("make/gcc not available")
    for target in ("all", "asan"):
        proc = subprocess.run(["make", "-C", C_DIR, target], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"fast": os.path.join(C_DIR, "inference"), "asan": os.path.join(C_DIR, "inference_asan")}


def error_line(proc, prefix="error: ", code=1):
    """The one stderr line of a refused run (exit `code`, no traceback); progress bars are no lines."""
    lines = [ln.strip() for ln in re.split(r"[\r\n]", proc.stderr) if ln.strip() and not re.search(r"\d+%\|", ln)]
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith(prefix), proc.stderr[-3000:]
    return lines[0]


def digest(folder):
    """{relative path: sha256} of every file under folder: 'nothing overwritten, nothing left over'."""
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out
