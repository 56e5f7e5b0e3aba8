"""Small integer graphs whose quantization parameters are set by hand: output zero points far
from 0 (37, 90, 150, 200), clamps narrower than 0..255 (20..230, 100..140) and clamps that
exclude their zero point, so that every padded conv and max pool, avg pool, add, concat, mul,
lut and linear layer reads an input with a zero point != 0 and a narrow clamp, and every
requantizing op's clamp binds at both ends (as CMSIS-NN's test generator names each case by its bounds).

A graph the quantizer builds (calibrated ranges, ReLU clamps qmin = zero point) never has
these: every op of the random test graphs and of LeNet clamps to 0..255, and the inputs of
its padded ops have zero point 0, so an engine that swaps qmin/qmax or pads with 0 instead of
z_x passes them all. Here the float nets are quantized first, then the chosen ops'
`zero_point`, `qmin`, `qmax` are rewritten (and their multipliers scaled by a gain, so the
requantized values spread past both bounds; a lut's table is rescaled by the gain around the
new zero point and clamped, the values before the clamp kept in the op as `table_unclamped`); the graph stays legal: op 0 keeps zero point 0
and 0..255, a max pool keeps its input's zero point and clamp, each conv/linear's accumulator
bound is recomputed and stays below 2^31.

    build(name, weight_mode) -> (state_dict, quant_list, uint8 test images)
"""
import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from model import qmath
from model.engines.np_engine import numpy_graph, numpy_tensor, run_numpy
from model.graph import Graph
from model.ops import KINDS
from model.ops.base import keeps_qparams, sides
from model.ops.weighted import ACC_LIMIT, accumulator_bound
from model.quant.quantize import build_integer_graph
from tests.random_models import _randomize_bn, make_cfg

SHAPE = (1, 28, 28)          # MNIST-shaped, so the C engine reads the images as an idx file
WIDE = 1 << 40               # "no clamp": beyond every int64 product the ops make here


def conv(cin, cout, k, **kw):
    return nn.Conv2d(cin, cout, k, **kw)


class Chain(nn.Module):
    """The modules in order; the last one's output is flattened into a linear layer (10 logits)."""

    def __init__(self, features, flat):
        super().__init__()
        self.features = nn.Sequential(*features)
        self.fc = nn.Linear(flat, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


class AddNet(nn.Module):
    """Two branches of one shape, added (no activation), then linear."""

    def __init__(self):
        super().__init__()
        self.stem = conv(1, 4, 3, stride=2)                       # 4x13x13
        self.a = conv(4, 6, 3, padding=1)
        self.b = conv(4, 6, 1)
        self.pool = nn.AvgPool2d(2)                               # 6x6x6
        self.fc = nn.Linear(6 * 6 * 6, 10)

    def forward(self, x):
        x = self.stem(x)
        return self.fc(torch.flatten(self.pool(self.a(x) + self.b(x)), 1))


class ConcatNet(nn.Module):
    """Three branches of one H x W with different zero points joined on channels, then a padded
    conv reading the concat."""

    def __init__(self):
        super().__init__()
        self.stem = conv(1, 4, 3, stride=2)                       # 4x13x13
        self.a = conv(4, 3, 3, padding=1)
        self.b = conv(4, 5, 1)
        self.c = conv(4, 2, (1, 3), padding=(0, 1))
        self.mix = conv(10, 6, 3, padding=1, stride=2)            # 6x7x7
        self.fc = nn.Linear(6 * 7 * 7, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.a(x), self.b(x), self.c(x)], dim=1)
        return self.fc(torch.flatten(self.mix(x), 1))


class BnAfterReluNet(nn.Module):
    """A BatchNorm2d after a ReLU (not foldable: quantized as a 1x1 depthwise conv)."""

    def __init__(self):
        super().__init__()
        self.c1 = conv(1, 6, 3, stride=2)                         # 6x13x13
        self.relu = nn.ReLU()
        self.bn = nn.BatchNorm2d(6)
        self.c2 = conv(6, 4, 3, padding=1, stride=2)              # 4x7x7
        self.fc = nn.Linear(4 * 7 * 7, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.c2(self.bn(self.relu(self.c1(x)))), 1))


