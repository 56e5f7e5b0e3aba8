"""The C engine (c/inference.c) against the numpy specification, and its input checks.

Every test runs the binaries on small random integer graphs from tests/random_models.py,
exported to pytest tmp dirs; most runs use the ASan/UBSan build, which must never report.
"""
import os
import re
import shutil
import struct
import subprocess

import numpy as np
import pytest

from model.export_format import HEADER, write_export
from model.np_engine import NumpyIntegerModel
from tests.random_models import random_quantized

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_DIR = os.path.join(ROOT, "c")
SANITIZER_MARKS = ("runtime error", "AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer")


@pytest.fixture(scope="module")
def binaries():
    if shutil.which("make") is None or shutil.which("gcc") is None:
        pytest.skip("make/gcc not available")
    for target in ("all", "asan"):
        proc = subprocess.run(["make", "-C", C_DIR, target], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"fast": os.path.join(C_DIR, "inference"), "asan": os.path.join(C_DIR, "inference_asan")}


# --- exports and dataset files --------------------------------------------------------------

def write_idx(folder, images, labels):
    """MNIST idx3 images + idx1 labels; returns (images path, labels path)."""
    n, _, rows, cols = images.shape
    img, lab = os.path.join(folder, "images-idx3-ubyte"), os.path.join(folder, "labels-idx1-ubyte")
    with open(img, "wb") as f:
        f.write(struct.pack(">4i", 0x803, n, rows, cols) + images.astype(np.uint8).tobytes())
    with open(lab, "wb") as f:
        f.write(struct.pack(">2i", 0x801, n) + labels.astype(np.uint8).tobytes())
    return img, lab


def write_cifar(folder, images, labels):
    path = os.path.join(folder, "test_batch.bin")
    records = np.concatenate([labels.astype(np.uint8)[:, None],
                              images.astype(np.uint8).reshape(len(images), -1)], axis=1)
    with open(path, "wb") as f:
        f.write(records.tobytes())
    return path


def export_graph(folder, state, quant, images, seed, mode="both"):
    """Export an integer graph and its images to `folder`; returns a dict with the model name,
    data args and the numpy engine's logits."""
    os.makedirs(folder, exist_ok=True)
    write_export(state, quant, folder, mode)
    x = images.numpy()
    logits = NumpyIntegerModel(state, quant)(x)
    labels = np.random.default_rng(seed).integers(0, 10, len(x))
    if quant[0]["dataset"] == "mnist":
        img, lab = write_idx(folder, x, labels)
        data_args = ["--images", img, "--labels", lab]
    else:
        img, lab = write_cifar(folder, x, labels), None
        data_args = ["--images", img]
    return {"dir": folder, "model": quant[0]["model"], "data_args": data_args, "logits": logits,
            "labels": labels, "images": img, "labels_path": lab, "n": len(x)}


def make_export(folder, arch, mode, seed=1, multiplier_bits=16):
    """export_graph of a random graph from tests/random_models.py."""
    state, quant, images = random_quantized(arch, mode, seed=seed, multiplier_bits=multiplier_bits)
    return export_graph(folder, state, quant, images, seed)


def run(binary, export, *extra, cwd=None):
    args = [binary, "--dir", export["dir"], "--model", export["model"], *export["data_args"], *extra]
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=120)


def assert_clean(proc):
    for mark in SANITIZER_MARKS:
        assert mark not in proc.stderr, proc.stderr


def read_logits(path):
    with open(path) as f:
        return np.array([[int(v) for v in line.split(",")] for line in f.read().splitlines()])


def result_line(stdout):
    m = re.search(r"^result: images=(\d+) correct=(\d+) seconds=([0-9.]+)$", stdout, re.M)
    assert m, stdout
    assert stdout.rstrip("\n").splitlines()[-1] == m.group(0)        # the last line
    return int(m.group(1)), int(m.group(2))


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


# --- 2. bad input: a clear error, exit 1, no sanitizer report ------------------------------

@pytest.fixture(scope="module")
def base_export(tmp_path_factory):
    return make_export(str(tmp_path_factory.mktemp("base")), "conv_pool", "per_channel", seed=3)


@pytest.fixture(scope="module")
def cifar_export(tmp_path_factory):
    return make_export(str(tmp_path_factory.mktemp("cifar")), "residual", "per_tensor", seed=4)


def clone(export, folder):
    shutil.copytree(export["dir"], folder)
    new = dict(export)
    new["dir"] = folder
    new["data_args"] = [a.replace(export["dir"], folder) for a in export["data_args"]]
    new["images"] = export["images"].replace(export["dir"], folder)
    new["labels_path"] = export["labels_path"] and export["labels_path"].replace(export["dir"], folder)
    return new


def file_of(export, kind):
    return os.path.join(export["dir"], f"{export['model']}_{kind}")


def op_offsets(data):
    """Byte offset of every op record of a model.bin."""
    n_ops = struct.unpack_from("<i", data, 12)[0]
    pos, offsets = HEADER.size, []
    for _ in range(n_ops):
        offsets.append(pos)
        pos += 8 + 4 * struct.unpack_from("<i", data, pos + 4)[0]
    return offsets


def put_word(data, pos, value):
    data[pos:pos + 4] = struct.pack("<i", value)


def mutate_model(export, fn):
    path = file_of(export, "model.bin")
    data = bytearray(open(path, "rb").read())
    fn(data, op_offsets(data))
    open(path, "wb").write(bytes(data))


