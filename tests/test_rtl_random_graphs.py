"""The RTL engine on random graphs (c/rtl/engine/, docs/fpga.md).  Chains: convs of random kernel, stride,
padding and dilation (some with BN and ReLU/ReLU6), max pools of random window, stride, padding and
ceil_mode, linear layers.  Graphs of the newer kinds: grouped and depthwise convs (channel multipliers
1 to 12, so that a group's channels sometimes outnumber the UP5K's 8 lanes), average pools of random
window and stride, residual adds (x + conv(x), some with a ReLU), a global average pool before the
classifier, some with weights of 2 to 7 bits.  Every conv, linear, average pool and add then gets a
random output zero point and a narrow clamp (tests/narrow_graphs.py's rewrite), so every op but the
first reads a non-zero zero point.  Each graph is exported for one target (the UP5K's 8 lanes with
streamed weights, the ECP5's 32 lanes with weights in initialised block RAM), simulated by Verilator on
a few images, and every op's output (the testbench's per-op dump) and the logits must equal the numpy
engine's.  So must narrow_graphs.py's hand-made cases of the same kinds."""
import re

import numpy as np
import pytest
import torch
from torch import nn

from model.formats import rtl_export
from model.formats.golden import layer_outputs
from model.quant.quantize import build_integer_graph
from tests import narrow_graphs, rtl_sim
from tests.narrow_graphs import _rewrite, q
from tests.random_models import _randomize_bn, make_cfg

CHAINS = 4          # seeds 0..3: chains of conv, max pool, linear
GRAPHS = 4          # seeds 4..7: grouped / depthwise convs, average pools, adds
IMAGES = 3
REQUANTIZING = ("conv", "linear", "avgpool", "add")
NARROW_CASES = ("grouped_conv_pad_zp90", "depthwise_zp_nonzero", "conv_asymmetric_dilated_zp200", "avgpool_narrow",
                "add_clamp_excludes_zp")
# the most cycles an image may take: depthwise_zp_nonzero on the UP5K takes 16,360, and 28,218 where each
# depthwise output drains all 8 lanes, not its group's 1 or 2 (the bytes stay right: the extra lanes'
# values land where the next group writes later)
MAX_CYCLES = {"depthwise_zp_nonzero": 18_000}


@pytest.fixture(scope="module")
def tools():
    rtl_sim.need_tools()


class Residual(nn.Module):
    """x + body(x), then `after` (a ReLU, fused into the add's clamp, or nothing)."""

    def __init__(self, body, after):
        super().__init__()
        self.body, self.after = body, after

    def forward(self, x):
        return self.after(x + self.body(x))


def _pair(rng, lo, hi):
    return int(rng.integers(lo, hi)), int(rng.integers(lo, hi))


def _bn_act(rng, channels):
    """BN and ReLU/ReLU6 after a conv half of the time."""
    if rng.random() < 0.5:
        return [nn.BatchNorm2d(channels), (nn.ReLU, nn.ReLU6)[int(rng.integers(2))]()]
    return []