class LutNet(nn.Module):
    """Elementwise functions as 256-entry tables: a LeakyReLU after a conv, a ReLU after a max pool
    (not fusable: a table of its own), a Hardswish after a padded conv reading the ReLU's table."""

    def __init__(self):
        super().__init__()
        self.stem = conv(1, 6, 3, stride=2)                       # 6x13x13
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)          # 6x7x7
        self.relu = nn.ReLU()
        self.mix = conv(6, 4, 3, padding=1)                       # 4x7x7
        self.hswish = nn.Hardswish()
        self.fc = nn.Linear(4 * 7 * 7, 10)

    def forward(self, x):
        x = self.relu(self.pool(self.act(self.stem(x))))
        return self.fc(torch.flatten(self.hswish(self.mix(x)), 1))


class MulNet(nn.Module):
    """A same-shape product, then a squeeze-and-excitation-like product (conv(gap(y)) * y: a Cx1x1
    factor, the first operand, broadcast over H x W), then a padded conv reading the product."""

    def __init__(self):
        super().__init__()
        self.stem = conv(1, 8, 3, stride=2)                       # 8x13x13
        self.a = conv(8, 8, 3, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.squeeze = conv(8, 8, 1)
        self.mix = conv(8, 4, 3, padding=1, stride=2)             # 4x7x7
        self.fc = nn.Linear(4 * 7 * 7, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.a(x) * x
        s = self.squeeze(self.gap(y))
        return self.fc(torch.flatten(self.mix(s * y), 1))


class ShuffleNarrowNet(nn.Module):
    """Channel shuffles (groups 4 of a conv's output, groups 2 of a concat), then a padded conv reading one."""

    def __init__(self):
        super().__init__()
        self.stem = conv(1, 8, 3, stride=2)                       # 8x13x13
        self.a = conv(8, 4, 3, padding=1)
        self.mix = conv(12, 6, 3, padding=1, stride=2)            # 6x7x7
        self.fc = nn.Linear(6 * 7 * 7, 10)

    def forward(self, x):
        x = self.stem(x)
        n, c, h, w = x.size()
        x = torch.transpose(x.view(n, 4, c // 4, h, w), 1, 2).contiguous().view(n, -1, h, w)
        y = torch.cat([x, self.a(x)], dim=1)
        y = y.view(n, 2, 6, h, w).transpose(1, 2).reshape(n, 12, h, w)
        return self.fc(torch.flatten(self.mix(y), 1))


class SliceNarrowNet(nn.Module):
    """ShuffleNet's channel split: x.chunk(2, dim=1), one piece through a conv, the other sliced
    again (x[:, 1:3]), joined by a concat; a padded conv reading a split piece of it."""

    def __init__(self):
        super().__init__()
        self.stem = conv(1, 8, 3, stride=2)                       # 8x13x13
        self.b = conv(4, 6, 3, padding=1)
        self.mix = conv(5, 4, 3, padding=1, stride=2)             # 4x7x7
        self.fc = nn.Linear(4 * 7 * 7, 10)

    def forward(self, x):
        a, b = self.stem(x).chunk(2, dim=1)
        y = torch.cat([a[:, 1:3], self.b(b)], dim=1)              # 8x13x13
        _, z = y.split([3, 5], dim=1)
        return self.fc(torch.flatten(self.mix(z), 1))


class UpsampleNarrowNet(nn.Module):
    """Nearest upsampling x2 (nn.Upsample) read by a padded conv, then (2, 1) (F.interpolate) into
    the linear layer."""

    def __init__(self):
        super().__init__()
        self.stem = conv(1, 6, 3, stride=2)                       # 6x13x13
        self.down = conv(6, 6, 3, stride=2)                       # 6x6x6
        self.up = nn.Upsample(scale_factor=2, mode="nearest")     # 6x12x12
        self.mix = conv(6, 4, 3, padding=1)                       # 4x12x12
        self.fc = nn.Linear(4 * 24 * 12, 10)

    def forward(self, x):
        x = self.mix(self.up(self.down(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.interpolate(x, scale_factor=(2, 1), mode="nearest"), 1))


class PadNarrowNet(nn.Module):
    """Reflect, constant and replicate pads on narrow clamps, each read by a conv."""

    def __init__(self):
        super().__init__()
        self.stem = conv(1, 6, 3, stride=2)                       # 6x13x13
        self.reflect = nn.ReflectionPad2d((2, 0, 1, 3))           # 6x17x15
        self.a = conv(6, 6, 3, stride=2)                          # 6x8x7
        self.constant = nn.ConstantPad2d((1, 2, 0, 1), 0.25)      # 6x9x10
        self.replicate = nn.ReplicationPad2d((0, 1, 2, 0))        # 6x11x11
        self.mix = conv(6, 4, 3)                                  # 4x9x9
        self.fc = nn.Linear(4 * 9 * 9, 10)

    def forward(self, x):
        x = self.a(self.reflect(self.stem(x)))
        return self.fc(torch.flatten(self.mix(self.replicate(self.constant(x))), 1))


def q(zero_point, qmin, qmax, gain=1.0):
    """A rewrite of one op: its output zero point and clamp, its multipliers times gain."""
    return {"zero_point": zero_point, "qmin": qmin, "qmax": qmax, "gain": gain}


@dataclass(frozen=True)
class Case:
    name: str
    net: object                 # () -> nn.Module
    rewrites: dict              # op name -> q(...): every op but input and max pools is rewritten
    focus: tuple                # the ops the case is named after
    doc: str = ""
    padded: tuple = field(default=())   # focus ops whose padding must matter (conv, maxpool)


CASES = {c.name: c for c in [
    Case("conv_pad_zp37_clamp20_230",
         lambda: Chain([conv(1, 6, 3, stride=2), conv(6, 8, 3, padding=1), nn.AvgPool2d(2)], 8 * 6 * 6),
         {"features_0": q(37, 20, 230, 4.0), "features_1": q(37, 20, 230, 2.0), "features_2": q(90, 40, 200, 2.0),
          "fc": q(37, 20, 230, 2.0)},
         ("features_1",), "a 3x3 pad 1 conv reading zero point 37, clamp 20..230", padded=("features_1",)),
    Case("conv_nonsquare_pad_zp200",
         lambda: Chain([conv(1, 5, 3, stride=2), conv(5, 7, (3, 5), stride=(1, 2), padding=(1, 2)),
                        conv(7, 6, (5, 1), padding=(2, 0))], 6 * 13 * 7),
         {"features_0": q(200, 30, 240, 2.0), "features_1": q(150, 100, 140, 1.0), "features_2": q(37, 20, 230, 4.0),
          "fc": q(200, 20, 230, 2.0)},
         ("features_1", "features_2"), "3x5 stride (1,2) pad (1,2) on zero point 200; 5x1 pad (2,0) on a "
         "clamp 100..140 that excludes its zero point 150", padded=("features_1", "features_2")),
    Case("conv_asymmetric_dilated_zp200",
         lambda: Chain([conv(1, 6, 3, stride=2), nn.ZeroPad2d((0, 1, 1, 0)), conv(6, 8, 3, dilation=2),
                        conv(8, 8, 3, padding=2, dilation=(2, 1), groups=8)], 8 * 10 * 12),
         {"features_0": q(200, 30, 240, 2.0), "features_2": q(90, 100, 140, 2.0), "features_3": q(37, 20, 230, 2.0),
          "fc": q(150, 20, 230, 2.0)},
         ("features_2", "features_3"), "a zero pad (top 1, right 1) folded into a 3x3 dilation 2 conv on zero "
         "point 200; a depthwise 3x3 dilation (2, 1) pad 2 conv on a clamp 100..140 excluding its zero point 90",
         padded=("features_2", "features_3")),
    Case("grouped_conv_pad_zp90",
         lambda: Chain([conv(1, 8, 3, stride=2), conv(8, 12, 3, padding=1, groups=4),
                        conv(12, 6, 3, padding=1, stride=2, groups=2)], 6 * 7 * 7),
         {"features_0": q(90, 20, 230, 2.0), "features_1": q(200, 30, 240, 2.0), "features_2": q(37, 20, 230, 2.0),
          "fc": q(120, 100, 140)},
         ("features_1", "features_2"), "grouped 3x3 pad 1 convs on zero points 90 and 200",
         padded=("features_1", "features_2")),
    Case("depthwise_zp_nonzero",
         lambda: Chain([conv(1, 8, 3, stride=2), conv(8, 8, 3, padding=1, stride=2, groups=8), nn.ReLU6(),
                        conv(8, 16, 3, padding=1, groups=8)], 16 * 7 * 7),
         {"features_0": q(150, 20, 230, 2.0), "features_1": q(37, 37, 120, 2.0), "features_3": q(200, 20, 230, 2.0),
          "fc": q(37, 20, 230, 2.0)},
         ("features_1", "features_3"), "depthwise 3x3 pad 1 stride 2 on zero point 150 with a ReLU6-like clamp "
         "37..120; a depthwise with channel multiplier 2 on zero point 37", padded=("features_1", "features_3")),
    Case("maxpool_pad_zp200",
         lambda: Chain([conv(1, 6, 3), nn.MaxPool2d(3, stride=2, padding=1), conv(6, 4, 3, padding=1),
                        nn.MaxPool2d((2, 3), stride=(2, 1), padding=(1, 1))], 4 * 7 * 13),
         {"features_0": q(200, 20, 230, 2.0), "features_2": q(160, 100, 140, 0.5), "fc": q(200, 20, 230, 2.0)},
         ("features_1", "features_3"), "3x3 stride 2 pad 1 max pool on zero point 200 (padding with z_x would "
         "win); 2x3 pad (1,1) max pool on a clamp 100..140 excluding its zero point 160",
         padded=("features_1", "features_2", "features_3")),
    Case("avgpool_narrow",
         lambda: Chain([conv(1, 6, 3, stride=2), nn.AvgPool2d(2), conv(6, 6, 3, padding=1), nn.AvgPool2d((3, 2), stride=(2, 1))],
                       6 * 2 * 5),
         {"features_0": q(200, 20, 230, 2.0), "features_1": q(37, 100, 140, 4.0), "features_2": q(90, 20, 230, 2.0),
          "features_3": q(150, 100, 140, 1.0), "fc": q(37, 20, 230, 4.0)},
         ("features_1", "features_3"), "avg pools on zero points 200 and 90 (the n*z_in term), clamped to "
         "100..140 (which excludes their zero points 37 and 150)"),
    Case("adaptive_avgpool_narrow",
         lambda: Chain([conv(1, 6, 3, stride=2), nn.AdaptiveAvgPool2d((3, 5)), conv(6, 6, 1),
                        nn.AdaptiveAvgPool2d((4, 7))], 6 * 4 * 7),
         {"features_0": q(200, 20, 230, 2.0), "features_1": q(37, 100, 140, 4.0), "features_2": q(90, 20, 230, 2.0),
          "features_3": q(60, 100, 140, 2.0), "fc": q(37, 20, 230, 4.0)},
         ("features_1", "features_3"), "adaptive pools with windows of several sizes (13x13 -> 3x5, overlapping; "
         "3x5 -> 4x7, repeating) on zero points 200 and 90 (the n_p*z_in term), clamped to 100..140 (which "
         "excludes their zero points 37 and 60)"),
    Case("add_clamp_excludes_zp", AddNet,
         {"stem": q(90, 20, 230, 2.0), "a": q(37, 20, 230, 2.0), "b": q(200, 30, 240, 2.0), "add": q(10, 100, 140, 2.0),
          "pool": q(37, 160, 200, 1.0), "fc": q(37, 20, 230, 2.0)},
         ("add",), "add of inputs on zero points 37 and 200, clamp 100..140 excluding its zero point 10",
         padded=("a",)),
    Case("concat_mixed_zps", ConcatNet,
         {"stem": q(90, 20, 230, 2.0), "a": q(37, 20, 230, 2.0), "b": q(200, 30, 240, 2.0), "c": q(150, 100, 140),
          "cat": q(120, 20, 230, 2.0), "mix": q(37, 20, 230, 2.0), "fc": q(200, 20, 230, 2.0)},
         ("cat", "mix"), "concat of zero points 37, 200, 150 (a clamp excluding it) into zero point 120, "
         "then a 3x3 pad 1 conv reading it", padded=("a", "c", "mix")),
    Case("linear_narrow",
         lambda: nn.Sequential(conv(1, 4, 3, stride=2), nn.Flatten(), nn.Linear(4 * 13 * 13, 24), nn.Linear(24, 10)),
         {"0": q(150, 20, 230, 2.0), "2": q(37, 50, 200, 2.0), "3": q(200, 100, 140, 2.0)},
         ("2", "3"), "linear layers on zero points 150 and 37, clamps 50..200 and 100..140 (the logits, "
         "excluding their zero point 200)"),
    Case("bn_after_relu", BnAfterReluNet,
         {"c1": q(37, 37, 230, 2.0), "bn": q(110, 120, 200, 1.0), "c2": q(90, 20, 230, 2.0), "fc": q(37, 20, 230, 2.0)},
         ("bn", "c2"), "a BatchNorm2d after a ReLU (1x1 depthwise conv) on zero point 37, output zero point 110 below its clamp 120..200; "
         "a 3x3 pad 1 conv reading it", padded=("c2",)),
    Case("lut_narrow", LutNet,
         {"stem": q(150, 20, 230, 2.0), "act": q(90, 30, 220, 2.0), "relu": q(37, 60, 200, 2.0),
          "mix": q(200, 20, 230, 2.0), "hswish": q(120, 90, 160, 1.0), "fc": q(37, 20, 230, 2.0)},
         ("act", "relu", "hswish"), "tables reading zero points 150, 90 (through a max pool), 200; a ReLU's "
         "table with zero point 37 below its clamp 60..200, a Hardswish's clamped to 90..160",
         padded=("pool", "mix")),
    Case("mul_broadcast_narrow", MulNet,
         {"stem": q(90, 20, 230, 2.0), "a": q(200, 30, 240, 2.0), "mul": q(37, 20, 230, 2.0),
          "gap": q(150, 100, 200, 1.0), "squeeze": q(60, 20, 230, 0.5), "mul_1": q(150, 100, 140, 1.0), "mix": q(37, 20, 230, 2.0), "fc": q(200, 20, 230, 2.0)},
         ("mul", "mul_1"), "a same-shape product of zero points 200 and 90; a Cx1x1 factor on zero point 60 "
         "times it, clamp 100..140 excluding its zero point 150; a 3x3 pad 1 conv reading it",
         padded=("a", "mix")),
    Case("shuffle_narrow", ShuffleNarrowNet,
         {"stem": q(90, 20, 230, 2.0), "a": q(200, 30, 240, 2.0), "cat": q(37, 20, 230, 2.0),
          "mix": q(150, 100, 140, 1.0), "fc": q(37, 20, 230, 2.0)},
         ("transpose", "transpose_1"), "channel shuffles (groups 4, 2) keep zero points 90 and 37 and their "
         "clamps; a 3x3 pad 1 conv reading one", padded=("mix",)),
    Case("slice_narrow", SliceNarrowNet,
         {"stem": q(150, 20, 230, 2.0), "b": q(200, 30, 240, 2.0), "cat": q(37, 60, 200, 2.0),
          "mix": q(90, 20, 230, 2.0), "fc": q(37, 20, 230, 2.0)},
         ("getitem", "getitem_1", "getitem_2", "getitem_4"), "chunk pieces and a slice on zero point 150, a "
         "split piece of a concat on zero point 37 below its clamp 60..200, read by a 3x3 pad 1 conv",
         padded=("mix",)),
    Case("upsample_narrow", UpsampleNarrowNet,
         {"stem": q(90, 20, 230, 2.0), "down": q(200, 30, 240, 2.0), "mix": q(37, 100, 140, 2.0),
          "fc": q(150, 20, 230, 2.0)},
         ("up", "interpolate"), "nearest upsampling x2 on zero point 200 read by a 3x3 pad 1 conv; (2, 1) "
         "on a clamp 100..140 excluding its zero point 37", padded=("mix",)),
    Case("pad_narrow", PadNarrowNet,
         {"stem": q(200, 30, 240, 2.0), "a": q(37, 100, 140, 2.0), "mix": q(90, 20, 230, 2.0),
          "fc": q(150, 20, 230, 2.0)},
         ("reflect", "constant", "replicate"), "a reflect pad on zero point 200, a constant pad (its value "
         "outside the clamp 100..140, which widens to hold it) and a replicate pad on zero point 37"),
]}


def _rewrite(state, quant, rewrites):
    by_name = {op["name"]: op for op in quant}
    unknown = set(rewrites) - set(by_name)
    assert not unknown, f"no ops named {sorted(unknown)} in {[op['name'] for op in quant]}"
    for op in quant[1:]:
        if keeps_qparams(KINDS[op["op"]]):           # maxpool, shuffle, slice, upsample: its input's zp, clamp
            src = quant[op["inputs"][0]]
            op.update(zero_point=src["zero_point"], qmin=src["qmin"], qmax=src["qmax"])
            if op["op"] == "pad" and op["pad_mode"] == 0:    # a constant pad's clamp holds its value
                op.update(qmin=min(op["qmin"], op["pad_value"]), qmax=max(op["qmax"], op["pad_value"]))
            continue
        r = rewrites.get(op["name"])
        if r is None:
            continue
        if op["op"] == "lut":                        # the table rescaled around the new zero point, clamped
            key = op["name"] + ".table"
            raw = r["zero_point"] + qmath.round_half_up((state[key].numpy().astype(np.float64) - op["zero_point"])
                                                         * r["gain"])
            op.update(zero_point=r["zero_point"], qmin=r["qmin"], qmax=r["qmax"], table_unclamped=raw)
            state[key] = torch.from_numpy(np.clip(raw, r["qmin"], r["qmax"]).astype(np.int32))
            continue
        op.update(zero_point=r["zero_point"], qmin=r["qmin"], qmax=r["qmax"])
        key = op["name"] + ".multiplier"
        m = np.round(state[key].numpy().astype(np.float64) * r["gain"]).astype(np.int64)
        assert m.max() < 2 ** 31
        state[key] = torch.from_numpy(m.astype(np.int32))
    for op in quant:
        if KINDS[op["op"]].weighted:
            op["acc_bound"] = accumulator_bound(state[op["name"] + ".weight"].numpy(), op["weight_zero_point"],
                                                state[op["name"] + ".bias"].numpy(), quant[op["inputs"][0]])
            assert op["acc_bound"] <= ACC_LIMIT, op


def build(name, weight_mode="per_channel", seed=0, calib=64, n_test=24):
    """(state_dict, quant_list, uint8 test images) of case `name` in `weight_mode`."""
    case = CASES[name]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = _randomize_bn(case.net(), gen).eval()
    images = torch.randint(0, 256, (calib + n_test, *SHAPE), generator=gen, dtype=torch.uint8)
    cfg = make_cfg(model="narrow", weight_mode=weight_mode, multiplier_bits=16)
    state, quant = build_integer_graph(net, images[:calib], cfg, "mnist", {})
    state = {k: v.clone() for k, v in state.items()}
    _rewrite(state, quant, case.rewrites)
    return state, quant, images[calib:]


# --- looking inside a graph: every tensor, an op without its clamp, an op with a wrong padding ------

def params_of(state, op):
    """op's tensors by field, as the numpy kernels read them."""
    return {key.rsplit(".", 1)[1]: numpy_tensor(key.rsplit(".", 1)[1], value) for key, value in state.items()
            if key.rsplit(".", 1)[0] == op["name"]}


def with_zps(quant, i):
    """Op i of quant as the kernels read it (a model.graph.Op, its inputs' zero points filled in)."""
    return Graph.from_tuple({}, quant).ops[i]


def tensors(state, quant, images):
    """Every op's output on `images`, by the numpy kernels (the specification)."""
    return [value for _, value in numpy_graph(state, quant).walk(np.asarray(images, dtype=np.int64), run_numpy)]


def unclamped(state, quant, values, i):
    """Op i's output with its clamp removed (what the clamp cut away is where it binds)."""
    if quant[i]["op"] == "lut":                    # the clamp is inside the table: _rewrite kept it unclamped
        return np.asarray(quant[i]["table_unclamped"])[values[quant[i]["inputs"][0]]]
    op = dataclasses.replace(with_zps(quant, i), qmin=-WIDE, qmax=WIDE)
    return KINDS[op.kind].numpy([values[j] for j in op.inputs], op, params_of(state, quant[i]))


def padded_with(state, quant, values, i, pad_value):
    """Op i (a padded conv or max pool) with its input padded by `pad_value` in raw uint8 terms
    (instead of z_x for a conv, instead of "never wins" for a max pool)."""
    op = with_zps(quant, i)
    (top, left, bottom, right), x = sides(op.padding), values[op.inputs[0]]
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=pad_value)
    op = dataclasses.replace(op, attrs=dict(op.attrs, padding=[0] * len(op.padding)))
    return KINDS[op.kind].numpy([x], op, params_of(state, quant[i]))
