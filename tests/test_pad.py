"""The pad kind (model/ops/pad.py, c/ops/pad.c): a user's model with reflect, replicate and non-zero
constant padding, bit-exact in every engine and format on every MNIST test image, and its refusals."""
import os
import subprocess

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import config
from data import datasets
from model.engines.np_engine import NumpyIntegerModel
from model.engines.torch_engine import TorchIntegerModel
from model.formats import golden
from model.formats.export_format import write_export
from model.formats.onnx_export import onnx_model
from model.formats.tuple_check import tuple_problem
from model.graph import Op
from model.ops import KINDS
from model.quant.quantize import QuantizeError, build_integer_graph
from tests.c_core import build_host_check, run_host_check
from tests.c_engine import assert_clean, read_logits
from tests.checks import ROOT
from tests.random_models import make_cfg


class PaddedNet(nn.Module):
    """Every way a user pads: the three modules, F.pad with a non-zero constant and with a mode."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3)
        self.reflect = nn.ReflectionPad2d((1, 2, 0, 3))           # left, right, top, bottom
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2)
        self.replicate = nn.ReplicationPad2d(2)
        self.pool = nn.MaxPool2d(2)
        self.constant = nn.ConstantPad2d((1, 0, 2, 1), -0.75)     # on a signed tensor: a negative value
        self.conv3 = nn.Conv2d(8, 8, 3)
        self.fc = nn.Linear(8 * 14 * 14, 10)

    def forward(self, x):
        x = self.conv2(self.reflect(F.relu(self.conv1(x))))       # 26x26 -> 29x29 -> 14x14
        x = self.constant(self.pool(self.replicate(x)))            # 18x18 -> 9x9 -> 12x10
        x = F.pad(F.relu(self.conv3(x)), (2, 2, 1, 1), value=0.5)  # 10x8 -> 12x12
        return self.fc(F.pad(x, (1, 1, 1, 1), mode="reflect").flatten(1))


@pytest.fixture(scope="module")
def mnist():
    data_dir, mirror_dir = config.dataset_dirs(ROOT)
    train = datasets.load("mnist", "train", data_dir, mirror_dir)[0][:256]
    test_x, test_y = datasets.load("mnist", "test", data_dir, mirror_dir)
    return train, test_x.numpy(), test_y.numpy()


@pytest.fixture(scope="module")
def padded(mnist):
    torch.manual_seed(0)
    state, quant = build_integer_graph(PaddedNet().eval(), mnist[0], make_cfg(model="padded"), "mnist", {})
    return state, quant


def test_the_kernels_are_torchs_padding():
    """The numpy specification and the torch kernel against torch's own F.pad of the values."""
    x = torch.randint(0, 256, (2, 3, 5, 4), dtype=torch.int64)
    for mode, value, pads in [(0, 7, [1, 0, 2, 3]), (1, 0, [4, 3, 0, 1]), (2, 0, [5, 1, 6, 0])]:
        top, left, bottom, right = pads
        op = Op(name="p", kind="pad", inputs=[0], shape=[3, 5 + top + bottom, 4 + left + right], scale=1.0,
                zero_point=0, qmin=0, qmax=255, in_zero_points=[0],
                attrs={"padding": pads, "pad_mode": mode, "pad_value": value})
        kwargs = {"value": float(value)} if mode == 0 else {"mode": ("reflect", "replicate")[mode - 1]}
        want = F.pad(x.double(), (left, right, top, bottom), **kwargs).long().numpy()
        np.testing.assert_array_equal(KINDS["pad"].numpy([x.numpy()], op, {}), want)
        np.testing.assert_array_equal(KINDS["pad"].torch([x], op, {}).numpy(), want)


def test_each_padding_becomes_a_pad_op(padded):
    state, quant = padded
    pads = [op for op in quant if op["op"] == "pad"]
    assert [(op["pad_mode"], op["padding"]) for op in pads] == [
        (1, [0, 1, 3, 2]), (2, [2, 2, 2, 2]), (0, [2, 1, 1, 0]), (0, [1, 2, 1, 2]), (1, [1, 1, 1, 1])]
    for op in pads:
        x = quant[op["inputs"][0]]
        assert (op["scale"], op["zero_point"]) == (x["scale"], x["zero_point"])
        assert op["qmin"] <= x["qmin"] and op["qmax"] >= x["qmax"]
    constant, half = pads[2], pads[3]
    for op, value in ((constant, -0.75), (half, 0.5)):
        x = quant[op["inputs"][0]]
        assert op["pad_value"] == int(np.floor(value / x["scale"] + 0.5)) + x["zero_point"]
    assert constant["pad_value"] < quant[constant["inputs"][0]]["zero_point"]     # really below zero


