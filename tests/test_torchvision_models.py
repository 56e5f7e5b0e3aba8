"""Acceptance (issue 10): torchvision's own networks, random weights and random BN statistics,
num_classes=10, through all three integer engines with identical logits, in both weight modes.

Slow: marked `models`, run by `make test-models` only (tests/conftest.py leaves them out of
`make test`). One test case per network and weight mode; a network the quantizer refuses fails
with the quantizer's one-line message naming the first unsupported node.

Input 3x64x64 (the C engine reads the images from a .npy); FPGAI_MODELS_SIZE=32 runs 3x32x32,
which every one of these nets allows (written as a CIFAR-10 batch for a C engine without .npy).
On 2 cores: about 4 minutes at 64x64, 1.5 at 32x32.
"""
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from model.np_engine import NumpyIntegerModel
from model.quantize import build_integer_graph
from model.torch_engine import TorchIntegerModel
from tests.random_models import _randomize_bn, make_cfg

pytestmark = pytest.mark.models
tv = pytest.importorskip("torchvision")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_DIR = os.path.join(ROOT, "c")
SIZE = int(os.environ.get("FPGAI_MODELS_SIZE", "64"))
N_CALIB, N_TEST = 64, 50

BUILDERS = {
    "mobilenet_v3_small": lambda: tv.models.mobilenet_v3_small(num_classes=10),
    "efficientnet_b0": lambda: tv.models.efficientnet_b0(num_classes=10),
    "squeezenet1_1": lambda: tv.models.squeezenet1_1(num_classes=10),
    "densenet121": lambda: tv.models.densenet121(num_classes=10),
    "shufflenet_v2_x0_5": lambda: tv.models.shufflenet_v2_x0_5(num_classes=10),
    "regnet_x_400mf": lambda: tv.models.regnet_x_400mf(num_classes=10),
    "googlenet": lambda: tv.models.googlenet(num_classes=10, aux_logits=False, init_weights=False),
    "resnet18": lambda: tv.models.resnet18(num_classes=10),
    "mnasnet0_5": lambda: tv.models.mnasnet0_5(num_classes=10),
}


@pytest.fixture(scope="module")
def c_inference():
    if shutil.which("make") is None or shutil.which("gcc") is None:
        pytest.skip("make/gcc not available")
    proc = subprocess.run(["make", "-C", C_DIR, "all"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return os.path.join(C_DIR, "inference")


def _reads_npy(binary):
    proc = subprocess.run([binary, "--help"], capture_output=True, text=True)
    return "npy" in proc.stdout + proc.stderr


def _images_args(binary, folder, x):
    """Command-line arguments of the C engine that read the uint8 images x (N x C x H x W)."""
    if _reads_npy(binary):
        path = os.path.join(folder, "images.npy")
        np.save(path, x.astype(np.uint8))
        return ["--images", path]
    assert x.shape[1:] == (3, 32, 32), "this C engine reads no .npy images: run with FPGAI_MODELS_SIZE=32"
    path = os.path.join(folder, "test_batch.bin")
    records = np.concatenate([np.zeros((len(x), 1), np.uint8), x.astype(np.uint8).reshape(len(x), -1)], axis=1)
    with open(path, "wb") as f:
        f.write(records.tobytes())
    return ["--images", path]


def _read_logits(path):
    with open(path) as f:
        return np.array([[int(v) for v in line.split(",")] for line in f.read().splitlines()])


@pytest.mark.parametrize("mode", ["per_channel", "per_tensor"])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_torchvision_network_bit_exact_in_every_engine(name, mode, c_inference, tmp_path):
    from model.export_format import write_export

    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = _randomize_bn(BUILDERS[name](), gen).eval()
    images = torch.randint(0, 256, (N_CALIB + N_TEST, 3, SIZE, SIZE), generator=gen, dtype=torch.uint8)
    calib, test = images[:N_CALIB], images[N_CALIB:]
    cfg = make_cfg(model=f"tv_{name}"[:31], weight_mode=mode)
    state, quant_list = build_integer_graph(net, calib, cfg, "cifar10" if SIZE == 32 else "custom", {})

    x = test.numpy()
    logits = NumpyIntegerModel(state, quant_list)(x)
    assert logits.shape == (N_TEST, 10)
    np.testing.assert_array_equal(TorchIntegerModel(state, quant_list)(test).numpy(), logits,
                                  err_msg=f"{name} {mode}: torch engine != numpy engine")

    folder = str(tmp_path)
    write_export(state, quant_list, folder, "bin")
    out = os.path.join(folder, "logits.txt")
    for extra in ([], ["--reference"]):
        proc = subprocess.run([c_inference, "--dir", folder, "--model", quant_list[0]["model"],
                               *_images_args(c_inference, folder, x), "--format", "bin", "--logits", out, *extra],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        np.testing.assert_array_equal(_read_logits(out), logits,
                                      err_msg=f"{name} {mode}: C engine {extra or 'fast'} != numpy engine")
