"""The torch integer model against the numpy specification, and both against the float model."""
import numpy as np
import pytest
import torch

from model.engines.np_engine import NumpyIntegerModel
from model.ops import KINDS
from model.quant.quantize import build_integer_graph
from model.engines.torch_engine import TorchIntegerModel
from tests.random_models import ARCHS, _randomize_bn, make_cfg, random_quantized


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("mode", ["per_channel", "per_tensor"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_torch_and_numpy_bit_exact_on_random_graphs(arch, mode, seed):
    state, quant_list, images = random_quantized(arch, mode, seed)
    a = NumpyIntegerModel(state, quant_list)(images.numpy())
    b = TorchIntegerModel(state, quant_list)(images).numpy()
    assert a.shape == (len(images), 10)
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0 and a.max() <= 255


@pytest.mark.parametrize("bits", [8, 24, 32])
def test_bit_exact_for_every_multiplier_width(bits):
    state, quant_list, images = random_quantized("residual", "per_channel", 5, multiplier_bits=bits)
    np.testing.assert_array_equal(NumpyIntegerModel(state, quant_list)(images.numpy()),
                                  TorchIntegerModel(state, quant_list)(images).numpy())


@pytest.mark.parametrize("arch", list(ARCHS))
def test_integer_model_tracks_the_float_model(arch):
    """Dequantized integer logits stay close to the float logits: the graph means the same thing.
    The float net is the very one quantized here (not rebuilt by replaying random draws)."""
    cls, dataset, shape = ARCHS[arch]
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    net = _randomize_bn(cls(), gen).eval()
    images = torch.randint(0, 256, (96, *shape), generator=gen, dtype=torch.uint8)
    calib, images = images[:64], images[64:]
    state, quant_list = build_integer_graph(net, calib, make_cfg(model="lenet" if dataset == "mnist" else "resnet18"),
                                            dataset, {})
    with torch.no_grad():
        ref = net(images.float() / 255).numpy()
    out = quant_list[-1]
    deq = (NumpyIntegerModel(state, quant_list)(images.numpy()) - out["zero_point"]) * out["scale"]
    spread = ref.max() - ref.min()
    assert np.abs(deq - ref).max() < 0.1 * spread
    assert (deq.argmax(1) == ref.argmax(1)).mean() >= 0.8


def test_every_op_kind_is_covered_by_the_random_graphs():
    kinds = set()
    for arch in ARCHS:
        kinds |= {op["op"] for op in random_quantized(arch)[1]}
    assert kinds == set(KINDS)
