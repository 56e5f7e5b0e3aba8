"""The trained CIFAR-10 checkpoints the repository ships, through all four columns on a few
hundred test images: quantized afresh from the committed fp16 weights, bit-exact in the three
integer engines, INT8 close to float; their golden vectors from numpy and from C identical for
every op on 10 images; their EXPORT_MODE=c export with the core library equal to the file-based
engine on 500 images; vgg13 at 3 bits with empirical bias correction; and the size rule for
committed model files."""
import json
import os
import subprocess

import numpy as np
import pytest
import torch

from model.formats import golden
from model.formats.export_format import write_export
from tests.c_core import build_host_check, run_host_check
from tests.scripts import ROOT, run

SHIPPED_CIFAR = ["resnet18", "mobilenet_v2", "vgg13"]
MODEL_FILES_LIMIT = 48_000_000   # bytes, every committed file under pretrained/, quantization/, export_model/
IMAGES = 300
CORE_IMAGES = 500           # through the EXPORT_MODE=c export and the core's reference kernels


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

    # golden vectors, numpy and C, 10 images; the C export with the core on 500
    proc = run("test_model.py", *common, "--limit=10", "--columns=np", f"--dump_layers={tmp_path / 'np_dump'}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    state, quant = torch.load(tmp_path / f"{name}_quant.tuple", weights_only=True)
    write_export(state, quant, str(tmp_path / "bin"), "bin")
    write_export(state, quant, str(tmp_path / "c"), "c")
    batch = open(os.path.join(ROOT, "data", "cifar-10-batches-bin", "test_batch.bin"), "rb").read()
    images = np.frombuffer(batch, dtype=np.uint8).reshape(-1, 3073)[:CORE_IMAGES, 1:]
    np.save(tmp_path / "x.npy", images.reshape(-1, 3, 32, 32))
    engine = os.path.join(ROOT, "c", "inference")
    proc = subprocess.run([engine, "--dir", str(tmp_path / "bin"), "--model", name, "--images", str(tmp_path / "x.npy"),
                           "--limit", "10", "--dump-layers", str(tmp_path / "c_dump")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    a, b = golden.read_dump(tmp_path / "np_dump"), golden.read_dump(tmp_path / "c_dump")
    assert golden.manifest_mismatch(a[0], b[0], names=False) is None and len(a[0]["ops"]) == len(quant)
    assert golden.first_difference(a[0], a[1], b[1]) is None
    logits = tmp_path / "file_engine.txt"
    proc = subprocess.run([engine, "--dir", str(tmp_path / "bin"), "--model", name, "--images", str(tmp_path / "x.npy"),
                           "--logits", str(logits), "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    binary = build_host_check(str(tmp_path / "c"), name, str(tmp_path / "check"))
    assert run_host_check(binary, images.tobytes()) == logits.read_text()


def test_empirical_bias_correction_keeps_a_deep_chain_of_clipped_3_bit_layers(tmp_path):
    """vgg13 at 3-bit weights clipped by mse, bias correction "empirical" (each layer's inputs from the
    model whose earlier layers are quantized): each layer fits the float output, so the shrinkage of
    the clipped layers does not compound down the ten convs (fitting W x on those inputs: 9% here)."""
    common = ["--model=vgg13", f"--quant_dir={tmp_path}", "--calib_images=128"]
    proc = run("quant_model.py", *common, "--weight_bits=3", "--weight_method=mse", "--bias_correction=empirical")
    assert proc.returncode == 0, proc.stderr
    report = tmp_path / "report.json"
    proc = run("test_model.py", *common, "--columns=raw,c", f"--limit={IMAGES}", f"--json={report}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    accuracy = json.loads(report.read_text())["accuracy"]
    assert accuracy["c_int8"] >= accuracy["raw"] - 0.03, accuracy


def test_committed_model_files_stay_under_the_limit():
    listed = subprocess.run(["git", "ls-files", "-z", "pretrained", "quantization", "export_model"],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    files = [f for f in listed if f]
    assert any(f.endswith("resnet18_raw.pth") for f in files)
    total = sum(os.path.getsize(os.path.join(ROOT, f)) for f in files)
    assert total < MODEL_FILES_LIMIT, f"committed model files take {total:,} bytes"


# every build of the optimized kernels and every way of running them (test-models: ~10 minutes)
FULL_SET_RUNS = [("inference", ["--isa", "avx512", "--batch", "1"]), ("inference", ["--isa", "avx2", "--batch", "32"]),
                 ("inference", ["--isa", "c99", "--batch", "4"]), ("inference", ["--isa", "avxvnni", "--batch", "1"]),
                 ("inference", ["--isa", "avxvnni-evex", "--batch", "32"]), ("inference", ["--isa", "amx", "--batch", "32"]),
                 ("inference_omp", ["--isa", "avx512", "--threads", "2", "--batch", "1"]),
                 ("inference_omp", ["--isa", "avx512", "--threads", "2", "--batch", "32"])]


@pytest.mark.models
@pytest.mark.parametrize("name", ["lenet", *SHIPPED_CIFAR])
def test_full_test_set_identical_in_every_isa_batch_and_threads(tmp_path, name):
    """Each shipped model quantized afresh, on its whole test set (10,000 images): every ISA build the
    CPU runs, batches of 1, 4 and 32, and 2 threads splitting one image's layers or a batch, give the
    same logits (the first run: AVX-512 VNNI at batch 1; equal to numpy and ONNX Runtime on these
    sets when last measured, docs/deploy.md "ONNX")."""
    from tests.c_builds import missing_flags
    proc = run("quant_model.py", f"--model={name}", f"--quant_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    proc = run("export_quant_model.py", f"--model={name}", f"--quant_dir={tmp_path}", f"--export_dir={tmp_path}",
               "--export_mode=bin")
    assert proc.returncode == 0, proc.stderr
    subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "c"), "inference", "omp"], check=True)
    runs = [(binary, extra) for binary, extra in FULL_SET_RUNS if not missing_flags(extra[1])]
    assert runs and runs[0] == FULL_SET_RUNS[0], "the CPU lacks AVX-512 VNNI: no first run to compare with"
    first = None
    for binary, extra in runs:
        out = tmp_path / "logits.txt"
        proc = subprocess.run([os.path.join(ROOT, "c", binary), "--dir", str(tmp_path), "--model", name,
                               "--logits", str(out), "--quiet", *extra], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        assert "images=10000" in proc.stdout
        first = first or (out.read_text(), proc.stdout.split("seconds")[0])
        assert (out.read_text(), proc.stdout.split("seconds")[0]) == first, f"{binary} {extra}"
