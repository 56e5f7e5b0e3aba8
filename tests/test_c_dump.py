"""./c/inference --dump-layers DIR (c/host/dump.c): the C engine's golden vectors in model/formats/golden.py's
layout equal the numpy engine's (test_model.py --dump_layers), op for op and byte for byte, on
LeNet's committed export and on random graphs holding every op kind; a folder that is not a dump
is refused with one line, a previous dump replaced."""
import os
import subprocess

import numpy as np
import pytest
import torch

from model.formats import golden
from model.formats.export_format import write_export
from tests.random_models import random_quantized

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_DIR = os.path.join(ROOT, "c")


@pytest.fixture(scope="module")
def engine():
    proc = subprocess.run(["make", "-C", C_DIR, "inference_asan"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return os.path.join(C_DIR, "inference_asan")


def c_dump(engine, export_dir, model, images_npy, out, limit):
    return subprocess.run([engine, "--dir", export_dir, "--model", model, "--images", images_npy, "--limit", str(limit),
                           "--dump-layers", out], capture_output=True, text=True, timeout=300)


def assert_same_dump(state, quant, images, c_dir):
    manifest, values = golden.read_dump(c_dir)
    py = str(c_dir) + "_py"
    golden.write_dump(py, quant, golden.layer_outputs(state, quant, images), quant[0]["model"])
    py_manifest, py_values = golden.read_dump(py)
    assert golden.manifest_mismatch(py_manifest, manifest, names=False) is None
    assert golden.first_difference(py_manifest, py_values, values) is None
    for op in manifest["ops"]:                                   # the .hex files are the .npy bytes
        assert golden.read_hex(os.path.join(c_dir, op["hex"])) == np.asarray(values[op["index"]]).tobytes()


@pytest.mark.parametrize("arch", ["geometry", "activations", "data_movement", "branch"])
def test_c_dump_equals_the_numpy_dump(engine, tmp_path, arch):
    state, quant, images = random_quantized(arch, "per_tensor", seed=6, n_test=3)
    write_export(state, quant, str(tmp_path), "bin")
    np.save(tmp_path / "x.npy", images.numpy())
    proc = c_dump(engine, str(tmp_path), quant[0]["model"], str(tmp_path / "x.npy"), str(tmp_path / "dump"), 3)
    assert proc.returncode == 0, proc.stderr
    assert_same_dump(state, quant, images.numpy(), str(tmp_path / "dump"))


def test_lenet_dump_replaces_a_previous_one_and_refuses_other_folders(engine, tmp_path):
    state, quant = torch.load(os.path.join(ROOT, "quantization", "lenet_quant.tuple"), weights_only=True)
    from data import datasets
    import config
    images = datasets.load("mnist", "test", *config.dataset_dirs(ROOT))[0][:10].numpy()
    np.save(tmp_path / "x.npy", images)
    out = str(tmp_path / "dump")
    export = os.path.join(ROOT, "export_model")
    for limit in (2, 10):                                         # the second replaces the first
        proc = c_dump(engine, export, "lenet", str(tmp_path / "x.npy"), out, limit)
        assert proc.returncode == 0, proc.stderr
    assert golden.read_dump(out)[0]["images"] == 10
    assert_same_dump(state, quant, images, out)
    assert sorted(os.listdir(tmp_path)) == ["dump", "dump_py", "x.npy"]      # no temporary left
    os.makedirs(tmp_path / "other")
    (tmp_path / "other" / "notes.txt").write_text("mine")
    proc = c_dump(engine, export, "lenet", str(tmp_path / "x.npy"), str(tmp_path / "other"), 1)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert "not a previous dump" in proc.stderr and (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_a_dump_that_fails_midway_leaves_nothing(engine, tmp_path):
    """A write failing inside the dump (a 4 KB file-size limit: EFBIG, SIGXFSZ ignored) is one error
    line, and the partial .DIR.PID.tmp folder is removed: neither it nor DIR is left."""
    import resource
    import signal
    images = np.zeros((10, 1, 28, 28), np.uint8)
    np.save(tmp_path / "x.npy", images)

    def limit_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    proc = subprocess.run([engine, "--dir", os.path.join(ROOT, "export_model"), "--model", "lenet", "--images",
                           str(tmp_path / "x.npy"), "--limit", "10", "--dump-layers", str(tmp_path / "dump")],
                          capture_output=True, text=True, timeout=300, preexec_fn=limit_files)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert os.listdir(tmp_path) == ["x.npy"]
