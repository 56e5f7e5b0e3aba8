"""Every default of the pipeline, in one place.

Each stage script reads these globals through `load()`, which also accepts
`--key=value` overrides on the command line (e.g. `python train_model.py
--model=lenet --epochs=5`) and validates every value before any work starts.
OPTIONS says which stages take each option and what it means (each stage's --help);
a stage refuses the options of the others.
"""
import ast
import os
import re
import sys
import types

# --- what to run (OPTIONS below says what each one is and which stages read it) ---------------
MODEL = "lenet"
CHECKPOINT = ""
INPUT_SHAPE = ""
INPUT_MEAN = ""
INPUT_STD = ""
CALIB_DATA = ""
TEST_DATA = ""
DATA_DIR = "data"
MIRROR_DIR = os.environ.get("FPGAI_MIRROR", os.path.join("..", "shared", "datasets"))
PRETRAINED_DIR = "pretrained"
QUANT_DIR = "quantization"
EXPORT_DIR = "export_model"
SEED = 0
THREADS = 0
OVERWRITE = False
MAX_WORK = 1 << 35          # operations per image (model/work.py), c/inference's default too

# the folders above: the checkout's from any working directory (checkout(), in_checkout)
_FOLDERS = ("DATA_DIR", "MIRROR_DIR", "PRETRAINED_DIR", "QUANT_DIR", "EXPORT_DIR")

# --- stage 1: training -------------------------------------------------------
EPOCHS = 0
BATCH_SIZE = 0
LR = 0.0
WEIGHT_DECAY = -1.0
VAL_IMAGES = 5000
TRAIN_IMAGES = 0
RESUME = True
DEVICE = "auto"
AMP = "auto"

# --- stage 2: quantization ---------------------------------------------------
WEIGHT_MODE = "per_channel"
MULTIPLIER_BITS = 16
CALIB_IMAGES = 2000
CALIB_METHOD = "auto"
CALIB_PERCENTILE = 99.99
WEIGHT_BITS = 8
ACT_BITS = 8
BITS = ""
WEIGHT_METHOD = "auto"
BIAS_CORRECTION = "auto"
QAT_EPOCHS = 0
QAT_LR = 0.01
QAT_LOSS = "labels"

# --- stage 3: testing (the four columns of the original) ----------------------
RAW_TEST = True
QUANT_TEST = True
NP_QUANT_TEST = True
C_TEST = True
COLUMNS = "auto"
LIMIT = 0
TEST_BATCH = 16

# --- stage 4: export ---------------------------------------------------------
EXPORT_MODE = "both"

# --- which stage reads which option, and what it means (the stages' --help) ----
_TRAIN, _QUANT, _TEST, _EXPORT = STAGES = ("train_model.py", "quant_model.py", "test_model.py",
                                           "export_quant_model.py")
