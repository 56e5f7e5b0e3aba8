"""Regenerate the fuzzing seed corpus in c/fuzz/corpus/ (run from the repository root:
.venv/bin/python c/fuzz/make_corpus.py).  The seeds are small on purpose:

- LeNet (quantization/lenet_quant.tuple) cut after its first pooling (input, conv1 and
  its 150 weights and 6 biases, maxpool), and the whole LeNet model.bin;
- the random test graphs of tests/random_models.py (every op kind, both weight modes), two of
  them with weights packed at 3 and 4 bits;
every model.bin written by the exporter (model/formats/export_format.py), so the seeds follow the
op table and the format version.
- 3 MNIST test images with labels, 2 CIFAR-10 test records.
- .npy images and labels as numpy writes them (format 1.0 and 2.0, labels of several integer
  dtypes and byte orders, images alone); `--only=npy` writes just these.

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


def pack(*parts):
    return b"".join(struct.pack("<I", len(p)) + p for p in parts[:-1]) + parts[-1]


def exported(state, quant):
    """The files of a full export of an integer graph (the writer of model/formats/export_format.py)."""
    from model.formats.export_format import write_export
    with tempfile.TemporaryDirectory() as tmp:
        write_export(state, quant, tmp, "both")
        name = quant[0]["model"]
        return {k: open(os.path.join(tmp, f"{name}_{k}"), "rb").read()
                for k in ("model.bin", "weight.bin", "bias.bin", "weight.txt")}


def write(target, name, data):
    folder = os.path.join(OUT, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def npy_bytes(array, version=None):
    import io
    import numpy as np
    buf = io.BytesIO()
    if version is None:
        np.save(buf, array)
    else:
        np.lib.format.write_array(buf, array, version=version)
    return buf.getvalue()


def npy_seeds():
    import numpy as np
    shutil.rmtree(os.path.join(OUT, "npy"), ignore_errors=True)
    rng = np.random.default_rng(0)
    x1 = rng.integers(0, 256, (3, 1, 6, 6), dtype=np.uint8)
    x3 = rng.integers(0, 256, (2, 3, 4, 4), dtype=np.uint8)
    write("npy", "v1_u8_i8", pack(npy_bytes(x1), npy_bytes(np.array([7, 0, 9], dtype=np.int64))))
    write("npy", "v2_u8_u1", pack(npy_bytes(x3, (2, 0)), npy_bytes(np.array([1, 9], dtype=np.uint8), (2, 0))))
    write("npy", "v1_be_i4", pack(npy_bytes(x3), npy_bytes(np.array([3, 4], dtype=">i4"))))
    write("npy", "v1_u2", pack(npy_bytes(x1), npy_bytes(np.array([1, 2, 3], dtype="<u2"))))
    write("npy", "images_only", pack(npy_bytes(x3), b""))
    write("npy", "bad_label", pack(npy_bytes(x1), npy_bytes(np.array([1, 2, 10], dtype=np.int16))))


def main():
    if "--only=npy" in sys.argv[1:]:
        npy_seeds()
        return
    shutil.rmtree(OUT, ignore_errors=True)
    from model.formats.tuple_check import load_tuple
    from tests.random_models import random_quantized
    read = lambda p: open(p, "rb").read()
    state, quant = load_tuple(os.path.join(ROOT, "quantization", "lenet_quant.tuple"))
    graphs = {"lenet": (state, quant),
              "lenet_cut": (state, quant[:3])}    # input, conv1 (+ReLU), maxpool: small seeds
    for arch, mode in (("conv_pool", "per_channel"), ("conv_pool", "per_tensor"), ("residual", "per_channel"),
                       ("branch", "per_tensor"), ("activations", "per_channel"),
                       ("data_movement", "per_tensor"), ("geometry", "per_channel")):
        graphs[f"{arch}_{mode}"] = random_quantized(arch, mode, seed=1)[:2]
    for mode, bits in (("per_channel", 3), ("per_tensor", 4)):
        graphs[f"conv_pool_{mode}_w{bits}"] = random_quantized("conv_pool", mode, seed=1, weight_bits=bits)[:2]
    for tag, (state, quant) in graphs.items():
        files = exported(state, quant)
        write("model", tag, files["model.bin"])
        if tag != "lenet":                        # its weights are big seeds: the cut holds the same layers
            write("weights_bin", tag, pack(files["model.bin"], files["weight.bin"], files["bias.bin"]))
            write("weights_txt", tag, pack(files["model.bin"], files["weight.txt"]))

    import config
    from data.datasets import test_files
    cfg = config.load_or_exit([])
    image_path, label_path = test_files("mnist", cfg.data_dir, cfg.mirror_dir)
    images, labels = read(image_path), read(label_path)
    n = 3
    write("mnist", "t10k_3", pack(images[:4] + struct.pack(">I", n) + images[8:16 + 784 * n],
                                  labels[:4] + struct.pack(">I", n) + labels[8:8 + n]))
    cifar = read(test_files("cifar10", cfg.data_dir, cfg.mirror_dir)[0])
    write("cifar", "test_2", cifar[:2 * 3073])
    npy_seeds()


if __name__ == "__main__":
    main()
