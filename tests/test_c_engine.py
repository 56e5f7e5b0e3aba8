"""The C engine (c/host/inference.c) against the numpy specification, and its input checks.

Every test runs the binaries on small random integer graphs from tests/random_models.py,
exported to pytest tmp dirs; most runs use the ASan/UBSan build, which must never report.
"""
import os
import shutil
import struct
import subprocess

import numpy as np
import pytest

from model.formats.export_format import write_export
from tests.c_engine import (assert_clean, clone, export_graph, file_of, make_export, mutate_model, put_word,
                            read_logits, refused, reseal, result_line, run, set_field, write_idx)
from tests.random_models import random_quantized


# --- 1. bit-exact against the numpy engine -------------------------------------------------

@pytest.mark.parametrize("arch", ["conv_pool", "residual"])
@pytest.mark.parametrize("mode", ["per_channel", "per_tensor"])
def test_bit_exact(binaries, tmp_path, arch, mode):
    cases = [make_export(str(tmp_path / "m16"), arch, mode, seed=1),
             make_export(str(tmp_path / "m32"), arch, mode, seed=2, multiplier_bits=32)]
    for ex in cases:
        for fmt in ("bin", "txt"):
            for kind in ("asan", "fast"):
                out = str(tmp_path / f"logits_{fmt}_{kind}.txt")
                proc = run(binaries[kind], ex, "--format", fmt, "--logits", out)
                assert_clean(proc)
                assert proc.returncode == 0, proc.stderr
                got = read_logits(out)
                np.testing.assert_array_equal(got, ex["logits"], err_msg=f"{ex['dir']} {fmt} {kind}")
                correct = int((ex["logits"].argmax(axis=1) == ex["labels"]).sum())
                assert result_line(proc.stdout) == (ex["n"], correct)


def test_a_last_op_with_a_feature_map_is_written_whole(binaries, tmp_path):
    """A graph ending in a CxHxW op (a cut after the first max pool): every value, in CHW order."""
    state, quant, images = random_quantized("conv_pool", "per_channel", seed=5)
    ex = export_graph(str(tmp_path / "cut"), state, quant[:3], images, 5)
    assert ex["logits"].shape[1] == np.prod(quant[2]["shape"]) > quant[2]["shape"][0]
    for kind in ("asan", "fast"):
        for extra in ([], ["--reference"]):
            out = str(tmp_path / f"logits_{kind}{len(extra)}.txt")
            proc = run(binaries[kind], ex, "--logits", out, *extra)
            assert_clean(proc)
            assert proc.returncode == 0, proc.stderr
            np.testing.assert_array_equal(read_logits(out), ex["logits"])


# --- 2. bad input: a clear error, exit 1, no sanitizer report ------------------------------

@pytest.fixture(scope="module")
def base_export(tmp_path_factory):
    return make_export(str(tmp_path_factory.mktemp("base")), "conv_pool", "per_channel", seed=3)


@pytest.fixture(scope="module")
def cifar_export(tmp_path_factory):
    return make_export(str(tmp_path_factory.mktemp("cifar")), "residual", "per_tensor", seed=4)


def resealed(mutation):
    def fn(export):
        mutation(export)
        reseal(export)
    return fn


def flip_bit(path, byte, bit=0):
    data = bytearray(open(path, "rb").read())
    data[byte % len(data)] ^= 1 << bit
    open(path, "wb").write(bytes(data))


def set_byte(path, pos, value):
    data = bytearray(open(path, "rb").read())
    data[pos] = value
    open(path, "wb").write(bytes(data))


def truncate(path, n):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) - n])


def edit_text(path, fn):
    lines = open(path).read().split("\n")
    fn(lines)
    open(path, "w").write("\n".join(lines))


def txt(fn):
    """A weight.txt edit, sealed again: what the text parser itself must catch."""
    return resealed(lambda e: edit_text(file_of(e, "weight.txt"), fn))


