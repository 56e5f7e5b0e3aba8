"""Writes to special files (issue 13): c/inference --logits and model.fileio.atomic_open.

A regular file (or a path not there yet) is written atomically (.NAME.PID.tmp beside it, renamed
over it); a symlink through to its target, the link kept; a device, a FIFO or "-" (stdout)
directly, the node kept; a directory is one error line.  Temporaries go on every error, on
SIGTERM, and (a SIGKILLed writer's, PID no longer alive) on the next write of the same file.
"""
import glob
import os
import signal
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from model.fileio import atomic_open
from tests.c_engine import ROOT, assert_clean, make_export, read_logits, run


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return make_export(str(tmp_path_factory.mktemp("special") / "export"), "conv_pool", "per_tensor")


def temps(folder):
    return glob.glob(os.path.join(str(folder), ".*.tmp"))


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


class FifoReader(threading.Thread):
    """Reads a FIFO to its end in the background (the writer blocks in open until it starts)."""
    def __init__(self, path):
        super().__init__(daemon=True)
        self.path, self.data = path, None
        self.start()

    def run(self):
        with open(self.path, "rb") as f:
            self.data = f.read()


def expected_text(export):
    return "".join(",".join(str(v) for v in row) + "\n" for row in export["logits"])


# --- C: c/inference --logits ------------------------------------------------------------------

def test_c_symlink_writes_its_target_and_keeps_the_link(binaries, export, tmp_path):
    target = tmp_path / "real" / "logits.txt"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "link.txt"
    link.symlink_to(os.path.relpath(target, tmp_path))
    dangling = tmp_path / "dangling.txt"                      # a link to a file not there yet
    dangling.symlink_to("real/new.txt")
    for path, written in ((link, target), (dangling, tmp_path / "real" / "new.txt")):
        proc = run(binaries["asan"], export, "--quiet", "--logits", str(path))
        assert_clean(proc)
        assert proc.returncode == 0, proc.stderr
        assert path.is_symlink()
        np.testing.assert_array_equal(read_logits(str(written)), export["logits"])
    assert not temps(tmp_path) and not temps(target.parent)


def test_c_dash_is_stdout(binaries, export):
    proc = run(binaries["asan"], export, "--quiet", "--logits", "-")
    assert_clean(proc)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1].startswith("result: images=")
    assert "\n".join(lines[:-1]) + "\n" == expected_text(export)
    assert not os.path.exists("-") and not os.path.exists(os.path.join(ROOT, "-"))


def test_c_fifo_is_written_directly(binaries, export, tmp_path):
    fifo = str(tmp_path / "logits.fifo")
    os.mkfifo(fifo)
    reader = FifoReader(fifo)
    proc = run(binaries["asan"], export, "--quiet", "--logits", fifo)
    reader.join(30)
    assert_clean(proc)
    assert proc.returncode == 0, proc.stderr
    assert reader.data.decode() == expected_text(export)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert not temps(tmp_path)


def test_c_dev_null_stays_a_character_device(binaries, export):
    proc = run(binaries["asan"], export, "--quiet", "--logits", "/dev/null")
    assert_clean(proc)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)
    assert not temps("/dev")


def test_c_a_device_made_with_mknod_stays(binaries, export, tmp_path):
    """The issue's acceptance case; making a device node needs root."""
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    node = str(tmp_path / "null")
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))          # what /dev/null is
    except OSError as err:
        pytest.skip(f"mknod: {err}")
    proc = run(binaries["fast"], export, "--quiet", "--logits", node)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISCHR(os.lstat(node).st_mode) and os.lstat(node).st_rdev == os.makedev(1, 3)
    assert not temps(tmp_path)


def test_c_device_write_errors_are_one_line(binaries, export):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    proc = run(binaries["asan"], export, "--quiet", "--logits", "/dev/full")
    assert_clean(proc)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == ["error: /dev/full: write error (No space left on device)"]
    assert stat.S_ISCHR(os.lstat("/dev/full").st_mode)


@pytest.mark.parametrize("suffix", ["", "/"])
def test_c_directory_is_one_error_line(binaries, export, tmp_path, suffix):
    folder = tmp_path / "out"
    folder.mkdir()
    proc = run(binaries["asan"], export, "--quiet", "--logits", str(folder) + suffix)
    assert_clean(proc)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"error: {folder}{suffix}: is a directory"]
    assert os.listdir(folder) == [] and not temps(tmp_path)


