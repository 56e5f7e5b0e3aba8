"""Weights of 2-8 bits and activations of 4-8 bits on the Python side: the quantizer's widths (per layer by
--bits), the packed weight.bin, model.bin v4 (and v3 read back), the tuple check, the report, and the
numpy and torch engines bit for bit at every width. ONNX: tests/test_onnx_export.py; the C engine:
tests/test_low_bit_c.py."""
import json
import os
import struct

import numpy as np
import pytest
import torch

from model.engines.np_engine import NumpyIntegerModel
from model.engines.torch_engine import TorchIntegerModel
from model.formats.export_format import (HEADER_BYTES, ExportFormatError, crc32, export_paths, pack_weights, packed_bytes,
                                         read_bins, read_model_bin, read_weight_txt, unpack_weights, write_export)
from model.formats.tuple_check import load_tuple, tuple_problem
from model.ops import KINDS, weighted_ops
from model.ops.weighted import weight_range
from model.quant.quantize import QuantizeError
from model.report import layer_report
from tests.random_models import ARCHS, random_quantized
from tests.scripts import run


def test_packing_matches_the_contracts_examples():
    assert pack_weights([3, -2, 7], 4) == bytes([0xE3, 0x07])
    assert pack_weights([3, -2, 1], 3) == bytes([0x73, 0x00])
    assert pack_weights([1, -1, 0, 1, -1], 2) == bytes([0b01001101, 0b11])
    assert pack_weights([-127, 127], 8) == bytes([0x81, 0x7F])


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("mode", ["per_channel", "per_tensor"])
def test_pack_round_trip_and_size(bits, mode):
    low, high = weight_range(mode, bits)
    for count in (1, 7, 8, 9, 1001):
        values = np.random.default_rng(count * bits).integers(low, high + 1, count)
        data = pack_weights(values, bits)
        assert len(data) == packed_bytes(count, bits) == -(-count * bits // 8)
        np.testing.assert_array_equal(unpack_weights(data, count, bits, mode == "per_channel"), values)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("weight_bits, act_bits", [(6, 8), (4, 8), (3, 8), (2, 8), (4, 4), (8, 4)])
def test_numpy_and_torch_bit_exact_at_every_width(arch, weight_bits, act_bits):
    state, quant_list, images = random_quantized(arch, "per_channel", 3, weight_bits=weight_bits, act_bits=act_bits)
    assert tuple_problem(state, quant_list) is None
    low, high = weight_range("per_channel", weight_bits)
    for op in weighted_ops(quant_list):
        w = state[op["name"] + ".weight"]
        assert op["weight_bits"] == weight_bits and low <= int(w.min()) and int(w.max()) <= high
    for op in quant_list[1:-1]:
        top = (1 << op["act_bits"]) - 1
        assert op["qmax"] <= top and op["zero_point"] <= top
    assert {op["act_bits"] for op in quant_list[1:-1]} == {act_bits}
    assert quant_list[-1]["act_bits"] == 8                  # the logits stay at 8 bits
    a = NumpyIntegerModel(state, quant_list)(images.numpy())
    np.testing.assert_array_equal(a, TorchIntegerModel(state, quant_list)(images).numpy())


@pytest.mark.parametrize("weight_bits", [2, 4, 7])
def test_per_tensor_weights_at_low_bits(weight_bits):
    state, quant_list, images = random_quantized("residual", "per_tensor", 1, weight_bits=weight_bits)
    assert tuple_problem(state, quant_list) is None
    for op in weighted_ops(quant_list):
        assert 0 <= op["weight_zero_point"] < 1 << weight_bits
        assert int(state[op["name"] + ".weight"].max()) < 1 << weight_bits
    np.testing.assert_array_equal(NumpyIntegerModel(state, quant_list)(images.numpy()),
                                  TorchIntegerModel(state, quant_list)(images).numpy())


def test_lower_bits_lose_more_weight_sqnr():
    sqnr = {}
    for bits in (8, 4, 2):     # rounded to nearest: gptq gives up weight SQNR for a closer output
        _, quant_list, _ = random_quantized("conv_pool", "per_channel", 0, weight_bits=bits, weight_method="rtn")
        sqnr[bits] = np.median([op["weight_sqnr_db"] for op in weighted_ops(quant_list)])
    assert sqnr[8] > sqnr[4] + 15 > sqnr[2] + 25        # about 6 dB a bit


def _layer_names(arch="conv_pool"):
    _, quant_list, _ = random_quantized(arch, "per_channel", 0)
    return [op["name"] for op in weighted_ops(quant_list)], quant_list


def test_per_layer_widths_from_a_bits_map():
    names, _ = _layer_names()
    bits = {names[0]: {"weight_bits": 8}, names[1]: {"weight_bits": 2, "act_bits": 4}, names[-1]: {"act_bits": 4}}
    state, quant_list, images = random_quantized("conv_pool", "per_channel", 0, weight_bits=4, bits=bits)
    by_name = {op["name"]: op for op in quant_list}
    assert [by_name[n]["weight_bits"] for n in names] == [8, 2] + [4] * (len(names) - 2)
    assert by_name[names[1]]["act_bits"] == 4 and by_name[names[1]]["qmax"] <= 15
    assert by_name[names[-1]]["act_bits"] == 4          # --bits may lower the logits too
    assert quant_list[0]["widths"]["bits"] == bits
    np.testing.assert_array_equal(NumpyIntegerModel(state, quant_list)(images.numpy()),
                                  TorchIntegerModel(state, quant_list)(images).numpy())


def test_a_bits_map_naming_no_layer_is_refused(tmp_path):
    names, quant_list = _layer_names()
    with pytest.raises(QuantizeError, match=f"no layer 'conv9' takes weight_bits; the layers that do: {names[0]}"):
        random_quantized("conv_pool", "per_channel", 0, bits={"conv9": {"weight_bits": 4}})
    pool = next(op["name"] for op in quant_list if op["op"] == "maxpool")   # keeps its input's width
    with pytest.raises(QuantizeError, match=f"no layer '{pool}' takes act_bits"):
        random_quantized("conv_pool", "per_channel", 0, bits={pool: {"act_bits": 4}})
    bad = tmp_path / "bits.json"
    for text, message in (("{", "not valid JSON"), ('{"a": 4}', "expected"), ('{"a": {"weight_bits": 9}}', "outside 2..8"),
                          ('{"a": {"act_bits": 2}}', "outside 4..8"), ('[1]', "expected an object")):
        bad.write_text(text)
        with pytest.raises(QuantizeError, match=message):
            random_quantized("conv_pool", "per_channel", 0, bits=str(bad))
    with pytest.raises(QuantizeError, match="cannot read"):
        random_quantized("conv_pool", "per_channel", 0, bits=str(tmp_path / "missing.json"))


@pytest.mark.parametrize("mode", ["per_channel", "per_tensor"])
def test_export_packs_and_reads_back(mode, tmp_path):
    names, _ = _layer_names("residual")
    bits = {name: {"weight_bits": b} for name, b in zip(names, [3, 5, 2, 7, 6, 4, 8] * 4)}
    state, quant_list, _ = random_quantized("residual", mode, 4, bits=bits)
    write_export(state, quant_list, tmp_path, "both")
    paths = export_paths(tmp_path, quant_list[0]["model"])
    layers = weighted_ops(quant_list)
    assert len(open(paths["weight.bin"], "rb").read()) == sum(
        packed_bytes(state[op["name"] + ".weight"].numel(), op["weight_bits"]) for op in layers)
    weights, _ = read_bins(paths["weight.bin"], paths["bias.bin"], quant_list)
    np.testing.assert_array_equal(weights, np.concatenate([state[op["name"] + ".weight"].numpy().ravel() for op in layers]))
    txt = read_weight_txt(paths["weight.txt"])
    assert [w for _, w, _ in txt] == [state[op["name"] + ".weight"].flatten().tolist() for op in layers]
    heads = [line for line in open(paths["weight.txt"]) if line.startswith("#")]
    assert [line.split()[-2:] for line in heads] == [["bits", str(op["weight_bits"])] for op in layers]
    header, ops = read_model_bin(paths["model.bin"])
    assert header["version"] == 4
    assert [op["weight_bits"] for op in ops if KINDS[op["op"]].weighted] == [op["weight_bits"] for op in layers]


def test_read_bins_refuses_set_padding_bits(tmp_path):
    """The bits after a layer's last weight are zero (the C loader refuses them too): a file with one
    set is refused, naming the file and the layer."""
    state, quant_list, _ = random_quantized("activations", "per_channel", 0, weight_bits=3)
    write_export(state, quant_list, tmp_path, "bin")
    paths = export_paths(tmp_path, quant_list[0]["model"])
    end = 0
    for op in weighted_ops(quant_list):
        count = state[op["name"] + ".weight"].numel()
        end += packed_bytes(count, 3)
        if count * 3 % 8:
            break
    else:
        pytest.fail("no layer of activations leaves padding bits at 3 bits")
    data = bytearray(open(paths["weight.bin"], "rb").read())
    data[end - 1] |= 0x80
    open(paths["weight.bin"], "wb").write(bytes(data))
    with pytest.raises(ExportFormatError, match=f"{op['name']}: the padding bits .* are not zero"):
        read_bins(paths["weight.bin"], paths["bias.bin"], quant_list)


def v3_model_bin(data):
    """A model.bin v4 rewritten as version 3: the conv and linear records without their last word
    (weight_bits, which must be 8), the CRC recomputed."""
    out, pos = bytearray(data[:HEADER_BYTES]), HEADER_BYTES
    n_ops = struct.unpack_from("<I", data, 20)[0]
    for _ in range(n_ops):
        code, n_words = struct.unpack_from("<2I", data, pos)
        kind = next(k for k in KINDS.values() if k.code == code)
        words = list(struct.unpack_from(f"<{n_words}i", data, pos + 8))
        if kind.weighted:
            at = 7 + 1 + words[7] + kind.params.index("weight_bits")     # common words, inputs, then params
            assert words.pop(at) == 8
        out += struct.pack(f"<2I{len(words)}i", code, len(words), *words)
        pos += 8 + 4 * n_words
    struct.pack_into("<I", out, 8, 3)
    struct.pack_into("<I", out, 12, crc32(bytes(out[16:])))
    return bytes(out)


def test_a_version_3_model_bin_reads_as_8_bits(tmp_path):
    state, quant_list, _ = random_quantized("branch", "per_channel", 0)
    write_export(state, quant_list, tmp_path, "bin")
    path = export_paths(tmp_path, quant_list[0]["model"])["model.bin"]
    _, v4_ops = read_model_bin(path)
    with open(path, "rb") as f:
        v3 = v3_model_bin(f.read())
    assert len(v3) == os.path.getsize(path) - 4 * len(weighted_ops(quant_list))
    old = tmp_path / "v3_model.bin"
    old.write_bytes(v3)
    header, v3_ops = read_model_bin(old)
    assert header["version"] == 3 and v3_ops == v4_ops


def test_a_tuple_from_before_the_widths_loads_as_8_bits(tmp_path):
    state, quant_list, _ = random_quantized("conv_pool", "per_channel", 0)
    for op in quant_list:
        op.pop("weight_bits", None)
        op.pop("act_bits", None)
    quant_list[0].pop("widths")
    torch.save((state, quant_list), tmp_path / "lenet_quant.tuple")
    _, loaded = load_tuple(str(tmp_path / "lenet_quant.tuple"), "lenet")
    assert [op["weight_bits"] for op in weighted_ops(loaded)] == [8] * len(weighted_ops(loaded))


def test_the_tuple_check_refuses_values_beyond_the_width():
    state, quant_list, _ = random_quantized("conv_pool", "per_channel", 0, weight_bits=4)
    layer = weighted_ops(quant_list)[0]
    state[layer["name"] + ".weight"].view(-1)[0] = -8          # the code -2^(b-1) is never used
    assert "weight[0] = -8 outside [-7, 7]" in tuple_problem(state, quant_list)
    state[layer["name"] + ".weight"].view(-1)[0] = 0
    layer["weight_bits"] = 9
    assert "weight_bits = 9 outside [2, 8]" in tuple_problem(state, quant_list)
    layer["weight_bits"], layer["act_bits"] = 4, 4
    assert "qmax of a 4-bit tensor" in tuple_problem(state, quant_list)


def test_the_report_counts_packed_bytes_and_shows_the_widths():
    state, quant_list, _ = random_quantized("conv_pool", "per_channel", 0, weight_bits=3, act_bits=4)
    rep = layer_report(state, quant_list)
    rows = [r for r in rep["ops"] if r["weight_bits"]]
    assert all(r["weight_bytes"] == packed_bytes(state[r["name"] + ".weight"].numel(), 3) for r in rows)
    assert rep["widths"]["weight_bits"] == 3 and rep["widths"]["act_bits"] == 4
    assert json.dumps(rep["widths"])


def test_low_bit_accuracy_script_measures_and_resumes(tmp_path):
    """benchmarks/low_bit_accuracy.py on LeNet W4A8, a few images: one JSON with the settings, C equal
    to numpy on every image; a second run keeps it and measures nothing; a bad --widths is refused."""
    out, work = tmp_path / "out", tmp_path / "work"
    args = ("--models=lenet", "--widths=4/8", "--limit=40", "--peer_images=20", "--threads=1",
            f"--out_dir={out}", f"--work_dir={work}")
    first = run("benchmarks/low_bit_accuracy.py", *args)
    assert first.returncode == 0, first.stdout + first.stderr
    result = json.loads((out / "lenet_w4a8.json").read_text())
    assert (result["weight_bits"], result["act_bits"], result["calib_images"]) == (4, 8, 512)
    assert result["test"]["images"] == 40 and result["test"]["identical_logits"]["np_quant_vs_c_int8"] == 1.0
    assert result["peer_work"]["images"] == 20
    again = run("benchmarks/low_bit_accuracy.py", *args)
    assert again.returncode == 0 and "kept" in again.stdout
    bad = run("benchmarks/low_bit_accuracy.py", "--widths=4", f"--out_dir={out}")
    assert bad.returncode != 0 and "expected W/A pairs" in bad.stderr


def test_low_bit_accuracy_script_keeps_the_ends_at_8_bits(tmp_path):
    """--ends_at_8: LeNet W2A8 with its first and last layers at 8-bit weights, every layer between at 2,
    in a file of its own."""
    out, work = tmp_path / "out", tmp_path / "work"
    done = run("benchmarks/low_bit_accuracy.py", "--models=lenet", "--widths=2/8", "--ends_at_8", "--limit=20",
               "--peer_images=10", "--threads=1", f"--out_dir={out}", f"--work_dir={work}")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((out / "lenet_w2a8_ends8.json").read_text())
    assert result["ends_at_8"] and "--bits=" in result["command"]
    _, quant_list = load_tuple(str(work / "lenet_w2a8_ends8" / "lenet_quant.tuple"), "lenet")
    assert [op["weight_bits"] for op in weighted_ops(quant_list)] == [8, 2, 2, 2, 8]
