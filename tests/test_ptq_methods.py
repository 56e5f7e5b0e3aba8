"""Post-training weight methods (model/quant/methods.py) on synthetic layers: ranges, output error
against round-to-nearest, bias correction, grouped convs, the scale floor, the layer input statistics."""
import numpy as np
import pytest
import torch
import torch.fx as fx
from torch import nn
from torch.nn import functional as F

from model import api
from model.ops.conv import ZeroPaddedConv
from model.quant import methods
from model.quant.methods import LayerInputs, input_statistics, quantize_layer, weight_range
from tests.random_models import ARCHS, _randomize_bn


def inputs_of(columns, groups=1):
    """LayerInputs of the exact columns [G, K, N]."""
    columns = np.asarray(columns, dtype=np.float64).reshape(groups, -1, np.shape(columns)[-1])
    return LayerInputs(columns @ columns.transpose(0, 2, 1) / columns.shape[-1], columns.mean(axis=2))


def correlated_layer(cout=32, k=64, n=4096, seed=0):
    """(weight [cout, k], columns [k, n]): inputs mixed from a few strong factors, with an offset."""
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(8, n)) * 3
    columns = rng.normal(size=(k, 8)) @ factors + 0.3 * rng.normal(size=(k, n)) + rng.uniform(0, 2, size=(k, 1))
    return rng.normal(size=(cout, k)), columns


def dequantized(q, scale, zero_point):
    return (q.reshape(len(q), -1).astype(np.float64) - zero_point) * scale[:, None]


@pytest.mark.parametrize("mode", ["per_channel", "per_tensor"])
@pytest.mark.parametrize("method", methods.METHODS)
@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_codes_stay_in_the_range_of_their_width(method, mode, bits):
    weight, columns = correlated_layer(cout=8, k=16, n=256)
    q, scale, zero_point, _ = quantize_layer(weight, np.zeros(8), mode, bits, method, inputs=inputs_of(columns))
    low, high = weight_range(mode, bits)
    assert q.dtype == (np.int8 if mode == "per_channel" else np.uint8) and q.shape == weight.shape
    assert low <= q.min() and q.max() <= high and low <= zero_point <= high
    assert (q.min(), q.max()) != (0, 0) and (scale > 0).all()      # the range is used, not collapsed


def test_rtn_at_8_bits_is_the_int8_rule():
    weight = np.random.default_rng(1).normal(size=(6, 20)) * np.array([[0.01], [0.1], [1], [10], [3], [0.5]])
    q, scale, zero_point = methods.rtn(weight, "per_channel", 8)
    assert zero_point == 0 and np.abs(q).max(axis=1).tolist() == [127] * 6
    np.testing.assert_allclose(scale, np.abs(weight).max(axis=1) / 127)
    assert (np.abs(dequantized(q, scale, 0) - weight) <= scale[:, None] / 2 + 1e-12).all()


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("mode", ["per_channel", "per_tensor"])
def test_mse_and_gptq_lower_the_output_error_of_rtn(mode, bits):
    weight, columns = correlated_layer()
    inputs = inputs_of(columns)
    error = {}
    for method in methods.METHODS:
        q, scale, zero_point, _ = quantize_layer(weight, np.zeros(len(weight)), mode, bits, method, inputs=inputs)
        error[method] = np.linalg.norm((dequantized(q, scale, zero_point) - weight) @ columns)
    assert error["mse"] < error["rtn"]
    assert error["gptq"] < 0.7 * error["mse"]


def test_gptq_without_act_order_and_with_inputs_that_are_always_zero():
    weight, columns = correlated_layer(cout=8, k=16, n=512)
    columns[3] = 0                      # a dead input: H is singular there
    inputs = inputs_of(columns)
    rtn_error = np.linalg.norm((dequantized(*methods.rtn(weight, "per_channel", 3)) - weight) @ columns)
    for act_order in (True, False):
        q, scale, _ = methods.gptq(weight, "per_channel", 3, inputs, act_order=act_order)
        assert q[:, 3].tolist() == [0] * 8
        assert np.linalg.norm((dequantized(q, scale, 0) - weight) @ columns) < 0.8 * rtn_error