def set_first_conv_word(index):
    """Mutator: word `index` (0 = type, 1 = n_words, 2.. = C, H, W, ...) of op 1 (a conv)."""
    def fn(value):
        return lambda data, offs: put_word(data, offs[1] + 4 * index, value)
    return fn


def truncate(path, n):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) - n])


def edit_text(path, fn):
    lines = open(path).read().split("\n")
    fn(lines)
    open(path, "w").write("\n".join(lines))


# Each case: (name, mutation(export), format, file kind named in the message, phrase in the message)
BAD_CASES = [
    ("weight_bin_truncated", lambda e: truncate(file_of(e, "weight.bin"), 1), "bin", "weight.bin", "bytes"),
    ("bias_bin_one_short", lambda e: truncate(file_of(e, "bias.bin"), 4), "bin", "bias.bin", "bytes"),
    ("bias_missing", lambda e: os.remove(file_of(e, "bias.bin")), "bin", "bias.bin", "cannot open"),
    ("model_missing", lambda e: os.remove(file_of(e, "model.bin")), "bin", "model.bin", "cannot open"),
    ("txt_non_number", lambda e: edit_text(file_of(e, "weight.txt"), lambda ls: ls.__setitem__(1, "1,2,abc,4")),
     "txt", "weight.txt:2", "not an integer"),
    ("txt_empty_field", lambda e: edit_text(file_of(e, "weight.txt"), lambda ls: ls.__setitem__(1, ls[1] + ",")),
     "txt", "weight.txt:2", "not an integer"),
    ("txt_weight_out_of_range", lambda e: edit_text(file_of(e, "weight.txt"), lambda ls: ls.__setitem__(1, "200")),
     "txt", "weight.txt:2", "outside"),
    ("txt_too_few_weights", lambda e: edit_text(file_of(e, "weight.txt"), lambda ls: ls.pop(1)),
     "txt", "weight.txt", "model.bin expects"),
    ("txt_too_many_biases", lambda e: edit_text(file_of(e, "weight.txt"),
                                                lambda ls: ls.insert(len(ls) - 1, "5")),
     "txt", "weight.txt", "more biases"),
    ("txt_bias_out_of_range", lambda e: edit_text(
        file_of(e, "weight.txt"), lambda ls: ls.__setitem__(len(ls) - 2, "2147483648")),
     "txt", "weight.txt", "outside int32"),
    ("txt_missing", lambda e: os.remove(file_of(e, "weight.txt")), "txt", "weight.txt", "cannot open"),
    ("bad_magic", lambda e: mutate_model(e, lambda d, o: d.__setitem__(slice(0, 8), b"NOTFPGAI")),
     "bin", "model.bin", "magic"),
    ("bad_version", lambda e: mutate_model(e, lambda d, o: put_word(d, 8, 2)), "bin", "model.bin", "version"),
    ("conv_output_h", lambda e: mutate_model(e, set_first_conv_word(3)(27)), "bin", "model.bin", "gives"),
    ("conv_pad_ge_kernel", lambda e: mutate_model(e, lambda d, o: put_word(d, o[1] + 4 * (9 + 6), 3)),
     "bin", "model.bin", "pad_h"),
    ("n_words", lambda e: mutate_model(e, set_first_conv_word(1)(5)), "bin", "model.bin", "words"),
    ("input_id_out_of_range", lambda e: mutate_model(e, lambda d, o: put_word(d, o[1] + 4 * 9, 5)),
     "bin", "model.bin", "input tensor id"),
    ("second_input_op", lambda e: mutate_model(e, set_first_conv_word(0)(0)), "bin", "model.bin", "op 0"),
    ("unknown_type", lambda e: mutate_model(e, set_first_conv_word(0)(9)), "bin", "model.bin", "unknown type"),
    ("shift_out_of_range", lambda e: mutate_model(e, lambda d, o: put_word(d, o[2] - 4, 63)),
     "bin", "model.bin", "shift"),
    ("model_truncated", lambda e: truncate(file_of(e, "model.bin"), 10), "bin", "model.bin", "truncated"),
    ("model_header_only", lambda e: truncate(file_of(e, "model.bin"),
                                             os.path.getsize(file_of(e, "model.bin")) - 50),
     "bin", "model.bin", "header"),
    ("model_trailing", lambda e: open(file_of(e, "model.bin"), "ab").write(b"\0\0\0\0"),
     "bin", "model.bin", "after the last op"),
    ("weight_bytes_header", lambda e: mutate_model(e, lambda d, o: put_word(d, 20, struct.unpack_from("<i", d, 20)[0] + 1)),
     "bin", "model.bin", "header says"),
    ("overflow", lambda e: open(file_of(e, "bias.bin"), "r+b").write(struct.pack("<i", 2 ** 31 - 1)),
     "bin", "model.bin", "exceeds int32"),
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
    out = str(tmp_path / "logits.txt")
    proc = run(binaries["asan"], ex, "--format", fmt, "--logits", out)
    assert_clean(proc)
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert file_part in lines[0] and phrase in lines[0], lines[0]
    assert not os.path.exists(out) and not os.path.exists(out + ".tmp")
    assert "result:" not in proc.stdout


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
    mutate_model(ex, lambda d, o: d.__setitem__(slice(60, 76), b"mnist".ljust(16, b"\0")))
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
