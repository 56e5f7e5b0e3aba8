"""Float model registry: every architecture the pipeline knows, by name; and the user's own
model (--model=FILE.py:NAME) with its checkpoint (--checkpoint=FILE)."""
import collections
import dataclasses
import hashlib
import importlib.util
import os
import sys
from typing import Callable

import torch

from model.fileio import FORMAT_VERSIONS, ModelFileError, atomic_save, error_line, load_checked
from model.nets import cifar
from model.nets.lenet import LeNet


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    build: Callable[[], torch.nn.Module]
    dataset: str              # mnist | cifar10
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    optimizer: str            # adamw | sgd
    augment_pad: int          # random shift of up to this many pixels (0: no augmentation)
    augment_flip: bool        # random horizontal flip
    half_checkpoint: bool     # store float weights in fp16 (keeps the repository small)


MODELS = {
    "lenet": ModelSpec(LeNet, "mnist", epochs=20, batch_size=128, lr=3e-3, weight_decay=5e-4,
                       optimizer="adamw", augment_pad=2, augment_flip=False, half_checkpoint=False),
}
# The standard CIFAR recipe: SGD + Nesterov momentum, one-cycle schedule, random crop (pad 4) + flip.
# vgg_small (12.7 M MACs an image) gets 20 epochs: about 100 s each on one Zen 3 core.
for _name in ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "vgg11", "vgg13", "vgg16", "vgg19",
              "vgg_small"):
    MODELS[_name] = ModelSpec(getattr(cifar, _name), "cifar10", epochs=20 if _name == "vgg_small" else 40,
                              batch_size=128, lr=0.1, weight_decay=5e-4, optimizer="sgd", augment_pad=4,
                              augment_flip=True, half_checkpoint=True)


def spec(name):
    if name not in MODELS:
        raise KeyError(f"unknown model '{name}'; valid: {', '.join(MODELS)}")
    return MODELS[name]


def build(name):
    return spec(name).build()


def raw_path(cfg):
    if getattr(cfg, "checkpoint", ""):
        return cfg.checkpoint
    return os.path.join(cfg.pretrained_dir, f"{cfg.model}_raw.pth")


def save_raw(model, name, path, meta):
    half = spec(name).half_checkpoint
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu()
             .clone(memory_format=torch.contiguous_format)   # NCHW even if trained channels-last
             for k, v in model.state_dict().items()}
    atomic_save({"header": {"kind": "fpgai-raw", "version": FORMAT_VERSIONS["fpgai-raw"], "model": name, **meta},
                 "state_dict": state}, path)


def _read_raw(cfg):
    path = raw_path(cfg)
    if getattr(cfg, "checkpoint", ""):         # given explicitly: a plain state_dict or a *_raw.pth
        state, digest = read_checkpoint(path)
        return state, {"kind": "state_dict", "model": cfg.model, "sha256": digest}
    hint = f"; train it with `python train_model.py --model={cfg.model}`"
    obj = load_checked(path, "fpgai-raw", cfg.model, hint=hint)
    if not is_state_dict(obj.get("state_dict")):
        raise ModelFileError(f"{path}: its state_dict is missing or not a dict of names to tensors{hint}")
    # the sha256 identifies the checkpoint in the fingerprint of what is made from it
    return obj["state_dict"], {**obj["header"], "sha256": sha256_file(path)}


def raw_header(cfg):
    """The float checkpoint's header with its sha256, without building the model."""
    return _read_raw(cfg)[1]


def load_raw(cfg):
    """The trained float model of cfg.model, in eval mode (fp16 checkpoints widened to fp32), and its header."""
    state, header = _read_raw(cfg)
    model = build(cfg.model)
    load_state(model, state, raw_path(cfg))
    return model.eval(), header


# --- the user's own model: --model=FILE.py:NAME, --checkpoint=FILE -------------------------------

def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_user_module(path, name):
    """NAME() of the Python file `path`: a class or a function that, called with no arguments,
    returns the nn.Module. ModelFileError (one line) for a bad path, a missing NAME, a failing
    call or something that is not an nn.Module."""
    where = f"--model={path}:{name}"
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: no such file ({where})")
    mod_name = f"fpgai_user_{name}_{hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:8]}"
    folder = os.path.dirname(os.path.abspath(path))
    try:
        spec_ = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec_)
        sys.modules[mod_name] = module           # torch.fx and pickling look classes up by module
        sys.path.insert(0, folder)               # the file may import its neighbours
        try:
            spec_.loader.exec_module(module)
        finally:
            sys.path.remove(folder)
    except Exception as err:
        sys.modules.pop(mod_name, None)
        raise ModelFileError(f"{path}: cannot import it ({error_line(err)})") from None
    builder = getattr(module, name, None)
    if builder is None or not callable(builder):
        raise ModelFileError(f"{path}: has no class or function '{name}' ({where})")
    try:
        net = builder()
    except Exception as err:
        raise ModelFileError(f"{path}: {name}() failed ({error_line(err)}); NAME must be callable with "
                             f"no arguments") from None
    if not isinstance(net, torch.nn.Module):
        raise ModelFileError(f"{path}: {name}() returned a {type(net).__name__}, not a torch.nn.Module")
    return net


def is_state_dict(obj):
    """A non-empty dict of names to tensors."""
    return (isinstance(obj, dict) and bool(obj)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def read_checkpoint(path):
    """(state_dict, sha256) of a plain `torch.save(model.state_dict())` file or of this project's
    raw checkpoint (*_raw.pth), loaded with weights_only=True."""
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelFileError(f"{path}: not a readable checkpoint; expected torch.save(model.state_dict()) "
                             f"loadable with weights_only=True ({error_line(err)})") from None
    if isinstance(obj, dict) and isinstance(obj.get("header"), dict) and obj["header"].get("kind") == "fpgai-raw":
        obj = obj.get("state_dict")
    if not is_state_dict(obj):
        raise ModelFileError(f"{path}: not a state_dict (a dict of names to tensors); save it with "
                             f"torch.save(model.state_dict(), path)")
    return obj, sha256_file(path)


def load_state(net, state, path):
    """net.load_state_dict(state) (fp16 widened), with one clear line when keys or shapes differ or
    a value is NaN or Inf (naming the tensor, so the layer)."""
    if not is_state_dict(state):
        raise ModelFileError(f"{path}: its state_dict is not a dict of names to tensors")
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def few(keys):
            return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
        parts = ([f"missing {len(missing)} key(s): {few(missing)}"] if missing else []) + \
                ([f"{len(unexpected)} unexpected key(s): {few(unexpected)}"] if unexpected else []) + \
                ([f"shape mismatch: " + ", ".join(f"{k} is {list(state[k].shape)} in the checkpoint, "
                                                  f"{list(own[k].shape)} in the model" for k in shapes[:3])]
                 if shapes else [])
        raise ModelFileError(f"{path}: does not fit the model: {'; '.join(parts)}")
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            bad = "NaN" if torch.isnan(value).any() else "Inf"
            raise ModelFileError(f"{path}: layer '{key.rsplit('.', 1)[0]}': '{key}' holds {bad} values; "
                                 f"the checkpoint is unusable (did its training diverge?)")
    fixed = collections.OrderedDict((k, v.to(own[k].dtype) if v.is_floating_point() else v) for k, v in state.items())
    if getattr(state, "_metadata", None) is not None:
        fixed._metadata = state._metadata          # each module's version: torchvision's MNASNet reads it
    net.load_state_dict(fixed)
    return net
