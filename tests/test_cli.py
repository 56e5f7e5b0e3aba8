"""The stage scripts as a user runs them: clear errors and exit codes, and the shipped LeNet end to end."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from tests.scripts import ROOT, run


@pytest.mark.parametrize("script", ["train_model.py", "quant_model.py", "test_model.py", "export_quant_model.py"])
def test_unknown_model_lists_the_choices(script):
    proc = run(script, "--model=alexnet")
    assert proc.returncode != 0
    assert "unknown model 'alexnet'" in proc.stderr and "lenet" in proc.stderr and "resnet18" in proc.stderr


def help_options(script):
    """--help of a stage: {option: (default as shown, valid values, description)}."""
    proc = run(script, "--help")
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith("Stage ") and f"options of {script} (" in proc.stdout
    return {name: (default, valid, description) for name, default, valid, description in
            re.findall(r"^  --(\w+)=(\S*)(?:  (.+))?\n      (.*)$", proc.stdout, re.M)}


# per stage: options its --help must list, and options of other stages it must not
HELP = {
    "train_model.py": ({"model", "seed", "threads", "data_dir", "pretrained_dir", "epochs", "batch_size", "lr", "amp",
                        "device", "resume", "val_images", "train_images"},
                       {"weight_mode", "calib_data", "test_data", "export_mode", "export_dir", "limit", "json",
                        "input_mean", "quant_dir"}),
    "quant_model.py": ({"model", "checkpoint", "seed", "threads", "input_shape", "input_mean", "input_std",
                        "calib_data", "weight_mode", "multiplier_bits", "calib_images", "calib_method", "quant_dir"},
                       {"epochs", "lr", "amp", "test_data", "export_mode", "export_dir", "limit", "columns", "json"}),
    "test_model.py": ({"model", "threads", "test_data", "limit", "columns", "raw_test", "c_test", "test_batch", "json",
                       "weight_mode", "quant_dir", "input_shape"},
                      {"epochs", "lr", "amp", "device", "calib_data", "export_mode", "export_dir"}),
    "export_quant_model.py": ({"model", "threads", "export_mode", "export_dir", "quant_dir", "weight_mode", "input_mean"},
                              {"epochs", "lr", "amp", "calib_data", "test_data", "data_dir", "limit", "columns",
                               "json"}),
}


@pytest.mark.parametrize("script", list(HELP))
def test_help_lists_the_stages_own_options(script):
    """Each stage's --help lists its own options, each with a description, and none of another stage's."""
    import config
    options = help_options(script)
    own, foreign = HELP[script]
    assert own <= set(options) and not foreign & set(options)
    extras = {"test_model.py": ["json", "dump_layers"], "export_quant_model.py": ["report", "rtl_target"]}.get(script, [])
    assert list(options) == [k.lower() for k in config.stage_options(script)] + extras
    for name, (default, valid, description) in options.items():
        assert len(description.strip()) > 10, name
    assert options["model"][:2] == ("lenet", "[lenet, resnet18, resnet34, resnet50, mobilenet_v2, vgg11, vgg13, vgg16, "
                                             "vgg19, vgg_small] or FILE.py:NAME")
    assert options["threads"][:2] == ("0", "[0..1024]")
    if "weight_mode" in options:
        assert options["weight_mode"][:2] == ("per_channel", "[per_channel, per_tensor]")
    if "checkpoint" in options:
        assert options["checkpoint"][0] == '""'


def test_every_option_has_stages_and_a_description():
    """OPTIONS covers exactly config.py's settings: each read by some stage and described."""
    import config
    settings = {k for k, v in vars(config).items() if k.isupper() and not k.startswith("_")
                and isinstance(v, (str, int, float, bool)) and k not in config.STAGES}
    assert settings == set(config.OPTIONS) == set(config.defaults())
    for key, (stages, description) in config.OPTIONS.items():
        assert stages and set(stages) <= set(config.STAGES) and description.strip(), key
    assert set(config.RANGES) <= set(config.OPTIONS) and set(config.CHOICES) <= set(config.OPTIONS)


@pytest.mark.parametrize("script, option", [
    ("export_quant_model.py", "--epochs=3"),
    ("export_quant_model.py", "--calib_data=x.npz"),
    ("train_model.py", "--weight_mode=per_tensor"),
    ("quant_model.py", "--limit=5"),
    ("test_model.py", "--export_mode=txt"),
    ("test_model.py", "--amp=off"),
])
def test_another_stages_option_is_refused(script, option):
    proc = run(script, "--model=lenet", option)
    name = option[2:].split("=")[0]
    assert proc.returncode == 1 and proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith(f"config error: --{name} is not an option of {script}; its options: model, ")


