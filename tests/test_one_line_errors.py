"""Issue 13's list of tracebacks where docs/stages.md promises one-line errors: each case ends with one
`error:` line (`config error:` for a bad option) on stderr, exit code 1, no traceback, and nothing
overwritten; the unwritable output folder is found before the work starts.

Every output goes to a temporary folder (--pretrained_dir, --quant_dir, --export_dir, --json): the
repository's shipped files are only read. A full disk is simulated by running the stage with
model.fileio's open() replaced (FULL_DISK): its temporary file's writes fail with ENOSPC after
FULL_AFTER bytes, which makes torch.save raise OSError 28 (0 bytes) or its own RuntimeError
'unexpected pos' (a few KB), the two errors a full disk gives; `--json=/dev/full` is a real ENOSPC.
Diverging training is forced the same way: DIVERGE multiplies the loss by NaN, INF_WEIGHTS fills a
weight with Inf after the optimizer's step.
An unwritable folder is a path below a regular file (no folder can be made there, even for root);
a chmod 0o555 folder as well where the tests do not run as root (root writes there regardless).
"""
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from tests.checks import digest, error_line
from tests.scripts import ROOT, run

QUICK = ["--threads=1"]
TRAIN = QUICK + ["--train_images=64", "--epochs=1"]
RAW = os.path.join(ROOT, "pretrained", "lenet_raw.pth")
TUPLE = os.path.join(ROOT, "quantization", "lenet_quant.tuple")

FULL_DISK = """
import errno, io, os, runpy, sys
import model.fileio as fileio
LIMIT = int(os.environ["FULL_AFTER"])
class Full(io.FileIO):
    written = 0
    def write(self, b):
        if Full.written + len(b) > LIMIT:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        Full.written += len(b)
        return super().write(b)
def full_open(path, mode="r", *args, **kwargs):
    if "w" in mode and str(path).endswith(".tmp"):
        f = io.BufferedWriter(Full(path, "w"))
        return f if "b" in mode else io.TextIOWrapper(f)
    return open(path, mode, *args, **kwargs)
fileio.open = full_open
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

LOW_SPACE = """
import collections, runpy, shutil, sys
shutil.disk_usage = lambda path: collections.namedtuple("usage", "total used free")(10 ** 9, 10 ** 9 - 4000, 4000)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

DIVERGE = """
import runpy, sys
import torch.nn.functional as F
cross_entropy = F.cross_entropy
F.cross_entropy = lambda *args, **kwargs: cross_entropy(*args, **kwargs) * float("nan")
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


INF_WEIGHTS = """
import runpy, sys, torch
step = torch.optim.AdamW.step
def step_to_inf(self, *args, **kwargs):
    out = step(self, *args, **kwargs)
    with torch.no_grad():
        self.param_groups[0]["params"][0].fill_(float("inf"))
    return out