# Each case: (name, mutation(export), format, file named in the message, phrase in the message).
# The base export is conv_pool, per-channel: input, conv, maxpool, conv (groups 4), avgpool, linear.
BAD_CASES = [
    # the seals: a damaged or foreign file is refused before it is used
    ("weight_bin_bit_flip", lambda e: flip_bit(file_of(e, "weight.bin"), 77, 3), "bin", "weight.bin", "CRC"),
    ("bias_bin_bit_flip", lambda e: flip_bit(file_of(e, "bias.bin"), 9, 6), "bin", "bias.bin", "CRC"),
    ("weight_txt_bit_flip", lambda e: flip_bit(file_of(e, "weight.txt"), 200, 0), "txt", "weight.txt", "CRC"),
    ("multiplier_bit_flip", lambda e: mutate_model(e, lambda d, r: d.__setitem__(r[1]["mult0"], d[r[1]["mult0"]] ^ 1),
                                                   sealed=False), "bin", "model.bin", "CRC"),
    ("shift_bit_flip", lambda e: mutate_model(e, lambda d, r: d.__setitem__(r[5]["shift3"], d[r[5]["shift3"]] ^ 2),
                                              sealed=False), "bin", "model.bin", "CRC"),
    ("weight_bin_truncated", lambda e: truncate(file_of(e, "weight.bin"), 1), "bin", "weight.bin", "bytes"),
    ("bias_bin_one_short", lambda e: truncate(file_of(e, "bias.bin"), 4), "bin", "bias.bin", "bytes"),
    ("weight_txt_last_number_cut", lambda e: truncate(file_of(e, "weight.txt"), 2), "txt", "weight.txt", "bytes"),
    ("bias_missing", lambda e: os.remove(file_of(e, "bias.bin")), "bin", "bias.bin", "cannot open"),
    ("model_missing", lambda e: os.remove(file_of(e, "model.bin")), "bin", "model.bin", "cannot open"),
    ("txt_missing", lambda e: os.remove(file_of(e, "weight.txt")), "txt", "weight.txt", "cannot open"),
    ("version_1", lambda e: mutate_model(e, lambda d, r: put_word(d, 8, 1)), "bin", "model.bin", "export_quant_model"),
    ("bad_magic", lambda e: mutate_model(e, lambda d, r: d.__setitem__(slice(0, 8), b"NOTFPGAI")),
     "bin", "model.bin", "magic"),
    # behind the seals (files damaged and sealed again): every check still holds
    ("weight_bin_minus_128", resealed(lambda e: set_byte(file_of(e, "weight.bin"), 5, 0x80)),
     "bin", "weight.bin", "-128"),
    ("txt_weight_minus_128", txt(lambda ls: ls.__setitem__(1, "-128," + ls[1].split(",", 1)[1])),
     "txt", "weight.txt:2", "-128"),
    ("txt_non_number", txt(lambda ls: ls.__setitem__(1, "1,2,abc,4")), "txt", "weight.txt:2", "not an integer"),
    ("txt_empty_field", txt(lambda ls: ls.__setitem__(1, ls[1] + ",")), "txt", "weight.txt:2", "not an integer"),
    ("txt_weight_out_of_range", txt(lambda ls: ls.__setitem__(1, "200")), "txt", "weight.txt:2", "outside"),
    ("txt_too_few_weights", txt(lambda ls: ls.pop(1)), "txt", "weight.txt", "model.bin expects"),
    ("txt_too_many_biases", txt(lambda ls: ls.insert(len(ls) - 1, "5")), "txt", "weight.txt", "more biases"),
    ("txt_bias_out_of_range", txt(lambda ls: ls.__setitem__(len(ls) - 2, "2147483648")),
     "txt", "weight.txt", "outside int32"),
    ("conv_output_h", lambda e: mutate_model(e, set_field(1, "H", 27)), "bin", "model.bin", "gives"),
    ("conv_pad_ge_kernel", lambda e: mutate_model(e, set_field(1, "pad_bottom", 3)), "bin", "model.bin",
     "bottom padding 3 is not below the kernel's reach 3"),
    ("conv_dilation_zero", lambda e: mutate_model(e, set_field(1, "dilation_h", 0)), "bin", "model.bin", "dilation_h"),
    ("conv_dilation_vs_shape", lambda e: mutate_model(e, set_field(1, "dilation_w", 2)), "bin", "model.bin",
     "dilation 1x2 gives 28x26"),
    ("maxpool_pad_ge_kernel", lambda e: mutate_model(e, set_field(2, "pad_w", 3)), "bin", "model.bin",
     "left padding 3 is not below the kernel's reach 3"),
    ("n_words", lambda e: mutate_model(e, set_field(1, "n_words", 5)), "bin", "model.bin", "words"),
    ("input_id_out_of_range", lambda e: mutate_model(e, set_field(1, "input0", 5)), "bin", "model.bin", "input"),
    ("n_inputs", lambda e: mutate_model(e, set_field(2, "n_inputs", 2)), "bin", "model.bin", "input"),
    ("second_input_op", lambda e: mutate_model(e, set_field(1, "type", 0)), "bin", "model.bin", "op 0"),
    ("unknown_type", lambda e: mutate_model(e, set_field(1, "type", 99)), "bin", "model.bin", "type"),
    ("shift_out_of_range", lambda e: mutate_model(e, set_field(5, "shift2", 63)), "bin", "model.bin", "shift"),
    ("multiplier_negative", lambda e: mutate_model(e, set_field(4, "mult0", -1)), "bin", "model.bin", "multiplier"),
    ("per_channel_weight_zero_point", lambda e: mutate_model(e, set_field(3, "weight_zero_point", 3)),
     "bin", "model.bin", "zero"),
    ("qmin_above_qmax", lambda e: mutate_model(e, lambda d, r: (put_word(d, r[3]["qmin"], 200),
                                                                 put_word(d, r[3]["qmax"], 100))),
     "bin", "model.bin", "qmax"),
    ("maxpool_clamp_differs", lambda e: mutate_model(e, set_field(2, "qmax", 254)), "bin", "model.bin", "maxpool"),
    ("model_truncated", lambda e: mutate_model(e, lambda d, r: d.__delitem__(slice(len(d) - 8, len(d)))),
     "bin", "model.bin", "truncated"),
    ("model_header_only", lambda e: truncate(file_of(e, "model.bin"), os.path.getsize(file_of(e, "model.bin")) - 50),
     "bin", "model.bin", "header"),
    ("model_trailing", lambda e: mutate_model(e, lambda d, r: d.extend(b"\0\0\0\0")),
     "bin", "model.bin", "after the last op"),
    ("weight_bytes_header", lambda e: mutate_model(e, lambda d, r: put_word(d, 28, struct.unpack_from("<i", d, 28)[0] + 1)),
     "bin", "model.bin", "header says"),
    ("overflow", resealed(lambda e: open(file_of(e, "bias.bin"), "r+b").write(struct.pack("<i", 2 ** 31 - 1))),
     "bin", "bias.bin", "exceeds int32"),
    # the datasets
    ("idx_truncated", lambda e: truncate(e["images"], 100), "bin", "images-idx3-ubyte", "bytes"),
    ("idx_garbage", lambda e: open(e["images"], "wb").write(os.urandom(3000)), "bin", "images-idx3-ubyte", "magic"),
    ("idx_wrong_dims", lambda e: open(e["images"], "r+b").write(struct.pack(">4i", 0x803, 1, 27, 28)),
     "bin", "images-idx3-ubyte", "28x28"),
    ("labels_count", lambda e: open(e["labels_path"], "r+b").write(struct.pack(">2i", 0x801, 3)),
     "bin", "labels-idx1-ubyte", "labels"),
]


