"""Zero points far from 0 and narrow clamps (tests/narrow_graphs.py) in every engine.

Every op of the random graphs and of LeNet clamps to 0..255 and every padded op there reads
zero point 0, so a swapped qmin/qmax or a padding of 0 instead of z_x passes those tests.
Here, per named case and weight mode:
  - the case exercises what it claims: the clamps bind (values cut at qmin and at qmax),
    padded ops read a zero point != 0 and their padding changes the result, every op after
    the first reads zero points != 0 through a clamp narrower than 0..255;
  - numpy == torch engine, op by op and end to end;
  - C == numpy in every build (native, portable, OpenMP with 2 threads, ASan, ASan portable,
    --reference) and every ISA build of the optimized kernels this CPU runs (--isa, batches of 5
    with a partial last one), bin and txt weights, on the whole graph; on the graph cut after each op the case
    is about (an identity linear layer then copies that op's output into the logits) in the
    native, portable, reference and ASan runs, bin weights;
  - the same in the optimized kernels' 64-bit requantization form (wide multipliers).
"""
import functools
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from model.ops import KINDS
from model.ops.base import keeps_qparams
from model.ops.weighted import ACC_LIMIT, accumulator_bound
from model.engines.torch_engine import TorchIntegerModel
from tests import narrow_graphs
from tests.narrow_graphs import CASES, padded_with, params_of, tensors, unclamped, with_zps
from tests.c_builds import ISAS, force_wide_requantization, missing_flags
from tests.c_engine import C_DIR, assert_clean, export_graph, read_logits, result_line

MODES = ["per_channel", "per_tensor"]
PARAMS = [(name, mode) for name in CASES for mode in MODES]
IDS = [f"{name}-{mode}" for name, mode in PARAMS]
BUILDS = {"native": "inference", "portable": "inference_portable", "omp": "inference_omp",
          "asan": "inference_asan", "asan_portable": "inference_asan_portable"}


@functools.lru_cache(maxsize=None)
def graph(name, mode):
    """(state, quant, images, every op's numpy output): built once per case; tests must not mutate it."""
    state, quant, images = narrow_graphs.build(name, mode)
    return state, quant, images, tensors(state, quant, images.numpy())


def requantizing(op):
    return op["op"] != "input" and not keeps_qparams(KINDS[op["op"]])


# --- the cases exercise what they claim ------------------------------------------------------

@pytest.mark.parametrize("name,mode", PARAMS, ids=IDS)
def test_case_exercises_what_it_claims(name, mode):
    state, quant, images, values = graph(name, mode)
    case = CASES[name]
    names = [op["name"] for op in quant]
    assert quant[0]["zero_point"] == 0 and (quant[0]["qmin"], quant[0]["qmax"]) == (0, 255)
    for i, op in enumerate(quant[1:], 1):
        assert 0 <= op["qmin"] <= op["qmax"] <= 255 and 0 <= op["zero_point"] <= 255, op
        if keeps_qparams(KINDS[op["op"]]):  # legal: a max pool (shuffle, slice, upsample) keeps its input's
            src = quant[op["inputs"][0]]
            want = [src[k] for k in ("zero_point", "qmin", "qmax")]
            if op["op"] == "pad" and op["pad_mode"] == 0:     # a constant pad's clamp widens to hold its value
                want[1:] = [min(want[1], op["pad_value"]), max(want[2], op["pad_value"])]
            assert [op[k] for k in ("zero_point", "qmin", "qmax")] == want
            continue
        # every requantizing op was rewritten: zero point != 0, clamp narrower than 0..255 ...
        assert op["name"] in case.rewrites, f"{op['name']} keeps the quantizer's parameters"
        assert op["zero_point"] != 0 and (op["qmin"], op["qmax"]) != (0, 255), op
        # ... and every op past the first reads zero points != 0 through narrow clamps
        if op["inputs"] != [0]:
            for j in op["inputs"]:
                assert quant[j]["zero_point"] != 0 and (quant[j]["qmin"], quant[j]["qmax"]) != (0, 255), (op, j)
        if KINDS[op["op"]].weighted:       # the accumulator bound holds for the new input clamp
            bound = accumulator_bound(state[op["name"] + ".weight"].numpy(), op["weight_zero_point"],
                                      state[op["name"] + ".bias"].numpy(), quant[op["inputs"][0]])
            assert op["acc_bound"] == bound <= ACC_LIMIT
        # the clamp binds: values were cut at qmin / qmax, and values lie strictly between
        raw, out = unclamped(state, quant, values, i), values[i]
        below, above = (raw < op["qmin"]).any(), (raw > op["qmax"]).any()
        assert (not below or (out == op["qmin"]).any()) and (not above or (out == op["qmax"]).any())
        assert ((out > op["qmin"]) & (out < op["qmax"])).mean() > 0.02, f"{op['name']}: nearly all clamped"
        if op["name"] in case.focus:
            assert below and above, f"{op['name']}: clamp {op['qmin']}..{op['qmax']} does not bind at both ends"
        else:
            assert below or above, f"{op['name']}: clamp {op['qmin']}..{op['qmax']} never binds"
    for target in case.focus + case.padded:
        assert target in names, target
    for target in case.padded:
        i = names.index(target)
        op, src = quant[i], quant[quant[i]["inputs"][0]]
        assert op["op"] in ("conv", "maxpool") and max(op["padding"]) > 0 and src["zero_point"] != 0
        if op["op"] == "conv":             # padding holds z_x: padding with 0 would change the result
            np.testing.assert_array_equal(padded_with(state, quant, values, i, src["zero_point"]), values[i])
            assert not np.array_equal(padded_with(state, quant, values, i, 0), values[i]), target
        else:                              # padding never wins: padding with z_x would
            assert not np.array_equal(padded_with(state, quant, values, i, src["zero_point"]), values[i]), target