def test_a_script_only_option_is_its_scripts_only():
    proc = run("export_quant_model.py", "--json=report.json")
    assert proc.returncode == 1 and "unknown option --json; valid options: model, " in proc.stderr
    assert "export_mode" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("script, option, message", [
    ("train_model.py", "--threads=-1", "threads=-1 is out of range [0, 1024]"),
    ("export_quant_model.py", "--threads=-1", "threads=-1 is out of range [0, 1024]"),
    ("test_model.py", "--threads=2000", "threads=2000 is out of range [0, 1024]"),
    ("quant_model.py", "--threads=two", "--threads=two: expected a int"),
])
def test_bad_threads_refused(script, option, message):
    proc = run(script, option)
    assert proc.returncode == 1 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


THREADS_PROBE = (
    "import os, sys, torch, config\n"
    "config.load_or_exit(sys.argv[1:], stage='test_model.py')\n"
    "print(torch.get_num_threads(), torch.get_num_interop_threads(), os.environ['OMP_NUM_THREADS'])\n")


@pytest.mark.parametrize("threads, env, expected", [
    ("1", {}, "1 1 1"),
    ("3", {"OMP_NUM_THREADS": "1"}, "3 3 3"),               # the option wins over the environment
    ("0", {"OMP_NUM_THREADS": "1"}, "1 1 1"),               # 0: the environment's count, if any
])
def test_threads_applied_to_torch_and_the_c_engine(threads, env, expected):
    """load_or_exit sets torch's thread pools and OMP_NUM_THREADS (inherited by c/inference)."""
    full = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.run([sys.executable, "-c", THREADS_PROBE, f"--threads={threads}"], cwd=ROOT, env={**full, **env},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == expected


def test_default_threads(monkeypatch):
    """THREADS=0 without OMP_NUM_THREADS: the CPUs this process may use, shared by torchrun's local
    processes, between 1 and 16."""
    import config
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cpus = len(os.sched_getaffinity(0))
    assert 1 <= config.default_threads() <= min(cpus, 16)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert config.default_threads() <= 16
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert config.default_threads() <= 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert config.default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert config.default_threads() == 5


@pytest.mark.parametrize("threads", ["0", "1"])
def test_threads_zero_and_one_accepted(tmp_path, threads):
    """Accepted by the config: the stage goes on to its work (here: the missing checkpoint)."""
    proc = run("quant_model.py", f"--threads={threads}", f"--pretrained_dir={tmp_path}", f"--quant_dir={tmp_path}")
    assert proc.returncode == 1 and "config error" not in proc.stderr and "lenet_raw.pth: no such file" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--model=net.py"], "expected FILE.py:NAME"),
    (["--model=net.py:" + "N" * 32], "at most 31 bytes"),
    (["--input_shape=3x32"], "expected CxHxW"),
    (["--input_mean=0.5"], "--input_mean and --input_std go together"),
    (["--input_mean=0.5,0.5", "--input_std=0.2,0"], "every std must be positive"),
    (["--input_mean=a,b", "--input_std=1,1"], "expected comma-separated numbers"),
    (["--input_shape=3x32x32", "--input_mean=0.5,0.5", "--input_std=1,1"], "2 values for 3 input channels"),
])
def test_bad_user_model_options(args, message):
    proc = run("quant_model.py", *args)
    assert proc.returncode == 1 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--weight_mode=int4"], "unknown weight_mode 'int4'"),
    (["--multiplier_bits=40"], "multiplier_bits=40 is out of range"),
    (["--multiplier_bits=many"], "expected a int"),
    (["--no_such_option=1"], "unknown option --no_such_option"),
    (["stray"], "unexpected argument 'stray'"),
])
def test_bad_config_values(args, message):
    proc = run("quant_model.py", *args)
    assert proc.returncode != 0 and message in proc.stderr


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    proc = run("quant_model.py", f"--pretrained_dir={tmp_path}", f"--quant_dir={tmp_path}")
    assert proc.returncode != 0
    assert f"{tmp_path}/lenet_raw.pth: no such file" in proc.stderr and "train_model.py" in proc.stderr


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "lenet_raw.pth").write_bytes(b"not a checkpoint")
    proc = run("quant_model.py", f"--pretrained_dir={tmp_path}", f"--quant_dir={tmp_path}")
    assert proc.returncode != 0 and "not a readable fpgai-raw file" in proc.stderr


