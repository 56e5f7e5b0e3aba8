"""The trained CIFAR-10 checkpoints the repository ships, through all four columns on a few
hundred test images: quantized afresh from the committed fp16 weights, bit-exact in the three
integer engines, INT8 close to float; and the size rule for committed model files."""
import json
import os
import subprocess

import pytest

from tests.test_cli import ROOT, run

SHIPPED_CIFAR = ["resnet18", "mobilenet_v2", "vgg13"]
MODEL_FILES_LIMIT = 48_000_000   # bytes, every committed file under pretrained/, quantization/, export_model/
IMAGES = 300


@pytest.mark.parametrize("name", SHIPPED_CIFAR)
def test_shipped_cifar_model_in_every_column(tmp_path, name):
    assert os.path.isfile(os.path.join(ROOT, "pretrained", f"{name}_raw.pth")), f"{name} checkpoint not shipped"
    common = [f"--model={name}", f"--quant_dir={tmp_path}", "--calib_images=500"]
    proc = run("quant_model.py", *common)
    assert proc.returncode == 0, proc.stderr
    report = tmp_path / "report.json"
    proc = run("test_model.py", *common, f"--limit={IMAGES}", f"--json={report}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(report.read_text())
    assert result["dataset"] == "cifar10" and result["images"] == IMAGES
    assert result["identical_logits"] == {"quant_vs_np_quant": 1.0, "np_quant_vs_c_int8": 1.0}
    accuracy = result["accuracy"]
    assert accuracy["raw"] >= 0.88, accuracy      # ~93% on the full test set; 300 images wobble
    assert accuracy["c_int8"] >= accuracy["raw"] - 0.03, accuracy


def test_committed_model_files_stay_under_the_limit():
    listed = subprocess.run(["git", "ls-files", "-z", "pretrained", "quantization", "export_model"],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    files = [f for f in listed if f]
    assert any(f.endswith("resnet18_raw.pth") for f in files)
    total = sum(os.path.getsize(os.path.join(ROOT, f)) for f in files)
    assert total < MODEL_FILES_LIMIT, f"committed model files take {total:,} bytes"
