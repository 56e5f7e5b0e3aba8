"""Quantizer: BN folding, weight modes, calibration, overflow refusal, clear errors."""

import numpy as np
import pytest
import torch
import torch.fx as fx
from torch import nn
from torch.fx.experimental.optimization import fuse

from model.np_engine import NumpyIntegerModel
from model.quantize import (QuantizeError, accumulator_bound, build_integer_graph, quantize_weight,
                            weight_sqnr_db)
from model.torch_engine import TorchIntegerModel
from tests.random_models import ARCHS, _randomize_bn, make_cfg, random_quantized


@pytest.mark.parametrize("arch", list(ARCHS))
def test_bn_folding_preserves_outputs(arch):
    cls, _, shape = ARCHS[arch]
    net = _randomize_bn(cls(), torch.Generator().manual_seed(1)).eval()
    folded = fuse(fx.symbolic_trace(net))
    # every BN directly after a conv is folded; BranchNet's BN after a ReLU stays (a 1x1 depthwise conv later)
    left = [name for name, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert left == (["bn"] if arch == "branch" else [])
    x = torch.rand(8, *shape)
    torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-5)


def test_per_channel_weights_symmetric_int8():
    w = torch.randn(5, 3, 3, 3) * torch.tensor([0.01, 0.1, 1.0, 10.0, 0.0]).view(5, 1, 1, 1)
    q, scale, zp = quantize_weight(w, "per_channel")
    assert q.dtype == np.int8 and zp == 0 and q.min() >= -127
    assert np.abs(q[:4].reshape(4, -1)).max(axis=1).tolist() == [127] * 4   # full range per channel
    err = np.abs(q * scale.reshape(-1, 1, 1, 1) - w.double().numpy())
    assert (err <= scale.reshape(-1, 1, 1, 1) / 2 + 1e-12).all()


def test_per_tensor_weights_uint8_with_zero_point():
    w = torch.randn(4, 10) + 0.3
    q, scale, zp = quantize_weight(w, "per_tensor")
    assert q.dtype == np.uint8 and 0 < zp < 255 and len(set(scale)) == 1
    err = np.abs((q.astype(np.int64) - zp) * scale[0] - w.double().numpy())
    assert err.max() <= scale[0] / 2 + 1e-12


def test_calibration_minmax_ranges_cover_the_observed_values():
    state, quant_list, _ = random_quantized("conv_pool", seed=3)
    for op in quant_list[1:]:
        lo = op["scale"] * (0 - op["zero_point"])
        hi = op["scale"] * (255 - op["zero_point"])
        assert lo <= 0 <= hi
    first = quant_list[1]       # conv + ReLU: calibrated range starts at 0 -> zero point 0
    assert first["zero_point"] == 0 and first["qmin"] == 0


def test_calibration_percentile_range_is_narrower():
    cls, _, shape = ARCHS["conv_pool"]
    net = _randomize_bn(cls(), torch.Generator().manual_seed(0)).eval()
    images = torch.randint(0, 256, (64, *shape), dtype=torch.uint8)
    _, full = build_integer_graph(net, images, make_cfg(model="lenet"), "mnist", {})
    _, clipped = build_integer_graph(net, images, make_cfg(model="lenet", calib_method="percentile",
                                                           calib_percentile=99.0), "mnist", {})
    assert all(c["scale"] <= f["scale"] * (1 + 1e-9) for f, c in zip(full[1:], clipped[1:]) if f["op"] != "maxpool")
    assert any(c["scale"] < f["scale"] for f, c in zip(full[1:], clipped[1:]))


def test_relu6_clamp_bound():
    _, quant_list, _ = random_quantized("residual", seed=0)
    dw = [op for op in quant_list if op["op"] == "conv" and op.get("groups", 1) > 1][0]
    assert dw["qmax"] == min(255, dw["zero_point"] + round(6.0 / dw["scale"]))


def test_accumulator_bound_is_exact_worst_case():
    qw = np.array([[127, -127, 3], [1, 1, 1]], dtype=np.int8)
    bias = np.array([-10, 5])
    bound = accumulator_bound(qw, 0, bias, {"zero_point": 0, "qmin": 0, "qmax": 255})
    assert bound == 257 * 255 + 10


def test_overflowing_layer_is_refused_with_its_name():
    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(70000, 2)

        def forward(self, x):
            return self.fc(torch.flatten(x, 1))

    net = Wide()
    with torch.no_grad():
        net.fc.weight.fill_(0.01)
    images = torch.randint(0, 256, (4, 1, 70000, 1), dtype=torch.uint8)
    with pytest.raises(QuantizeError, match="layer 'fc'.*exceeds int32"):
        build_integer_graph(net, images, make_cfg(model="lenet"), "mnist", {})


def test_dead_channel_keeps_its_bias():
    """A channel whose weights BN folding shrank to ~0 (its gamma decayed away, as in a trained
    MobileNetV2) still quantizes per channel: the scale floor keeps its bias inside int32."""
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU())
    with torch.no_grad():
        net[0].weight[1].mul_(1e-9)
        net[0].bias[1] = 0.5
    images = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    state, quant_list = build_integer_graph(net, images, make_cfg(model="lenet"), "mnist", {})
    out = NumpyIntegerModel(state, quant_list)(images.numpy())
    assert np.array_equal(out, TorchIntegerModel(state, quant_list)(images).numpy())
    last = quant_list[-1]
    dead = (out.reshape(8, 3, 8, 8)[:, 1] - last["zero_point"]) * last["scale"]
    assert np.abs(dead - 0.5).max() <= last["scale"]


def test_weight_sqnr_measures_what_the_weight_mode_loses():
    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3) * torch.tensor([1.0, 0.5, 0.25, 0.125]).view(4, 1, 1, 1)
    sqnr = {mode: weight_sqnr_db(w, *quantize_weight(w, mode)) for mode in ("per_channel", "per_tensor")}
    assert sqnr["per_channel"] > sqnr["per_tensor"] + 3 > 40     # one scale for channels 8x apart costs bits
    grid = torch.arange(-127, 128, dtype=torch.float64).view(1, -1) * 0.01   # already on the int8 grid
    assert weight_sqnr_db(grid, *quantize_weight(grid, "per_channel")) == float("inf")


def test_unsupported_op_is_a_clear_error():
    class Sigmoid(nn.Module):
        def forward(self, x):
            return torch.sigmoid(x)

    with pytest.raises(QuantizeError, match="unsupported function sigmoid"):
        build_integer_graph(Sigmoid(), torch.zeros(2, 1, 4, 4, dtype=torch.uint8), make_cfg(model="lenet"), "mnist", {})