def test_stale_tuple_is_refused(tmp_path):
    proc = run("export_quant_model.py", "--weight_mode=per_tensor", f"--export_dir={tmp_path}")
    assert proc.returncode != 0 and "stale" in proc.stderr and "quant_model.py" in proc.stderr
    assert os.listdir(tmp_path) == []


def test_settings_travel_in_the_tuple(tmp_path):
    """Quantized with --weight_mode=per_tensor and other settings, the tuple is tested and exported by
    plain commands (the settings come from it); a contradicting option is refused as stale."""
    from model.formats.export_format import read_model_bin
    qdir, report = tmp_path / "q", tmp_path / "report.json"
    proc = run("quant_model.py", f"--quant_dir={qdir}", "--weight_mode=per_tensor", "--calib_images=300",
               "--multiplier_bits=24", "--seed=3")
    assert proc.returncode == 0, proc.stderr
    proc = run("test_model.py", f"--quant_dir={qdir}", "--limit=50", "--columns=np,c", f"--json={report}")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(report.read_text())["identical_logits"] == {"np_quant_vs_c_int8": 1.0}
    proc = run("export_quant_model.py", f"--quant_dir={qdir}", f"--export_dir={tmp_path / 'e'}")
    assert proc.returncode == 0, proc.stderr
    assert read_model_bin(tmp_path / "e" / "lenet_model.bin")[0]["weight_mode"] == "per_tensor"
    for option in ("--weight_mode=per_channel", "--multiplier_bits=16", "--seed=0"):
        proc = run("test_model.py", f"--quant_dir={qdir}", "--limit=10", option)
        assert proc.returncode != 0 and "stale" in proc.stderr, option


def test_tuple_of_another_model_is_refused(tmp_path):
    shutil.copy(os.path.join(ROOT, "quantization", "lenet_quant.tuple"), tmp_path / "resnet18_quant.tuple")
    shutil.copy(os.path.join(ROOT, "pretrained", "lenet_raw.pth"), tmp_path / "resnet18_raw.pth")
    proc = run("export_quant_model.py", "--model=resnet18", f"--quant_dir={tmp_path}",
               f"--pretrained_dir={tmp_path}", f"--export_dir={tmp_path}")
    assert proc.returncode != 0 and "holds model 'lenet', config asks for 'resnet18'" in proc.stderr


def test_bad_columns_flag():
    proc = run("test_model.py", "--columns=raw,gpu")
    assert proc.returncode != 0 and "unknown column(s) gpu" in proc.stderr


def test_shipped_tuple_loads_weights_only():
    state, quant_list = torch.load(os.path.join(ROOT, "quantization", "lenet_quant.tuple"), weights_only=True)
    assert quant_list[0]["model"] == "lenet" and state["features_0.weight"].dtype == torch.int8


def test_lenet_end_to_end_on_real_mnist(tmp_path):
    """Quantize the shipped checkpoint afresh, then all four columns on 300 MNIST test images."""
    qdir, report = tmp_path / "q", tmp_path / "report.json"
    proc = run("quant_model.py", f"--quant_dir={qdir}", "--calib_images=500")
    assert proc.returncode == 0, proc.stderr
    proc = run("test_model.py", f"--quant_dir={qdir}", "--calib_images=500", "--limit=300", f"--json={report}")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(report.read_text())
    assert result["images"] == 300 and result["dataset"] == "mnist"
    assert set(result["accuracy"]) == {"raw", "quant", "np_quant", "c_int8"}
    assert result["identical_logits"] == {"quant_vs_np_quant": 1.0, "np_quant_vs_c_int8": 1.0}
    assert min(result["accuracy"].values()) >= 0.97
    assert abs(result["accuracy"]["np_quant"] - result["accuracy"]["raw"]) <= 0.01
    proc = run("export_quant_model.py", f"--quant_dir={qdir}", "--calib_images=500", f"--export_dir={tmp_path / 'e'}")
    assert proc.returncode == 0 and "|acc| bound" in proc.stdout
    assert sorted(os.listdir(tmp_path / "e")) == sorted(f"lenet_{k}" for k in
                                                          ("weight.txt", "weight.bin", "bias.bin", "quant.txt", "model.bin"))


