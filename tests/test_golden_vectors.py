"""Golden vectors (issue 11): `test_model.py --dump_layers=DIR` and model/formats/golden.py write every op's
uint8 output of LeNet's committed tuple; `compare_dumps.py` finds the first op, image and index
where two dumps differ, and a single injected wrong value is located exactly."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import compare_dumps
import config
from data import datasets
from model.formats import golden
from model.engines.np_engine import NumpyIntegerModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUPLE = os.path.join(ROOT, "quantization", "lenet_quant.tuple")
N = 3


def run(script, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def lenet():
    state, quant_list = torch.load(TUPLE, map_location="cpu", weights_only=True)
    cfg = config.load([])
    images = datasets.load("mnist", "test", cfg.data_dir, cfg.mirror_dir)[0][:N].numpy()
    return state, quant_list, images


@pytest.fixture(scope="module")
def dumps(tmp_path_factory, lenet):
    """(the script's dump, the Python function's dump) of LeNet on the first N test images."""
    state, quant_list, images = lenet
    base = tmp_path_factory.mktemp("golden")
    script_dir, api_dir = str(base / "script"), str(base / "api")
    proc = run("test_model.py", "--columns=np", f"--limit={N}", f"--dump_layers={script_dir}")
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {script_dir}: {len(quant_list)} ops x {N} images" in proc.stdout
    golden.write_dump(api_dir, quant_list, golden.layer_outputs(state, quant_list, images, batch=2), "lenet")
    return script_dir, api_dir


def compare(a, b, *args, capsys):
    code = compare_dumps.main([a, b, *args])
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1, out
    return code, out.strip()


def copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def test_manifest_lists_every_op(dumps, lenet):
    _, quant_list, _ = lenet
    for folder in dumps:
        manifest, values = golden.read_dump(folder)
        assert {k: manifest[k] for k in ("format", "version", "model", "images", "layout")} == \
            {"format": "fpgai-golden", "version": 1, "model": "lenet", "images": N, "layout": "NCHW"}
        assert len(manifest["ops"]) == len(quant_list) == len(values)
        for i, (entry, op, v) in enumerate(zip(manifest["ops"], quant_list, values)):
            assert list(entry) == list(golden.OP_FIELDS)
            stem = f"op{i:03d}_{op['name']}"
            assert entry == {"index": i, "name": op["name"], "op": op["op"], "inputs": list(op["inputs"]),
                             "shape": list(op["shape"]), "scale": op["scale"], "zero_point": op["zero_point"],
                             "qmin": op["qmin"], "qmax": op["qmax"], "npy": stem + ".npy", "hex": stem + ".hex"}
            assert v.dtype == np.uint8 and v.shape == (N, *op["shape"])
            assert op["qmin"] <= v.min() and v.max() <= op["qmax"]
        assert sorted(os.listdir(folder)) == sorted(["manifest.json"] + [e[k] for e in manifest["ops"]
                                                                         for k in ("npy", "hex")])


def test_op0_is_the_images_and_the_last_op_the_logits(dumps, lenet):
    state, quant_list, images = lenet
    logits = NumpyIntegerModel(state, quant_list)(images)
    for folder in dumps:
        _, values = golden.read_dump(folder)
        assert np.array_equal(values[0], images)
        assert np.array_equal(values[-1].reshape(N, -1).astype(np.int64), logits)


def test_hex_files_hold_the_npy_bytes(dumps):
    for folder in dumps:
        manifest, values = golden.read_dump(folder)
        for entry, v in zip(manifest["ops"], values):
            with open(os.path.join(folder, entry["hex"]), "rb") as f:
                text = f.read()
            lines = text.decode("ascii").split("\n")
            assert lines[-1] == "" and len(lines) - 1 == v.size          # every line ends in LF, the last too
            assert all(len(line) == 2 and line == line.lower() for line in lines[:-1])
            assert bytes(int(line, 16) for line in lines[:-1]) == np.ascontiguousarray(v).tobytes()
            assert golden.read_hex(os.path.join(folder, entry["hex"])) == np.ascontiguousarray(v).tobytes()


def test_read_hex_is_strict(tmp_path):
    path = tmp_path / "x.hex"
    path.write_bytes(b"00\nff\n7a\n")
    assert golden.read_hex(str(path)) == b"\x00\xff\x7a"
    for bad in (b"0g\n", b"0a\r\n", b"0a", b"// c\n", b"1\n"):
        path.write_bytes(bad)
        with pytest.raises(golden.DumpError, match="not a dump .hex file"):
            golden.read_hex(str(path))


def test_identical_dumps(dumps, capsys):
    script_dir, api_dir = dumps
    assert compare(script_dir, api_dir, capsys=capsys) == (0, f"identical: {N} images, 8 ops")
    proc = run("compare_dumps.py", script_dir, api_dir)                  # the script, as a user runs it
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"identical: {N} images, 8 ops\n", "")


def test_one_wrong_value_is_located(dumps, tmp_path, capsys):
    script_dir, _ = dumps
    manifest, _ = golden.read_dump(script_dir)
    bad = copy(script_dir, tmp_path / "bad")
    op = manifest["ops"][3]                                           # a middle op (features_4, conv 16x10x10)
    image, (c, y, x) = 1, (4, 3, 7)                                   # a middle image, a middle value
    path = os.path.join(bad, op["npy"])
    v = np.load(path)
    before = int(v[image, c, y, x])
    v[image, c, y, x] ^= 0x5a
    np.save(path, v)
    index = (c * op["shape"][1] + y) * op["shape"][2] + x
    want = (f"first difference: op 3 ({op['name']}, conv), image {image}, index {index} (c={c}, y={y}, x={x}): "
            f"A={before} B={before ^ 0x5a} (1 value differs in this op; A = {script_dir}, B = {bad})")
    assert compare(script_dir, bad, capsys=capsys) == (1, want)
    proc = run("compare_dumps.py", script_dir, bad)
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, want + "\n", "")
    # the same op also wrong later (another image, a later op): still the first in execution order
    v[2, 0, 0, 0] ^= 1
    np.save(path, v)
    later = os.path.join(bad, manifest["ops"][5]["npy"])
    w = np.load(later)
    w[0, 0, 0, 0] ^= 1
    np.save(later, w)
    code, line = compare(script_dir, bad, capsys=capsys)
    assert code == 1 and line.startswith(f"first difference: op 3 ({op['name']}, conv), image {image}, "
                                         f"index {index} (c={c}, y={y}, x={x})")
    assert "(2 values differ in this op;" in line


def test_manifest_mismatch_is_one_line(dumps, tmp_path, capsys):
    script_dir, _ = dumps
    other = copy(script_dir, tmp_path / "other")
    with open(os.path.join(other, "manifest.json")) as f:
        manifest = json.load(f)
    entry = manifest["ops"][4]                                        # 16x5x5 read as 16x25x1, its .npy too
    entry["shape"] = [16, 25, 1]
    np.save(os.path.join(other, entry["npy"]), np.load(os.path.join(other, entry["npy"])).reshape(N, 16, 25, 1))
    with open(os.path.join(other, "manifest.json"), "w") as f:
        f.write(golden.manifest_text(manifest))
    want = (f"manifest mismatch: op 4 ({entry['name']}): shape [16, 5, 5] in A, [16, 25, 1] in B "
            f"(A = {script_dir}, B = {other})")
    assert compare(script_dir, other, capsys=capsys) == (1, want)
    # a renamed op is a mismatch too, unless names are ignored (an engine without op names)
    manifest["ops"][4]["shape"] = [16, 5, 5]
    np.save(os.path.join(other, entry["npy"]), np.load(os.path.join(other, entry["npy"])).reshape(N, 16, 5, 5))
    manifest["ops"][2]["name"] = "pool1"
    with open(os.path.join(other, "manifest.json"), "w") as f:
        f.write(golden.manifest_text(manifest))
    code, line = compare(script_dir, other, capsys=capsys)
    assert code == 1 and line.startswith("manifest mismatch: op 2 (features_3): name features_3 in A, pool1 in B")
    assert compare(script_dir, other, "--ignore_names", capsys=capsys) == (0, f"identical: {N} images, 8 ops")
    # fewer images
    assert golden.manifest_mismatch(manifest, dict(manifest, images=N - 1)) == \
        f"manifest mismatch: {N} images in A, {N - 1} in B"


def test_unreadable_dump_is_an_error_line(dumps, tmp_path, capsys):
    script_dir, _ = dumps
    broken = copy(script_dir, tmp_path / "broken")
    manifest, _ = golden.read_dump(broken)
    os.remove(os.path.join(broken, manifest["ops"][6]["npy"]))
    assert compare_dumps.main([script_dir, broken]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and manifest["ops"][6]["npy"] in err and "\n" not in err
    assert compare_dumps.main([script_dir, str(tmp_path / "absent")]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_dump_folder_rules(lenet, tmp_path, monkeypatch):
    """Absent or empty: written; a previous dump: replaced whole; anything else refused; a failed
    write leaves the folder as it was and no temporary."""
    state, quant_list, images = lenet
    values = golden.layer_outputs(state, quant_list, images, batch=16)
    empty = tmp_path / "empty"
    empty.mkdir()
    golden.write_dump(str(empty), quant_list, values, "lenet")
    assert golden.read_dump(str(empty))[0]["images"] == N
    golden.write_dump(str(empty), quant_list, [v[:1] for v in values], "lenet")          # replaced
    assert golden.read_dump(str(empty))[0]["images"] == 1
    assert sorted(os.listdir(tmp_path)) == ["empty"]                                     # no temporaries left

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")
    before = {f: open(os.path.join(empty, f), "rb").read() for f in os.listdir(empty)}
    with monkeypatch.context() as m:
        m.setattr(golden.np, "save", boom)
        with pytest.raises(golden.DumpError, match="No space left on device"):
            golden.write_dump(str(empty), quant_list, values, "lenet")
    assert {f: open(os.path.join(empty, f), "rb").read() for f in os.listdir(empty)} == before
    assert sorted(os.listdir(tmp_path)) == ["empty"]

    (empty / "notes.txt").write_text("mine")                                             # a dump plus another file
    with pytest.raises(golden.DumpError, match="other files"):
        golden.write_dump(str(empty), quant_list, values, "lenet")
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.bin").write_bytes(b"x")
    proc = run("test_model.py", "--columns=np", "--limit=1", f"--dump_layers={other}")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [f"error: {other}: exists, is not empty and holds no fpgai-golden "
                                                f"manifest; give an empty or new folder"]
    assert os.listdir(other) == ["data.bin"]


def test_help_describes_the_options():
    proc = run("test_model.py", "--help")
    assert proc.returncode == 0 and "\n  --dump_layers=\"\"\n      also write every op's uint8 output" in proc.stdout
    proc = run("compare_dumps.py", "--help")
    assert proc.returncode == 0 and "FIRST differing value" in proc.stdout and "--ignore_names" in proc.stdout


KILLED_WRITER = """
import sys, time
import numpy as np, torch
from model.formats import golden
quant_list = torch.load(sys.argv[2], map_location="cpu", weights_only=True)[1]
save, saved = np.save, []
def slow_save(*args, **kwargs):
    save(*args, **kwargs)
    saved.append(1)
    if len(saved) == 3:
        print("ready", flush=True)
        time.sleep(60)
golden.np.save = slow_save
golden.write_dump(sys.argv[1], quant_list, [np.zeros((2, *op["shape"]), np.uint8) for op in quant_list], "lenet")
"""


def test_a_killed_dump_leaves_the_previous_one(lenet, tmp_path):
    """SIGKILL in the middle of a dump: the previous dump stays as it was; the next dump removes the
    dead writer's temporary folder."""
    state, quant_list, images = lenet
    folder = tmp_path / "dump"
    golden.write_dump(str(folder), quant_list, golden.layer_outputs(state, quant_list, images), "lenet")
    before = {f: (folder / f).read_bytes() for f in os.listdir(folder)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(folder), TUPLE], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
    finally:
        proc.kill()
        proc.wait()
    assert {f: (folder / f).read_bytes() for f in os.listdir(folder)} == before
    assert sorted(os.listdir(tmp_path)) == [f".dump.{proc.pid}.tmp", "dump"]
    golden.write_dump(str(folder), quant_list, golden.layer_outputs(state, quant_list, images[:1]), "lenet")
    assert sorted(os.listdir(tmp_path)) == ["dump"] and golden.read_dump(str(folder))[0]["images"] == 1
