"""Bring your own model (docs/own_model.md; README "Python API"): a small CNN written and trained
outside the project, through the stage scripts with --model=FILE.py:NAME and .npz data, then the
C engine on .npy images; every bad input one `error:` line and exit code 1.

The model (Conv-ReLU branches joined by torch.cat, MaxPool, Conv-LeakyReLU, x.view(x.size(0), -1),
Linear) is trained here in a few seconds on 6,000 MNIST training images (1x28x28) with mean/std
normalisation, saved with torch.save(model.state_dict()); calibration and test sets are .npz files.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import config
from data import datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_DIR = os.path.join(ROOT, "c")
MEAN, STD = 0.1307, 0.3081

USER_NET = '''
import torch
import torch.nn.functional as F
from torch import nn


class MyNet(nn.Module):
    """The issue's acceptance model: torch.cat, LeakyReLU, view-flatten (normalised outside forward)."""

    def __init__(self):
        super().__init__()
        self.conv3 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(1, 4, 1)
        self.conv2 = nn.Conv2d(12, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 7 * 7, 10)

    def forward(self, x):
        x = torch.cat([F.relu(self.conv3(x)), F.relu(self.conv1(x))], 1)
        x = self.pool(x)
        x = self.pool(F.leaky_relu(self.conv2(x), 0.1))
        x = x.view(x.size(0), -1)
        return self.fc(x)


def make_net():
    return MyNet()


def not_a_module():
    return 42
