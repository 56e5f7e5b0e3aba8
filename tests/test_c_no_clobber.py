"""c/inference's no-clobber rule (issue 25): a --logits file or --dump-layers folder that git tracks is
refused before any work with one `error:` line, unless --overwrite; as model/fileio.py's
check_not_tracked does for the Python stages.

Each test runs the shipped LeNet export on two images, in a temporary git repository, with both the
optimized build and the ASan/UBSan one (which must never report).
"""
import os
import shutil
import subprocess

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_DIR = os.path.join(ROOT, "c")
SANITIZER_MARKS = ("runtime error", "AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer")
ENV = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}   # no outer repository leaks in
SHIPPED = "shipped with the repository\n"


@pytest.fixture(scope="module")
def binaries():
    if not all(shutil.which(tool) for tool in ("make", "gcc", "git")):
        pytest.skip("make/gcc/git not available")
    proc = subprocess.run(["make", "-C", C_DIR, "inference", "inference_asan"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"fast": os.path.join(C_DIR, "inference"), "asan": os.path.join(C_DIR, "inference_asan")}


@pytest.fixture(params=["fast", "asan"])
def engine(request, binaries, tmp_path):
    """run(*args): the engine on the shipped LeNet and two .npy images, from the repository root."""
    images = tmp_path / "images.npy"
    np.save(images, np.random.default_rng(0).integers(0, 256, (2, 1, 28, 28), dtype=np.uint8))

    def run(*args, model_dir=os.path.join(ROOT, "export_model")):
        proc = subprocess.run([binaries[request.param], "--dir", model_dir, "--model", "lenet",
                               "--images", str(images), "--limit", "2", *args],
                              cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
        assert not any(mark in proc.stderr for mark in SANITIZER_MARKS), proc.stderr
        return proc
    return run


@pytest.fixture
def repo(tmp_path):
    """A git repository holding a committed tracked.txt and golden/manifest.json (a committed dump)."""
    path = tmp_path / "repo"
    (path / "golden").mkdir(parents=True)
    (path / "tracked.txt").write_text(SHIPPED)
    (path / "golden" / "manifest.json").write_text(SHIPPED)
    for cmd in (["init", "-q"], ["config", "user.name", "test"], ["config", "user.email", "test@example.com"],
                ["config", "commit.gpgsign", "false"], ["add", "tracked.txt", "golden"],
                ["commit", "-q", "-m", "shipped"]):
        subprocess.run(["git", "-C", str(path), *cmd], env=ENV, check=True, capture_output=True)
    return path


def assert_refused(proc, path):
    """exit 1, nothing on stdout (no work done), one error line naming the path and --overwrite"""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), proc.stderr
    assert "git tracks" in lines[0] and "--overwrite" in lines[0], proc.stderr


def logit_lines(path):
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and all(len(line.split(",")) == 10 for line in lines), lines
    return lines


def test_tracked_logits_refused_untracked_replaced(engine, repo):
    tracked, untracked = repo / "tracked.txt", repo / "untracked.txt"
    assert_refused(engine("--logits", str(tracked)), tracked)
    assert tracked.read_text() == SHIPPED
    assert sorted(os.listdir(repo)) == [".git", "golden", "tracked.txt"]      # no temporary left
    untracked.write_text("mine\n")
    proc = engine("--logits", str(untracked))
    assert proc.returncode == 0, proc.stderr
    logit_lines(untracked)


def test_overwrite_replaces_tracked_logits(engine, repo):
    tracked = repo / "tracked.txt"
    proc = engine("--logits", str(tracked), "--overwrite")
    assert proc.returncode == 0, proc.stderr
    logit_lines(tracked)


def test_symlink_to_tracked_logits_refused(engine, repo, tmp_path):
    link = tmp_path / "outside" / "logits.txt"
    link.parent.mkdir()
    link.symlink_to(repo / "tracked.txt")
    assert_refused(engine("--logits", str(link)), link)
    assert link.is_symlink() and (repo / "tracked.txt").read_text() == SHIPPED


def test_checked_before_any_work(engine, repo, tmp_path):
    """refused before the model loads: a missing export is not the error reported"""
    tracked = repo / "tracked.txt"
    assert_refused(engine("--logits", str(tracked), model_dir=str(tmp_path / "no_export")), tracked)


def test_dump_layers_tracked_folder_refused_fresh_folder_written(engine, repo):
    golden, fresh = repo / "golden", repo / "fresh"
    assert_refused(engine("--dump-layers", str(golden)), golden)
    assert os.listdir(golden) == ["manifest.json"] and (golden / "manifest.json").read_text() == SHIPPED
    proc = engine("--dump-layers", str(fresh))
    assert proc.returncode == 0, proc.stderr
    assert (fresh / "manifest.json").is_file()
    proc = engine("--dump-layers", str(golden), "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert (golden / "manifest.json").read_text() != SHIPPED


def test_help_lists_overwrite(binaries):
    proc = subprocess.run([binaries["fast"], "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--overwrite" in proc.stdout