torch.optim.AdamW.step = step_to_inf
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_with(code, script, *args, env=None):
    """A stage run under `code` (FULL_DISK, DIVERGE) that then runs the script as __main__."""
    return subprocess.run([sys.executable, "-c", code, os.path.join(ROOT, script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def lenet_state():
    return torch.load(RAW, weights_only=True)


def raw_folder(tmp_path, header=None, **state):
    """tmp_path/raw/lenet_raw.pth: the shipped LeNet checkpoint with `state` replacing its parts."""
    raw = lenet_state()
    obj = {"header": header or raw["header"], "state_dict": raw["state_dict"], **state}
    obj = {k: v for k, v in obj.items() if v is not None}
    (tmp_path / "raw").mkdir()
    torch.save(obj, tmp_path / "raw" / "lenet_raw.pth")
    return tmp_path / "raw"


# --- float checkpoints with a valid header --------------------------------------------------------

@pytest.mark.parametrize("state_dict, message", [
    (None, "its state_dict is missing or not a dict of names to tensors"),
    (5, "its state_dict is missing or not a dict of names to tensors"),
    ({"features.0.weight": "x"}, "its state_dict is missing or not a dict of names to tensors"),
    ({"features.0.weight": torch.zeros(6, 1, 5, 5)}, "does not fit the model: missing 17 key(s)"),
], ids=["missing", "an-int", "not-tensors", "wrong-keys"])
def test_raw_checkpoint_with_a_bad_state_dict(tmp_path, state_dict, message):
    raw = lenet_state()
    (tmp_path / "raw").mkdir()
    obj = {"header": raw["header"]} if state_dict is None else {"header": raw["header"], "state_dict": state_dict}
    torch.save(obj, tmp_path / "raw" / "lenet_raw.pth")
    before = digest(tmp_path)
    for script, extra in (("quant_model.py", [f"--quant_dir={tmp_path / 'q'}", "--calib_images=64"]),
                          ("test_model.py", ["--columns=raw", "--limit=50"])):
        line = error_line(run(script, *QUICK, f"--pretrained_dir={tmp_path / 'raw'}", *extra))
        assert line.startswith(f"error: {tmp_path / 'raw' / 'lenet_raw.pth'}: ") and message in line
    assert digest(tmp_path) == before


@pytest.mark.parametrize("key, index, value, layer, what", [
    ("classifier.0.weight", (0, 0), float("nan"), "classifier.0", "NaN"),
    ("features.0.weight", (1, 0, 2, 2), float("inf"), "features.0", "Inf"),
    ("classifier.2.bias", (3,), float("-inf"), "classifier.2", "Inf"),
])
def test_checkpoint_with_nan_or_inf_names_the_layer(tmp_path, key, index, value, layer, what):
    raw = lenet_state()
    raw["state_dict"][key][index] = value
    folder = raw_folder(tmp_path, state_dict=raw["state_dict"])
    before = digest(tmp_path)
    line = error_line(run("quant_model.py", *QUICK, f"--pretrained_dir={folder}", f"--quant_dir={tmp_path / 'q'}",
                          "--calib_images=64"))
    assert f"layer '{layer}': '{key}' holds {what} values" in line
    assert digest(tmp_path) == before


def test_oversized_multiplier_names_the_layer(tmp_path):
    """conv1's weights all -10 and a bias of 1e-6: its ReLU output spans [0, 1e-6], the requantization
    multiplier ~78740 needs more than 16 bits (qmath's ValueError, with the layer named)."""
    state = lenet_state()["state_dict"]
    state["features.0.weight"][:] = -10.0
    state["features.1.weight"][:], state["features.1.bias"][:] = 1.0, 1e-6
    state["features.1.running_mean"][:], state["features.1.running_var"][:] = 0.0, 1.0
    folder = raw_folder(tmp_path, state_dict=state)
    line = error_line(run("quant_model.py", *QUICK, f"--pretrained_dir={folder}", f"--quant_dir={tmp_path / 'q'}",
                          "--calib_images=64"))
    assert line.startswith("error: lenet: layer 'features_0': requantization multiplier ") and "too large" in line
    assert not (tmp_path / "q").exists()


def test_float_overflow_names_the_layer(tmp_path):
    """Finite weights so large that the float model's activations overflow: the layer is named."""
    state = lenet_state()["state_dict"]
    state["classifier.0.weight"] *= 3e38
    folder = raw_folder(tmp_path, state_dict=state)
    line = error_line(run("quant_model.py", *QUICK, f"--pretrained_dir={folder}", f"--quant_dir={tmp_path / 'q'}",
                          "--calib_images=64"))
    assert line.startswith("error: lenet: layer 'classifier_") and "not finite values" in line
    assert not (tmp_path / "q").exists()


# --- tuples with missing fields -------------------------------------------------------------------

def _drop_header(state, quant):
    del quant[0]["fingerprint"]


def _drop_kernel(state, quant):
    del quant[1]["kernel"]


def _drop_multiplier(state, quant):
    del state["features_0.multiplier"]


def _short_shift(state, quant):
    state["classifier_4.shift"] = state["classifier_4.shift"][:3]


def _no_shape(state, quant):
    del quant[2]["shape"]


def _bad_input(state, quant):
    quant[3]["inputs"] = [7]


@pytest.mark.parametrize("damage, message", [
    (_drop_header, "its header (op 0) lacks fingerprint"),
    (_drop_kernel, "op 1 (features_0) has no valid 'kernel' field"),
    (_drop_multiplier, "op 1 (features_0): the state_dict has no 'features_0.multiplier'"),
    (_short_shift, "'classifier_4.shift' holds 3 values, not 10"),
    (_no_shape, "op 2 (features_3) has no valid 'shape' field"),
    (_bad_input, "op 3 (features_4): inputs [7] are not 1..1 earlier ops"),
])
def test_tuple_with_missing_fields(tmp_path, damage, message):
    state, quant = torch.load(TUPLE, weights_only=True)
    damage(state, quant)
    (tmp_path / "q").mkdir()
    torch.save((state, quant), tmp_path / "q" / "lenet_quant.tuple")
    before = digest(tmp_path)
    for script, extra in (("test_model.py", ["--columns=np", "--limit=50"]),
                          ("export_quant_model.py", [f"--export_dir={tmp_path / 'e'}"])):
        line = error_line(run(script, *QUICK, f"--quant_dir={tmp_path / 'q'}", *extra))
        assert line.startswith(f"error: {tmp_path / 'q' / 'lenet_quant.tuple'}: not a whole tuple: ") and message in line
    assert digest(tmp_path) == before


# --- options --------------------------------------------------------------------------------------

@pytest.mark.parametrize("option, message", [
    ("--lr=-1", "lr=-1.0 is out of range [0.0, 10.0]"),
    ("--lr=1e999", "lr=inf is out of range [0.0, 10.0]"),
    ("--weight_decay=5", "weight_decay=5.0 is out of range [-1.0, 1.0]"),
    ("--seed=2**70", "--seed=2**70: expected a int"),
    (f"--seed={2 ** 70}", f"seed={2 ** 70} is out of range [0, 4294967295]"),
    ("--seed=-1", "seed=-1 is out of range [0, 4294967295]"),
])
def test_bad_training_option(tmp_path, option, message):
    proc = run("train_model.py", *TRAIN, f"--pretrained_dir={tmp_path}", option)
    assert error_line(proc, "config error: ") == f"config error: {message}"
    assert proc.stdout == "" and os.listdir(tmp_path) == []


def test_val_images_leaving_no_training_images(tmp_path):
    import config
    from data import datasets
    # the mirror's training batches copied into data/ first: on a fresh clone that copy prints a
    # "data: SRC -> DST" note on stderr, which is not the stage's error line
    datasets.load("cifar10", "train", *config.dataset_dirs(ROOT))
    proc = run("train_model.py", *TRAIN, "--model=resnet18", "--val_images=50000", f"--pretrained_dir={tmp_path}")
    assert error_line(proc) == ("error: --val_images=50000 leaves no training images (cifar10 has 50000); "
                                "give fewer")
    assert os.listdir(tmp_path) == []


def test_json_pointing_at_a_directory(tmp_path):
    (tmp_path / "out").mkdir()
    proc = run("test_model.py", *QUICK, "--limit=50", f"--json={tmp_path / 'out'}")
    assert error_line(proc) == f"error: --json={tmp_path / 'out'}: is a directory (give a file name)"
    assert "accuracy" not in proc.stdout and os.listdir(tmp_path / "out") == []


def test_bench_torch_avx2_pass_without_torchs_switches():
    """--torch_avx2=True, the bench's own second run, needs torch's ISA switches set before torch starts:
    without them it would time torch's best kernels as its AVX2 ones"""
    env = {k: v for k, v in os.environ.items() if k not in ("FBGEMM_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_inference.py"), "--torch_avx2=True",
                           "--json=/dev/null"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**env, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert error_line(proc) == ("error: --torch_avx2=True needs FBGEMM_ENABLE_INSTRUCTIONS=AVX2, "
                                "ATEN_CPU_CAPABILITY=avx2 set before torch starts (a full run of this script sets them)")
    assert proc.stdout == ""


# --- an output folder that cannot be written: all four stages, before the work ---------------------

def unwritable_folders(tmp_path):
    """Output folders no stage can write: one below a regular file (for root too) and, unless we are
    root (who writes anyway), a chmod 0o555 one."""
    (tmp_path / "file").write_text("a file, not a folder\n")
    folders = [(tmp_path / "file" / "out", "file is not a folder)")]
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir()
        os.chmod(tmp_path / "ro", 0o555)
        folders.append((tmp_path / "ro" / "out", "Permission denied"))
    return folders


@pytest.mark.parametrize("script, option, extra", [
    ("train_model.py", "pretrained_dir", TRAIN),
    ("quant_model.py", "quant_dir", QUICK + ["--calib_images=64"]),
    ("test_model.py", "json", QUICK + ["--limit=50"]),
    ("test_model.py", "dump_layers", QUICK + ["--limit=50"]),
    ("export_quant_model.py", "export_dir", QUICK),
])
def test_unwritable_output_folder_refused_before_the_work(tmp_path, script, option, extra):
    for folder, reason in unwritable_folders(tmp_path):
        value = folder / "report.json" if option == "json" else folder
        before = digest(tmp_path)
        proc = run(script, *extra, f"--{option}={value}")
        line = error_line(proc)
        assert line.startswith(f"error: --{option}={value}: ") and reason in line
        assert not re.search(r"training|quantizing|accuracy|wrote", proc.stdout)     # no work started
        assert digest(tmp_path) == before
    if os.geteuid() != 0:
        os.chmod(tmp_path / "ro", 0o755)


def test_write_probe_finds_a_read_only_folder_for_root_too(tmp_path, monkeypatch):
    """check_writable creates and removes a file instead of asking os.access (which says yes to root)."""
    from model import fileio
    fileio.check_writable(str(tmp_path / "new" / "deeper"), "--quant_dir")     # made later by the stage
    assert os.listdir(tmp_path) == []

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(fileio.tempfile, "mkstemp", refuse)
    with pytest.raises(fileio.WriteError, match=rf"^--quant_dir={tmp_path}: cannot write in {tmp_path} "
                                                r"\(Permission denied\)$"):
        fileio.check_writable(str(tmp_path), "--quant_dir")


# --- a full disk ----------------------------------------------------------------------------------

@pytest.mark.parametrize("full_after", [0, 3000], ids=["oserror-28", "torch-unexpected-pos"])
def test_full_disk_while_saving_the_tuple(tmp_path, full_after):
    qdir = tmp_path / "q"
    qdir.mkdir()
    shutil.copy(TUPLE, qdir / "lenet_quant.tuple")        # a previous tuple: must stay as it was
    before = digest(tmp_path)
    proc = run_with(FULL_DISK, "quant_model.py", *QUICK, f"--quant_dir={qdir}", "--calib_images=64",
                    env={"FULL_AFTER": str(full_after)})
    assert error_line(proc) == f"error: {qdir / 'lenet_quant.tuple'}: no space left on the device; nothing was replaced"
    assert digest(tmp_path) == before                     # no temporary left, the old tuple whole


def test_full_disk_while_exporting(tmp_path):
    proc = run_with(FULL_DISK, "export_quant_model.py", *QUICK, f"--export_dir={tmp_path}", env={"FULL_AFTER": "0"})
    line = error_line(proc)
    assert line.startswith(f"error: {tmp_path}/lenet_") and line.endswith(": no space left on the device; "
                                                                           "nothing was replaced")
    assert os.listdir(tmp_path) == []


def test_full_disk_while_training(tmp_path):
    proc = run_with(FULL_DISK, "train_model.py", *TRAIN, f"--pretrained_dir={tmp_path}", env={"FULL_AFTER": "0"})
    assert error_line(proc) == (f"error: {tmp_path / 'lenet_raw.pth'}: no space left on the device; "
                                f"nothing was replaced")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("script, option, args", [
    ("train_model.py", "--pretrained_dir", TRAIN),
    ("quant_model.py", "--quant_dir", QUICK),
    ("export_quant_model.py", "--export_dir", QUICK),
])
def test_too_little_space_is_found_before_the_work(tmp_path, script, option, args):
    """A file system with 4 KB free (shutil.disk_usage replaced): one line with what is free and about
    what is needed, before training, calibration or export start; nothing written."""
    proc = run_with(LOW_SPACE, script, *args, f"{option}={tmp_path}")
    line = error_line(proc)
    assert re.fullmatch(rf"error: {option}={tmp_path}: 0\.0 MB free on its file system, about \d+\.\d MB needed; "
                        r"free some space or choose another folder", line), line
    assert not re.search(r"epoch|quantizing|wrote", proc.stdout) and os.listdir(tmp_path) == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_json_to_a_full_device():
    proc = run("test_model.py", *QUICK, "--limit=50", "--columns=np", "--json=/dev/full")
    assert error_line(proc) == "error: /dev/full: no space left on the device"


def test_disk_full_errors_are_recognised_and_leave_no_file(tmp_path, monkeypatch):
    """Both errors torch.save gives on a full disk become one WriteError naming the file; the
    temporary is removed and the old file kept."""
    import errno
    from model import fileio
    target = tmp_path / "x.pt"
    target.write_bytes(b"old")
    for err in (OSError(errno.ENOSPC, "No space left on device"),
                RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")):
        assert fileio.disk_full(err)

        def save(obj, f, err=err):
            f.write(b"partial")
            raise err
        monkeypatch.setattr(fileio.torch, "save", save)
        with pytest.raises(fileio.WriteError, match=rf"^{target}: no space left on the device; nothing was replaced$"):
            fileio.atomic_save({"a": 1}, str(target))
        assert os.listdir(tmp_path) == ["x.pt"] and target.read_bytes() == b"old"
    assert not fileio.disk_full(RuntimeError("something else")) and not fileio.disk_full(OSError(errno.EIO, "EIO"))


# --- training: a resume state without its optimizer; a diverging run ------------------------------

def train_state_header():
    """The header train_model.py writes after epoch 1 of a run with TRAIN's settings."""
    import config
    import model as models
    import train_model
    from model.fileio import FORMAT_VERSIONS
    settings = train_model.training_settings(config.load(TRAIN, stage="train_model.py"), models.spec("lenet"), 1)
    return {"kind": "fpgai-train-state", "version": FORMAT_VERSIONS["fpgai-train-state"], "model": "lenet",
            "epoch": 1, "settings": settings, "best_val": 0.1}


@pytest.mark.parametrize("drop", ["optimizer", "scheduler", "history", "model"])
def test_resume_state_without_a_part(tmp_path, drop):
    from model.nets.lenet import LeNet
    net = LeNet()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    state = {"header": train_state_header(),
             "model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": {}, "history": []}
    del state[drop]
    torch.save(state, tmp_path / "lenet_ckpt.pt")
    before = digest(tmp_path)
    line = error_line(run("train_model.py", *TRAIN, f"--pretrained_dir={tmp_path}"))
    assert line == (f"error: {tmp_path / 'lenet_ckpt.pt'}: a training state without its {drop} state "
                    f"(delete it or pass --resume=False to start over)")
    assert digest(tmp_path) == before


def test_resume_state_whose_optimizer_does_not_fit(tmp_path):
    from model.nets.lenet import LeNet
    net = LeNet()
    other = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))], lr=3e-3)
    state = {"header": train_state_header(),
             "model": net.state_dict(), "optimizer": other.state_dict(), "scheduler": {}, "history": []}
    torch.save(state, tmp_path / "lenet_ckpt.pt")
    before = digest(tmp_path)
    line = error_line(run("train_model.py", *TRAIN, f"--pretrained_dir={tmp_path}"))
    assert line.startswith(f"error: {tmp_path / 'lenet_ckpt.pt'}: its optimizer state does not fit (ValueError: ")
    assert digest(tmp_path) == before


def test_diverging_training_stops_and_saves_nothing(tmp_path):
    """A NaN loss (here forced: the loss times NaN) stops training with one line; nothing is saved."""
    proc = run_with(DIVERGE, "train_model.py", *TRAIN, f"--pretrained_dir={tmp_path}")
    line = error_line(proc)
    assert line.startswith("error: training diverged in epoch 1: the loss is nan (lr 0.003)")
    assert os.listdir(tmp_path) == []


def test_training_to_infinite_weights_stops_and_saves_nothing(tmp_path):
    """Weights that go Inf with a finite loss (forced: the optimizer step fills conv1 with Inf) stop
    training at the end of the epoch, naming the tensor; nothing is saved."""
    proc = run_with(INF_WEIGHTS, "train_model.py", *TRAIN, f"--pretrained_dir={tmp_path}")
    line = error_line(proc)
    assert line == ("error: training diverged in epoch 1: 'features.0.weight' holds NaN or Inf (lr 0.003); "
                    "nothing saved for this epoch; lower --lr")
    assert os.listdir(tmp_path) == []