_TUPLE = (_QUANT, _TEST, _EXPORT)   # these check a given quantization setting against the tuple
_MAX_DEFAULT_THREADS = 16
OPTIONS = {
    "MODEL": (STAGES, "the network: a built-in one (lenet: MNIST, the others: CIFAR-10) or your own, "
                      "FILE.py:NAME (NAME() returns the nn.Module)"),
    "CHECKPOINT": (STAGES, "float weights: a torch.save(model.state_dict()) file or a *_raw.pth; train_model.py "
                           "writes it (\"\" = PRETRAINED_DIR/{model}_raw.pth; required for FILE.py:NAME)"),
    "INPUT_SHAPE": (_TUPLE, "CxHxW of the input (\"\" = the built-in model's, or the calibration data's)"),
    "INPUT_MEAN": (_TUPLE, "per-channel mean on the 0..1 scale, e.g. 0.485,0.456,0.406 (\"\" = none; "
                           "one value = every channel)"),
    "INPUT_STD": (_TUPLE, "per-channel std, same scale: the float model sees (pixel/255 - mean)/std (\"\" = none)"),
    "CALIB_DATA": ((_QUANT,), ".npz (x uint8 NxCxHxW, y labels) or ImageFolder directory to calibrate on "
                              "(\"\" = the built-in dataset's training set)"),
    "TEST_DATA": ((_TEST,), ".npz (x uint8 NxCxHxW, y labels) or ImageFolder directory to test on "
                            "(\"\" = the built-in dataset's test set)"),
    "DATA_DIR": ((_TRAIN, _QUANT, _TEST), "the built-in datasets, torchvision layout (filled from MIRROR_DIR "
                                          "or downloaded)"),
    "MIRROR_DIR": ((_TRAIN, _QUANT, _TEST), "offline dataset mirror (default: $FPGAI_MIRROR, else "
                                            "../shared/datasets)"),
    "PRETRAINED_DIR": (STAGES, "float checkpoints {model}_raw.pth, training state {model}_ckpt.pt and curves"),
    "QUANT_DIR": (_TUPLE, "quantized tuples {model}_quant.tuple"),
    "EXPORT_DIR": ((_EXPORT,), "the C engine's files {model}_*"),
    "SEED": (STAGES, "seed of the validation split, the training order and the calibration pick"),
    "THREADS": (STAGES, f"CPU threads for torch, and OMP_NUM_THREADS for the C engine (0 = $OMP_NUM_THREADS "
                        f"if set, else the CPUs this process may use, shared by torchrun's processes, "
                        f"at most {_MAX_DEFAULT_THREADS})"),
    "OVERWRITE": (STAGES, "replace files that git tracks (the shipped models, exports and results); without it "
                          "a stage refuses them before any work"),
    "MAX_WORK": ((_TEST, _EXPORT), "the most operations per image a model may need, all its ops together "
                                   "(MACs of conv/linear, window reads of pools, output values of the rest): "
                                   "the engines and the exporter refuse a model above it (c/inference --max-work)"),
    "EPOCHS": ((_TRAIN,), "epochs to train (0 = the model's own default, model.MODELS)"),
    "BATCH_SIZE": ((_TRAIN,), "images per step and process (0 = the model's own default)"),
    "LR": ((_TRAIN,), "peak learning rate of the one-cycle schedule (0 = the model's own default)"),
    "WEIGHT_DECAY": ((_TRAIN,), "weight decay (<0 = the model's own default)"),
    "VAL_IMAGES": ((_TRAIN,), "validation split carved from the training set (never the test set)"),
    "TRAIN_IMAGES": ((_TRAIN,), "train on only this many of the rest (0 = all): quick smoke runs"),
    "RESUME": ((_TRAIN,), "continue from PRETRAINED_DIR/{model}_ckpt.pt when present"),
    "DEVICE": ((_TRAIN,), "where to train: auto = CUDA when present, else the CPU"),
    "AMP": ((_TRAIN,), "bf16 autocast: auto = on CUDA only; bf16 = also on a CPU that has it; off"),
    "WEIGHT_MODE": (_TUPLE, "per_channel: int8 symmetric per output channel; per_tensor: uint8 with a zero point "
                            "(the original's format)"),
    "MULTIPLIER_BITS": (_TUPLE, "requantization multiplier width, signed bits"),
    "CALIB_IMAGES": (_TUPLE, "images (of the training set or CALIB_DATA) that calibrate the activation ranges"),
    "CALIB_METHOD": (_TUPLE, "activation range: minmax, percentile (CALIB_PERCENTILE) of the calibration values, "
                             "mse (the clipped range whose grid at the op's width makes the least squared error), "
                             "or auto (minmax for 8-bit activations, mse below)"),
    "CALIB_PERCENTILE": (_TUPLE, "calib_method=percentile: a range spans the (100-P)th..Pth percentile"),
    "WEIGHT_BITS": (_TUPLE, "bits of every conv/linear weight (2..8; packed in the export files)"),
    "ACT_BITS": (_TUPLE, "bits of every activation but the input's and the logits' (4..8: values 0..2^N-1 with a "
                         "zero point)"),
    "BITS": (_TUPLE, "a JSON file of per-layer widths overriding the two above, {\"layer\": {\"weight_bits\": 4, "
                     "\"act_bits\": 8}, ...} by op name (quant_model.py's summary lists them; \"\" = none)"),
    "WEIGHT_METHOD": (_TUPLE, "how weights are rounded (model/quant/methods.py): rtn (to nearest), mse (clipped "
                              "range of least weight error), gptq (error-compensating order on the calibration "
                              "inputs), or auto (rtn at 8 bits, gptq below 8)"),
    "BIAS_CORRECTION": (_TUPLE, "subtract the mean output shift the weight rounding causes from the bias: on (the "
                                "layer's own, on the float model's inputs), off, empirical (each layer measured on "
                                "the model quantized so far, a calibration pass a layer: the bias also takes the "
                                "shift the earlier layers left, and mse / gptq fit the float output from those "
                                "inputs), or auto (empirical below 8 bits, off at 8)"),
    "QAT_EPOCHS": (_TUPLE, "epochs of quantization-aware fine-tuning after the post-training methods (0 = none)"),
    "QAT_LR": (_TUPLE, "the fine-tuning's peak learning rate (SGD, momentum 0.9, cosine to 0): 0.01 suits LeNet, "
                       "about 0.001 the CIFAR-10 networks"),
    "QAT_LOSS": (_TUPLE, "the fine-tuning's loss: labels (cross-entropy on the training labels) or distill (the KL "
                         "divergence from the float model's outputs: no labels needed)"),
    "RAW_TEST": ((_TEST,), "the raw column: the float model"),
    "QUANT_TEST": ((_TEST,), "the quant column: the torch integer model"),
    "NP_QUANT_TEST": ((_TEST,), "the np quant column: the numpy integer model (the written-down spec)"),
    "C_TEST": ((_TEST,), "the C INT8 column: c/inference, built and run by test_model.py"),
    "COLUMNS": ((_TEST,), "a comma list of raw,quant,np,c (overrides the four switches; auto = the switches)"),
    "LIMIT": ((_TEST,), "test only the first N test images (0 = the whole test set)"),
    "TEST_BATCH": ((_TEST,), "images per engine call: small batches keep the int64 activations in cache "
                             "(2-5x faster than 500 on MobileNetV2, a fraction of the memory)"),
    "EXPORT_MODE": ((_EXPORT,), "which files to write: txt (weight.txt), bin (weight.bin + bias.bin), both, c "
                                "(model.h / model.c: the sealed files as const arrays for firmware), onnx "
                                "(model.onnx: the integer graph for ONNX Runtime and Netron), or rtl ({model}_rtl/: the "
                                "RTL engine's program and memory images, docs/fpga.md)"),
}

