"""Issue 25's hostile inputs: each is refused with one `error:` (or `config error:`) line, a non-zero
exit code, before any work, and with nothing written or replaced.

1. a bare boolean option (--overwrite) means True; a bare non-boolean one is still an error;
2. every path a user names (--report and the PNG beside it, --dump_layers, --json) follows the
   no-clobber rule for files git tracks (a temporary git repository stands for the checkout);
3. a tuple is checked field by field as the C loader checks model.bin (model/formats/tuple_check.py): the
   issue's four cases through the stages, and a differential sample: every mutated tuple the Python
   check accepts, the C engine loads, and every one it refuses, the C engine refuses;
4. labels outside the model's outputs (.npz for test_model.py, .npy for the C engine);
5. compare_dumps.py refuses manifest paths outside the dump folder;
6. a broadcast add (CxHxW + Cx1x1, either order) is refused by the quantizer before calibration,
   by the tuple check and by the numpy engine;
7. a torchvision MNASNet checkpoint keeps its state_dict metadata (module versions);
8. an unsupported layer is named before the calibration starts.
"""
import copy
import glob
import json
import os
import random
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import compare_dumps
import config
from model import api
from model.formats import golden
from model.api import make_cfg
from model.formats.export_format import write_export
from model.engines.np_engine import NumpyIntegerModel
from model.ops import KINDS
from model.quant.quantize import QuantizeError, build_integer_graph
from model.formats.tuple_check import VALIDATE, tuple_problem
from tests.checks import digest, error_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUPLE = os.path.join(ROOT, "quantization", "lenet_quant.tuple")
QUICK = ["--threads=1"]


def run(script, *args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def git_repo(folder, files):
    """A git repository in `folder` with `files` ({relative path: bytes}) committed: what the stages
    protect (files git tracks), without touching the real checkout."""
    folder.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "tracked"]):
        subprocess.run(["git", "-C", str(folder), *cmd], check=True, env=env, capture_output=True)
    return folder


@pytest.fixture(scope="module")
def c_engine(tmp_path_factory):
    """c/inference, built from the checkout's sources; a private copy, so a rebuild elsewhere (another
    test, another checkout user) cannot swap it while the tests run."""
    subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "c")], check=True, capture_output=True, timeout=900)
    binary = tmp_path_factory.mktemp("c") / "inference"
    shutil.copy2(os.path.join(ROOT, "c", "inference"), binary)
    return str(binary)


# --- 1. bare boolean options -------------------------------------------------------------------------

def test_bare_boolean_means_true():
    assert config.load(["--overwrite"], stage="export_quant_model.py").overwrite is True
    cfg = config.load(["--overwrite", "--model=vgg13"], stage="export_quant_model.py")     # not swallowed
    assert cfg.overwrite is True and cfg.model == "vgg13"
    cfg = config.load(["--overwrite", "False", "--model", "vgg13"], stage="export_quant_model.py")
    assert cfg.overwrite is False and cfg.model == "vgg13"
    assert config.load(["--overwrite=False"], stage="test_model.py").overwrite is False
    assert config.load(["--raw_test", "--quant_test=False"], stage="test_model.py").raw_test is True
    with pytest.raises(config.ConfigError, match="--model needs a value"):
        config.load(["--model"], stage="test_model.py")
    with pytest.raises(config.ConfigError, match="--limit needs a value"):
        config.load(["--overwrite", "--limit"], stage="test_model.py")
    with pytest.raises(config.ConfigError, match="expected True or False"):
        config.load(["--overwrite=maybe"], stage="test_model.py")


def test_bare_boolean_on_the_command_line(tmp_path):
    """A stage takes `--overwrite` bare; a bare --limit is one config error line."""
    proc = run("test_model.py", *QUICK, "--columns=np", "--limit=5", "--overwrite")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert error_line(run("test_model.py", "--limit"), "config error: ") == "config error: --limit needs a value"


# --- 2. no clobber for the paths a user names ----------------------------------------------------------

def test_report_refuses_tracked_files_before_the_export(tmp_path):
    repo = git_repo(tmp_path / "repo", {"README.md": b"tracked\n", "plot.png": b"png\n"})
    before = digest(repo)
    for report in (repo / "README.md", repo / "plot.json", repo / "plot.png"):
        line = error_line(run("export_quant_model.py", *QUICK, f"--export_dir={tmp_path / 'e'}", f"--report={report}"))
        tracked = report if report.name == "README.md" else repo / "plot.png"
        assert line.startswith(f"error: {tracked}: a file git tracks") and "--overwrite" in line, line
        assert not (tmp_path / "e").exists()                 # refused before the export
    assert digest(repo) == before and not (repo / "README.png").exists()


