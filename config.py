"""Every default of the pipeline, in one place.

Each stage script reads these globals through `load()`, which also accepts
`--key=value` overrides on the command line (e.g. `python train_model.py
--model=lenet --epochs=5`) and validates every value before any work starts.
"""
import ast
import os
import re
import sys
import types

# --- what to run -------------------------------------------------------------
MODEL = "lenet"                 # lenet (MNIST); resnet18/34/50, mobilenet_v2, vgg11/13/16/19 (CIFAR-10);
                                # or FILE.py:NAME, your own model (NAME() returns the nn.Module)
CHECKPOINT = ""                 # float weights: a torch.save(model.state_dict()) file or a *_raw.pth
                                # ("" = pretrained/{model}_raw.pth; required for FILE.py:NAME)
INPUT_SHAPE = ""                # CxHxW of the input ("" = the built-in model's, or the calibration data's)
INPUT_MEAN = ""                 # per-channel mean on the 0..1 scale, e.g. 0.485,0.456,0.406 ("" = none)
INPUT_STD = ""                  # per-channel std, same scale: the float model sees (pixel/255 - mean)/std
CALIB_DATA = ""                 # .npz (x uint8 NxCxHxW, y labels) or ImageFolder dir ("" = the built-in dataset)
TEST_DATA = ""                  # the same, for testing ("" = the built-in dataset's test set)
DATA_DIR = "data"               # torchvision-layout datasets live here
MIRROR_DIR = os.environ.get("FPGAI_MIRROR", os.path.join("..", "shared", "datasets"))
PRETRAINED_DIR = "pretrained"
QUANT_DIR = "quantization"
EXPORT_DIR = "export_model"
SEED = 0

# --- stage 1: training -------------------------------------------------------
EPOCHS = 0                      # 0 = the model's own default (model.MODELS)
BATCH_SIZE = 0                  # 0 = the model's own default
LR = 0.0                        # 0 = the model's own default
WEIGHT_DECAY = -1.0             # <0 = the model's own default
VAL_IMAGES = 5000               # validation split carved from the training set
TRAIN_IMAGES = 0                # train on only this many of the rest (0 = all): quick smoke runs
RESUME = True                   # continue from pretrained/{model}_ckpt.pt when present
DEVICE = "auto"                 # auto | cpu | cuda
AMP = "auto"                    # bf16 autocast: auto = on CUDA only; bf16 = also on a CPU that has it; off

# --- stage 2: quantization ---------------------------------------------------
WEIGHT_MODE = "per_channel"     # per_channel: int8 symmetric per output channel
                                # per_tensor: uint8 with a zero point (the original's format)
MULTIPLIER_BITS = 16            # requantization multiplier width, signed bits (8..32)
CALIB_IMAGES = 2000             # training images used to calibrate activation ranges
CALIB_METHOD = "minmax"         # minmax | percentile
CALIB_PERCENTILE = 99.99        # used by CALIB_METHOD = percentile

# --- stage 3: testing (the four columns of the original) ----------------------
RAW_TEST = True                 # float model
QUANT_TEST = True               # torch integer model
NP_QUANT_TEST = True            # numpy integer model (the written-down spec)
C_TEST = True                   # C INT8 engine, built and run by test_model.py
COLUMNS = "auto"                # or a comma list of raw,quant,np,c (overrides the four switches)
LIMIT = 0                       # test only the first N test images; 0 = the whole test set
TEST_BATCH = 16                 # images per engine call: small batches keep the int64 activations in cache
                                # (2-5x faster than 500 on MobileNetV2, a fraction of the memory)

# --- stage 4: export ---------------------------------------------------------
EXPORT_MODE = "both"            # txt | bin | both: which weight files to write

CHOICES = {
    "MODEL": ("lenet", "resnet18", "resnet34", "resnet50", "mobilenet_v2",
              "vgg11", "vgg13", "vgg16", "vgg19"),
    "WEIGHT_MODE": ("per_channel", "per_tensor"),
    "CALIB_METHOD": ("minmax", "percentile"),
    "EXPORT_MODE": ("txt", "bin", "both"),
    "DEVICE": ("auto", "cpu", "cuda"),
    "AMP": ("auto", "bf16", "off"),
}
RANGES = {
    "MULTIPLIER_BITS": (8, 32),
    "CALIB_IMAGES": (1, 60000),
    "CALIB_PERCENTILE": (50.0, 100.0),
    "EPOCHS": (0, 10000),
    "BATCH_SIZE": (0, 65536),
    "VAL_IMAGES": (1, 50000),
    "TRAIN_IMAGES": (0, 60000),
    "LIMIT": (0, 10000),
    "TEST_BATCH": (1, 65536),
}


class ConfigError(ValueError):
    pass


def defaults():
    return {k: v for k, v in globals().items() if k.isupper() and k not in ("CHOICES", "RANGES")}


def _parse_value(key, text, current):
    if isinstance(current, str):
        return text
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


def load(argv=None, extra=None):
    """Defaults, overridden by `--key=value` arguments, validated.

    `extra` maps script-only flags (e.g. {"json": ""}) to their defaults.
    Returns a namespace with lower-case attribute names.
    """
    cfg = defaults()
    cfg.update({k.upper(): v for k, v in (extra or {}).items()})
    args = sys.argv[1:] if argv is None else argv
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument '{arg}'; use --key=value")
        if "=" in arg:
            key, text = arg[2:].split("=", 1)
        elif i + 1 < len(args):          # also accept `--key value`
            key, text = arg[2:], args[i + 1]
            i += 1
        else:
            raise ConfigError(f"{arg} needs a value")
        key = key.replace("-", "_").upper()
        if key not in cfg:
            valid = ", ".join(sorted(k.lower() for k in cfg))
            raise ConfigError(f"unknown option --{key.lower()}; valid options: {valid}")
        cfg[key] = _parse_value(key, text, cfg[key])
        i += 1
    validate(cfg)
    main = os.path.basename(getattr(sys.modules.get("__main__"), "__file__", "") or "")
    if main == "train_model.py" and user_model(cfg["MODEL"]):
        raise ConfigError(f"--model={cfg['MODEL']}: train_model.py trains the built-in models only; train yours "
                          f"your way, torch.save(model.state_dict(), FILE) and pass --checkpoint=FILE to quant_model.py")
    return types.SimpleNamespace(**{k.lower(): v for k, v in cfg.items()})


def usage(extra=None):
    """The calling script's docstring, then every option with its default and valid values."""
    lines = [(sys.modules["__main__"].__doc__ or "").strip(), "",
             "options (--key=value or --key value; defaults from config.py):"]
    for key, value in {**defaults(), **{k.upper(): v for k, v in (extra or {}).items()}}.items():
        valid = (f"  [{', '.join(CHOICES[key])}]" + (" or FILE.py:NAME" if key == "MODEL" else "")
                 if key in CHOICES else
                 f"  [{RANGES[key][0]}..{RANGES[key][1]}]" if key in RANGES else "")
        lines.append(f"  --{key.lower()}={value}{valid}")
    return "\n".join(lines).lstrip()


def load_or_exit(argv=None, extra=None):
    args = sys.argv[1:] if argv is None else argv
    if "-h" in args or "--help" in args:
        print(usage(extra))
        sys.exit(0)
    try:
        return load(args, extra)
    except ConfigError as err:
        sys.exit(f"config error: {err}")