@pytest.mark.parametrize("method", methods.METHODS)
@pytest.mark.parametrize("mode", ["per_channel", "per_tensor"])
def test_bias_correction_zeroes_the_mean_output_shift(method, mode):
    weight, columns = correlated_layer(cout=16, k=32, n=1024)
    bias = np.random.default_rng(2).normal(size=16)
    inputs = inputs_of(columns)
    plain = quantize_layer(weight, bias, mode, 3, method, inputs=inputs)
    q, scale, zero_point, corrected = quantize_layer(weight, bias, mode, 3, method, inputs=inputs,
                                                     bias_correction=True)
    # rtn and mse round as without correction; gptq rounds for the error the correction leaves
    untouched = all(np.array_equal(a, b) for a, b in zip(plain[:3], (q, scale, zero_point)))
    assert untouched == (method != "gptq")
    float_mean = (weight @ columns).mean(axis=1) + bias
    shift = (dequantized(q, scale, zero_point) @ columns).mean(axis=1) + bias - float_mean
    assert np.abs(shift).max() > 1e-2           # there was a shift to correct
    quant_mean = (dequantized(q, scale, zero_point) @ columns).mean(axis=1) + corrected
    np.testing.assert_allclose(quant_mean, float_mean, atol=1e-9)


@pytest.mark.parametrize("mode", ["per_channel", "per_tensor"])
def test_gptq_with_bias_correction_minimises_the_error_the_correction_leaves(mode):
    weight, columns = correlated_layer(cout=16, k=32, n=1024)
    centered = columns - columns.mean(axis=1, keepdims=True)
    residual = {}
    for correct in (False, True):
        q, scale, zero_point, _ = quantize_layer(weight, np.zeros(16), mode, 3, "gptq", inputs=inputs_of(columns),
                                                 bias_correction=correct)
        residual[correct] = np.linalg.norm((dequantized(q, scale, zero_point) - weight) @ centered)
    assert residual[True] < 0.95 * residual[False]


def test_refine_stops_where_no_single_code_step_lowers_the_error(monkeypatch):
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(2, 5, 6))                                # [G, R, K]
    factors = rng.normal(size=(2, 6, 6))
    hessian = factors @ factors.transpose(0, 2, 1) + 0.1 * np.eye(6)
    step = rng.uniform(0.2, 0.5, size=(2, 5))
    start = rng.integers(-3, 4, size=rows.shape).astype(np.float64)

    def error(codes):
        e = codes * step[:, :, None] - rows
        return np.einsum("grk,grl,gkl->gr", e, e, hessian)

    monkeypatch.setattr(methods, "REFINE_SWEEPS", 1000)
    codes = methods._refine(rows, start, step, 0, -3, 3, hessian)
    assert (error(codes) <= error(start) + 1e-12).all() and (error(codes) < error(start)).any()
    assert codes.min() >= -3 and codes.max() <= 3
    for index in np.ndindex(rows.shape):
        for sign in (1, -1):
            moved = codes.copy()
            moved[index] += sign
            if -3 <= moved[index] <= 3:
                assert error(moved)[index[:2]] >= error(codes)[index[:2]] - 1e-12, (index, sign)


def test_scale_floor_is_kept_by_every_method():
    weight, columns = correlated_layer(cout=4, k=16, n=256)
    weight[1] *= 1e-9                   # a channel BN folding shrank to nothing
    floor = np.array([0.0, 0.5, 0.0, 0.0])
    for method in methods.METHODS:
        _, scale, _, _ = quantize_layer(weight, np.zeros(4), "per_channel", 4, method, min_scale=floor,
                                        inputs=inputs_of(columns))
        assert scale[1] == 0.5 and (scale >= floor).all()


def columns_of(conv, x):
    """The exact im2col columns [G, K, N*L] of a conv (groups included) on x."""
    pad = F.pad(x, conv._reversed_padding_repeated_twice)
    cols = F.unfold(pad, conv.kernel_size, dilation=conv.dilation, stride=conv.stride).double()
    return cols.reshape(len(x), conv.groups, -1, cols.shape[-1]).permute(1, 2, 0, 3).flatten(2).numpy()