def test_dump_layers_and_json_refuse_tracked_files(tmp_path):
    state, quant = torch.load(TUPLE, weights_only=True)
    images = torch.zeros((2, 1, 28, 28), dtype=torch.uint8)
    golden.write_dump(tmp_path / "d", quant, golden.layer_outputs(state, quant, images), "lenet")
    repo = git_repo(tmp_path / "repo", {f"dump/{name}": (tmp_path / "d" / name).read_bytes()
                                        for name in os.listdir(tmp_path / "d")} | {"r.json": b"{}\n"})
    before = digest(repo)
    line = error_line(run("test_model.py", *QUICK, "--columns=np", "--limit=2", f"--dump_layers={repo / 'dump'}"))
    assert line.startswith(f"error: {repo / 'dump'}: a folder holding files git tracks"), line
    line = error_line(run("test_model.py", *QUICK, "--columns=np", "--limit=2", f"--json={repo / 'r.json'}"))
    assert line.startswith(f"error: {repo / 'r.json'}: a file git tracks"), line
    assert digest(repo) == before


# --- 3. every field of a tuple, as the C loader checks model.bin ------------------------------------

def _multiplier(state, quant):
    state["features_0.multiplier"][2] = -5


def _shift(state, quant):
    state["features_0.shift"][0] = 70


def _zero_point(state, quant):
    quant[2]["zero_point"] = 300


def _float_weights(state, quant):
    state["features_0.weight"] = state["features_0.weight"].float()


@pytest.mark.parametrize("damage, message", [
    (_multiplier, "op 1 (features_0, conv): multiplier[2] = -5 outside [0, 2147483647]"),
    (_shift, "op 1 (features_0, conv): shift[0] = 70 outside [0, 62]"),
    (_zero_point, "op 2 (features_3, maxpool): zero_point = 300 outside [0, 255]"),
    (_float_weights, "op 1 (features_0, conv): 'features_0.weight' is float32, expected int8"),
])
def test_out_of_range_tuple_is_refused_by_every_stage(tmp_path, damage, message):
    state, quant = torch.load(TUPLE, weights_only=True)
    (tmp_path / "e").mkdir()
    write_export(state, quant, tmp_path / "e", "both")        # the previous, good export
    damage(state, quant)
    (tmp_path / "q").mkdir()
    torch.save((state, quant), tmp_path / "q" / "lenet_quant.tuple")
    before = digest(tmp_path)
    for script, extra in (("export_quant_model.py", [f"--export_dir={tmp_path / 'e'}"]),
                          ("test_model.py", ["--columns=quant,np", "--limit=20"])):
        line = error_line(run(script, *QUICK, f"--quant_dir={tmp_path / 'q'}", *extra))
        assert line.startswith(f"error: {tmp_path / 'q' / 'lenet_quant.tuple'}: {message}"), line
    assert digest(tmp_path) == before
    with pytest.raises(ValueError, match=re.escape(message)):
        api.export(state, quant, tmp_path / "api")
    assert not (tmp_path / "api").exists()


def test_every_kind_has_a_rule():
    assert set(VALIDATE) == set(KINDS)


def _c_define(text, name):
    m = re.search(rf"#define\s+{name}\s+(.+?)\s*(/\*.*)?$", text, re.M)
    return eval(re.sub(r"\(\(?(u?int64_t|uint64_t)\)\s*", "(", m.group(1)).replace("INT32_MAX", str(2 ** 31 - 1)))


def test_limits_agree_with_the_c_sources():
    """model/formats/export_format.py's limits and parameter ranges are the C loader's (c/core/fpgai.h, the
    parameter rows of c/core/kind.h and every kind's file c/ops/KIND.c, the record parser c/core/load.c)."""
    from model.formats import export_format as ef
    header = open(os.path.join(ROOT, "c", "core", "fpgai.h")).read()
    for name in ("MIN_OPS", "MAX_OPS", "MAX_DIM", "MAX_INPUTS", "MAX_TENSOR", "MAX_SHIFT", "MAX_SCRATCH", "MAX_WEIGHTS"):
        assert _c_define(header, name) == getattr(ef, name), name
    assert "#define MAX_ARENA      ((uint64_t)1 << 30)" in header and ef.MAX_ARENA == 1 << 30
    source = "".join(open(path).read() for path in [os.path.join(ROOT, "c", "core", name) for name in ("kind.h", "load.c")]
                     + sorted(glob.glob(os.path.join(ROOT, "c", "ops", "*.c"))))
    symbols = {"MAX_DIM": ef.MAX_DIM, "INT32_MAX": ef.INT32_MAX}
    rows = {name: (int(symbols.get(lo, lo)), int(symbols.get(hi, hi)))
            for name, lo, hi in re.findall(r'PARAM(?:\(|_SINCE\(\d+, \d+, )[\w\[\]]+, "(\w+)", (\w+), (\w+)\)', source)}
    assert rows == ef.PARAM_RANGES
    assert '"multiplier", 0, INT32_MAX' in source and '"shift", 0, MAX_SHIFT' in source
    assert '"table value", 0, 255' in source


