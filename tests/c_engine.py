"""Helpers for running the C engine (c/inference) on exports (not a test module): a random integer graph
exported with its images as a dataset file, a run of the engine on it, its logits and result line, and
model.bin's op records edited in place and sealed again (CRCs made right)."""
import os
import re
import shutil
import struct
import subprocess

import numpy as np

from model.formats.export_format import COMMON, HEADER_BYTES, WEIGHT_FILES, crc32, write_export
from model.ops import BY_CODE
from model.engines.np_engine import NumpyIntegerModel
from tests.random_models import random_quantized

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_DIR = os.path.join(ROOT, "c")
SANITIZER_MARKS = ("runtime error", "AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer")


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


def record_fields(data):
    """[{field name: byte offset}] of every op record of a model.bin, fields named as the op table
    (model/ops) names them: type, n_words, C, H, W, zero_point, qmin, qmax, scale, n_inputs,
    input0.., the kind's parameters, n_mult, mult0.., n_shift, shift0.., n_table, table0.."""
    words = lambda pos: struct.unpack_from("<I", data, pos)[0]
    pos, records = HEADER_BYTES, []
    for _ in range(words(20)):
        names = ["type", "n_words", "C", "H", "W", "zero_point", "qmin", "qmax", "scale"]
        f = {name: pos + 4 * i for i, name in enumerate(names)}
        at = pos + COMMON.size

        def take(name):
            nonlocal at
            f[name] = at
            at += 4

        take("n_inputs")
        for j in range(words(f["n_inputs"])):
            take(f"input{j}")
        for name in BY_CODE[words(pos)].params:
            take(name)
        for block, item in (("n_mult", "mult"), ("n_shift", "shift"), ("n_table", "table")):
            take(block)
            for j in range(words(f[block])):
                take(f"{item}{j}")
        records.append(f)
        pos += 8 + 4 * words(pos + 4)
    return records


def put_word(data, pos, value):
    data[pos:pos + 4] = struct.pack("<i", value)


def reseal(export):
    """Record the weight files' sizes and CRC-32s in model.bin and its own CRC, as an export would:
    a damaged file that was sealed again reaches the checks behind the seals."""
    path = file_of(export, "model.bin")
    data = bytearray(open(path, "rb").read())
    for i, name in enumerate(WEIGHT_FILES):
        if data[36] >> (0 if name != "weight.txt" else 1) & 1 and os.path.exists(file_of(export, name)):
            content = open(file_of(export, name), "rb").read()
            struct.pack_into("<QI", data, 40 + 16 * i, len(content), crc32(content))
    struct.pack_into("<I", data, 12, crc32(bytes(data[16:])))
    open(path, "wb").write(bytes(data))


def mutate_model(export, fn, sealed=True):
    """fn(data, record_fields(data)) on model.bin's bytes, then (sealed) its CRC made right again."""
    path = file_of(export, "model.bin")
    data = bytearray(open(path, "rb").read())
    fn(data, record_fields(data))
    open(path, "wb").write(bytes(data))
    if sealed:
        reseal(export)


def set_field(op, name, value):
    """Mutator: the word `name` of op `op`'s record."""
    return lambda data, rec: put_word(data, rec[op][name], value)


def refused(binary, export, fmt, file_part, tmp_path):
    """Runs the engine on a damaged export: one error line naming file_part, exit 1, no sanitizer
    report, no output file (nor its temporary); returns the line."""
    out = str(tmp_path / "logits.txt")
    proc = run(binary, export, "--format", fmt, "--logits", out)
    assert_clean(proc)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), (proc.returncode, proc.stderr)
    assert file_part in lines[0], lines[0]
    assert not os.path.exists(out) and not os.path.exists(out + ".tmp") and "result:" not in proc.stdout
    return lines[0]
