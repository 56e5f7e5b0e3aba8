"""What float training (train_model.py) and quantization-aware fine-tuning (model/quant/qat.py)
share: the processes they run on (alone, or under torchrun), the augmentation, the input scaling."""
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F


def augment(x, generator, pad, flip):
    """Per-image random crop of the zero-padded uint8 batch (a random shift of up to `pad`
    pixels) and, if `flip`, a random horizontal flip: the standard CIFAR recipe with pad=4."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    out = padded[torch.arange(n, device=x.device)[:, None, None, None],
                 torch.arange(x.shape[1], device=x.device)[None, :, None, None], rows, cols]
    if not flip:
        return out
    flips = (torch.rand(n, generator=generator, device=generator.device) < 0.5).to(x.device)
    return torch.where(flips[:, None, None, None], out.flip(3), out)


def to_float(x):
    """The float model's whole preprocessing: pixel / 255 (exact in the integer engines: scale 1/255, zero point 0)."""
    return x.float().div_(255.0)


@dataclass
class Processes:
    """Where this process trains: alone, or as rank `rank` of `world` under torchrun, on `device`."""
    distributed: bool
    use_cuda: bool
    rank: int
    world: int
    device: torch.device

    @property
    def main(self):
        """The process that evaluates, saves and prints."""
        return self.rank == 0

    @property
    def memory_format(self):
        # NHWC is what cuDNN's bf16 convolutions run fastest on; the CPU keeps the default layout.
        return torch.channels_last if self.use_cuda else torch.contiguous_format


SINGLE_CPU = Processes(False, False, 0, 1, torch.device("cpu"))


def start_processes(cfg):
    """The Processes of this run: --device checked, torchrun's process group joined."""
    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    if cfg.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device=cuda but torch sees no CUDA device; use --device=auto or cpu")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if distributed:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return Processes(distributed, use_cuda, rank, world, device)


def stop_processes(procs):
    """Leave torchrun's process group (a no-op for a single process)."""
    if procs.distributed:
        dist.destroy_process_group()
