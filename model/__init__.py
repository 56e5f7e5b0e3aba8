"""Float model registry: every architecture the pipeline knows, by name."""
import dataclasses
import hashlib
import os
from typing import Callable

import torch

from model.fileio import FORMAT_VERSIONS, atomic_save, load_checked
from model import cifar
from model.lenet import LeNet


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
for _name in ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "vgg11", "vgg13", "vgg16", "vgg19"):
    MODELS[_name] = ModelSpec(getattr(cifar, _name), "cifar10", epochs=40, batch_size=128, lr=0.1,
                              weight_decay=5e-4, optimizer="sgd", augment_pad=4, augment_flip=True,
                              half_checkpoint=True)


def spec(name):
    if name not in MODELS:
        raise KeyError(f"unknown model '{name}'; valid: {', '.join(MODELS)}")
    return MODELS[name]


def build(name):
    return spec(name).build()


def raw_path(cfg):
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
    obj = load_checked(path, "fpgai-raw", cfg.model, hint=f"; train it with `python train_model.py --model={cfg.model}`")
    with open(path, "rb") as f:   # identifies the checkpoint in the fingerprint of what is made from it
        digest = hashlib.sha256(f.read()).hexdigest()
    return obj["state_dict"], {**obj["header"], "sha256": digest}


def raw_header(cfg):
    """The float checkpoint's header with its sha256, without building the model."""
    return _read_raw(cfg)[1]


def load_raw(cfg):
    """The trained float model of cfg.model, in eval mode (fp16 checkpoints widened to fp32), and its header."""
    state, header = _read_raw(cfg)
    model = build(cfg.model)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.eval(), header
