"""mixed_precision.py (issue 27 item 5) on a tiny model of your own: the chosen widths within the budget
and accepted by the quantizer, the search exact and monotone in its budget, the frontier's files, the
sensitivity cache, and every bad budget one `config error:` line."""
import itertools
import json
import re

import numpy as np
import pytest
import torch

import mixed_precision as mp
from model import api
from model.formats.export_format import packed_bytes
from tests.scripts import run

TINY_NET = '''
import torch.nn.functional as F
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 12, 3, padding=1)
        self.fc = nn.Linear(12 * 4 * 4, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))
'''
LAYER_WEIGHTS = {"conv1": 6 * 9, "conv2": 12 * 6 * 9, "fc": 10 * 192}
W8_BYTES = sum(LAYER_WEIGHTS.values())
BUDGET = W8_BYTES * 2 // 5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny.py, its seeded checkpoint and data.npz: 300 random 1x16x16 images labelled by the float model
    itself (float accuracy 100%, so what lower widths lose shows)."""
    tmp = tmp_path_factory.mktemp("mixed")
    (tmp / "tiny.py").write_text(TINY_NET)
    namespace = {}
    exec(TINY_NET, namespace)
    torch.manual_seed(0)
    net = namespace["Tiny"]().eval()
    torch.save(net.state_dict(), tmp / "tiny.pth")
    x = torch.randint(0, 256, (300, 1, 16, 16), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    with torch.no_grad():
        y = net(x.float() / 255.0).argmax(1)
    np.savez(tmp / "data.npz", x=x.numpy(), y=y.numpy())
    return tmp, net, x


def search(tmp, *args):
    return run("mixed_precision.py", f"--model={tmp / 'tiny.py'}:Tiny", f"--checkpoint={tmp / 'tiny.pth'}",
               f"--calib_data={tmp / 'data.npz'}", "--calib_images=100", "--search_images=200",
               f"--results_dir={tmp / 'out'}", *args)


def error_lines(proc):
    return [ln for ln in re.split(r"[\r\n]", proc.stderr) if ln.strip() and ":" in ln and "it/s" not in ln
            and "s/it" not in ln]


@pytest.fixture(scope="module")
def searched(tiny):
    """The search at 2/5 of the W8 bytes (between W3 and W4), with a two-point frontier."""
    tmp, _, _ = tiny
    proc = search(tmp, f"--budget_bytes={BUDGET}", "--frontier=0.4,0.6")
    assert proc.returncode == 0, proc.stderr
    return proc


def test_chosen_widths_fit_the_budget_and_quantize(tiny, searched):
    tmp, net, x = tiny
    chosen = json.loads((tmp / "out" / "Tiny_bits.json").read_text())
    assert set(chosen) == set(LAYER_WEIGHTS)
    bits = {layer: widths["weight_bits"] for layer, widths in chosen.items()}
    assert all(b in mp.CANDIDATE_BITS for b in bits.values())
    assert sum(packed_bytes(LAYER_WEIGHTS[layer], b) for layer, b in bits.items()) <= BUDGET
    assert len(set(bits.values())) > 1, bits          # no one width fits 2/5 of the bytes closely
    state, quant_list = api.quantize(net, x[:100], name="Tiny", bits=chosen)
    assert {op["name"]: op["weight_bits"] for op in quant_list if "weight_bits" in op} == bits
    assert quant_list[0]["widths"]["bits"] == chosen
    assert mp.tuple_cost(quant_list, "bytes") <= BUDGET


def test_frontier_files(tiny, searched):
    tmp, _, _ = tiny
    result = json.loads((tmp / "out" / "Tiny_frontier.json").read_text())
    assert [p["weight_bits"] for p in result["uniform"]] == list(mp.CANDIDATE_BITS)
    assert [p["bytes"] for p in result["uniform"]] == [sum(packed_bytes(n, b) for n in LAYER_WEIGHTS.values())
                                                       for b in mp.CANDIDATE_BITS]
    assert [p["fraction_of_w8"] for p in result["searched"]] == [0.4, 0.6]
    for p in result["searched"]:
        assert p["bytes"] <= p["budget_bytes"] == int(p["fraction_of_w8"] * W8_BYTES)
        assert 0 <= p["accuracy"] <= 1
    assert result["float_accuracy"] == 1.0 and result["images"] == 200
    assert (tmp / "out" / "Tiny_frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_takes_the_cached_sensitivities(tiny, searched):
    tmp, _, _ = tiny
    assert "sensitivities from" not in searched.stdout
    proc = search(tmp, f"--budget_bytes={W8_BYTES // 3}", "--frontier=")
    assert proc.returncode == 0, proc.stderr
    assert "sensitivities from" in proc.stdout
    bits = json.loads((tmp / "out" / "Tiny_bits.json").read_text())
    assert sum(packed_bytes(LAYER_WEIGHTS[layer], w["weight_bits"]) for layer, w in bits.items()) <= W8_BYTES // 3


def test_sensitivity_lowers_as_the_quantizer_does(tiny, searched):
    """The sensitivities follow --weight_method / --bias_correction (the search's default: GPTQ and bias
    correction below 8 bits): rounding to nearest costs more at 2 and 3 bits, and is measured afresh,
    not taken from the other method's cache."""
    tmp, _, _ = tiny
    proc = search(tmp, f"--budget_bytes={BUDGET}", "--frontier=", "--weight_method=rtn", "--bias_correction=off")
    assert proc.returncode == 0, proc.stderr
    assert "sensitivities from" not in proc.stdout
    rtn = json.loads((tmp / "out" / "Tiny_sensitivity.json").read_text())["layers"]
    searched_again = search(tmp, f"--budget_bytes={BUDGET}", "--frontier=")
    assert "sensitivities from" not in searched_again.stdout
    auto = json.loads((tmp / "out" / "Tiny_sensitivity.json").read_text())["layers"]
    for bits in ("3", "2"):
        assert sum(auto[n][bits]["kl"] for n in auto) < sum(rtn[n][bits]["kl"] for n in rtn), bits
    assert all(auto[n]["8"] == rtn[n]["8"] for n in auto)        # 8 bits: rounding to nearest either way