@pytest.mark.parametrize("name,mutate,fmt,file_part,phrase", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input(binaries, base_export, tmp_path, name, mutate, fmt, file_part, phrase):
    ex = clone(base_export, str(tmp_path / "ex"))
    mutate(ex)
    assert phrase in refused(binaries["asan"], ex, fmt, file_part, tmp_path)


def test_every_sampled_bit_flip_of_model_bin_is_refused(binaries, base_export, tmp_path):
    """A third of single-bit flips in a v1 model.bin changed the logits silently; the CRC leaves none."""
    size = os.path.getsize(file_of(base_export, "model.bin"))
    rng = np.random.default_rng(0)
    for byte, bit in zip(rng.integers(0, size, 48), rng.integers(0, 8, 48)):
        ex = clone(base_export, str(tmp_path / f"flip{byte}_{bit}"))
        flip_bit(file_of(ex, "model.bin"), int(byte), int(bit))
        refused(binaries["fast"], ex, "bin", "model.bin", tmp_path)


def test_weights_of_another_mode_are_refused(binaries, base_export, tmp_path):
    """A per-tensor weight.bin of the same graph (same size) beside a per-channel model.bin."""
    state, quant, images = random_quantized("conv_pool", "per_tensor", seed=3)
    other = export_graph(str(tmp_path / "pt"), state, quant, images, 3)
    ex = clone(base_export, str(tmp_path / "ex"))
    assert os.path.getsize(file_of(other, "weight.bin")) == os.path.getsize(file_of(ex, "weight.bin"))
    shutil.copy(file_of(other, "weight.bin"), file_of(ex, "weight.bin"))
    assert "CRC" in refused(binaries["asan"], ex, "bin", "weight.bin", tmp_path)


def test_stale_bins_beside_a_txt_only_export_are_refused(binaries, base_export, tmp_path):
    """export --export_mode=txt over a full export: the old bins go, and copied back they do not run."""
    ex = clone(base_export, str(tmp_path / "ex"))
    old = {k: open(file_of(ex, k), "rb").read() for k in ("weight.bin", "bias.bin")}
    state, quant, _ = random_quantized("conv_pool", "per_channel", seed=3, multiplier_bits=24)
    write_export(state, quant, ex["dir"], "txt")
    assert not os.path.exists(file_of(ex, "weight.bin")) and not os.path.exists(file_of(ex, "bias.bin"))
    for kind, data in old.items():
        open(file_of(ex, kind), "wb").write(data)
    refused(binaries["asan"], ex, "bin", "model.bin", tmp_path)
    proc = run(binaries["asan"], ex, "--format", "txt")
    assert proc.returncode == 0, proc.stderr


def pool_graph(kernel, padding, stride=1):
    """input 1x28x28 -> maxpool: a graph with no weights, written as the exporter writes any graph."""
    state, quant, images = random_quantized("conv_pool", "per_channel", seed=3)
    oh = (28 + 2 * padding - kernel) // stride + 1
    pool = {"op": "maxpool", "name": "pool", "inputs": [0], "shape": [1, max(oh, 1), max(oh, 1)],
            "kernel": [kernel, kernel], "stride": [stride, stride], "padding": [padding, padding], "ceil_mode": 0,
            **{k: quant[0][k] for k in ("scale", "zero_point", "qmin", "qmax")}}
    return {}, [quant[0], pool], images


@pytest.mark.parametrize("kernel,padding,phrase",
                         [(8000, 7999, "operations per image"), (40, 0, "gives"), (3, 3, "pad")],
                         ids=["work_limit", "window_past_the_input", "pad_ge_kernel"])
def test_work_a_file_can_ask_for_is_bounded(binaries, tmp_path, kernel, padding, phrase):
    """A 2-op model.bin with a maxpool of kernel 8000 took >100 s per image in v1: refused at load now."""
    state, quant, images = pool_graph(kernel, padding)
    write_export(state, quant, str(tmp_path), "bin")
    img, lab = write_idx(str(tmp_path), images.numpy(), np.zeros(len(images), dtype=np.uint8))
    proc = subprocess.run([binaries["asan"], "--dir", str(tmp_path), "--model", quant[0]["model"], "--images", img,
                           "--labels", lab], capture_output=True, text=True, timeout=30)
    assert_clean(proc)
    assert proc.returncode == 1 and "model.bin" in proc.stderr and phrase in proc.stderr, proc.stderr


def test_bad_cifar_length(binaries, cifar_export, tmp_path):
    ex = clone(cifar_export, str(tmp_path / "ex"))
    truncate(ex["images"], 5)
    proc = run(binaries["asan"], ex)
    assert_clean(proc)
    assert proc.returncode == 1
    assert "test_batch.bin" in proc.stderr and "3073" in proc.stderr, proc.stderr


def test_input_shape_vs_dataset(binaries, cifar_export, tmp_path):
    """A cifar10 model given an mnist header: dataset/input shape mismatch is an error."""
    ex = clone(cifar_export, str(tmp_path / "ex"))
    mutate_model(ex, lambda d, r: d.__setitem__(slice(120, 136), b"mnist".ljust(16, b"\0")))
    proc = run(binaries["asan"], ex)
    assert_clean(proc)
    assert proc.returncode == 1 and "1x28x28" in proc.stderr, proc.stderr


# --- 3. command line -----------------------------------------------------------------------

def test_logits_and_limit(binaries, base_export, tmp_path):
    out = str(tmp_path / "all.txt")
    proc = run(binaries["fast"], base_export, "--logits", out)
    assert proc.returncode == 0, proc.stderr
    assert len(open(out).read().splitlines()) == base_export["n"]
    assert "accuracy:" in proc.stdout and "images/s" in proc.stdout

    out5 = str(tmp_path / "five.txt")
    proc = run(binaries["asan"], base_export, "--limit", "5", "--logits", out5, "--quiet")
    assert_clean(proc)
    assert proc.returncode == 0, proc.stderr
    lines = open(out5).read().splitlines()
    assert len(lines) == 5
    np.testing.assert_array_equal(read_logits(out5), base_export["logits"][:5])
    assert result_line(proc.stdout)[0] == 5
    assert proc.stdout.count("\n") == 1                                   # --quiet: the result line only
    assert not os.path.exists(out5 + ".tmp")


@pytest.mark.parametrize("args", [["--bogus"], ["--limit", "0"], ["--limit", "x"], ["--format", "csv"],
                                  ["--model"], ["--limit", "-3"]])
def test_usage_errors(binaries, base_export, args):
    proc = run(binaries["asan"], base_export, *args)
    assert_clean(proc)
    assert proc.returncode == 2, proc.stderr
    assert "usage:" in proc.stderr


def test_defaults_from_inside_c(binaries, base_export, tmp_path):
    """Run bare from a c/ folder: ../export_model and ../data are the defaults."""
    root = tmp_path / "repo"
    (root / "c").mkdir(parents=True)
    shutil.copytree(base_export["dir"], root / "export_model")
    raw = root / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    shutil.copy(base_export["images"], raw / "t10k-images-idx3-ubyte")
    shutil.copy(base_export["labels_path"], raw / "t10k-labels-idx1-ubyte")
    proc = subprocess.run([binaries["asan"]], capture_output=True, text=True, cwd=root / "c", timeout=120)
    assert_clean(proc)
    assert proc.returncode == 0, proc.stderr
    assert result_line(proc.stdout)[0] == base_export["n"]