def test_cases_cover_every_kind_with_nonzero_input_zero_points():
    seen, shapes = set(), set()
    outside = {"below": False, "above": False}
    for name in CASES:
        _, quant, _, _ = graph(name, "per_channel")
        for op in quant[1:]:
            if op["inputs"] != [0]:
                seen.add(op["op"])
            if op["op"] == "conv":
                cin = quant[op["inputs"][0]]["shape"][0]
                shapes.add("depthwise" if op["groups"] == cin > 1 else "grouped" if op["groups"] > 1 else "dense")
                shapes.add("non-square" if op["kernel"][0] != op["kernel"][1] else "square")
                shapes |= {"dilated"} if op["dilation"] != [1, 1] else set()
                shapes |= {"asymmetric"} if op["padding"][:2] != op["padding"][2:] else set()
            outside["below"] |= requantizing(op) and op["zero_point"] < op["qmin"]
            outside["above"] |= requantizing(op) and op["zero_point"] > op["qmax"]
    missing = set(KINDS) - {"input"} - seen
    assert not missing, f"op kinds with no narrow case in tests/narrow_graphs.py: {sorted(missing)}"
    assert shapes == {"depthwise", "grouped", "dense", "non-square", "square", "dilated", "asymmetric"}
    assert all(outside.values())
    _, quant, _, _ = graph("bn_after_relu", "per_channel")
    bn = next(op for op in quant if op["name"] == "bn")
    assert bn["op"] == "conv" and bn["kernel"] == [1, 1] and bn["groups"] == bn["shape"][0]


# --- numpy == torch --------------------------------------------------------------------------

@pytest.mark.parametrize("name,mode", PARAMS, ids=IDS)
def test_torch_equals_numpy(name, mode):
    state, quant, images, values = graph(name, mode)
    for i, op in enumerate(quant[1:], 1):              # op by op, on the same inputs
        p = {k: torch.from_numpy(np.asarray(v)) for k, v in params_of(state, op).items()}
        got = KINDS[op["op"]].torch([torch.from_numpy(values[j]) for j in op["inputs"]], with_zps(quant, i), p)
        np.testing.assert_array_equal(got.numpy(), values[i], err_msg=f"{name} {mode} op {i} {op['name']}")
    np.testing.assert_array_equal(TorchIntegerModel(state, quant)(images).numpy(),
                                  values[-1].reshape(len(images), -1))


