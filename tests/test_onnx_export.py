"""EXPORT_MODE=onnx (model/formats/onnx_export.py): the integer graph run by ONNX Runtime gives the numpy
engine's logits bit for bit, on every random and narrow test graph (every op kind) and on LeNet's
whole MNIST test set, exported by export_quant_model.py; onnx.checker accepts every model."""
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import config
from data import datasets
from model.engines.np_engine import NumpyIntegerModel
from model.formats.onnx_export import onnx_model
from model.ops import KINDS
from tests import narrow_graphs
from tests.random_models import ARCHS, random_quantized
from tests.scripts import ROOT, run


def session(model_bytes):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def assert_same_logits(state, quant_list, images):
    model = onnx_model(state, quant_list)
    onnx.checker.check_model(model, full_check=True)
    x = np.asarray(images, dtype=np.uint8)
    logits, real = session(model.SerializeToString()).run(None, {"image": x})
    want = NumpyIntegerModel(state, quant_list)(x)
    assert logits.dtype == np.uint8 and logits.shape == want.shape
    assert np.array_equal(logits, want), f"{np.sum(np.any(logits != want, axis=1))} of {len(x)} images differ"
    last = quant_list[-1]
    np.testing.assert_allclose(real, last["scale"] * (want - last["zero_point"]), rtol=1e-6)


@pytest.mark.parametrize("mode", ["per_channel", "per_tensor"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_random_graphs_match_numpy(arch, mode):
    assert_same_logits(*random_quantized(arch, mode, n_test=48))


@pytest.mark.parametrize("mode", ["per_channel", "per_tensor"])
@pytest.mark.parametrize("widths", [{"weight_bits": 4, "act_bits": 4}, {"weight_bits": 2}, {"weight_bits": 3, "act_bits": 5}],
                         ids=["w4a4", "w2a8", "w3a5"])
def test_low_bit_graphs_match_numpy(widths, mode):
    assert_same_logits(*random_quantized("residual", mode, n_test=48, **widths))


@pytest.mark.parametrize("case", list(narrow_graphs.CASES))
def test_narrow_graphs_match_numpy(case):
    """Zero points far from 0, clamps narrower than 0..255 binding at both ends, padding holding z_x."""
    assert_same_logits(*narrow_graphs.build(case))


def test_the_graphs_cover_every_kind():
    kinds = {op["op"] for arch in ARCHS for op in random_quantized(arch, n_test=0)[1]}
    assert kinds == set(KINDS)


def test_lenet_export_matches_numpy_on_the_mnist_test_set(tmp_path):
    proc = run("export_quant_model.py", "--model=lenet", "--export_mode=onnx", f"--export_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(tmp_path) == ["lenet_model.onnx"]            # this mode writes its file only
    path = str(tmp_path / "lenet_model.onnx")
    onnx.checker.check_model(path, full_check=True)
    state, quant_list = torch.load(os.path.join(ROOT, "quantization", "lenet_quant.tuple"), weights_only=True)
    images = datasets.load("mnist", "test", *config.dataset_dirs(ROOT))[0].numpy()
    assert len(images) == 10000
    sess = session(open(path, "rb").read())
    got = np.concatenate([sess.run(["logits"], {"image": images[i:i + 1000]})[0] for i in range(0, 10000, 1000)])
    assert np.array_equal(got, NumpyIntegerModel(state, quant_list)(images))
    assert np.array_equal(sess.run(["logits"], {"image": images[:1]})[0], got[:1])     # the batch is free
