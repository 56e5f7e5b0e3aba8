"""Small random float models quantized and checked for the graph pass tests (not a test module): numpy =
torch on the integer graph, the dequantized logits near the float ones, and a refusal's one line."""
import numpy as np
import pytest
import torch

from model.engines.np_engine import NumpyIntegerModel
from model.engines.torch_engine import TorchIntegerModel
from model.quant.quantize import QuantizeError, build_integer_graph
from tests.random_models import _randomize_bn, make_cfg

SHAPE = (3, 8, 8)


def quantize(net, shape=SHAPE, mode="per_channel", seed=0, n_calib=48, n_test=16):
    """(ops [(kind, name)], state, quant_list, test images, numpy logits) of a random model; numpy = torch checked."""
    gen = torch.Generator().manual_seed(seed)
    net = _randomize_bn(net, gen).eval()
    images = torch.randint(0, 256, (n_calib + n_test, *shape), generator=gen, dtype=torch.uint8)
    state, ql = build_integer_graph(net, images[:n_calib], make_cfg(model="graph_pass", weight_mode=mode), "cifar10", {})
    test = images[n_calib:]
    a = NumpyIntegerModel(state, ql)(test.numpy())
    np.testing.assert_array_equal(a, TorchIntegerModel(state, ql)(test).numpy())
    return [op["op"] for op in ql], state, ql, test, a


def tracks_float(net, ql, test, logits, tol=0.25):
    """Dequantized integer logits follow the float ones (these tiny random nets have small logit spreads)."""
    with torch.no_grad():
        ref = net(test.float() / 255).flatten(1).numpy()
    out = ql[-1]
    deq = (logits - out["zero_point"]) * out["scale"]
    assert deq.shape == ref.shape
    spread = ref.max() - ref.min()
    assert np.abs(deq - ref).max() < tol * spread and np.abs(deq - ref).mean() < 0.05 * spread


def refusal(net, shape=SHAPE):
    with pytest.raises(QuantizeError) as err:
        quantize(net, shape)
    message = str(err.value)
    assert "\n" not in message
    return message
