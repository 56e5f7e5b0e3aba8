"""Golden LeNet: the committed export and tuple on the full MNIST test set, against literals.

Every other test compares engines with each other; a change that moves them all together (the
rounding rule, the requantizer, the exporter and reader in step) passes those. These numbers
were computed once from the committed files (quantization/lenet_quant.tuple and
export_model/lenet_*, per-channel weights, fingerprint ff2394e1873f2aad) and are written here
as literals, as llama2.c keeps its expected output: if the committed LeNet files are
regenerated on purpose, recompute them (run this file, read the failure) and say why in the commit.
"""
import hashlib
import os
import subprocess

import numpy as np
import pytest
import torch

import config
from data import datasets
from model.engines.np_engine import NumpyIntegerModel
from tests.c_engine import assert_clean, result_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES = 10_000
CORRECT = 9936                     # 99.36%, as in the README's Results table
LOGITS_SHA256 = "9dff6aa5c3f4a95cdd01b352ed81c4f32e3302f322dea553062bca374d8118e1"


def sha256(data):
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def mnist():
    """(images path, labels path) of the MNIST test set, from data/ or the offline mirror."""
    try:
        return datasets.test_files("mnist", *config.dataset_dirs(ROOT))
    except datasets.DatasetError as err:
        pytest.fail(str(err))


@pytest.mark.parametrize("fmt", ["bin", "txt"])
def test_c_engine_on_the_committed_export(binaries, mnist, tmp_path, fmt):  # noqa: F811
    out = tmp_path / "logits.txt"
    proc = subprocess.run([binaries["fast"], "--model", "lenet", "--dir", os.path.join(ROOT, "export_model"),
                           "--images", mnist[0], "--labels", mnist[1], "--format", fmt, "--logits", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert_clean(proc)
    assert proc.returncode == 0, proc.stderr
    assert result_line(proc.stdout) == (IMAGES, CORRECT)
    assert sha256(out.read_bytes()) == LOGITS_SHA256


def test_numpy_engine_on_the_committed_tuple(mnist):
    state, quant_list = torch.load(os.path.join(ROOT, "quantization", "lenet_quant.tuple"), weights_only=True)
    images = np.fromfile(mnist[0], dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)
    labels = np.fromfile(mnist[1], dtype=np.uint8, offset=8)
    assert len(images) == len(labels) == IMAGES
    model = NumpyIntegerModel(state, quant_list)
    logits = np.concatenate([model(images[i:i + 2000]) for i in range(0, IMAGES, 2000)])   # chunks: 2x faster
    assert int((logits.argmax(axis=1) == labels).sum()) == CORRECT
    # the C engine's --logits format: one line per image, values comma-separated
    text = "".join(",".join(map(str, row)) + "\n" for row in logits.tolist())
    assert sha256(text.encode()) == LOGITS_SHA256
