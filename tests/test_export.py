"""Exported files: round trip against the tuple, format details, the sealed set, atomic writes, bad input."""
import os
import struct

import numpy as np
import pytest

import model.formats.export_format as export_format
from model.formats.export_format import (ExportFormatError, crc32, export_paths, quant_txt_lines, read_bins, read_model_bin,
                                 read_weight_txt, write_export)
from model.fileio import atomic_open
from model.ops import KINDS, PARAM_KEYS, weighted_ops
from tests.random_models import random_quantized


@pytest.fixture(params=[("residual", "per_channel"), ("branch", "per_tensor")], ids=lambda p: "-".join(p))
def graph(request):
    return random_quantized(*request.param, seed=2)[:2]


def test_round_trip_txt_and_bin(graph, tmp_path):
    state, quant_list = graph
    write_export(state, quant_list, tmp_path, "both")
    paths = export_paths(tmp_path, quant_list[0]["model"])
    layers = weighted_ops(quant_list)
    txt = read_weight_txt(paths["weight.txt"])
    weights, biases = read_bins(paths["weight.bin"], paths["bias.bin"], quant_list)
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
    """Every field of every record reads back as the tuple holds it, by name (the op table's)."""
    state, quant_list = graph
    files = write_export(state, quant_list, tmp_path, "bin")
    header, ops = read_model_bin(export_paths(tmp_path, quant_list[0]["model"])["model.bin"])
    assert header["n_ops"] == len(quant_list) == len(ops)
    assert (header["model"], header["dataset"], header["fingerprint"]) == tuple(
        quant_list[0][k] for k in ("model", "dataset", "fingerprint"))
    assert header["formats"] == 1 and header["files"]["weight.txt"] == {"size": 0, "crc32": 0}
    for name in ("weight.bin", "bias.bin"):
        data = open(next(p for p in files if p.endswith(name)), "rb").read()
        assert header["files"][name] == {"size": len(data), "crc32": crc32(data)}
    w_off = b_off = 0
    for raw, op in zip(ops, quant_list):
        kind = KINDS[op["op"]]
        assert raw["op"] == op["op"] and raw["inputs"] == op["inputs"] and raw["shape"] == op["shape"]
        assert [raw[k] for k in ("zero_point", "qmin", "qmax")] == [op[k] for k in ("zero_point", "qmin", "qmax")]
        assert raw["scale"] == pytest.approx(op["scale"], rel=1e-6)
        for key in {PARAM_KEYS[p][0] for p in kind.params} - {"weight_offset", "bias_offset"}:
            assert raw[key] == op[key], (op["name"], key)
        for field in ("multiplier", "shift", "table"):
            key = f"{op['name']}.{field}"
            assert raw[field] == (state[key].tolist() if key in state else []), (op["name"], field)
        if kind.weighted:
            assert (raw["weight_offset"], raw["bias_offset"]) == (w_off, b_off)
            w_off += state[op["name"] + ".weight"].numel()
            b_off += state[op["name"] + ".bias"].numel()
    assert (header["weight_bytes"], header["bias_count"]) == (w_off, b_off)


def test_crc32_is_zlibs():
    assert crc32(b"123456789") == 0xCBF43926


def test_txt_only_export_removes_the_stale_bins(graph, tmp_path):
    state, quant_list = graph
    write_export(state, quant_list, tmp_path, "both")
    write_export(state, quant_list, tmp_path, "txt")
    paths = export_paths(tmp_path, quant_list[0]["model"])
    assert not os.path.exists(paths["weight.bin"]) and not os.path.exists(paths["bias.bin"])
    header, _ = read_model_bin(paths["model.bin"])
    assert header["formats"] == 2 and header["files"]["weight.bin"] == {"size": 0, "crc32": 0}


@pytest.mark.parametrize("fail_at", range(5))
def test_interrupted_export_leaves_no_model_bin(graph, tmp_path, monkeypatch, fail_at):
    """Killed while writing any of its files, an export over an earlier one leaves no model.bin
    (nothing runs until it is redone) and no temporary file."""
    state, quant_list = graph
    write_export(state, quant_list, tmp_path, "both")
    opened = []

    def dying_open(path, mode="wb"):
        if len(opened) == fail_at:
            raise KeyboardInterrupt
        opened.append(path)
        return atomic_open(path, mode)

    monkeypatch.setattr(export_format, "atomic_open", dying_open)
    with pytest.raises(KeyboardInterrupt):
        write_export(state, quant_list, tmp_path, "both")
    names = os.listdir(tmp_path)
    assert not any(n.endswith("model.bin") or n.endswith(".tmp") for n in names), names


def test_litter_of_a_killed_export_is_removed(graph, tmp_path):
    state, quant_list = graph
    litter = tmp_path / f".{quant_list[0]['model']}_weight.bin.12345.tmp"
    litter.write_bytes(b"half")
    write_export(state, quant_list, tmp_path, "bin")
    assert not litter.exists()


def file_names(folder, model, without=()):
    """The names of a file export (not EXPORT_MODE=c's model.c / model.h, nor onnx's model.onnx), less `without`."""
    return sorted(os.path.basename(p) for kind, p in export_paths(folder, model).items()
                  if kind not in ("model.c", "model.h", "model.onnx", *without))


def test_no_temporary_files_left(graph, tmp_path):
    write_export(*graph, tmp_path, "both")
    assert sorted(os.listdir(tmp_path)) == file_names(tmp_path, graph[1][0]["model"])


def test_bad_weight_txt_is_a_clear_error(tmp_path):
    bad = tmp_path / "w.txt"
    bad.write_text("# conv1\n1,2,3\n4,5")
    with pytest.raises(ExportFormatError, match="cut short"):
        read_weight_txt(bad)
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
    def sealed(d):
        return d[:12] + struct.pack("<I", crc32(d[16:])) + d[16:]

    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 4
    for mutated, message in ((data[:50], "shorter than"), (b"XXXXXXXX" + data[8:], "bad magic"),
                             (data[:8] + (1).to_bytes(4, "little") + data[12:], "format version 1.*again"),
                             (bytes(flipped), "CRC-32"), (data[:-3], "CRC-32"),
                             (sealed(data[:-3]), "does not fit|shorter than its fields"),
                             (sealed(data + b"\0"), "after the last op")):
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
    assert sorted(os.listdir(tmp_path)) == file_names(tmp_path, quant_list[0]["model"], ("weight.txt",))


@pytest.mark.parametrize("mode", list(export_format.MODE_FILES))
def test_export_targets_are_the_files_an_export_touches(graph, tmp_path, mode):
    """export_targets (what export_quant_model.py checks for tracked files before it starts) names
    exactly the files write_export writes or removes in each mode: onnx leaves the others alone."""
    state, quant_list = graph
    model = quant_list[0]["model"]
    paths = export_paths(str(tmp_path), model)
    for path in paths.values():
        with open(path, "wb") as f:
            f.write(b"old")
    export_format.write_export(state, quant_list, str(tmp_path), mode)
    touched = [p for p in paths.values() if not os.path.exists(p) or open(p, "rb").read() != b"old"]
    assert sorted(touched) == sorted(export_format.export_targets(str(tmp_path), model, mode))