def _mutations(state, quant):
    """(description, function) of single-field changes of a tuple, boundary values included."""
    values = (-1, 0, 1, 2, 3, 255, 256, 62, 63, 65535, 65536, 2 ** 31 - 1)
    for i, op in enumerate(quant):
        for key in ("zero_point", "qmin", "qmax"):
            for v in values:
                yield f"op {i} {key}={v}", lambda s, q, i=i, key=key, v=v: q[i].__setitem__(key, v)
        for d in range(3 if i else 0):
            for v in {1, 2, op["shape"][d] + 1, op["shape"][d] - 1} - {0}:
                yield f"op {i} shape[{d}]={v}", lambda s, q, i=i, d=d, v=v: q[i]["shape"].__setitem__(d, v)
        for key in ("kernel", "stride", "dilation", "padding", "factor"):
            for j in range(len(op.get(key) or [])):
                for v in (0, 1, 2, 3, op[key][j] + 1, 65536):
                    yield f"op {i} {key}[{j}]={v}", lambda s, q, i=i, key=key, j=j, v=v: q[i][key].__setitem__(j, v)
        for key in ("groups", "channel_start", "ceil_mode", "weight_zero_point"):
            for v in (-1, 0, 1, 2, 3, 4, 255, 256) if key in op else ():
                yield f"op {i} {key}={v}", lambda s, q, i=i, key=key, v=v: q[i].__setitem__(key, v)
        for field in ("multiplier", "shift", "table", "bias"):
            name = f"{op['name']}.{field}"
            for v in (-5, -1, 0, 62, 63, 70, 255, 256, 2 ** 31 - 1) if name in state else ():
                yield f"{name}[0]={v}", lambda s, q, name=name, v=v: s[name].view(-1).__setitem__(0, v)
        name = f"{op['name']}.weight"
        for v in (-128, 127, 0) if name in state else ():
            yield f"{name}={v}", lambda s, q, name=name, v=v: s[name].fill_(v)


def _c_loads(binary, state, quant, folder):
    """(C engine exit 0, its stderr) on an export of the tuple (the writer's own checks bypassed), or
    (None, why) when the writer cannot write it at all."""
    try:
        write_export(state, quant, folder, "bin")
    except Exception as err:                           # a value no int32 word holds
        return None, repr(err)
    x = os.path.join(folder, "x.npy")
    np.save(x, np.zeros((1, *quant[0]["shape"]), np.uint8))
    proc = subprocess.run([binary, "--dir", str(folder), "--model", quant[0]["model"], "--images", x, "--quiet",
                           "--limit", "1"], capture_output=True, text=True, timeout=60)
    return proc.returncode == 0, proc.stderr.strip()


def test_python_check_and_c_loader_agree(tmp_path, c_engine):
    """A sample of single-field mutations of the shipped LeNet and of random graphs holding every kind:
    the Python check accepts exactly the tuples the C engine loads."""
    from tests.random_models import random_quantized
    tuples = [("lenet", *torch.load(TUPLE, weights_only=True))]
    for arch, mode in (("residual", "per_channel"), ("activations", "per_channel"), ("data_movement", "per_tensor"),
                       ("geometry", "per_channel"), ("branch", "per_tensor")):
        tuples.append((f"{arch}/{mode}", *random_quantized(arch, weight_mode=mode, calib=16, n_test=0)[:2]))
    rng = random.Random(25)
    disagree, cases, refused = [], 0, 0
    for label, state, quant in tuples:
        assert tuple_problem(state, quant) is None, label
        for desc, damage in rng.sample(list(_mutations(state, quant)), 160):
            s, q = copy.deepcopy((state, quant))
            try:
                damage(s, q)
            except RuntimeError:                       # a value the tensor's dtype cannot hold
                continue
            problem = tuple_problem(s, q)
            loads, why = _c_loads(c_engine, s, q, tmp_path)
            cases += 1
            refused += problem is not None
            if (problem is None) != bool(loads):
                disagree.append(f"{label} {desc}: python {problem!r}, C {why!r}")
    assert not disagree, "\n".join(disagree[:10])
    assert cases >= 900 and 0.2 * cases < refused < 0.9 * cases, (cases, refused)


