"""The per-layer report (`export_quant_model.py --report=PATH.json`, model/report.py): LeNet's committed
tuple through the script (JSON fields, MACs against an independent count with forward hooks, accumulator
bits against the proven bound, activation SQNR, the PNG, the printed table), and random graphs through
the Python API (every op matched to its float tensor, with and without an input normalisation)."""
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import model as models
from model import report
from tests.random_models import ARCHS, _randomize_bn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = ("index", "name", "kind", "shape", "macs", "weight_bytes", "bias_bytes", "activation_bytes",
          "live_activation_bytes", "acc_bound", "acc_bits", "multiplier_bits", "weight_sqnr_db", "activation_sqnr_db")


def hook_macs(net, shape):
    """MACs of one image counted independently of the report: forward hooks on the float torch model."""
    counts = []

    def hook(mod, inputs, out):
        if isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            counts.append(out.numel() // out.shape[0] * mod.in_channels // mod.groups * kh * kw)
        elif isinstance(mod, nn.Linear):
            counts.append(mod.out_features * mod.in_features)

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(2, *shape))
    finally:
        for h in handles:
            h.remove()
    return sum(counts)


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    """export_quant_model.py --report on the committed LeNet tuple, exported to a temporary folder."""
    tmp = tmp_path_factory.mktemp("report")
    path = tmp / "lenet_report.json"
    proc = subprocess.run([sys.executable, "export_quant_model.py", f"--export_dir={tmp / 'export'}",
                           f"--report={path}", "--threads=1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    state, quant_list = torch.load(os.path.join(ROOT, "quantization", "lenet_quant.tuple"), weights_only=True)
    with open(path) as f:
        rep = json.load(f)
    return {"path": path, "stdout": proc.stdout, "report": rep, "state": state, "quant_list": quant_list}


def test_one_entry_per_op(lenet):
    rep, quant_list = lenet["report"], lenet["quant_list"]
    assert [r["name"] for r in rep["ops"]] == [op["name"] for op in quant_list]
    assert [r["kind"] for r in rep["ops"]] == [op["op"] for op in quant_list]
    for i, (r, op) in enumerate(zip(rep["ops"], quant_list)):
        assert all(key in r for key in FIELDS), set(FIELDS) - set(r)
        assert r["index"] == i and r["shape"] == op["shape"]
        assert r["activation_bytes"] == int(np.prod(op["shape"]))
        w = lenet["state"].get(op["name"] + ".weight")
        assert r["weight_bytes"] == (w.numel() if w is not None else 0)
        assert r["bias_bytes"] == (4 * op["shape"][0] if w is not None else 0)
    assert rep["sqnr_images"] == report.REPORT_IMAGES


def test_macs_match_an_independent_count(lenet):
    rep = lenet["report"]
    net = models.build("lenet")
    expected = hook_macs(net, lenet["quant_list"][0]["shape"])
    assert rep["totals"]["macs"] == expected == sum(r["macs"] for r in rep["ops"])
    assert expected == 416_520          # LeNet: 117,600 + 240,000 + 48,000 + 10,080 + 840
    assert rep["totals"]["weight_bytes"] == sum(v.numel() for k, v in lenet["state"].items() if k.endswith(".weight"))


def test_accumulator_and_multiplier_bits(lenet):
    rows = {r["name"]: r for r in lenet["report"]["ops"]}
    for op in lenet["quant_list"]:
        r = rows[op["name"]]
        if "acc_bound" not in op:
            assert r["acc_bits"] is None
            continue
        assert r["acc_bound"] == op["acc_bound"]              # the export's proof = the quantizer's
        bits = r["acc_bits"]
        assert bits <= 32
        assert op["acc_bound"] <= 2 ** (bits - 1) - 1 and op["acc_bound"] > 2 ** (bits - 2) - 1  # the fewest that hold it
        m = lenet["state"][op["name"] + ".multiplier"]
        assert 2 <= r["multiplier_bits"] <= lenet["quant_list"][0]["multiplier_bits"]
        assert int(m.max()) < 2 ** (r["multiplier_bits"] - 1)
    assert rows["features_0"]["acc_bits"] >= int(lenet["quant_list"][1]["acc_bound"]).bit_length() + 1
    assert rows["classifier_0"]["acc_bits"] == 24                    # bound 4,384,785 < 2^23
    assert lenet["report"]["totals"]["acc_bits"] == max(r["acc_bits"] or 0 for r in rows.values())


def test_live_activations(lenet):
    rep = lenet["report"]
    rows = rep["ops"]
    assert rows[2]["live_activation_bytes"] == 6 * 28 * 28 + 6 * 14 * 14     # conv output read by the pool + its output
    assert rep["totals"]["peak_live_activation_bytes"] == max(r["live_activation_bytes"] for r in rows) == 5880
    assert rep["totals"]["arena_bytes"] >= rep["totals"]["peak_live_activation_bytes"]


def test_activation_sqnr(lenet):
    rows = lenet["report"]["ops"]
    assert lenet["report"]["totals"]["unmatched_ops"] == []
    assert rows[0]["activation_sqnr_db"] is None and "input" in rows[0]["activation_sqnr_note"]
    for r in rows[1:]:
        assert r["activation_sqnr_db"] is not None and math.isfinite(r["activation_sqnr_db"]), r
        assert r["activation_sqnr_db"] > 20, r
        if r["weight_sqnr_db"] is not None:
            assert 30 < r["weight_sqnr_db"] < 60


def test_png_and_table(lenet):
    png = os.path.splitext(lenet["path"])[0] + ".png"
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    rows = [m.groups() for m in (re.match(r"^\s*(\d+) (\S+)\s+(\S+)\s", line) for line in lenet["stdout"].splitlines())
            if m]
    assert [(int(i), name, kind) for i, name, kind in rows] == \
        [(i, op["name"], op["op"]) for i, op in enumerate(lenet["quant_list"])]
    total = next(line for line in lenet["stdout"].splitlines() if line.split()[:1] == ["total"])
    assert "416,520" in total and "61,470" in total and "5,880" in total


def _random_net(arch, seed=0):
    cls, _, shape = ARCHS[arch]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = _randomize_bn(cls(), gen).eval()
    return net, torch.randint(0, 256, (40, *shape), generator=gen, dtype=torch.uint8), shape


@pytest.mark.parametrize("arch,norm", [("residual", False), ("data_movement", True), ("activations", False)])
def test_random_graph_api(arch, norm, tmp_path):
    """A random graph of tests/random_models.py through the Python API: every op but the input matched to
    its float tensor (fused ReLUs, adds, concats, slices, shuffles, tables, the normalisation op)."""
    from model import api
    net, x, shape = _random_net(arch)
    kw = dict(input_mean=[0.5] * shape[0], input_std=[0.25] * shape[0]) if norm else {}
    state, quant_list = api.quantize(net, x[:32], name=arch, **kw)
    rep = report.layer_report(state, quant_list, net, x[32:])
    assert rep["totals"]["unmatched_ops"] == []
    for r in rep["ops"][1:]:
        assert r["activation_sqnr_db"] is not None and r["activation_sqnr_db"] > 15, r
    norm_macs = int(np.prod(shape)) if norm else 0                     # the 1x1 depthwise normalisation op
    if arch == "residual":
        assert rep["totals"]["macs"] == hook_macs(net, shape) + norm_macs
    written = report.write(rep, tmp_path / "r.json")
    assert json.load(open(written[0]))["totals"]["macs"] == rep["totals"]["macs"]
    assert os.path.getsize(written[1]) > 1000
    assert "total" in report.table(rep)


def test_without_float_model():
    """No float model or images: every activation SQNR null, the reason in the report and the table."""
    state, quant_list = torch.load(os.path.join(ROOT, "quantization", "lenet_quant.tuple"), weights_only=True)
    rep = report.layer_report(state, quant_list, note="no images")
    assert all(r["activation_sqnr_db"] is None for r in rep["ops"]) and rep["sqnr_note"] == "no images"
    assert "not measured: no images" in report.table(rep)
    assert rep["totals"]["macs"] == 416_520


def test_report_to_a_directory_is_one_error_line(tmp_path):
    proc = subprocess.run([sys.executable, "export_quant_model.py", f"--export_dir={tmp_path / 'e'}",
                           f"--report={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: --report={tmp_path}: is a directory (give a PATH.json)"
    assert not (tmp_path / "e").exists()                 # refused before any work