KILLED_WRITER = r"""
import io, sys, torch
import model.fileio as fileio
path, source = sys.argv[1], sys.argv[2]
state, quant_list = torch.load(source, weights_only=True)
quant_list[0]["calib_images"] = 3000                     # a new tuple, different from the old one
buf = io.BytesIO()
torch.save((state, quant_list), buf)
data = buf.getvalue()

class Blocked(io.BufferedIOBase):                         # torch.save into atomic_open, stopped halfway
    def __init__(self, f):
        self.f = f
    def write(self, chunk):
        self.f.write(data[:len(data) // 2])
        self.f.flush()
        print(len(data), flush=True)
        sys.stdin.read()                                   # blocks here until SIGKILL
        return len(chunk)
    def writable(self):
        return True

with fileio.atomic_open(path) as f:
    torch.save((state, quant_list), Blocked(f))
"""


def test_sigkill_inside_an_atomic_write_leaves_the_old_tuple_whole(tmp_path):
    """quant_model.py saves its tuple with atomic_save; a process SIGKILLed while its bytes are
    half written (deterministically: blocked inside atomic_open) leaves the old tuple whole and
    loadable, only a hidden temporary beside it, and the next save replaces the tuple."""
    import signal
    from model.fileio import atomic_save
    source = os.path.join(ROOT, "quantization", "lenet_quant.tuple")
    target = tmp_path / "lenet_quant.tuple"
    shutil.copy(source, target)
    before = target.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target), source], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    size = int(proc.stdout.readline())                   # half of the new tuple is on disk now
    tmp = tmp_path / f".lenet_quant.tuple.{proc.pid}.tmp"
    assert tmp.stat().st_size == size // 2 > 0
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdin.close()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == before
    _, quant_list = torch.load(target, weights_only=True)
    assert quant_list[0]["calib_images"] != 3000
    assert sorted(os.listdir(tmp_path)) == sorted([target.name, tmp.name])
    state, quant_list = torch.load(source, weights_only=True)
    quant_list[0]["calib_images"] = 3000
    atomic_save((state, quant_list), str(target))
    assert torch.load(target, weights_only=True)[1][0]["calib_images"] == 3000


@pytest.mark.parametrize("script, args, shipped", [
    ("train_model.py", ["--epochs=1"], "pretrained/lenet_raw.pth"),
    ("quant_model.py", [], "quantization/lenet_quant.tuple"),
    ("export_quant_model.py", ["--export_mode=bin"], "export_model/lenet_weight.txt"),
    ("test_model.py", ["--json=results/lenet_per_channel.json"], "results/lenet_per_channel.json"),
])
def test_shipped_files_are_not_overwritten(script, args, shipped):
    """Every stage refuses, before any work, to replace a file git tracks unless --overwrite is given."""
    if subprocess.run(["git", "-C", ROOT, "ls-files", "--error-unmatch", shipped], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    before = open(os.path.join(ROOT, shipped), "rb").read()
    proc = run(script, "--model=lenet", *args)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "git tracks" in proc.stderr and "--overwrite" in proc.stderr
    assert open(os.path.join(ROOT, shipped), "rb").read() == before


def test_check_not_tracked(tmp_path):
    """Tracked files (and symlinks to them) are refused without overwrite; untracked, new and
    --overwrite'd ones pass; outside a checkout nothing is tracked."""
    from model.fileio import WriteError, check_not_tracked
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "shipped.bin").write_bytes(b"1")
    (tmp_path / "mine.bin").write_bytes(b"2")
    (tmp_path / "link.bin").symlink_to(tmp_path / "shipped.bin")
    subprocess.run([*git, "add", "shipped.bin"], check=True)
    for path in ("shipped.bin", "link.bin"):
        with pytest.raises(WriteError, match=f"{path}: a file git tracks.*--overwrite.*--x=DIR"):
            check_not_tracked([str(tmp_path / "new.bin"), str(tmp_path / path)], False, "--x=DIR")
        check_not_tracked([str(tmp_path / path)], True, "--x=DIR")
    check_not_tracked([str(tmp_path / "mine.bin"), str(tmp_path / "new.bin")], False, "--x=DIR")
    shutil.rmtree(tmp_path / ".git")
    check_not_tracked([str(tmp_path / "shipped.bin")], False, "--x=DIR")