'''


def run(script, *args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def one_error_line(proc):
    """exit code 1 and one line on stderr, an `error:` line (config errors: `config error:`); the
    calibration's progress bar (tqdm, erased on a terminal) is not a line"""
    lines = [ln for ln in re.split(r"[\r\n]", proc.stderr) if ln.strip() and not ln.startswith("calibrating:")]
    return proc.returncode == 1 and len(lines) == 1 and "error:" in lines[0]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """my_net.py, its trained checkpoint, calib.npz, test.npz, x.npy / y.npy, in a temp folder."""
    tmp = tmp_path_factory.mktemp("user")
    (tmp / "my_net.py").write_text(USER_NET)
    sys.path.insert(0, str(tmp))
    try:
        import my_net
    finally:
        sys.path.remove(str(tmp))
    train_x, train_y = datasets.load("mnist", "train", *config.dataset_dirs(ROOT))
    test_x, test_y = datasets.load("mnist", "test", *config.dataset_dirs(ROOT))
    train_x, train_y = train_x[:6000], train_y[:6000]
    torch.manual_seed(0)
    net = my_net.MyNet()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for step in range(400):                        # "outside the project": plain PyTorch
        idx = torch.randint(0, len(train_x), (64,), generator=gen)
        x = (train_x[idx].float() / 255.0 - MEAN) / STD
        loss = torch.nn.functional.cross_entropy(net(x), train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(net.state_dict(), tmp / "my_net.pth")
    np.savez(tmp / "calib.npz", x=train_x[:500].numpy(), y=train_y[:500].numpy())
    np.savez(tmp / "test.npz", x=test_x[:2000].numpy(), y=test_y[:2000].numpy())
    np.save(tmp / "x.npy", test_x[:2000].numpy())
    np.save(tmp / "y.npy", test_y[:2000].numpy().astype(np.int32))
    return tmp


def user_args(tmp, name="MyNet"):
    return [f"--model={tmp / 'my_net.py'}:{name}", f"--quant_dir={tmp / 'q'}"]


@pytest.fixture(scope="module")
def quantized(project):
    tmp = project
    proc = run("quant_model.py", *user_args(tmp), f"--checkpoint={tmp / 'my_net.pth'}", "--input_shape=1x28x28",
               f"--input_mean={MEAN}", f"--input_std={STD}", f"--calib_data={tmp / 'calib.npz'}")
    assert proc.returncode == 0, proc.stderr
    assert os.path.isfile(tmp / "q" / "MyNet_quant.tuple")
    return tmp


def test_stages_and_c_engine_bit_exact(quantized):
    tmp = quantized
    report = tmp / "report.json"
    # test_model.py needs no --checkpoint / --input_*: they are in the tuple
    proc = run("test_model.py", *user_args(tmp), f"--test_data={tmp / 'test.npz'}", "--test_batch=250", f"--json={report}")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(report.read_text())
    assert result["model"] == "MyNet" and result["dataset"] == "custom" and result["images"] == 2000
    assert result["identical_logits"] == {"quant_vs_np_quant": 1.0, "np_quant_vs_c_int8": 1.0}
    acc = result["accuracy"]
    assert acc["raw"] >= 0.9, acc
    assert abs(acc["np_quant"] - acc["raw"]) <= 0.005, acc          # INT8 within 0.5 point of float
    assert acc["np_quant"] == acc["quant"] == acc["c_int8"]

    proc = run("export_quant_model.py", *user_args(tmp), f"--export_dir={tmp / 'e'}")
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp / "e")) == sorted(f"MyNet_{k}" for k in
                                                   ("weight.txt", "weight.bin", "bias.bin", "quant.txt", "model.bin"))

    from model import api
    state, quant_list = torch.load(tmp / "q" / "MyNet_quant.tuple", weights_only=True)
    head = quant_list[0]
    assert head["dataset"] == "custom" and head["input_shape"] == [1, 28, 28]
    assert head["input_mean"] == [MEAN] and head["input_std"] == [STD] and head["checkpoint_sha256"]
    assert quant_list[1]["op"] == "conv" and quant_list[1]["groups"] == 1   # the normalisation, a 1x1 depthwise conv
    x = np.load(tmp / "x.npy")[:500]
    want = api.run_integer(state, quant_list, x, engine="numpy")
    assert (api.run_integer(state, quant_list, x, engine="torch") == want).all()

    assert subprocess.run(["make", "-s", "-C", C_DIR, "inference", "asan"], capture_output=True).returncode == 0
    for binary, fmt in (("inference", "bin"), ("inference", "txt"), ("inference_asan", "bin")):
        logits = tmp / f"logits_{binary}_{fmt}.txt"
        proc = subprocess.run([os.path.join(C_DIR, binary), "--dir", str(tmp / "e"), "--model", "MyNet",
                               "--format", fmt, "--images", str(tmp / "x.npy"), "--labels", str(tmp / "y.npy"),
                               "--limit", "500", "--logits", str(logits)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert "result: images=500 correct=" in proc.stdout
        assert (np.loadtxt(logits, delimiter=",", dtype=np.int64) == want).all()
    # per-tensor uint8 weights, through the Python API on the same trained model: three engines agree
    sys.path.insert(0, str(tmp))
    try:
        import my_net
    finally:
        sys.path.remove(str(tmp))
    net = my_net.MyNet()
    net.load_state_dict(torch.load(tmp / "my_net.pth", weights_only=True))
    calib = np.load(tmp / "calib.npz")["x"]
    s2, q2 = api.quantize(net, calib, weight_mode="per_tensor", input_mean=[MEAN], input_std=[STD], name="MyNetPT")
    got = {e: api.run_integer(s2, q2, x[:200], engine=e) for e in ("numpy", "torch", "c")}
    assert (got["numpy"] == got["torch"]).all() and (got["numpy"] == got["c"]).all()
    assert (got["c"].argmax(1) == api.run_float(net, x[:200], [MEAN], [STD]).argmax(1)).mean() >= 0.97
    # without labels: no accuracy, the logits still written
    logits = tmp / "logits_nolabels.txt"
    proc = subprocess.run([os.path.join(C_DIR, "inference"), "--dir", str(tmp / "e"), "--model", "MyNet",
                           "--images", str(tmp / "x.npy"), "--limit", "500", "--logits", str(logits)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "accuracy: n/a" in proc.stdout and re.search(r"result: images=500 seconds=", proc.stdout)
    assert (np.loadtxt(logits, delimiter=",", dtype=np.int64) == want).all()


def test_stored_settings_must_agree(quantized):
    tmp = quantized
    proc = run("export_quant_model.py", *user_args(tmp), "--input_mean=0.5", "--input_std=0.5",
               f"--export_dir={tmp / 'e2'}")
    assert one_error_line(proc) and "stale" in proc.stderr
    proc = run("export_quant_model.py", *user_args(tmp), "--weight_mode=per_tensor", f"--export_dir={tmp / 'e2'}")
    assert one_error_line(proc) and "stale" in proc.stderr
    proc = run("test_model.py", *user_args(tmp))
    assert one_error_line(proc) and "--test_data" in proc.stderr


@pytest.mark.parametrize("case", ["no_file", "no_name", "not_module", "syntax", "no_checkpoint", "bad_checkpoint",
                                  "wrong_keys", "wrong_shape", "no_calib", "calib_shape", "model_fails"])
def test_bad_inputs_one_error_line(project, case, tmp_path):
    tmp = project
    ckpt, calib = tmp / "my_net.pth", tmp / "calib.npz"
    model = f"{tmp / 'my_net.py'}:MyNet"
    if case == "no_file":
        model = f"{tmp / 'nothere.py'}:MyNet"
    elif case == "no_name":
        model = f"{tmp / 'my_net.py'}:Nope"
    elif case == "not_module":
        model = f"{tmp / 'my_net.py'}:not_a_module"
    elif case == "syntax":
        model = f"{tmp / 'my_net.py'}"                # FILE.py without :NAME
    elif case == "bad_checkpoint":
        ckpt = tmp_path / "junk.pth"
        ckpt.write_bytes(b"not a checkpoint at all")
    elif case == "wrong_keys":
        ckpt = tmp_path / "other.pth"
        torch.save(torch.nn.Linear(3, 2).state_dict(), ckpt)
    elif case == "wrong_shape":
        ckpt = tmp_path / "shape.pth"
        state = torch.load(tmp / "my_net.pth", weights_only=True)
        state["fc.weight"] = torch.zeros(10, 100)
        state.pop("conv1.bias")
        torch.save(state, ckpt)
    elif case in ("calib_shape", "model_fails"):
        calib = tmp_path / "rgb.npz"
        np.savez(calib, x=np.zeros((4, 3, 28, 28), np.uint8), y=np.zeros(4, np.int64))
    shape = "3x28x28" if case == "model_fails" else "1x28x28"       # the model itself takes 1 channel
    args = [f"--model={model}", f"--quant_dir={tmp_path}", f"--input_shape={shape}"]
    if case != "no_checkpoint":
        args.append(f"--checkpoint={ckpt}")
    if case != "no_calib":
        args.append(f"--calib_data={calib}")
    proc = run("quant_model.py", *args)
    assert one_error_line(proc), (proc.returncode, proc.stderr)
    assert os.listdir(tmp_path) in ([], ["junk.pth"], ["other.pth"], ["shape.pth"], ["rgb.npz"])
    if case in ("wrong_keys", "wrong_shape"):
        assert "does not fit the model" in proc.stderr
    if case == "wrong_shape":
        assert "missing 1 key(s): conv1.bias" in proc.stderr and "fc.weight is [10, 100]" in proc.stderr
    if case == "model_fails":
        assert "the float model failed on the 3x28x28 calibration images" in proc.stderr


def test_npz_and_image_folder(tmp_path):
    """--calib_data / --test_data: a .npz (x uint8 NxCxHxW, y labels) or an ImageFolder directory,
    resized to the input shape, grayscale or RGB."""
    from PIL import Image
    for k, cls in enumerate(("cat", "dog")):
        (tmp_path / "folder" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (12 + i, 10), (40 * k + i, 100, 200)).save(tmp_path / "folder" / cls / f"{i}.png")
    x, y = datasets.load_images(str(tmp_path / "folder"), [3, 8, 6])
    assert x.dtype == torch.uint8 and list(x.shape) == [6, 3, 8, 6] and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert x[4, :, 0, 0].tolist() == [41, 100, 200]                 # CHW, RGB order
    x, _ = datasets.load_images(str(tmp_path / "folder"), [1, 5, 5])
    assert list(x.shape) == [6, 1, 5, 5]
    with pytest.raises(datasets.DatasetError, match="needs --input_shape"):
        datasets.load_images(str(tmp_path / "folder"), None)
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 1, 4, 4), np.uint8), y=np.array([1, 0], np.uint8))
    x, y = datasets.load_images(str(tmp_path / "d.npz"), None)
    assert list(x.shape) == [2, 1, 4, 4] and y.dtype == torch.int64 and y.tolist() == [1, 0]
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((2, 1, 4, 4), np.uint8))
    assert datasets.load_images(str(tmp_path / "nolabels.npz"), None, need_labels=False)[1] is None
    for bad, message in (({"x": np.zeros((2, 1, 4, 4), np.float32)}, "expected uint8"),
                         ({"y": np.zeros(2, np.int64)}, "no array 'x'"),
                         ({"x": np.zeros((2, 1, 4, 4), np.uint8), "y": np.zeros(3, np.int64)}, "2 integer labels")):
        np.savez(tmp_path / "bad.npz", **bad)
        with pytest.raises(datasets.DatasetError, match=message):
            datasets.load_images(str(tmp_path / "bad.npz"), None)


def test_user_module_function_and_class():
    import model as models
    from model.fileio import ModelFileError
    path = os.path.join(ROOT, "tests", "_user_net_tmp.py")
    with open(path, "w") as f:
        f.write(USER_NET)
    try:
        assert type(models.load_user_module(path, "make_net")).__name__ == "MyNet"
        assert type(models.load_user_module(path, "MyNet")).__name__ == "MyNet"
        with pytest.raises(ModelFileError, match="returned a int, not a torch.nn.Module"):
            models.load_user_module(path, "not_a_module")
    finally:
        os.remove(path)


def _c_error(tmp, *args):
    return subprocess.run([os.path.join(C_DIR, "inference_asan"), "--dir", str(tmp / "e"), "--model", "MyNet", *args],
                          capture_output=True, text=True)


def test_c_engine_bad_npy_one_error_line(quantized, tmp_path):
    tmp = quantized
    if not os.path.isfile(tmp / "e" / "MyNet_model.bin"):
        assert run("export_quant_model.py", *user_args(tmp), f"--export_dir={tmp / 'e'}").returncode == 0
    assert subprocess.run(["make", "-s", "-C", C_DIR, "asan"], capture_output=True).returncode == 0
    good = (tmp / "x.npy").read_bytes()
    cases = {
        "rgb.npy": None,                                          # 3x28x28 images for a 1x28x28 model
        "truncated.npy": good[:1000],
        "magic.npy": b"\x93NUMPX" + good[6:],
        "version.npy": good[:6] + b"\x03\x00" + good[8:],
        "fortran.npy": good.replace(b"'fortran_order': False", b"'fortran_order': True ", 1),
        "descr.npy": good.replace(b"'|u1'", b"'<f4'", 1),
        "key.npy": good.replace(b"'shape'", b"'shapf'", 1),
        "header.npy": good.replace(b"{", b"[", 1),
        "long.npy": good + b"\0",
    }
    np.save(tmp_path / "rgb.npy", np.zeros((2, 3, 28, 28), np.uint8))
    for name, data in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        proc = _c_error(tmp, "--images", str(tmp_path / name))
        assert one_error_line(proc) and name in proc.stderr, (name, proc.stderr)
    assert "the model takes 1x28x28" in _c_error(tmp, "--images", str(tmp_path / "rgb.npy")).stderr
    np.save(tmp_path / "y_bad.npy", np.full(2000, 10, np.int64))             # label beyond the 10 outputs
    np.save(tmp_path / "y_short.npy", np.zeros(5, np.int64))
    np.save(tmp_path / "y_float.npy", np.zeros(2000, np.float32))
    for name in ("y_bad.npy", "y_short.npy", "y_float.npy"):
        proc = _c_error(tmp, "--images", str(tmp / "x.npy"), "--labels", str(tmp_path / name))
        assert one_error_line(proc) and name in proc.stderr, (name, proc.stderr)
    proc = _c_error(tmp)                                      # dataset custom: --images required
    assert one_error_line(proc) and "--images" in proc.stderr


README_API = re.compile(r"## Python API\n.*?```python\n(.*?)```", re.S)


def test_readme_python_api_example(tmp_path):
    """The README's "Python API" example, run as written (in a temporary folder)."""
    code = README_API.search(open(os.path.join(ROOT, "README.md")).read()).group(1)
    assert len(code.strip().splitlines()) <= 14
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr
    assert os.path.isfile(tmp_path / "export_model" / "MyNet_model.bin")


GEOMETRY_NET = '''
import torch
import torch.nn.functional as F
from torch import nn


