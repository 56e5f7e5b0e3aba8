"""Every CIFAR-10 architecture of the registry through the one spine: quantize (both
weight modes), then torch integer = numpy = C on the same images. Random weights and
BN statistics: what is tested is the integer graph, not the training."""
import subprocess

import numpy as np
import pytest
import torch

import model as models
from model.formats.export_format import write_export
from model.engines.np_engine import NumpyIntegerModel
from model.engines.torch_engine import TorchIntegerModel
from tests.random_models import _randomize_bn, make_cfg
from tests.c_engine import read_logits, write_cifar
from model.quant.quantize import build_integer_graph

CIFAR_MODELS = [name for name, spec in models.MODELS.items() if spec.dataset == "cifar10"]


@pytest.mark.parametrize("name", CIFAR_MODELS)
@pytest.mark.parametrize("mode", ["per_channel", "per_tensor"])
def test_cifar_model_bit_exact_in_every_engine(binaries, tmp_path, name, mode):  # noqa: F811
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = _randomize_bn(models.build(name), gen).eval()
    images = torch.randint(0, 256, (10, 3, 32, 32), generator=gen, dtype=torch.uint8)
    state, quant_list = build_integer_graph(net, images[:8], make_cfg(model=name, weight_mode=mode), "cifar10", {})
    x = images[8:]
    expected = NumpyIntegerModel(state, quant_list)(x.numpy())
    np.testing.assert_array_equal(TorchIntegerModel(state, quant_list)(x).numpy(), expected)

    write_export(state, quant_list, tmp_path, "bin")
    data = write_cifar(str(tmp_path), x.numpy(), np.zeros(len(x), dtype=np.int64))
    logits = str(tmp_path / "logits.txt")
    proc = subprocess.run([binaries["fast"], "--model", name, "--dir", str(tmp_path), "--images", data,
                           "--logits", logits, "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(read_logits(logits), expected)


def test_registry_architectures():
    ops = {}
    for name in ("resnet18", "mobilenet_v2", "vgg11"):
        net = _randomize_bn(models.build(name), torch.Generator().manual_seed(0)).eval()
        images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
        _, quant_list = build_integer_graph(net, images, make_cfg(model=name), "cifar10", {})
        ops[name] = quant_list
    convs = lambda q: [op for op in q if op["op"] == "conv"]  # noqa: E731
    assert convs(ops["resnet18"])[0]["stride"] == [1, 1] and convs(ops["resnet18"])[0]["shape"] == [64, 32, 32]
    assert sum(op["op"] == "add" for op in ops["resnet18"]) == 8
    dw = [op for op in convs(ops["mobilenet_v2"]) if op["groups"] > 1]
    assert len(dw) == 17 and convs(ops["mobilenet_v2"])[0]["shape"][1:] == [32, 32]
    assert ops["mobilenet_v2"][-2]["op"] == "avgpool" and ops["mobilenet_v2"][-1]["shape"] == [10, 1, 1]
    assert [op["shape"][1] for op in ops["vgg11"] if op["op"] == "maxpool"] == [16, 8, 4, 2, 1]
    for op in dw:   # ReLU6 as a clamp: [z, z + 6/s], here the whole uint8 range since s <= 6/255
        assert op["qmin"] == op["zero_point"] == 0 and op["scale"] * (op["qmax"] - op["zero_point"]) <= 6 + 1e-6