# --- 4. labels within the model's outputs --------------------------------------------------------------

@pytest.mark.parametrize("labels, shown", [(np.array([1, 2, 2 ** 40], np.int64), "1099511627776"),
                                           (np.array([1, 2, 2 ** 63 + 1], np.uint64), "9223372036854775809"),
                                           (np.array([1, 10, 2], np.uint8), "10"),
                                           (np.array([1, -3, 2], np.int16), "-3")])
def test_labels_outside_the_outputs(tmp_path, c_engine, labels, shown):
    x = np.zeros((3, 1, 28, 28), np.uint8)
    np.savez(tmp_path / "t.npz", x=x, y=labels)
    line = error_line(run("test_model.py", *QUICK, "--columns=np,raw", f"--test_data={tmp_path / 't.npz'}",
                          f"--json={tmp_path / 'r.json'}"))
    image = int(np.flatnonzero((labels.astype(object) < 0) | (labels.astype(object) > 9))[0])
    assert line == f"error: {tmp_path / 't.npz'}: label {shown} of image {image} outside 0..9 (the model has 10 outputs)"
    assert not (tmp_path / "r.json").exists()
    state, quant = torch.load(TUPLE, weights_only=True)
    write_export(state, quant, tmp_path, "bin")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", labels)
    proc = subprocess.run([c_engine, "--dir", str(tmp_path), "--model", "lenet", "--images", str(tmp_path / "x.npy"),
                           "--labels", str(tmp_path / "y.npy"), "--quiet"], capture_output=True, text=True)
    assert proc.returncode != 0 and proc.stderr.strip() == (f"error: {tmp_path / 'y.npy'}: label {shown} of image "
                                                            f"{image} outside 0..9 (the model's outputs)")


# --- 5. compare_dumps.py stays inside the dump folders ------------------------------------------------

def test_compare_dumps_refuses_paths_outside_the_folder(tmp_path, capsys):
    state, quant = torch.load(TUPLE, weights_only=True)
    values = golden.layer_outputs(state, quant, torch.zeros((1, 1, 28, 28), dtype=torch.uint8))
    for name in ("a", "b"):
        golden.write_dump(tmp_path / name, quant, values, "lenet")
    first = json.loads((tmp_path / "b" / "manifest.json").read_text())["ops"][0]["npy"]
    outside = {"relative": f"../a/{first}", "absolute": str(tmp_path / "a" / first), "symlink": "link.npy"}
    os.symlink(tmp_path / "a" / first, tmp_path / "b" / "link.npy")
    text = (tmp_path / "b" / "manifest.json").read_text()
    for how, name in outside.items():
        (tmp_path / "b" / "manifest.json").write_text(text.replace(f'"{first}"', json.dumps(name), 1))
        code = compare_dumps.main([str(tmp_path / "a"), str(tmp_path / "b")])
        out, err = capsys.readouterr()
        assert code == 2 and not out and len(err.splitlines()) == 1, (how, out, err)
        assert err.startswith(f"error: {tmp_path / 'b' / 'manifest.json'}: op 0: file {name!r} ")
        assert "outside the dump folder" in err or "not a relative path" in err, (how, err)


# --- 6. a broadcast add ---------------------------------------------------------------------------------

class BroadcastAdd(nn.Module):
    def __init__(self, flip):
        super().__init__()
        self.flip = flip
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        y = self.conv(x)
        s = self.gap(y)
        z = s + y if self.flip else y + s
        return self.fc(torch.flatten(z, 1))


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x).permute(0, 1, 3, 2), 1))