class Odd(nn.Module):
    """RGB, non-square input; the window geometries of issue 10's last ops: an even-kernel "same",
    a dilated depthwise conv, a TF-style asymmetric pad, an adaptive pool of uneven windows."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 4, padding="same"), nn.BatchNorm2d(8), nn.ReLU())
        self.dw = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
        self.down = nn.Conv2d(8, 12, 3, stride=2)
        self.pool = nn.AdaptiveAvgPool2d((3, 3))
        self.fc = nn.Linear(12 * 9, 4)

    def forward(self, x):
        x = F.relu6(self.dw(self.stem(x)))
        x = self.down(F.pad(x, (0, 1, 0, 1)))
        return self.fc(torch.flatten(self.pool(x), 1))
'''


def test_an_rgb_non_square_model_from_image_folders(tmp_path):
    """3x36x20 with per-channel mean/std, calibrated and tested on ImageFolder directories of PNGs of
    other sizes (resized by the loader): every engine bit-exact, the C column reading .npy."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (("calib", 24), ("test", 40)):
        for cls in ("cat", "dog"):
            os.makedirs(tmp_path / split / cls)
            for i in range(n // 2):
                size = (int(rng.integers(20, 60)), int(rng.integers(20, 60)))
                Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    (tmp_path / "odd_net.py").write_text(GEOMETRY_NET)
    sys.path.insert(0, str(tmp_path))
    try:
        import odd_net
    finally:
        sys.path.remove(str(tmp_path))
    torch.manual_seed(0)
    torch.save(odd_net.Odd().state_dict(), tmp_path / "odd.pth")
    common = [f"--model={tmp_path / 'odd_net.py'}:Odd", f"--quant_dir={tmp_path / 'q'}"]
    proc = run("quant_model.py", *common, f"--checkpoint={tmp_path / 'odd.pth'}", "--input_shape=3x36x20",
               "--input_mean=0.5,0.4,0.3", "--input_std=0.2,0.25,0.3", f"--calib_data={tmp_path / 'calib'}")
    assert proc.returncode == 0, proc.stderr
    report = tmp_path / "report.json"
    proc = run("test_model.py", *common, f"--test_data={tmp_path / 'test'}", f"--json={report}")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(report.read_text())
    assert result["images"] == 40 and result["identical_logits"] == {"quant_vs_np_quant": 1.0, "np_quant_vs_c_int8": 1.0}
    _, quant_list = torch.load(tmp_path / "q" / "Odd_quant.tuple", weights_only=True)
    kinds = [op["op"] for op in quant_list]
    assert kinds[0] == "input" and quant_list[0]["input_shape"] == [3, 36, 20] and "adaptive_avgpool" in kinds
    convs = {op["name"]: op for op in quant_list if op["op"] == "conv"}
    assert convs["stem_0"]["padding"] == [1, 1, 2, 2] and convs["dw"]["dilation"] == [2, 2]
    assert convs["down"]["padding"] == [0, 0, 1, 1]
    proc = run("export_quant_model.py", *common, f"--export_dir={tmp_path / 'e'}")
    assert proc.returncode == 0, proc.stderr