def test_make_demo_and_demo_train_leave_git_status_clean(tmp_path):
    """`make demo` (the shipped LeNet) and `make demo-train` (one short epoch here) write only under
    their run folder, git status is as before, and each ends with the summary table."""
    if not os.path.isdir(os.path.join(ROOT, ".git")):
        pytest.skip("not a git checkout")
    status = ["git", "-C", ROOT, "status", "--porcelain"]
    before = subprocess.run(status, capture_output=True, text=True, check=True).stdout
    demo = f"runs/test-demo-{os.getpid()}"
    try:
        for target in ("demo", "demo-train"):
            proc = subprocess.run(["make", "-C", ROOT, target, f"DEMO={demo}", f"PY={sys.executable}",
                                   "TRAIN_FLAGS=--epochs=1 --train_images=2000"],
                                  capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
            summary = proc.stdout[proc.stdout.index("demo summary: lenet on the MNIST test set, 10000 images"):]
            for column in ("raw (float)", "quant (torch int)", "np quant", "C INT8"):
                assert re.search(rf"{re.escape(column)} +\d+\.\d\d% +\d+", summary), (column, summary)
            assert summary.count("10000/10000 = np quant") == 2, summary
            assert re.search(r"export_model/lenet_model.bin +[\d,]+ bytes", summary), summary
            assert ("pretrained/lenet_raw.pth" in summary) == (target == "demo-train"), summary
            assert "retrain: make demo-train" in summary
            if target == "demo":    # the shipped checkpoint: results/lenet_per_channel.json's accuracy
                with open(os.path.join(ROOT, "results", "lenet_per_channel.json")) as f:
                    shipped = json.load(f)["accuracy"]["c_int8"]
                assert re.search(rf"C INT8 +{shipped * 100:.2f}%", summary), summary
    finally:
        shutil.rmtree(os.path.join(ROOT, demo), ignore_errors=True)
    assert subprocess.run(status, capture_output=True, text=True, check=True).stdout == before


def test_scripts_run_from_any_directory(tmp_path):
    """From another working directory the stages find the checkout's folders (its tuple, its data);
    a folder given on the command line is the working directory's."""
    proc = run("test_model.py", "--limit=20", "--columns=np,c", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "identical integer logits, np quant vs C INT8: 20/20" in proc.stdout
    proc = run("export_quant_model.py", "--export_dir=e", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "e" / "lenet_model.bin").read_bytes() == \
        open(os.path.join(ROOT, "export_model", "lenet_model.bin"), "rb").read()
    assert os.listdir(tmp_path) == ["e"]


def test_pip_install_gives_the_stages_as_commands(tmp_path):
    """`pip install .` (pyproject.toml; here without dependencies into a folder): fpgai-* commands with
    each stage's help; an installed copy's folders are the working directory's, and its test command
    refuses the C column (it needs the checkout's sources) with one line."""
    site, work = tmp_path / "site", tmp_path / "work"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "--target", str(site), ROOT],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}

    def command(name, *args):
        return subprocess.run([str(site / "bin" / name), *args], cwd=work, env=env, capture_output=True, text=True,
                              timeout=600)
    for name, doc in [("fpgai-train", "Stage 1"), ("fpgai-quant", "Stage 2"), ("fpgai-test", "Stage 3"),
                      ("fpgai-export", "Stage 4")]:
        proc = command(name, "--help")
        assert proc.returncode == 0 and proc.stdout.startswith(doc), proc.stdout[:200] + proc.stderr
    shipped = [f"--quant_dir={ROOT}/quantization", f"--pretrained_dir={ROOT}/pretrained"]
    proc = command("fpgai-export", *shipped)
    assert proc.returncode == 0, proc.stderr
    assert (work / "export_model" / "lenet_model.bin").read_bytes() == \
        open(os.path.join(ROOT, "export_model", "lenet_model.bin"), "rb").read()
    mirror = config_mirror()
    proc = command("fpgai-test", *shipped, f"--mirror_dir={mirror}", "--limit=20")
    assert proc.returncode == 0, proc.stderr
    assert "identical integer logits, quant (torch int) vs np quant: 20/20" in proc.stdout
    assert "C INT8" not in proc.stdout
    proc = command("fpgai-test", *shipped, "--c_test=True")
    assert proc.returncode == 1 and proc.stderr.startswith("config error: the C INT8 column needs a checkout")
    proc = command("fpgai-compare-dumps", "a", "b")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def config_mirror():
    import config
    return os.path.abspath(config.dataset_dirs(ROOT)[1])