def _quantize_counting(net):
    """build_integer_graph on 8 random 1x8x8 images; the calibration's progress calls counted."""
    calls = []

    def progress(batches):
        calls.append(len(batches))
        return batches

    images = torch.randint(0, 256, (8, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    cfg = make_cfg(model="net")
    try:
        return build_integer_graph(net.eval(), images, cfg, "custom", {}, progress=progress), calls
    except QuantizeError as err:
        return err, calls


@pytest.mark.parametrize("flip", [False, True])
def test_broadcast_add_is_refused_before_calibration(flip):
    err, calls = _quantize_counting(BroadcastAdd(flip))
    assert isinstance(err, QuantizeError) and calls == []
    shapes = ("4x1x1", "4x8x8") if flip else ("4x8x8", "4x1x1")
    assert str(err).startswith(f"net: add 'add' of shapes {shapes[0]} and {shapes[1]}; ")


def test_broadcast_add_tuple_is_refused_by_the_check_and_the_numpy_engine():
    """A tuple whose add reads a Cx1x1 tensor (a mul's record turned into an add): the check names the
    op and the shapes; the numpy engine (the specification) refuses to broadcast."""
    from tests.narrow_graphs import MulNet
    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    state, quant = build_integer_graph(MulNet().eval(), images, make_cfg(model="net"), "custom", {})
    i = next(k for k, op in enumerate(quant) if op["op"] == "mul" and quant[op["inputs"][1]]["shape"][1:] == [1, 1])
    op = quant[i]
    op["op"] = "add"
    state[f"{op['name']}.multiplier"] = torch.tensor([1 << 14, 1 << 14], dtype=torch.int32)
    assert tuple_problem(state, quant) == (f"op {i} ({op['name']}, add): input 1 (op {op['inputs'][1]}) is "
                                           f"{quant[op['inputs'][1]]['shape'][0]}x1x1, the output "
                                           f"{'x'.join(map(str, op['shape']))}")
    with pytest.raises(ValueError, match=f"add '{op['name']}': inputs of shapes"):
        NumpyIntegerModel(state, quant)(images[:2].numpy())
    with pytest.raises(ValueError, match="the tuple is refused"):
        api.run_integer(state, quant, images[:2], engine="torch")


# --- 7. a checkpoint's metadata ---------------------------------------------------------------------------

MNAS = '''
import torchvision


def Mnas():
    return torchvision.models.mnasnet0_5(num_classes=10)
'''


def test_mnasnet_checkpoint_keeps_its_metadata(tmp_path):
    """torchvision's MNASNet reads its version from the state_dict's _metadata (else a 21-line
    traceback, `version should be set to 1 or 2`)."""
    import torchvision
    (tmp_path / "mnas.py").write_text(MNAS)
    torch.manual_seed(0)
    torch.save(torchvision.models.mnasnet0_5(num_classes=10).state_dict(), tmp_path / "mnas.pth")
    x = np.random.RandomState(0).randint(0, 256, (2, 3, 32, 32)).astype(np.uint8)
    np.savez(tmp_path / "calib.npz", x=x, y=np.arange(2))
    proc = run("quant_model.py", *QUICK, f"--model={tmp_path / 'mnas.py'}:Mnas", f"--checkpoint={tmp_path / 'mnas.pth'}",
               f"--calib_data={tmp_path / 'calib.npz'}", f"--quant_dir={tmp_path / 'q'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "q" / "Mnas_quant.tuple").is_file()


# --- 8. unsupported layers before calibration -------------------------------------------------------

def test_unsupported_layer_is_named_before_calibration(tmp_path):
    err, calls = _quantize_counting(Unsupported())
    assert isinstance(err, QuantizeError) and calls == []
    assert str(err).startswith("net: unsupported method permute (0, 1, 3, 2) at node 'permute'; ")
    (tmp_path / "net.py").write_text("import torch\nfrom torch import nn\n\n\n" + "\n".join(
        ["class Unsupported(nn.Module):", "    def __init__(self):", "        super().__init__()",
         "        self.conv = nn.Conv2d(1, 4, 3, padding=1)", "        self.fc = nn.Linear(4 * 8 * 8, 10)", "",
         "    def forward(self, x):",
         "        return self.fc(torch.flatten(self.conv(x).permute(0, 1, 3, 2), 1))", ""]))
    torch.save(Unsupported().state_dict(), tmp_path / "net.pth")
    np.savez(tmp_path / "calib.npz", x=np.zeros((600, 1, 8, 8), np.uint8))
    proc = run("quant_model.py", *QUICK, f"--model={tmp_path / 'net.py'}:Unsupported",
               f"--checkpoint={tmp_path / 'net.pth'}", f"--calib_data={tmp_path / 'calib.npz'}",
               f"--quant_dir={tmp_path / 'q'}")
    line = error_line(proc)
    assert line.startswith("error: Unsupported: unsupported method permute") and "calibrating" not in proc.stderr
    assert not (tmp_path / "q").exists()