CHOICES = {
    "MODEL": ("lenet", "resnet18", "resnet34", "resnet50", "mobilenet_v2",
              "vgg11", "vgg13", "vgg16", "vgg19", "vgg_small"),
    "WEIGHT_MODE": ("per_channel", "per_tensor"),
    "CALIB_METHOD": ("auto", "minmax", "percentile", "mse"),
    "WEIGHT_METHOD": ("auto", "rtn", "mse", "gptq"),
    "BIAS_CORRECTION": ("auto", "on", "off", "empirical"),
    "QAT_LOSS": ("labels", "distill"),
    "EXPORT_MODE": ("txt", "bin", "both", "c", "onnx", "rtl"),
    "DEVICE": ("auto", "cpu", "cuda"),
    "AMP": ("auto", "bf16", "off"),
}
RANGES = {
    "MULTIPLIER_BITS": (8, 32),
    "CALIB_IMAGES": (1, 60000),
    "CALIB_PERCENTILE": (50.0, 100.0),
    "WEIGHT_BITS": (2, 8),
    "ACT_BITS": (4, 8),
    "QAT_EPOCHS": (0, 1000),
    "QAT_LR": (1e-6, 1.0),
    "EPOCHS": (0, 10000),
    "BATCH_SIZE": (0, 65536),
    "VAL_IMAGES": (1, 50000),
    "TRAIN_IMAGES": (0, 60000),
    "LIMIT": (0, 10000),
    "TEST_BATCH": (1, 65536),
    "THREADS": (0, 1024),
    "SEED": (0, 2 ** 32 - 1),
    "MAX_WORK": (1, 2 ** 64 - 1),
    "LR": (0.0, 10.0),
    "WEIGHT_DECAY": (-1.0, 1.0),
}