# --- C == numpy ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def binaries():
    if shutil.which("make") is None or shutil.which("gcc") is None:
        pytest.skip("make/gcc not available")
    proc = subprocess.run(["make", "-C", C_DIR, "all", "portable", "omp", "asan", "asan-portable"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {k: os.path.join(C_DIR, v) for k, v in BUILDS.items()}


def cut(state, quant, i):
    """The graph up to op i, then a linear layer that copies op i's output (CHW order) exactly:
    identity weights, bias 0, multiplier 2^14 / 2^14, op i's zero point, clamp 0..255. The C
    engine writes (and scores) only the C values of a Cx1x1 last op, so op i's own output could
    not be read whole."""
    names = {op["name"] for op in quant[:i + 1]}
    sub = {k: v for k, v in state.items() if k.rsplit(".", 1)[0] in names}
    src = quant[i]
    n = int(np.prod(src["shape"]))
    per_channel = quant[0]["weight_mode"] == "per_channel"
    w_zp = 0 if per_channel else 128
    weight = np.full((n, n), w_zp, dtype=np.int64) + np.eye(n, dtype=np.int64)
    sub.update({"readout.weight": torch.from_numpy(weight.astype(np.int8 if per_channel else np.uint8)),
                "readout.bias": torch.zeros(n, dtype=torch.int32),
                "readout.multiplier": torch.full((n,), 1 << 14, dtype=torch.int32),
                "readout.shift": torch.full((n,), 14, dtype=torch.int32)})
    readout = {"op": "linear", "name": "readout", "inputs": [i], "shape": [n, 1, 1], "scale": src["scale"],
               "zero_point": src["zero_point"], "qmin": 0, "qmax": 255, "weight_zero_point": w_zp, "weight_bits": 8,
               "acc_bound": max(src["zero_point"] - src["qmin"], src["qmax"] - src["zero_point"])}
    return sub, quant[:i + 1] + [readout]


# each ISA build of the optimized kernels this CPU runs, in batches of 5 (of 24 images: the last one partial)
ISA_RUNS = [["--isa", isa, "--batch", "5"] for isa in ISAS if not missing_flags(isa)]


def run_c(binary, ex, out, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.run([binary, "--dir", ex["dir"], "--model", ex["model"], *ex["data_args"], "--logits", out,
                           *extra], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("name,mode", PARAMS, ids=IDS)
def test_c_equals_numpy(binaries, tmp_path, name, mode):
    state, quant, images, values = graph(name, mode)
    names = [op["name"] for op in quant]
    ends = sorted({names.index(t) for t in CASES[name].focus + CASES[name].padded})
    runs = [(kind, "bin", []) for kind in BUILDS] + [("native", "bin", extra) for extra in [["--reference"]] + ISA_RUNS]
    txt_runs = [("asan", "txt", []), ("native", "txt", ["--reference"])]
    # the cuts: each kernel set once (VNNI, C99, reference) and ASan; bin only (an identity
    # layer's weight.txt is slow to write)
    cut_runs = [("native", "bin", []), ("portable", "bin", []), ("native", "bin", ["--reference"]), ("asan", "bin", [])]
    for end in [len(quant) - 1] + ends:
        whole = end == len(quant) - 1
        sub_state, sub_quant = (state, quant) if whole else cut(state, quant, end)
        ex = export_graph(str(tmp_path / f"ex{end}"), sub_state, sub_quant, images, seed=end,
                          mode="both" if whole else "bin")
        np.testing.assert_array_equal(ex["logits"], values[end].reshape(len(images), -1))
        for kind, fmt, extra in (runs + txt_runs if whole else cut_runs):
            out = str(tmp_path / f"logits{end}_{kind}_{fmt}{''.join(extra)}.txt")
            proc = run_c(binaries[kind], ex, out, "--format", fmt, *extra)
            assert_clean(proc)
            assert proc.returncode == 0, proc.stderr
            np.testing.assert_array_equal(read_logits(out), ex["logits"],
                                          err_msg=f"{name} {mode} cut after {names[end]}: {kind} {fmt} {extra}")
            correct = int((ex["logits"].argmax(axis=1) == ex["labels"]).sum())
            assert result_line(proc.stdout) == (ex["n"], correct)


@pytest.mark.parametrize("name", list(CASES))
def test_c_wide_requantization_equals_numpy(binaries, tmp_path, name):
    """Channel 0 of every conv/linear layer with a 31-bit multiplier at shift 31, channel 1 at
    shift 58 (test_c_kernels.force_wide_requantization): the optimized kernels' 64-bit
    requantization and its clamp, on the narrow clamps (channel 0 saturates at both ends)."""
    state, quant, images, _ = graph(name, "per_channel")
    state = {k: v.clone() for k, v in state.items()}
    force_wide_requantization(state, quant)
    values = tensors(state, quant, images.numpy())
    layers = [i for i, op in enumerate(quant) if op["op"] in ("conv", "linear")]
    assert any((values[i][:, 0] == quant[i]["qmin"]).any() and (values[i][:, 0] == quant[i]["qmax"]).any()
               for i in layers), "no wide channel saturates at both ends"
    ex = export_graph(str(tmp_path / "ex"), state, quant, images, seed=0, mode="bin")
    np.testing.assert_array_equal(ex["logits"], values[-1].reshape(len(images), -1))
    for kind, extra in [(kind, []) for kind in BUILDS] + [("native", extra) for extra in [["--reference"]] + ISA_RUNS]:
        out = str(tmp_path / f"logits_{kind}{''.join(extra)}.txt")
        proc = run_c(binaries[kind], ex, out, *extra)
        assert_clean(proc)
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_array_equal(read_logits(out), ex["logits"], err_msg=f"{name} wide: {kind} {extra}")