def _new_kind_block(rng, kind, c):
    """A block of `kind` for an input of c channels."""
    if kind == "grouped":
        groups = int(rng.choice([g for g in range(2, c + 1) if c % g == 0]))
        mult = int(rng.integers(1, 4)) if rng.random() < 0.7 else int(rng.integers(9, 13))
        k, d = _pair(rng, 1, 4), _pair(rng, 1, 3)
        pad = tuple(int(rng.integers(0, min(3, dd * (kk - 1) + 1))) for kk, dd in zip(k, d))
        conv = nn.Conv2d(c, groups * mult, k, stride=_pair(rng, 1, 3), padding=pad, dilation=d, groups=groups)
        return [conv] + _bn_act(rng, conv.out_channels)
    if kind == "avgpool":
        k = _pair(rng, 1, 4)
        return [nn.AvgPool2d(k, stride=_pair(rng, 1, 4))]
    k = int(rng.choice([1, 3]))                        # residual: a shape-keeping conv (some depthwise)
    groups = c if rng.random() < 0.3 else 1
    body = [nn.Conv2d(c, c, k, padding=k // 2, groups=groups)] + _bn_act(rng, c)
    return [Residual(nn.Sequential(*body), nn.ReLU() if rng.random() < 0.5 else nn.Identity())]


def random_chain(rng, new_kinds=False):
    """(nn.Sequential, input shape): 2 to 4 convs or max pools (new_kinds: a grouped or depthwise conv, an
    average pool, a residual add, then 0 to 2 of them or plain convs), then one or two linear layers
    (new_kinds: half the time after a global average pool)."""
    shape = (int(rng.integers(1, 4)), int(rng.integers(9, 15)), int(rng.integers(9, 15)))
    layers, x, todo = [], torch.zeros(1, *shape), []
    if new_kinds:                              # a 1x1 conv first: channels for the groups
        layers = [nn.Conv2d(shape[0], int(rng.integers(2, 7)), 1)]
        x = layers[0](x)
        todo = ["grouped", "avgpool", "residual"] + list(rng.choice(["grouped", "avgpool", "residual", "conv"],
                                                                   int(rng.integers(0, 3))))
        rng.shuffle(todo)
    while (todo if new_kinds else len([m for m in layers if isinstance(m, (nn.Conv2d, nn.MaxPool2d))])
           < rng.integers(2, 5)):
        if new_kinds and todo[0] != "conv":
            block = _new_kind_block(rng, todo[0], x.shape[1])
        elif rng.random() < 0.35 and not new_kinds:
            k = _pair(rng, 2, 4)
            block = [nn.MaxPool2d(k, stride=_pair(rng, 1, 3), padding=(int(rng.integers(0, k[0] // 2 + 1)),
                                                                   int(rng.integers(0, k[1] // 2 + 1))),
                                  ceil_mode=bool(rng.integers(2)))]
        else:
            k, d = _pair(rng, 1, 5), _pair(rng, 1, 3)
            pad = tuple(int(rng.integers(0, min(3, dd * (kk - 1) + 1))) for kk, dd in zip(k, d))   # below the window
            conv = nn.Conv2d(x.shape[1], int(rng.integers(1 + new_kinds, 20)), k, stride=_pair(rng, 1, 3), padding=pad,
                             dilation=d)
            block = [conv] + _bn_act(rng, conv.out_channels)
        try:
            y = nn.Sequential(*block)(x)
        except RuntimeError:                   # a window larger than its padded input
            continue
        if min(y.shape[2:]) >= 1:
            layers, x = layers + block, y
            todo = todo[1:]
    if new_kinds and rng.random() < 0.5:
        layers.append(nn.AdaptiveAvgPool2d(1))
        x = x.mean((2, 3), keepdim=True)
    hidden = int(rng.integers(5, 24))
    layers += [nn.Flatten(), nn.Linear(x.numel(), hidden)] + ([nn.ReLU()] if rng.random() < 0.5 else [])
    return nn.Sequential(*layers, nn.Linear(hidden, 10)), shape


def random_graph(seed):
    """(state, quant_list, test images) of a random graph with random zero points and narrow clamps:
    seeds below CHAINS chains, the others graphs of the newer kinds (two with low-bit weights)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    new_kinds = seed >= CHAINS
    net, shape = random_chain(rng, new_kinds)
    net = _randomize_bn(net, torch.Generator().manual_seed(seed)).eval()
    images = torch.randint(0, 256, (32 + IMAGES, *shape), generator=torch.Generator().manual_seed(seed),
                           dtype=torch.uint8)
    bits = int(rng.integers(2, 8)) if new_kinds and seed % 4 in (1, 2) else 8      # seeds 5 and 6: both modes
    cfg = make_cfg(model="narrow", weight_mode=("per_channel", "per_tensor")[seed % 2], multiplier_bits=16,
                   weight_bits=bits)
    state, quant = build_integer_graph(net, images[:32], cfg, "cifar10", {})
    state = {k: v.clone() for k, v in state.items()}
    rewrites = {}
    for op in quant[1:]:
        if op["op"] in REQUANTIZING:
            lo = int(rng.integers(0, 120))
            rewrites[op["name"]] = q(int(rng.integers(1, 256)), lo, int(rng.integers(lo + 20, 256)),
                                     float(rng.uniform(1, 4)))
    _rewrite(state, quant, rewrites)
    return state, quant, images[32:].numpy()


def equals_numpy_op_by_op(state, quant, images, target, tmp_path):
    """Export for target, simulate, and compare every op's output and the logits with the numpy engine's;
    returns the cycles an image took."""
    rtl_export.write_export(state, quant, str(tmp_path), target=target)
    model_dir = str(tmp_path / f"{quant[0]['model']}_rtl")
    sim = rtl_sim.build(model_dir, tmp_path / "obj")
    logits, layers, out = rtl_sim.run(sim, model_dir, images, str(tmp_path), layers=True)
    expected = layer_outputs(state, quant, images)
    for i, op in enumerate(quant):
        start = sum(int(np.prod(o["shape"])) for o in quant[:i])
        got = layers[:, start:start + int(np.prod(op["shape"]))]
        assert np.array_equal(got, expected[i].reshape(len(images), -1)), f"op {i} ({op['name']}, {op['op']}), {target}"
    assert np.array_equal(logits, expected[-1].reshape(len(images), -1))
    return int(re.search(r"(\d+) cycles per image", out).group(1))


def test_the_random_graphs_hold_every_kind():
    """The graphs below, between them: depthwise convs, grouped convs whose groups fit the UP5K's 8 lanes
    and one whose group does not, average pools (a global one), adds, low-bit weights in both modes."""
    seen = set()
    for seed in range(CHAINS, CHAINS + GRAPHS):
        state, quant, _ = random_graph(seed)
        assert {"conv", "linear", "avgpool", "add"} <= {op["op"] for op in quant[1:]}
        assert all(op["zero_point"] for op in quant[1:] if op["op"] != "maxpool")
        for op in quant[1:]:
            cin = quant[op["inputs"][0]]["shape"][0]
            groups = op.get("groups", 1)
            seen |= {name for name, on in (
                ("depthwise", groups > 1 and groups == cin), ("grouped", 1 < groups < cin),
                ("group wider than 8 lanes", groups > 1 and op["shape"][0] // groups > 8),
                ("global avgpool", op["op"] == "avgpool" and op["shape"][1:] == [1, 1]),
                (f"{op.get('weight_bits', 8)}-bit {quant[0]['weight_mode']}", op.get("weight_bits", 8) < 8)) if on}
    assert {"depthwise", "grouped", "group wider than 8 lanes", "global avgpool"} <= seen
    assert any(k.endswith("per_channel") for k in seen) and any(k.endswith("per_tensor") for k in seen), seen


@pytest.mark.parametrize("seed, target", [(seed, ("up5k", "ecp5")[seed // 2 % 2]) for seed in range(CHAINS)] +
                         [(seed, target) for seed in range(CHAINS, CHAINS + GRAPHS) for target in ("up5k", "ecp5")])
def test_random_graph_equals_the_numpy_engine_op_by_op(tools, tmp_path, seed, target):
    """Chains: each target in both weight modes; the other graphs: on both targets."""
    state, quant, images = random_graph(seed)
    assert {"conv", "linear"} <= {op["op"] for op in quant[1:]}
    assert all(op["zero_point"] for op in quant[1:] if op["op"] != "maxpool")
    equals_numpy_op_by_op(state, quant, images, target, tmp_path)


@pytest.mark.parametrize("case", NARROW_CASES)
def test_narrow_case_equals_the_numpy_engine_op_by_op(tools, tmp_path, case):
    """narrow_graphs.py's grouped, depthwise, avgpool and add cases: zero points far from 0, clamps
    that exclude them; each target in both weight modes.  A depthwise conv drains its groups' lanes
    only (MAX_CYCLES)."""
    index = NARROW_CASES.index(case)
    state, quant, images = narrow_graphs.build(case, ("per_channel", "per_tensor")[index % 2], n_test=IMAGES)
    target = ("up5k", "ecp5")[index // 2 % 2]
    cycles = equals_numpy_op_by_op(state, quant, images.numpy(), target, tmp_path)
    assert cycles <= MAX_CYCLES.get(case, cycles), f"{case} on {target}: {cycles} cycles an image"