class ConfigError(ValueError):
    pass


def defaults():
    return {k: globals()[k] for k in OPTIONS}


def _table(extra=None):
    """{KEY: (default, description)} of every option and a script's `extra` ones."""
    return {**{k: (globals()[k], description) for k, (_, description) in OPTIONS.items()},
            **{k.upper(): default_description for k, default_description in (extra or {}).items()}}


def stage_options(stage, extra=None):
    """The option names (upper case) `stage` reads, in OPTIONS' order, then its script-only `extra`
    ones; every option for stage None (a tool that is no stage)."""
    return [k for k, (stages, _) in OPTIONS.items() if stage is None or stage in stages] + \
        [k.upper() for k in (extra or {})]


def usable_cpus():
    """The CPUs this process may run on (its affinity mask: `taskset` narrows it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_threads():
    """THREADS=0: $OMP_NUM_THREADS when set, else the CPUs this process may use (its affinity mask, or
    fewer under a cgroup CPU quota) shared among torchrun's processes on this node, at most
    _MAX_DEFAULT_THREADS: never more threads than CPUs, and a big shared machine is not taken over."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    cpus = usable_cpus()
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()
        if quota != "max":
            cpus = min(cpus, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    return max(1, min(_MAX_DEFAULT_THREADS, cpus // (int(local) if local.isdigit() and int(local) > 0 else 1)))


def apply_threads(threads):
    """Use `threads` CPU threads (0 = default_threads()): torch's intra- and inter-op pools, and
    OMP_NUM_THREADS for the processes this one starts (the C engine's OpenMP build). Returns the count."""
    n = threads or default_threads()
    os.environ["OMP_NUM_THREADS"] = str(n)
    torch = sys.modules.get("torch")          # not imported yet: it reads OMP_NUM_THREADS when it is
    if torch is not None:
        torch.set_num_threads(n)
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:                  # set once per process, before any inter-op work
            pass
    return n


BOOL_WORDS = {"true": True, "false": False}      # a boolean's value: True / False, any case


def _parse_value(key, text, current):
    if isinstance(current, str):
        return text
    if isinstance(current, bool):
        if text.strip().lower() not in BOOL_WORDS:
            raise ConfigError(f"--{key.lower()}={text}: expected True or False (a bare --{key.lower()} "
                              f"means True)")
        return BOOL_WORDS[text.strip().lower()]
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ConfigError(f"--{key.lower()}={text}: expected a {type(current).__name__}")
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not type(current):
        raise ConfigError(f"--{key.lower()}={text}: expected a {type(current).__name__}, "
                          f"got {type(value).__name__}")
    return value


USER_MODEL = re.compile(r"^(?P<path>.+\.py):(?P<name>[A-Za-z_][A-Za-z0-9_]*)$")


def checkout():
    """The repository checkout this file is in (the C engine's sources beside it), or None for an
    installed copy (pip install .), whose folders are the working directory's."""
    here = os.path.dirname(os.path.abspath(__file__))
    return here if os.path.isfile(os.path.join(here, "c", "host", "inference.c")) else None


def in_checkout(folder, root=None):
    """A relative folder of the defaults as seen from the working directory: inside `root` (default:
    checkout()), unchanged when that is the working directory or there is none. A folder given on
    the command line is the user's, as given."""
    root = root or checkout()
    if root is None or os.path.isabs(folder) or os.path.realpath(root) == os.path.realpath(os.getcwd()):
        return folder
    return os.path.join(root, folder)


def dataset_dirs(root):
    """(DATA_DIR, MIRROR_DIR) of the defaults, resolved against `root`, a repository checkout: what
    a script or test that runs from any working directory passes to data.datasets."""
    return in_checkout(DATA_DIR, root), in_checkout(MIRROR_DIR, root)


def user_model(model):
    """(path, NAME) of a --model=FILE.py:NAME, or None for a built-in name."""
    m = USER_MODEL.match(model)
    return (m.group("path"), m.group("name")) if m else None


def model_name(cfg):
    """The name files are called by: NAME of FILE.py:NAME, else the built-in name."""
    user = user_model(cfg.model)
    return user[1] if user else cfg.model


def parse_shape(text):
    """'CxHxW' -> [C, H, W] (positive ints), or None for ''."""
    if not text:
        return None
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and 0 < int(p) < 65536 for p in parts):
        raise ConfigError(f"--input_shape={text}: expected CxHxW, three positive integers (e.g. 3x64x64)")
    return [int(p) for p in parts]


def parse_floats(key, text):
    """'a,b,c' -> [a, b, c] (finite floats), or None for ''."""
    if not text:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"--{key}={text}: expected comma-separated numbers, one per channel") from None
    if not all(abs(v) < 1e30 for v in values):
        raise ConfigError(f"--{key}={text}: values must be finite")
    return values


def check_input_settings(shape_text, mean_text, std_text):
    """(shape or None, mean or None, std or None) of the input options, checked against each other."""
    shape = parse_shape(shape_text)
    mean, std = parse_floats("input_mean", mean_text), parse_floats("input_std", std_text)
    if std is not None and not all(v > 0 for v in std):
        raise ConfigError(f"--input_std={std_text}: every std must be positive")
    if (mean is None) != (std is None):
        raise ConfigError("--input_mean and --input_std go together: give both or neither")
    if mean is not None and len(mean) != len(std):
        raise ConfigError(f"--input_mean has {len(mean)} values, --input_std {len(std)}")
    if mean is not None and shape is not None and len(mean) not in (1, shape[0]):
        raise ConfigError(f"--input_mean/--input_std have {len(mean)} values for {shape[0]} input channels")
    return shape, mean, std


def validate(cfg):
    for key, choices in CHOICES.items():
        if key == "MODEL" and user_model(cfg[key]):
            if len(user_model(cfg[key])[1].encode()) > 31:
                raise ConfigError(f"--model={cfg[key]}: NAME names the files and model.bin holds at most 31 bytes of it")
            continue
        if key == "MODEL" and ".py" in cfg[key]:
            raise ConfigError(f"--model={cfg[key]}: expected FILE.py:NAME, NAME a class or function in FILE.py "
                              f"that returns the nn.Module (e.g. --model=my_net.py:MyNet)")
        if cfg[key] not in choices:
            also = ", or FILE.py:NAME (your own model)" if key == "MODEL" else ""
            raise ConfigError(f"unknown {key.lower()} '{cfg[key]}'; valid choices: {', '.join(choices)}{also}")
    for key, (low, high) in RANGES.items():
        if not low <= cfg[key] <= high:
            raise ConfigError(f"{key.lower()}={cfg[key]} is out of range [{low}, {high}]")
    check_input_settings(cfg["INPUT_SHAPE"], cfg["INPUT_MEAN"], cfg["INPUT_STD"])


def load(argv=None, extra=None, stage=None):
    """Defaults, overridden by `--key=value` arguments, validated.

    `stage` is the script's name (one of STAGES): it takes only the options OPTIONS gives it; None
    takes every option. `extra` maps script-only flags to (default, description), e.g.
    {"json": ("", "write the results as JSON here")}. Returns a namespace with lower-case attribute
    names (every option, the stage's own set from the command line).
    """
    if stage is not None and stage not in STAGES:
        raise ValueError(f"stage {stage!r} is not one of {STAGES}")
    cfg = {k: default for k, (default, _) in _table(extra).items()}
    own = stage_options(stage, extra)
    args = sys.argv[1:] if argv is None else argv
    given = set()
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument '{arg}'; use --key=value")
        key, eq, text = arg[2:].partition("=")
        key = key.replace("-", "_").upper()
        valid = ", ".join(k.lower() for k in own)
        if key not in cfg:
            raise ConfigError(f"unknown option --{key.lower()}; valid options: {valid}")
        if key not in own:
            raise ConfigError(f"--{key.lower()} is not an option of {stage}; its options: {valid}")
        if not eq:
            # `--key value`; a boolean given bare (`--overwrite`, at the end or before the next
            # --option) means True, and never takes the next option as its value
            if isinstance(cfg[key], bool) and (i + 1 >= len(args) or args[i + 1].startswith("--")):
                text = "True"
            elif i + 1 < len(args):
                text = args[i + 1]
                i += 1
            else:
                raise ConfigError(f"{arg} needs a value")
        cfg[key] = _parse_value(key, text, cfg[key])
        given.add(key.lower())
        i += 1
    validate(cfg)
    for key in _FOLDERS:
        if key.lower() not in given:
            cfg[key] = in_checkout(cfg[key])
    if stage == _TRAIN and user_model(cfg["MODEL"]):
        raise ConfigError(f"--model={cfg['MODEL']}: train_model.py trains the built-in models only; train yours "
                          f"your way, torch.save(model.state_dict(), FILE) and pass --checkpoint=FILE to quant_model.py")
    # `given`: the options set on the command line (a later stage takes the others from its artifact)
    return types.SimpleNamespace(**{k.lower(): v for k, v in cfg.items()}, given=frozenset(given))


def _valid(key, value):
    """The valid values of an option, as --help shows them ("" where its description says)."""
    if key in CHOICES:
        return f"[{', '.join(CHOICES[key])}]" + (" or FILE.py:NAME" if key == "MODEL" else "")
    if key in RANGES:
        return f"[{RANGES[key][0]}..{RANGES[key][1]}]"
    return "[True, False]" if isinstance(value, bool) else ""


def usage(extra=None, stage=None):
    """The calling script's docstring, then each of its options: default, valid values, description."""
    table = _table(extra)
    # the stage's module: __main__ when run as `python STAGE.py`, imported by an installed command
    module = sys.modules.get(os.path.splitext(stage)[0]) if stage else None
    lines = [((module or sys.modules["__main__"]).__doc__ or "").strip(), "",
             f"options{' of ' + stage if stage else ''} (--key=value or --key value; a bare --key of a [True, False] "
             f"option means True; defaults from config.py):"]
    for key in stage_options(stage, extra):
        default, description = table[key]
        shown = '""' if default == "" else default
        lines.append(f"  --{key.lower()}={shown}  {_valid(key, default)}".rstrip())
        lines.append(f"      {description}")
    return "\n".join(lines).lstrip()


def load_or_exit(argv=None, extra=None, stage=None):
    """load(), with --help answered and a ConfigError one line and exit 1; then THREADS applied, before
    the stage's work starts."""
    args = sys.argv[1:] if argv is None else argv
    if "-h" in args or "--help" in args:
        print(usage(extra, stage))
        sys.exit(0)
    try:
        cfg = load(args, extra, stage)
    except ConfigError as err:
        sys.exit(f"config error: {err}")
    apply_threads(cfg.threads)
    return cfg