def test_c_regular_file_stays_atomic_and_stale_temps_go(binaries, export, tmp_path):
    target = tmp_path / "logits.txt"
    stale = tmp_path / f".logits.txt.{dead_pid()}.tmp"
    live = tmp_path / f".logits.txt.{os.getpid()}.tmp"        # this pytest process: alive
    other = tmp_path / f".other.txt.{dead_pid()}.tmp"          # another file's
    for p in (stale, live, other):
        p.write_text("partial")
    proc = run(binaries["asan"], export, "--quiet", "--logits", str(target))
    assert_clean(proc)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(read_logits(str(target)), export["logits"])
    assert not stale.exists() and live.exists() and other.exists()


def test_c_sigterm_removes_the_temporary(binaries, export, tmp_path):
    """SIGTERM once the temporary is there (many images, reference kernels, so that the run lasts):
    the temporary goes, the old file stays, the process dies of the signal."""
    with open(export["images"], "rb") as f:
        header = np.frombuffer(f.read(16), ">i4")
        images = np.frombuffer(f.read(), np.uint8).reshape(header[1], 1, header[2], header[3])
    big = str(tmp_path / "big.npy")
    np.save(big, np.tile(images, (40000 // len(images) + 1, 1, 1, 1)))
    target = tmp_path / "logits.txt"
    target.write_text("old\n")
    args = [binaries["asan"], "--dir", export["dir"], "--model", export["model"], "--images", big,
            "--reference", "--quiet", "--logits", str(target)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not temps(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    if proc.poll() is not None:
        proc.communicate()
        pytest.skip("the run ended before it could be signalled")
    assert len(temps(tmp_path)) == 1
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run ended before the signal came")
    assert proc.returncode == -signal.SIGTERM, err
    assert not temps(tmp_path)
    assert target.read_text() == "old\n"


# --- Python: model.fileio.atomic_open ------------------------------------------------------------

def test_py_symlink_writes_its_target_and_keeps_the_link(tmp_path):
    target = tmp_path / "real.txt"
    target.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to("real.txt")
    with atomic_open(str(link), "w") as f:
        f.write("new")
    assert link.is_symlink() and os.readlink(link) == "real.txt"
    assert target.read_text() == "new"
    dangling = tmp_path / "dangling.txt"
    dangling.symlink_to("sub/later.txt")
    with atomic_open(dangling, "w") as f:
        f.write("later")
    assert dangling.is_symlink() and (tmp_path / "sub" / "later.txt").read_text() == "later"
    assert not temps(tmp_path) and not temps(tmp_path / "sub")


def test_py_fifo_is_written_directly(tmp_path):
    fifo = str(tmp_path / "out.fifo")
    os.mkfifo(fifo)
    reader = FifoReader(fifo)
    with atomic_open(fifo, "wb") as f:
        f.write(b"through the fifo")
    reader.join(30)
    assert reader.data == b"through the fifo"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and not temps(tmp_path)


def test_py_dev_null_stays_a_character_device():
    with atomic_open("/dev/null", "w") as f:
        f.write("nothing")
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


def test_py_directory_is_a_clear_error(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(IsADirectoryError, match=r"^.*/out: is a directory$"):
        with atomic_open(str(tmp_path / "out"), "w"):
            pass
    assert os.listdir(tmp_path / "out") == [] and not temps(tmp_path)


def test_py_dash_is_stdout():
    code = ("from model.fileio import atomic_open\n"
            "print('before', flush=True)\n"
            "with atomic_open('-', 'w') as f: f.write('text\\n')\n"
            "with atomic_open('-', 'wb') as f: f.write(b'bytes\\n')\n"
            "print('after')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "before\ntext\nbytes\nafter\n"
    assert not os.path.exists(os.path.join(ROOT, "-"))


def test_py_stale_temps_go_and_errors_leave_none(tmp_path):
    target = tmp_path / "out.bin"
    stale = tmp_path / f".out.bin.{dead_pid()}.tmp"
    live = tmp_path / f".out.bin.{os.getppid()}.tmp"           # pytest's parent: alive
    for p in (stale, live):
        p.write_bytes(b"partial")
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(str(target)) as f:
            f.write(b"half")
            raise KeyboardInterrupt
    assert not target.exists() and not stale.exists() and live.exists()
    assert temps(tmp_path) == [str(live)]
