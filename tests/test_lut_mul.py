"""The lut and mul kinds: what the quantizer builds (the table from the float function, fusing kept
where it is possible, the broadcast operand second, the refusals) and the C engine's load-time rules
for them. Their kernels in every engine: tests/test_engines.py, tests/test_c_kernels.py (the
"activations" graph of tests/random_models.py), tests/test_narrow_clamps.py (lut_narrow,
mul_broadcast_narrow)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model import qmath
from model.ops import KINDS
from model.quant.quantize import QuantizeError, build_integer_graph
from tests.random_models import make_cfg, random_quantized
from tests.c_engine import assert_clean, clone, export_graph, mutate_model, read_logits, refused, run, set_field


def quantize(net, shape=(3, 8, 8), n=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), generator=gen, dtype=torch.uint8)
    return build_integer_graph(net.eval(), images, make_cfg(model="resnet18"), "cifar10", {})


class Fn(nn.Module):
    def __init__(self, fn, pre=None):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fn, self.pre = fn, pre

    def forward(self, x):
        x = self.conv(x)
        return self.fn(self.pre(x) if self.pre else x)


def test_table_is_the_float_function_rounded_half_up():
    """table[q] = clamp(round_half_up(f(s_in (q - z_in)) / s_out) + z_out, qmin, qmax), f taken with
    the node's own arguments (negative_slope here), computed here without the quantizer's code."""
    state, quant = quantize(Fn(lambda x: F.leaky_relu(x, negative_slope=0.3)))
    lut = next(op for op in quant if op["op"] == "lut")
    src = quant[lut["inputs"][0]]
    x = src["scale"] * (np.arange(256) - src["zero_point"])
    y = np.where(x > 0, x, 0.3 * x)
    want = np.clip(np.floor(y / lut["scale"] + 0.5) + lut["zero_point"], lut["qmin"], lut["qmax"])
    table = state[lut["name"] + ".table"]
    assert table.dtype == torch.int32 and table.shape == (256,)
    np.testing.assert_array_equal(table.numpy(), want)
    assert len(set(table.tolist())) > 100                   # not a degenerate table


@pytest.mark.parametrize("fn,float_fn", [
    (nn.GELU(approximate="tanh"), lambda x: F.gelu(x, approximate="tanh")),
    (nn.ELU(alpha=0.5), lambda x: F.elu(x, alpha=0.5)),
    (nn.Hardswish(), F.hardswish), (nn.Hardsigmoid(), F.hardsigmoid), (nn.SiLU(), F.silu), (nn.Mish(), F.mish),
    (torch.tanh, torch.tanh), (torch.sigmoid, torch.sigmoid), (lambda x: x.sigmoid(), torch.sigmoid)])
def test_each_function_is_a_table_of_its_float_values(fn, float_fn):
    state, quant = quantize(Fn(fn))
    assert [op["op"] for op in quant] == ["input", "conv", "lut"]
    lut, src = quant[2], quant[1]
    y = float_fn(torch.tensor(src["scale"] * (np.arange(256) - src["zero_point"]), dtype=torch.float64)).numpy()
    want = np.clip(qmath.round_half_up(y / lut["scale"]) + lut["zero_point"], 0, 255)
    np.testing.assert_array_equal(state[lut["name"] + ".table"].numpy(), want)


def test_relu_fused_where_it_can_be_a_table_where_it_cannot():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.pool = nn.MaxPool2d(2)

        def forward(self, x):
            x = F.relu(self.conv(x))                     # fused into the conv
            y = torch.relu(self.pool(x))                 # after a max pool: a table
            return F.relu6(y) + F.hardtanh(y, 0.0, 6.0)  # two users of y: neither can fuse; relu6 ones

    state, quant = quantize(Net())
    kinds = [op["op"] for op in quant]
    assert kinds.count("lut") == 3 and kinds[1] == "conv" and quant[1]["qmin"] == quant[1]["zero_point"]
    for op in quant:
        if op["op"] == "lut":
            src = quant[op["inputs"][0]]
            y = np.clip(src["scale"] * (np.arange(256) - src["zero_point"]), 0, None)
            if quant[op["inputs"][0]]["op"] != "maxpool":
                y = np.minimum(y, 6.0)
            want = np.clip(qmath.round_half_up(y / op["scale"]) + op["zero_point"], 0, 255)
            np.testing.assert_array_equal(state[op["name"] + ".table"].numpy(), want)


def test_relu_after_a_table_is_fused_into_it():
    state, quant = quantize(Fn(lambda x: torch.relu(torch.tanh(x))))
    assert [op["op"] for op in quant] == ["input", "conv", "lut"]
    lut = quant[2]
    assert lut["qmin"] == max(lut["zero_point"], 0)
    assert state[lut["name"] + ".table"].min() >= lut["qmin"]


class SE(nn.Module):
    def __init__(self, gate_first):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Conv2d(6, 6, 1)
        self.gate_first = gate_first

    def forward(self, x):
        x = self.conv(x)
        s = torch.sigmoid(self.fc(F.adaptive_avg_pool2d(x, 1)))
        return torch.mul(s, x) if self.gate_first else x.mul(s)


@pytest.mark.parametrize("gate_first", [True, False])
def test_mul_puts_the_broadcast_operand_second(gate_first):
    state, quant = quantize(SE(gate_first))
    mul = quant[-1]
    assert mul["op"] == "mul" and mul["shape"] == [6, 8, 8]
    assert [quant[i]["shape"] for i in mul["inputs"]] == [[6, 8, 8], [6, 1, 1]]
    m, s = state["mul.multiplier"].item(), state["mul.shift"].item()
    real = quant[mul["inputs"][0]]["scale"] * quant[mul["inputs"][1]]["scale"] / mul["scale"]
    assert abs(m / 2 ** s - real) <= real * 2 ** -15


class SpatialGate(nn.Module):
    """x * a 1xHxW map: a broadcast over channels, not over H x W"""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.one = nn.Conv2d(4, 1, 1)

    def forward(self, x):
        x = self.conv(x)
        return x * self.one(x)


@pytest.mark.parametrize("net,phrase", [(lambda: Fn(lambda x: x * 2.0), "constant"), (SpatialGate, "shapes")],
                         ids=["constant", "spatial"])
def test_mul_refusals_are_clear(net, phrase):
    with pytest.raises(QuantizeError, match=phrase):
        quantize(net())


# --- the C engine's load-time rules for the two kinds -----------------------------------------------

@pytest.fixture(scope="module")
def activations_export(tmp_path_factory):
    state, quant, images = random_quantized("activations", "per_channel", seed=3, n_test=8)
    ex = export_graph(str(tmp_path_factory.mktemp("act")), state, quant, images, 3, mode="bin")
    return ex, quant


def first(quant, kind, full_second=False):
    return next(i for i, op in enumerate(quant) if op["op"] == kind
                and (not full_second or quant[op["inputs"][1]]["shape"][1:] != [1, 1]))


def test_activations_graph_runs_in_c(binaries, activations_export, tmp_path):  # noqa: F811
    ex, _ = activations_export
    out = str(tmp_path / "l.txt")
    proc = run(binaries["asan"], ex, "--logits", out)
    assert_clean(proc)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(read_logits(out), ex["logits"])


@pytest.mark.parametrize("case", ["lut_table_outside_clamp", "lut_shape", "mul_first_input_shape",
                                  "mul_broadcast_operand_first", "mul_second_input_channels"])
def test_c_refuses_broken_lut_and_mul_records(binaries, activations_export, tmp_path, case):  # noqa: F811
    base, quant = activations_export
    ex = clone(base, str(tmp_path / "ex"))
    lut, mul = first(quant, "lut"), first(quant, "mul", full_second=True)
    bad_input = next(i for i, op in enumerate(quant[:mul]) if op["shape"][0] != quant[mul]["shape"][0])
    gated = next(i for i, op in enumerate(quant) if op["op"] == "mul" and i != mul)     # x * a Cx1x1 gate
    mutation, phrase = {
        "lut_table_outside_clamp": (lambda d, r: (set_field(lut, "table7", 255)(d, r),
                                                  set_field(lut, "qmax", 254)(d, r)), "outside its clamp"),
        "lut_shape": (set_field(lut, "W", quant[lut]["shape"][2] - 1), "lut"),
        "mul_first_input_shape": (set_field(mul, "input0", bad_input), "input 0"),
        "mul_broadcast_operand_first": (set_field(gated, "input0", quant[gated]["inputs"][1]), "input 0"),
        "mul_second_input_channels": (set_field(mul, "input1", bad_input), "input 1"),
    }[case]
    mutate_model(ex, mutation)
    assert phrase in refused(binaries["asan"], ex, "bin", "model.bin", tmp_path)


def test_kinds_declared():
    assert (KINDS["lut"].code, KINDS["lut"].n_table, KINDS["lut"].inputs) == (7, "256", (1, 1))
    assert (KINDS["mul"].code, KINDS["mul"].n_mult, KINDS["mul"].n_shift, KINDS["mul"].inputs) == (8, "1", "1", (2, 2))
