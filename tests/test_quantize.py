"""Quantizer: BN folding, weight modes, calibration, overflow refusal, clear errors."""

import numpy as np
import pytest
import torch
import torch.fx as fx
from torch import nn
from torch.fx.experimental.optimization import fuse

from model.engines.np_engine import NumpyIntegerModel
from model.quant.quantize import (QuantizeError, _clamp_for, accumulator_bound, build_integer_graph, quantize_weight,
                            weight_sqnr_db)
from model.engines.torch_engine import TorchIntegerModel
from model import qmath
from model.quant.quantize import HISTOGRAM_BINS, mse_range
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


def test_calibration_minmax_is_the_observed_min_and_max():
    """Each op's (scale, zero point) is choose_qparams of the min and max its float output takes
    over all the calibration images, computed here by running the float layers directly: over
    3 batches of 250, with the extremes not all in the last batch."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5), nn.ReLU(), nn.Linear(5, 3))
    images = torch.randint(0, 256, (600, 1, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    _, quant_list = build_integer_graph(net, images, make_cfg(model="lenet"), "mnist", {})
    with torch.no_grad():
        conv = net[0](images.float() / 255)
        hidden = torch.relu(net[2](conv.flatten(1)))
        logits = net[4](hidden)
    observed = {"0": conv, "2": hidden, "4": logits}
    assert [op["name"] for op in quant_list] == ["input", "0", "2", "4"]
    assert (quant_list[0]["scale"], quant_list[0]["zero_point"]) == (1 / 255, 0)
    for op in quant_list[1:]:
        out = observed[op["name"]]
        lo, hi = min(out.min().item(), 0.0), max(out.max().item(), 0.0)
        assert op["scale"] == pytest.approx((hi - lo) / 255, rel=1e-6)
        assert op["zero_point"] == int(np.floor(-lo / ((hi - lo) / 255) + 0.5))
        per_batch = out.flatten(1).min(1).values, out.flatten(1).max(1).values
        assert per_batch[0].argmin() < 500 or per_batch[1].argmax() < 500     # not only the last batch
    assert quant_list[2]["zero_point"] == 0 and quant_list[2]["qmin"] == 0   # ReLU: the range starts at 0
    assert quant_list[1]["zero_point"] > 0 and quant_list[3]["zero_point"] > 0


def test_calibration_percentile_range_is_narrower():
    cls, _, shape = ARCHS["conv_pool"]
    net = _randomize_bn(cls(), torch.Generator().manual_seed(0)).eval()
    images = torch.randint(0, 256, (64, *shape), dtype=torch.uint8)
    _, full = build_integer_graph(net, images, make_cfg(model="lenet"), "mnist", {})
    _, clipped = build_integer_graph(net, images, make_cfg(model="lenet", calib_method="percentile",
                                                           calib_percentile=99.0), "mnist", {})
    assert all(c["scale"] <= f["scale"] * (1 + 1e-9) for f, c in zip(full[1:], clipped[1:]) if f["op"] != "maxpool")
    assert any(c["scale"] < f["scale"] for f, c in zip(full[1:], clipped[1:]))


def grid_error(x, lo, hi, top):
    """Summed squared error of values x on the grid 0..top that choose_qparams makes of [lo, hi]."""
    scale, zero_point = qmath.choose_qparams(lo, hi, 0, top)
    q = np.clip(qmath.round_half_up(x / scale) + zero_point, 0, top)
    return float(((x - scale * (q - zero_point)) ** 2).sum())


@pytest.mark.parametrize("signed", [False, True])
def test_mse_range_clips_a_long_tail_at_low_widths(signed):
    """On long-tailed values (a ReLU's, or a signed tensor's), mse's range clips more at 4 bits than at
    8, and on the values themselves (not the bins) errs less than min..max; on uniform ones it keeps
    nearly all of the range."""
    gen = np.random.default_rng(0)
    x = gen.laplace(0, 1, 200_000) if signed else np.maximum(gen.laplace(0, 1, 200_000), 0)
    lo, hi = x.min(), x.max()
    counts = torch.histc(torch.from_numpy(x).float(), HISTOGRAM_BINS, lo, hi).double()
    (lo4, hi4), (lo8, hi8) = mse_range(counts, lo, hi, 15), mse_range(counts, lo, hi, 255)
    assert hi4 < 0.7 * hi and hi4 < hi8 <= hi
    assert lo4 == lo8 == 0 if not signed else lo <= lo8 < 0.7 * lo < lo4 < 0
    assert grid_error(x, lo4, hi4, 15) < 0.5 * grid_error(x, lo, hi, 15)
    assert grid_error(x, lo8, hi8, 255) <= grid_error(x, lo, hi, 255)
    uniform = gen.uniform(0, 1, 200_000)
    _, hi_u = mse_range(torch.histc(torch.from_numpy(uniform).float(), HISTOGRAM_BINS, 0, 1).double(), 0, 1, 15)
    assert hi_u > 0.95


def test_calibration_mse_at_4_bits_and_auto():
    """calib_method=mse: every 4-bit activation's scale at most min..max's, some smaller, and the engines
    agree on the graph it makes; auto (the default) is mse at 4 bits and minmax at 8, where it leaves
    the fingerprint as minmax made it (the tuples made before stay current)."""
    cls, _, shape = ARCHS["conv_pool"]
    net = _randomize_bn(cls(), torch.Generator().manual_seed(0)).eval()
    images = torch.randint(0, 256, (64, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))

    def build(act_bits, method):
        return build_integer_graph(net, images, make_cfg(model="lenet", act_bits=act_bits, calib_method=method),
                                   "mnist", {})
    _, full = build(4, "minmax")
    state, chosen = build(4, "mse")
    pairs = [(f, c) for f, c in zip(full[1:], chosen[1:]) if f["op"] != "maxpool"]
    assert all(c["scale"] <= f["scale"] * (1 + 1e-9) for f, c in pairs)
    assert any(c["scale"] < 0.9 * f["scale"] for f, c in pairs)
    x = images[:16].numpy()
    assert np.array_equal(NumpyIntegerModel(state, chosen)(x), TorchIntegerModel(state, chosen)(images[:16]).numpy())
    _, auto4 = build(4, "auto")
    assert [op["scale"] for op in auto4] == [op["scale"] for op in chosen]
    (_, minmax8), (_, auto8) = build(8, "minmax"), build(8, "auto")
    assert [op["scale"] for op in auto8] == [op["scale"] for op in minmax8]
    assert auto8[0]["fingerprint"] == minmax8[0]["fingerprint"] != build(8, "mse")[1][0]["fingerprint"]
    assert auto4[0]["fingerprint"] != chosen[0]["fingerprint"]


@pytest.mark.parametrize("act, scale, zero_point, bounds", [
    (None, 0.1, 37, (0, 255)),          # no activation: the full range, the zero point inside it
    ("relu", 0.1, 37, (37, 255)),
    ("relu6", 6 / 255, 0, (0, 255)),    # the calibrated ReLU6 output: exactly 0..6
    ("relu6", 0.0625, 10, (10, 106)),   # 6 / 0.0625 = 96
    ("relu6", 0.05, 200, (200, 255)),   # 200 + 120 capped at 255
    ("relu6", 12.0, 5, (5, 6)),         # 6 / 12 = 0.5 rounds half up: 5 + 1
])
def test_fused_activation_clamp_bounds(act, scale, zero_point, bounds):
    assert _clamp_for(act, scale, zero_point, 255) == bounds


@pytest.mark.parametrize("act, scale, zero_point, bounds", [
    (None, 0.1, 3, (0, 15)),            # a 4-bit activation: the range 0..15
    ("relu", 0.1, 3, (3, 15)),
    ("relu6", 0.5, 2, (2, 14)),         # 2 + 12
    ("relu6", 0.25, 2, (2, 15)),        # 2 + 24 capped at 15
])
def test_fused_activation_clamp_bounds_4_bit(act, scale, zero_point, bounds):
    assert _clamp_for(act, scale, zero_point, 15) == bounds


def test_relu6_end_to_end_on_known_pixels():
    """conv 1x1 (weight 8, bias 0) + ReLU6 on pixels x: the float output is min(8x/255, 6), the
    calibrated range 0..6 (scale 6/255, zero point 0), so the integer output is
    clamp(round(8x/6), 0, 255): ReLU6 binds from x = 191.25 on."""
    net = nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU6())
    with torch.no_grad():
        net[0].weight.fill_(8.0)
        net[0].bias.zero_()
    pixels = torch.tensor([0, 100, 128, 190, 191, 192, 255], dtype=torch.uint8).view(1, 1, 1, -1)
    state, quant_list = build_integer_graph(net, pixels, make_cfg(model="lenet"), "mnist", {})
    op = quant_list[1]
    assert (op["zero_point"], op["qmin"], op["qmax"]) == (0, 0, 255) and op["scale"] == pytest.approx(6 / 255)
    out = NumpyIntegerModel(state, quant_list)(pixels.numpy())
    assert out.tolist() == [[0, 133, 171, 253, 255, 255, 255]]
    # a ReLU6 whose calibration saw only zeros: scale 1, zero point 0, so qmax = round(6 / 1) = 6
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.fill_(-1.0)
    _, quant_list = build_integer_graph(net, pixels, make_cfg(model="lenet"), "mnist", {})
    assert [quant_list[1][k] for k in ("scale", "zero_point", "qmin", "qmax")] == [1.0, 0, 0, 6]


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
    class Cumsum(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, 1)

    with pytest.raises(QuantizeError, match="unsupported function cumsum"):
        build_integer_graph(Cumsum(), torch.zeros(2, 1, 4, 4, dtype=torch.uint8), make_cfg(model="lenet"), "mnist", {})
