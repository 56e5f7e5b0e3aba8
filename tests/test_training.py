"""Training: SIGKILL at any moment, then resume to the same final epoch count."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--epochs=3", "--train_images=1500", "--val_images=300", "--batch_size=8"]


def test_sigkill_mid_training_then_resume(tmp_path):
    args = [sys.executable, os.path.join(ROOT, "train_model.py"), f"--pretrained_dir={tmp_path}", *TINY]
    ckpt = tmp_path / "lenet_ckpt.pt"
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)                                 # now inside epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    state = torch.load(ckpt, weights_only=True)      # whatever was on disk is whole
    assert 1 <= state["header"]["epoch"] < 3
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"resuming lenet from {ckpt} at epoch {state['header']['epoch']}/3" in done.stdout
    final = torch.load(ckpt, weights_only=True)
    assert final["header"]["epoch"] == 3 and [h["epoch"] for h in final["history"]] == [1, 2, 3]
    raw = torch.load(tmp_path / "lenet_raw.pth", weights_only=True)
    assert raw["header"]["model"] == "lenet" and raw["header"]["val_acc"] > 0.5
    assert (tmp_path / "lenet_training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("changed", ["--epochs=2", "--train_images=300", "--lr=0.01", "--seed=1"])
def test_resume_refuses_changed_settings(tmp_path, changed):
    """A resume with another training setting would mix two runs: one line naming it, nothing written;
    --resume=False starts over."""
    args = [sys.executable, os.path.join(ROOT, "train_model.py"), f"--pretrained_dir={tmp_path}",
            "--train_images=200", "--val_images=100", "--epochs=1"]
    assert subprocess.run(args, cwd=ROOT, capture_output=True).returncode == 0
    key, value = changed[2:].split("=")
    before = (tmp_path / "lenet_ckpt.pt").read_bytes()
    proc = subprocess.run(args + [changed], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert f"was started with {key} " in proc.stderr and f"this run has {value}" in proc.stderr
    assert (tmp_path / "lenet_ckpt.pt").read_bytes() == before
    proc = subprocess.run(args + [changed, "--resume=False"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    header = torch.load(tmp_path / "lenet_raw.pth", weights_only=True)["header"]
    assert str(header["settings"][key]) == value


def test_training_curves_record_train_accuracy_and_the_learning_rate(tmp_path):
    """Each epoch's history holds its train accuracy and every step's learning rate (the one-cycle
    schedule: up, then down), and the curves PNG is drawn from it."""
    args = [sys.executable, os.path.join(ROOT, "train_model.py"), f"--pretrained_dir={tmp_path}",
            "--train_images=256", "--val_images=100", "--epochs=2", "--batch_size=32"]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    history = torch.load(tmp_path / "lenet_ckpt.pt", weights_only=True)["history"]
    assert [len(h["lr"]) for h in history] == [8, 8]
    lrs = history[0]["lr"] + history[1]["lr"]
    peak = lrs.index(max(lrs))
    assert 0 < peak < len(lrs) - 1 and lrs[0] < max(lrs) and lrs[-1] < lrs[0]
    assert all(0 <= h["train_acc"] <= 1 for h in history) and history[1]["train_acc"] > 0.1
    assert re.search(r"train \d+\.\d\d%  val", proc.stdout)
    assert (tmp_path / "lenet_training.png").stat().st_size > 10_000


def test_distributed_data_parallel_on_cpu_with_gloo(tmp_path):
    """The multi-GPU path, exercised with 2 CPU processes and the gloo backend."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           os.path.join(ROOT, "train_model.py"), f"--pretrained_dir={tmp_path}", "--device=cpu",
                           "--epochs=1", "--train_images=512", "--val_images=100", "--batch_size=32"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "batch 32x2" in proc.stdout
    raw = torch.load(tmp_path / "lenet_raw.pth", weights_only=True)
    assert raw["header"]["world_size"] == 2
