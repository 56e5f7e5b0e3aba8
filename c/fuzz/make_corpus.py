"""Regenerate the fuzzing seed corpus in c/fuzz/corpus/ (run from the repository root:
.venv/bin/python c/fuzz/make_corpus.py).  The seeds are small on purpose:

- LeNet cut after its first pooling (export_model/lenet_*: the first ops, conv1's 150
  weights and 6 biases, its weight.txt section), and the whole LeNet model.bin;
- the random test graphs of tests/random_models.py (every op kind, both weight modes);
- 3 MNIST test images with labels, 2 CIFAR-10 test records.

Inputs of the multi-file targets are "packed": each part but the last is a uint32
little-endian length and that many bytes; the last part is the rest (fuzz_loaders.c).
"""
import os
import shutil
import struct
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
OUT = os.path.join(ROOT, "c", "fuzz", "corpus")
HEADER = struct.Struct("<8s5i32s16s16s")


def pack(*parts):
    return b"".join(struct.pack("<I", len(p)) + p for p in parts[:-1]) + parts[-1]


def cut_model(model, n_keep):
    """The first n_keep ops of a model.bin, header counts fixed; returns (bytes, weights, biases)."""
    magic, version, n_ops, signed, _, _, name, dataset, fp = HEADER.unpack_from(model)
    pos, records, w_total, b_total = HEADER.size, [], 0, 0
    for _ in range(n_keep):
        kind, n_words = struct.unpack_from("<2i", model, pos)
        rec = model[pos:pos + 8 + 4 * n_words]
        c, h, w = struct.unpack_from("<3i", rec, 8)
        if kind == 1:                      # conv: cin/groups * kh * kw weights per channel
            cin, kh, kw = struct.unpack_from("<3i", rec, 40)
            groups = struct.unpack_from("<i", rec, 40 + 7 * 4)[0]
            w_total, b_total = w_total + c * cin // groups * kh * kw, b_total + c
        elif kind == 2:
            in_features = struct.unpack_from("<i", rec, 40)[0]
            w_total, b_total = w_total + c * in_features, b_total + c
        records.append(rec)
        pos += len(rec)
    head = HEADER.pack(magic, version, n_keep, signed, w_total, b_total, name, dataset, fp)
    return head + b"".join(records), w_total, b_total


def write(target, name, data):
    folder = os.path.join(OUT, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    exp = os.path.join(ROOT, "export_model")
    read = lambda p: open(p, "rb").read()
    lenet = read(os.path.join(exp, "lenet_model.bin"))
    write("model", "lenet_model.bin", lenet)

    cut, nw, nb = cut_model(lenet, 3)      # input, conv1 (+ReLU), maxpool
    weights, biases = read(os.path.join(exp, "lenet_weight.bin")), read(os.path.join(exp, "lenet_bias.bin"))
    write("model", "lenet_cut.bin", cut)
    write("weights_bin", "lenet_cut", pack(cut, weights[:nw], biases[:4 * nb]))
    txt = read(os.path.join(exp, "lenet_weight.txt")).split(b"\n")
    end = next(i for i, line in enumerate(txt) if i > 0 and line.startswith(b"#"))
    write("weights_txt", "lenet_cut", pack(cut, b"\n".join(txt[:end]) + b"\n"))

    from model.export_format import write_export
    from tests.random_models import random_quantized
    for arch, mode in (("conv_pool", "per_channel"), ("conv_pool", "per_tensor"), ("residual", "per_channel")):
        state, quant, _ = random_quantized(arch, mode, seed=1)
        with tempfile.TemporaryDirectory() as tmp:
            write_export(state, quant, tmp, "both")
            name = quant[0]["model"]
            files = {k: read(os.path.join(tmp, f"{name}_{k}")) for k in ("model.bin", "weight.bin", "bias.bin", "weight.txt")}
        tag = f"{arch}_{mode}"
        write("model", tag, files["model.bin"])
        write("weights_bin", tag, pack(files["model.bin"], files["weight.bin"], files["bias.bin"]))
        write("weights_txt", tag, pack(files["model.bin"], files["weight.txt"]))

    raw = os.path.join(ROOT, "data", "MNIST", "raw")
    images, labels = read(os.path.join(raw, "t10k-images-idx3-ubyte")), read(os.path.join(raw, "t10k-labels-idx1-ubyte"))
    n = 3
    write("mnist", "t10k_3", pack(images[:4] + struct.pack(">I", n) + images[8:16 + 784 * n],
                                  labels[:4] + struct.pack(">I", n) + labels[8:8 + n]))
    cifar = read(os.path.join(ROOT, "data", "cifar-10-batches-bin", "test_batch.bin"))
    write("cifar", "test_2", cifar[:2 * 3073])


if __name__ == "__main__":
    main()
