"""The RTL engine on random chain graphs (c/rtl/engine/, docs/fpga.md): convs of random kernel, stride,
padding and dilation (some with BN and ReLU/ReLU6), max pools of random window, stride, padding and
ceil_mode, linear layers; every conv and linear then gets a random output zero point and a narrow clamp
(tests/narrow_graphs.py's rewrite), so every op but the first reads a non-zero zero point.  Each graph
is exported for one target (the UP5K's 8 lanes with streamed weights, the ECP5's 32 lanes with weights
in initialised block RAM), simulated by Verilator on a few images, and every op's output (the
testbench's per-op dump) and the logits must equal the numpy engine's."""
import numpy as np
import pytest
import torch
from torch import nn

from model.formats import rtl_export
from model.formats.golden import layer_outputs
from model.quant.quantize import build_integer_graph
from tests import rtl_sim
from tests.narrow_graphs import _rewrite, q
from tests.random_models import _randomize_bn, make_cfg

GRAPHS = 4
IMAGES = 3


@pytest.fixture(scope="module")
def tools():
    rtl_sim.need_tools()


def random_chain(rng):
    """(nn.Sequential, input shape): 2 to 4 convs or max pools, then one or two linear layers."""
    shape = (int(rng.integers(1, 4)), int(rng.integers(9, 15)), int(rng.integers(9, 15)))
    layers, x = [], torch.zeros(1, *shape)
    while len([m for m in layers if isinstance(m, (nn.Conv2d, nn.MaxPool2d))]) < rng.integers(2, 5):
        pair = lambda lo, hi: (int(rng.integers(lo, hi)), int(rng.integers(lo, hi)))  # noqa: E731
        if rng.random() < 0.35:
            k = pair(2, 4)
            block = [nn.MaxPool2d(k, stride=pair(1, 3), padding=(int(rng.integers(0, k[0] // 2 + 1)),
                                                                   int(rng.integers(0, k[1] // 2 + 1))),
                                  ceil_mode=bool(rng.integers(2)))]
        else:
            k, d = pair(1, 5), pair(1, 3)
            pad = tuple(int(rng.integers(0, min(3, dd * (kk - 1) + 1))) for kk, dd in zip(k, d))   # below the window
            block = [nn.Conv2d(x.shape[1], int(rng.integers(1, 20)), k, stride=pair(1, 3), padding=pad, dilation=d)]
            if rng.random() < 0.5:
                block += [nn.BatchNorm2d(block[0].out_channels), (nn.ReLU, nn.ReLU6)[int(rng.integers(2))]()]
        try:
            y = nn.Sequential(*block)(x)
        except RuntimeError:                   # a window larger than its padded input
            continue
        if min(y.shape[2:]) >= 1:
            layers, x = layers + block, y
    hidden = int(rng.integers(5, 24))
    layers += [nn.Flatten(), nn.Linear(x.numel(), hidden)] + ([nn.ReLU()] if rng.random() < 0.5 else [])
    return nn.Sequential(*layers, nn.Linear(hidden, 10)), shape


def random_graph(seed):
    """(state, quant_list, test images) of a random chain with random zero points and narrow clamps."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    net, shape = random_chain(rng)
    net = _randomize_bn(net, torch.Generator().manual_seed(seed)).eval()
    images = torch.randint(0, 256, (32 + IMAGES, *shape), generator=torch.Generator().manual_seed(seed),
                           dtype=torch.uint8)
    cfg = make_cfg(model="narrow", weight_mode=("per_channel", "per_tensor")[seed % 2], multiplier_bits=16)
    state, quant = build_integer_graph(net, images[:32], cfg, "cifar10", {})
    state = {k: v.clone() for k, v in state.items()}
    rewrites = {}
    for op in quant[1:]:
        if op["op"] in ("conv", "linear"):
            lo = int(rng.integers(0, 120))
            rewrites[op["name"]] = q(int(rng.integers(1, 256)), lo, int(rng.integers(lo + 20, 256)),
                                     float(rng.uniform(1, 4)))
    _rewrite(state, quant, rewrites)
    return state, quant, images[32:].numpy()


@pytest.mark.parametrize("seed", range(GRAPHS))
def test_random_chain_equals_the_numpy_engine_op_by_op(tools, tmp_path, seed):
    state, quant, images = random_graph(seed)
    kinds = {op["op"] for op in quant[1:]}
    assert {"conv", "linear"} <= kinds and all(op["zero_point"] for op in quant[1:] if op["op"] != "maxpool")
    target = ("up5k", "ecp5")[seed // 2 % 2]          # seeds 0..3: each target in both weight modes
    rtl_export.write_export(state, quant, str(tmp_path), target=target)
    model_dir = str(tmp_path / "narrow_rtl")
    sim = rtl_sim.build(model_dir, tmp_path / "obj")
    logits, layers, _ = rtl_sim.run(sim, model_dir, images, str(tmp_path), layers=True)
    expected = layer_outputs(state, quant, images)
    for i, op in enumerate(quant):
        start = sum(int(np.prod(o["shape"])) for o in quant[:i])
        got = layers[:, start:start + int(np.prod(op["shape"]))]
        assert np.array_equal(got, expected[i].reshape(len(images), -1)), f"op {i} ({op['name']}, {op['op']}), {target}"
    assert np.array_equal(logits, expected[-1].reshape(len(images), -1))
