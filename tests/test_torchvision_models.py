"""Acceptance (issue 10): torchvision's own networks, random weights and random BN statistics,
num_classes=10, through all three integer engines with identical logits, in both weight modes.

Slow: marked `models`, run by `make test-models` only (tests/conftest.py leaves them out of
`make test`). One test case per network and weight mode; a network the quantizer refuses fails
with the quantizer's one-line message naming the first unsupported node.

Input 3x64x64 (the C engine reads the images from a .npy); FPGAI_MODELS_SIZE=32 runs 3x32x32,
which every one of these nets allows.
On 2 cores: about 4 minutes at 64x64, 1.5 at 32x32.
"""
import os
import subprocess

import numpy as np
import pytest
import torch

from model.engines.np_engine import NumpyIntegerModel
from model.quant.quantize import build_integer_graph
from model.engines.torch_engine import TorchIntegerModel
from tests.random_models import _randomize_bn, make_cfg
from tests.c_engine import read_logits

pytestmark = pytest.mark.models
tv = pytest.importorskip("torchvision")

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


@pytest.mark.parametrize("mode", ["per_channel", "per_tensor"])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_torchvision_network_bit_exact_in_every_engine(name, mode, binaries, tmp_path):  # noqa: F811
    from model.formats.export_format import write_export

    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = _randomize_bn(BUILDERS[name](), gen).eval()
    images = torch.randint(0, 256, (N_CALIB + N_TEST, 3, SIZE, SIZE), generator=gen, dtype=torch.uint8)
    calib, test = images[:N_CALIB], images[N_CALIB:]
    cfg = make_cfg(model=f"tv_{name}"[:31], weight_mode=mode)
    state, quant_list = build_integer_graph(net, calib, cfg, "custom", {})

    x = test.numpy()
    logits = NumpyIntegerModel(state, quant_list)(x)
    assert logits.shape == (N_TEST, 10)
    np.testing.assert_array_equal(TorchIntegerModel(state, quant_list)(test).numpy(), logits,
                                  err_msg=f"{name} {mode}: torch engine != numpy engine")

    folder = str(tmp_path)
    write_export(state, quant_list, folder, "bin")
    images_path, out = os.path.join(folder, "images.npy"), os.path.join(folder, "logits.txt")
    np.save(images_path, x.astype(np.uint8))
    for extra in ([], ["--reference"]):
        proc = subprocess.run([binaries["fast"], "--dir", folder, "--model", quant_list[0]["model"],
                               "--images", images_path, "--format", "bin", "--logits", out, *extra],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        np.testing.assert_array_equal(read_logits(out), logits,
                                      err_msg=f"{name} {mode}: C engine {extra or 'fast'} != numpy engine")