def random_layers(count, seed):
    """A layer table and sensitivities that fall as the width rises, as a measured one does."""
    rng = np.random.default_rng(seed)
    layers = {f"l{i}": {"weights": int(rng.integers(10, 5000)), "macs": int(rng.integers(100, 10 ** 6)),
                        "act_bits": int(rng.choice([4, 8]))} for i in range(count)}
    sensitivity = {name: {str(b): {"kl": float(rng.random() * 2.0 ** -b)} for b in mp.CANDIDATE_BITS}
                   for name in layers}
    return layers, sensitivity


@pytest.mark.parametrize("kind", ["bytes", "bitops"])
def test_search_is_exact(kind):
    """Every budget's choice is the least summed KL of all configurations within it (brute force)."""
    layers, sensitivity = random_layers(4, seed=3)
    every = [(sum(mp.layer_cost(layers[n], b, kind) for n, b in zip(layers, bits)),
              sum(sensitivity[n][str(b)]["kl"] for n, b in zip(layers, bits)))
             for bits in itertools.product(mp.CANDIDATE_BITS, repeat=len(layers))]
    front = mp.pareto_front(layers, sensitivity, kind)
    for budget in np.linspace(min(c for c, _ in every), max(c for c, _ in every), 40):
        cost, kl, bits = mp.choose(front, budget)
        assert cost <= budget
        assert cost == sum(mp.layer_cost(layers[n], b, kind) for n, b in bits.items())
        assert kl == pytest.approx(min(s for c, s in every if c <= budget))


def test_tighter_budget_never_more_bytes():
    layers, sensitivity = random_layers(12, seed=5)
    front = mp.pareto_front(layers, sensitivity, "bytes")
    chosen = [mp.choose(front, budget)[0] for budget in range(front[-1][0], front[0][0] - 1, -97)]
    assert chosen == sorted(chosen, reverse=True)
    assert mp.choose(front, front[0][0] - 1) is None


@pytest.mark.parametrize("args, words", [
    ((), "give one budget"),
    (("--budget_bytes=100", "--budget_bitops=100"), "give one budget"),
    (("--budget_bytes=0",), "expected a positive number"),
    (("--budget_bitops=-5",), "expected a positive number"),
    (("--budget_bytes=many",), "expected a int"),
    (("--budget_bytes=10",), "below the smallest configuration"),
    (("--budget_bytes=1000", "--frontier=0.5,2"), "--frontier=0.5,2"),
    (("--budget_bytes=1000", "--weight_bits=4"), "chooses the weight bits"),
    (("--budget_bytes=1000", "--search_images=250"), "held-out images"),
])
def test_bad_settings_one_line(tiny, args, words):
    tmp, _, _ = tiny
    proc = search(tmp, *args)
    lines = error_lines(proc)
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("config error:"), proc.stderr
    assert words in lines[0]
