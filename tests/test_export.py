"""Exported files: round trip against the tuple, format details, atomic writes, bad input."""
import os

import numpy as np
import pytest

from model.fileio import atomic_open
from model.export_format import (ExportFormatError, export_paths, quant_txt_lines, read_bins, read_model_bin,
                                 read_weight_txt, weighted_ops, write_export)
from tests.random_models import random_quantized


@pytest.fixture(params=["per_channel", "per_tensor"])
def graph(request):
    return random_quantized("residual", request.param, seed=2)[:2]


def test_round_trip_txt_and_bin(graph, tmp_path):
    state, quant_list = graph
    write_export(state, quant_list, tmp_path, "both")
    paths = export_paths(tmp_path, quant_list[0]["model"])
    layers = weighted_ops(quant_list)
    txt = read_weight_txt(paths["weight.txt"])
    signed = quant_list[0]["weight_mode"] == "per_channel"
    weights, biases = read_bins(paths["weight.bin"], paths["bias.bin"], signed)
    w_off = b_off = 0
    assert [name for name, _, _ in txt] == [op["name"] for op in layers]
    for (name, tw, tb), op in zip(txt, layers):
        w, b = state[name + ".weight"].numpy().ravel(), state[name + ".bias"].numpy()
        assert tw == w.tolist() and tb == b.tolist()
        np.testing.assert_array_equal(weights[w_off:w_off + w.size], w)
        np.testing.assert_array_equal(biases[b_off:b_off + b.size], b)
        w_off, b_off = w_off + w.size, b_off + b.size
    assert (w_off, b_off) == (weights.size, biases.size)


def test_weight_txt_layout(graph, tmp_path):
    state, quant_list = graph
    write_export(state, quant_list, tmp_path, "txt")
    lines = open(export_paths(tmp_path, quant_list[0]["model"])["weight.txt"]).read().splitlines()
    assert lines[0].startswith("# ")
    assert sum(l.startswith("#") for l in lines) == sum(l.startswith("$") for l in lines) == len(weighted_ops(quant_list))
    assert all(len(l.split(",")) <= 10 for l in lines if l[0] not in "#$")
    assert not os.path.exists(export_paths(tmp_path, quant_list[0]["model"])["weight.bin"])  # txt mode only


def test_quant_txt_lines(graph, tmp_path):
    state, quant_list = graph
    lines = quant_txt_lines(state, quant_list)
    layers = weighted_ops(quant_list)
    if quant_list[0]["weight_mode"] == "per_tensor":       # the original's format: one line a layer
        assert len(lines) == len(layers)
    else:                                                  # one line an output channel
        assert len(lines) == sum(op["shape"][0] for op in layers)
    m, s, z = map(int, lines[0].split(","))
    assert (m, s, z) == (int(state[layers[0]["name"] + ".multiplier"][0]),
                         int(state[layers[0]["name"] + ".shift"][0]), layers[0]["zero_point"])


def test_model_bin_round_trip(graph, tmp_path):
    state, quant_list = graph
    write_export(state, quant_list, tmp_path, "bin")
    header, ops = read_model_bin(export_paths(tmp_path, quant_list[0]["model"])["model.bin"])
    assert header["n_ops"] == len(quant_list) == len(ops)
    assert header["fingerprint"] == quant_list[0]["fingerprint"]
    for raw, op in zip(ops, quant_list):
        assert raw["shape"] == op["shape"] and raw["zero_point"] == op["zero_point"]
        assert (raw["qmin"], raw["qmax"]) == (op["qmin"], op["qmax"])
        if op["op"] == "add":
            assert raw["words"] == [*op["inputs"], *op["multipliers"], op["shift"]]


def test_no_temporary_files_left(graph, tmp_path):
    write_export(*graph, tmp_path, "both")
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in export_paths(tmp_path, graph[1][0]["model"]).values())


def test_bad_weight_txt_is_a_clear_error(tmp_path):
    bad = tmp_path / "w.txt"
    bad.write_text("# conv1\n1,2,3\n4,x5,6\n")
    with pytest.raises(ExportFormatError, match=r"w.txt:3: 'x5' is not an integer"):
        read_weight_txt(bad)
    bad.write_text("1,2\n")
    with pytest.raises(ExportFormatError, match="before the first '#'"):
        read_weight_txt(bad)


def test_bad_model_bin_is_a_clear_error(graph, tmp_path):
    write_export(*graph, tmp_path, "bin")
    path = export_paths(tmp_path, graph[1][0]["model"])["model.bin"]
    data = open(path, "rb").read()
    for mutated, message in ((data[:50], "shorter than"), (b"XXXXXXXX" + data[8:], "bad magic"),
                             (data[:8] + (7).to_bytes(4, "little") + data[12:], "format version 7"),
                             (data[:-3], "past the end|truncated"), (data + b"\0", "after the last op")):
        open(path, "wb").write(mutated)
        with pytest.raises(ExportFormatError, match=message):
            read_model_bin(path)


def test_interrupted_write_leaves_the_old_file_whole(graph, tmp_path):
    """A failure (or kill) in the middle of writing never leaves a half file under the real name."""
    state, quant_list = graph
    write_export(state, quant_list, tmp_path, "bin")
    path = export_paths(tmp_path, quant_list[0]["model"])["weight.bin"]
    before = open(path, "rb").read()
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(path) as f:
            f.write(before[:10])
            raise KeyboardInterrupt
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in
                                                   export_paths(tmp_path, quant_list[0]["model"]).values()
                                                   if not p.endswith("weight.txt"))