def test_torch_numpy_onnx_and_c_agree_on_every_test_image(padded, mnist, builds, tmp_path):
    state, quant = padded
    _, images, labels = mnist
    want = NumpyIntegerModel(state, quant)(images)
    got = np.concatenate([TorchIntegerModel(state, quant)(torch.from_numpy(images[i:i + 1000])).numpy()
                          for i in range(0, len(images), 1000)])
    np.testing.assert_array_equal(got, want)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx_model(state, quant).SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"image": images.astype(np.uint8)})[0], want)

    write_export(state, quant, str(tmp_path), "both")
    x_path, y_path = str(tmp_path / "x.npy"), str(tmp_path / "y.npy")
    np.save(x_path, images)
    np.save(y_path, labels.astype(np.int64))
    for kind, extra in [("native", []), ("native", ["--reference"]), ("native", ["--isa", "c99"]),
                        ("asan", []), ("asan", ["--reference"]), ("native", ["--format", "txt"])]:
        out = str(tmp_path / "logits.txt")
        proc = subprocess.run([builds[kind], "--dir", str(tmp_path), "--model", "padded", "--images", x_path,
                               "--labels", y_path, "--logits", out, *extra],
                              capture_output=True, text=True, timeout=600)
        assert_clean(proc)
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_array_equal(read_logits(out), want, err_msg=f"{kind} {extra}")


def test_the_firmware_core_equals_numpy(padded, mnist, tmp_path):
    """EXPORT_MODE=c with the core library (what firmware links; c/mcu/host_check.c) on 1,000 images."""
    state, quant = padded
    images = mnist[1][:1000]
    write_export(state, quant, str(tmp_path), "c")
    binary = build_host_check(str(tmp_path), "padded", str(tmp_path / "check"))
    got = np.array([[int(v) for v in line.split(",")] for line in
                    run_host_check(binary, images.tobytes()).splitlines()])
    np.testing.assert_array_equal(got, NumpyIntegerModel(state, quant)(images))


def test_the_golden_vectors_of_c_equal_numpys(padded, mnist, builds, tmp_path):
    state, quant = padded
    images = mnist[1][:16]
    write_export(state, quant, str(tmp_path / "ex"), "bin")
    np.save(tmp_path / "x.npy", images)
    proc = subprocess.run([builds["asan"], "--dir", str(tmp_path / "ex"), "--model", "padded", "--images",
                           str(tmp_path / "x.npy"), "--dump-layers", str(tmp_path / "c")],
                          capture_output=True, text=True, timeout=300)
    assert_clean(proc)
    assert proc.returncode == 0, proc.stderr
    manifest, values = golden.read_dump(str(tmp_path / "c"))
    for op, want in zip(manifest["ops"], golden.layer_outputs(state, quant, images)):
        np.testing.assert_array_equal(values[op["index"]], want, err_msg=op["name"])


@pytest.mark.parametrize("pad,message", [
    (lambda x: F.pad(x, (1, 1, 1, 1), mode="circular"), "mode 'circular'; supported: constant, reflect, replicate"),
    (lambda x: F.pad(x, (1, -1, 0, 0)), "none negative"),
    (lambda x: F.pad(x, (0, 0, 0, 0, 1, 1)), "of H and W"),
])
def test_refused_padding_names_the_node(pad, message):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.pad = nn.Conv2d(1, 2, 3, padding=1), pad

        def forward(self, x):
            return self.pad(self.conv(x)).flatten(1)

    images = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    with pytest.raises(QuantizeError, match=r"unsupported .* at node '\w+'.*" + message.replace("[", r"\[")):
        build_integer_graph(Net().eval(), images, make_cfg(model="bad"), "mnist", {})


def test_a_broken_pad_record_is_refused_by_the_tuple_check(padded):
    state, quant = padded
    i = next(i for i, op in enumerate(quant) if op["op"] == "pad" and op["pad_mode"] == 1)
    c, h, w = quant[quant[i]["inputs"][0]]["shape"]
    for fields, message in [({"pad_mode": 3}, "pad_mode = 3 outside [0, 2]"),
                            ({"padding": [h, 1, 0, 2], "shape": [c, 2 * h, w + 3]}, f"reflect padding [{h}, 1, 0, 2]"),
                            ({"padding": [0, 1, 4, 2]}, "padded by [0, 1, 4, 2]"),
                            ({"zero_point": quant[i]["zero_point"] + 1}, "a pad keeps its input's zero point")]:
        broken = [dict(op) for op in quant]
        broken[i].update(fields)
        assert message in (tuple_problem(state, broken) or ""), fields