class Layers(nn.Module):
    def __init__(self):
        super().__init__()
        self.grouped = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
        self.depthwise = nn.Conv2d(6, 6, 3, padding="same", dilation=2, groups=6)
        self.padded = ZeroPaddedConv(nn.Conv2d(6, 4, 2), [1, 0, 0, 2])
        self.fc = nn.Linear(4 * 5 * 6, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.padded(self.depthwise(torch.relu(self.grouped(x))))).flatten(1))


class KeepWrappers(fx.Tracer):
    """Traces ZeroPaddedConv as one module, as the quantizer's graph holds it."""

    def is_leaf_module(self, m, name):
        return isinstance(m, ZeroPaddedConv) or super().is_leaf_module(m, name)


def traced(net):
    return fx.GraphModule(net, KeepWrappers().trace(net))


def layer_inputs(net, x):
    """{name: the compute module's input on x} of the four layers."""
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, args[0]))
             for name, m in (("grouped", net.grouped), ("depthwise", net.depthwise), ("padded", net.padded.conv),
                             ("fc", net.fc))]
    net(x)
    for h in hooks:
        h.remove()
    return seen


def test_input_statistics_are_the_layers_im2col_moments():
    torch.manual_seed(0)
    net = Layers().eval()
    gm = traced(net)
    images = torch.rand(40, 4, 9, 9)
    stats = input_statistics(gm, images, ["grouped", "depthwise", "padded", "fc"], max_rows=10 ** 9, batch=16)
    with torch.no_grad():
        seen = layer_inputs(net, images)
    for name, mod in (("grouped", net.grouped), ("depthwise", net.depthwise), ("padded", net.padded.conv)):
        expected = inputs_of(columns_of(mod, seen[name]), mod.groups)
        assert stats[name].hessian.shape == expected.hessian.shape     # [G, K, K]
        np.testing.assert_allclose(stats[name].hessian, expected.hessian, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(stats[name].mean, expected.mean, rtol=1e-5, atol=1e-7)
    expected = inputs_of(seen["fc"].double().numpy().T)
    np.testing.assert_allclose(stats["fc"].hessian, expected.hessian, rtol=1e-4, atol=1e-6)


def test_input_statistics_sample_rows_for_h_but_average_every_column():
    torch.manual_seed(0)
    net = Layers().eval()
    images = torch.rand(40, 4, 9, 9)
    full = input_statistics(traced(net), images, ["grouped"], max_rows=10 ** 9)["grouped"]
    sampled = input_statistics(traced(net), images, ["grouped"], max_rows=200)["grouped"]
    np.testing.assert_allclose(sampled.mean, full.mean, rtol=1e-5, atol=1e-7)
    assert not np.allclose(sampled.hessian, full.hessian, rtol=1e-4)
    np.testing.assert_allclose(sampled.hessian, full.hessian, atol=0.3 * np.abs(full.hessian).max())


def test_statistics_measured_a_few_layers_a_pass_are_those_of_one_pass():
    torch.manual_seed(0)
    net = Layers().eval()
    gm = traced(net)
    images = torch.rand(20, 4, 9, 9)
    names = ["grouped", "depthwise", "padded", "fc"]
    one_pass = input_statistics(gm, images, names, max_rows=10 ** 9)
    by_layer = methods.InputStatistics(gm, images, names, budget=1)
    by_layer_inputs = {}
    for name in names:
        by_layer_inputs[name] = by_layer[name]
        assert list(by_layer.ready) == [name]       # one layer a pass: the earlier ones are let go
    for name in names:
        np.testing.assert_allclose(by_layer_inputs[name].hessian, one_pass[name].hessian, rtol=1e-6)


def test_sequential_statistics_read_the_earlier_layers_as_quantized():
    """Sequential InputStatistics (bias correction "empirical"): a layer's inputs come from the model with
    the earlier layers' weights as `quantized` set them (a copy: the float graph keeps its own),
    float_mean from the float model; a pass a layer."""
    torch.manual_seed(0)
    net = Layers().eval()
    gm = traced(net)
    images = torch.rand(20, 4, 9, 9)
    stats = methods.InputStatistics(gm, images, ["grouped", "depthwise", "fc"], sequential=True)
    stats["grouped"]
    assert list(stats.ready) == ["grouped"]
    codes = net.grouped.weight.detach().mul(4).round().to(torch.int8).numpy()
    rounded = codes.astype(np.float64) / 4
    stats.quantized("grouped", codes, np.full(6, 0.25), 0, np.full(6, 0.25))
    with torch.no_grad():
        float_seen = layer_inputs(net, images)
        changed = Layers().eval()
        changed.load_state_dict(net.state_dict())
        changed.grouped.weight.copy_(torch.from_numpy(rounded))
        changed.grouped.bias.fill_(0.25)
        seen = layer_inputs(changed, images)
    depthwise = stats["depthwise"]
    np.testing.assert_allclose(depthwise.mean, columns_of(net.depthwise, seen["depthwise"]).mean(axis=2), rtol=1e-5,
                               atol=1e-7)
    float_columns = columns_of(net.depthwise, float_seen["depthwise"])
    np.testing.assert_allclose(depthwise.float_mean, float_columns.mean(axis=2), rtol=1e-5, atol=1e-7)
    assert not np.allclose(depthwise.mean, depthwise.float_mean, rtol=1e-3)
    # E[x_float x^T] pairs each column with itself (every column sampled here, in a shuffled order)
    quant_columns = columns_of(net.depthwise, seen["depthwise"])
    np.testing.assert_allclose(depthwise.cross, float_columns @ quant_columns.transpose(0, 2, 1) / float_columns.shape[2],
                               rtol=1e-4, atol=1e-6)
    assert torch.equal(gm.grouped.weight, net.grouped.weight)


def test_bias_correction_makes_up_for_the_earlier_layers_mean_shift():
    """Where the inputs come from quantized earlier layers, the corrected layer's mean output on them
    is the float layer's mean output on the float inputs: E[W_q x] + b' = E[W x_float] + b."""
    weight, columns = correlated_layer(cout=8, k=16, n=512)
    shifted = columns + np.random.default_rng(3).normal(0.2, 0.05, size=(16, 1))      # the earlier layers' shift
    inputs = inputs_of(shifted)
    inputs.float_mean = columns.mean(axis=1)[None]
    bias = np.linspace(-1, 1, 8)
    q, scale, zero_point, corrected = quantize_layer(weight, bias, "per_channel", 3, "gptq", inputs=inputs,
                                                     bias_correction=True)
    np.testing.assert_allclose((dequantized(q, scale, zero_point) @ shifted).mean(axis=1) + corrected,
                               (weight @ columns).mean(axis=1) + bias, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("method", ["mse", "gptq"])
def test_empirical_inputs_are_fitted_to_the_float_output(method):
    """Inputs the quantized earlier layers shrank (0.6 of the float ones, plus noise): with their cross
    moment, mse and gptq fit the float layer's output W x_float, so the shrinkage is not handed on; the
    fit of W x on the same inputs keeps it."""
    weight, columns = correlated_layer(cout=16, k=32, n=4096)
    seen = 0.6 * columns + 0.05 * np.random.default_rng(4).normal(size=columns.shape)
    bias = np.linspace(-1, 1, 16)
    error = {}
    for paired in (False, True):
        inputs = inputs_of(seen)
        inputs.float_mean = columns.mean(axis=1)[None]
        inputs.cross = (columns @ seen.T / columns.shape[1])[None] if paired else None
        q, scale, zero_point, corrected = quantize_layer(weight, bias, "per_channel", 4, method, inputs=inputs,
                                                         bias_correction=True)
        output = dequantized(q, scale, zero_point) @ seen + corrected[:, None]
        error[paired] = np.linalg.norm(output - (weight @ columns + bias[:, None]))
    assert error[True] < 0.3 * error[False]


def test_the_float_target_does_not_blow_up_on_a_silenced_input():
    """An input the earlier layers' rounding nearly silenced (5% of its float value, the others as they
    were): the least-squares target would scale its weights up to give back the float output, its
    largest weight several times W's, and every other weight of those channels would lose the 4-bit
    grid's resolution to it; the target's ridge keeps the largest weight within a quarter of W's."""
    rng = np.random.default_rng(0)
    weight, columns = rng.normal(size=(16, 32)), rng.normal(size=(32, 4096)) + 1
    seen = columns.copy()
    seen[5] *= 0.05
    inputs = inputs_of(seen)
    inputs.float_mean, inputs.cross = columns.mean(axis=1)[None], (columns @ seen.T / columns.shape[1])[None]
    target = methods._float_target(weight, methods._centered(inputs))
    assert np.abs(target).max() < 1.25 * np.abs(weight).max()
    assert (np.abs(target[:, 5]) > np.abs(weight[:, 5])).all()       # what can be given back still is


def test_grouped_and_depthwise_convs_get_a_hessian_per_group():
    torch.manual_seed(0)
    net = Layers().eval()
    gm = traced(net)
    images = torch.rand(64, 4, 9, 9)
    stats = input_statistics(gm, images, ["grouped", "depthwise"])
    with torch.no_grad():
        seen = layer_inputs(net, images)
    for name, mod in (("grouped", net.grouped), ("depthwise", net.depthwise)):
        columns = columns_of(mod, seen[name])                      # [G, K, N]
        weight = mod.weight.detach().double().numpy()
        assert stats[name].hessian.shape[0] == mod.groups
        error = {}
        for method in methods.METHODS:
            q, scale, zero_point, _ = quantize_layer(weight, np.zeros(6), "per_channel", 3, method,
                                                     inputs=stats[name])
            shift = (dequantized(q, scale, zero_point) - weight.reshape(6, -1)).reshape(mod.groups, -1,
                                                                                        columns.shape[1])
            error[method] = np.linalg.norm(shift @ columns)
        assert error["gptq"] < error["rtn"]


def test_auto_is_rtn_at_8_bits_and_gptq_with_bias_correction_below():
    assert methods.resolve("auto", "auto", 8) == ("rtn", False)
    assert methods.resolve("auto", "auto", 4) == ("gptq", True)
    assert methods.resolve("mse", "off", 3) == ("mse", False)
    assert methods.resolve("rtn", "on", 8) == ("rtn", True)
    assert methods.resolve("auto", "empirical", 8) == ("rtn", True)


def test_auto_bias_correction_is_empirical_below_8_bits():
    """auto reads each layer's inputs from the model quantized so far wherever a layer's weights are
    below 8 bits (--weight_bits or --bits), and the float model's at W8 (nothing measured there)."""
    assert [methods.sequential("auto", bits) for bits in (8, 4, 2)] == [False, True, True]
    assert methods.sequential("empirical", 8) and not methods.sequential("on", 3)
    cls, _, shape = ARCHS["residual"]
    net = _randomize_bn(cls(), torch.Generator().manual_seed(0)).eval()
    images = torch.randint(0, 256, (16, *shape), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    same = lambda a, b: all(torch.equal(a[k], b[k]) for k in a)       # noqa: E731
    for bits, like, unlike in ((3, "empirical", "on"), (8, "off", "empirical")):
        state = {correction: api.quantize(net, images, weight_bits=bits, bias_correction=correction)[0]
                 for correction in ("auto", like, unlike)}
        assert same(state["auto"], state[like]) and not same(state["auto"], state[unlike]), bits


def test_the_quantizer_takes_the_method_and_its_logits_come_closer_to_float():
    cls, _, shape = ARCHS["residual"]
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = _randomize_bn(cls(), gen).eval()
    # smooth images: neighbouring pixels correlate, as in photographs
    images = F.interpolate(torch.rand(96, shape[0], 8, 8, generator=gen), size=shape[1:], mode="bilinear")
    images = (images * 255).round().to(torch.uint8)
    calib, test = images[:64], images[64:]
    float_logits = api.run_float(net, test)
    error = {}
    for method, correction in (("rtn", "off"), ("auto", "auto"), ("auto", "empirical")):
        state, quant_list = api.quantize(net, calib, weight_bits=3, weight_method=method, bias_correction=correction)
        assert quant_list[0]["widths"]["weight_method"] == method
        assert quant_list[0]["widths"]["bias_correction"] == correction
        logits = quant_list[-1]["scale"] * (api.run_integer(state, quant_list, test) - quant_list[-1]["zero_point"])
        error[correction] = np.linalg.norm(logits - float_logits)
    assert error["auto"] < 0.5 * error["off"] and error["empirical"] < 0.5 * error["off"]
