"""Stage 1: train the float model chosen in config.py -> pretrained/{model}_raw.pth.

The best epoch on a validation split carved from the training set (never the
test set) is saved atomically; pretrained/{model}_ckpt.pt holds the full
training state after every epoch, so a killed run resumes where it stopped.
Single process on CUDA (mixed precision) or CPU; multi-GPU with
`torchrun --nproc_per_node=N train_model.py` (DistributedDataParallel).
"""
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import config
import model as models
from data import datasets
from model.fileio import (FORMAT_VERSIONS, ModelFileError, WriteError, atomic_open, atomic_save, check_not_tracked,
                          check_output_file, check_space, check_writable, error_line, load_checked, stage_main)
from model.training import augment, start_processes, stop_processes, to_float


@torch.no_grad()
def evaluate(net, images, labels, device, batch=1000):
    net.eval()
    correct = 0
    for i in range(0, len(images), batch):
        out = net(to_float(images[i:i + batch].to(device)))
        correct += (out.argmax(1).cpu() == labels[i:i + batch]).sum().item()
    return correct / len(images)


def plot_history(history, model_name, path):
    """Loss, train and validation accuracy (the best epoch marked) and the learning rate of every
    step, as a PNG next to the checkpoint."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [h["epoch"] for h in history]
    best = max(history, key=lambda h: h["val_acc"])
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(13, 3.2))
    ax_loss.plot(epochs, [h["loss"] for h in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log", title=f"{model_name}: loss")
    ax_acc.plot(epochs, [100 * h["train_acc"] for h in history], marker="o", color="tab:blue",
                label="train (its batches, during the epoch)")
    ax_acc.plot(epochs, [100 * h["val_acc"] for h in history], marker="o", color="tab:green", label="validation")
    ax_acc.axvline(best["epoch"], color="tab:red", alpha=0.4, linestyle="--",
                   label=f"best: epoch {best['epoch']}, {100 * best['val_acc']:.2f}%")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title=f"{model_name}: accuracy")
    ax_acc.legend(fontsize=8)
    # each epoch's steps spread over (epoch - 1, epoch]: the one-cycle curve on the epoch axis
    steps = [(h["epoch"] - 1 + (i + 1) / len(h["lr"]), lr) for h in history for i, lr in enumerate(h["lr"])]
    ax_lr.plot(*zip(*steps), color="tab:purple")
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title=f"{model_name}: learning rate")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def non_finite(net):
    """The name of the first parameter or buffer of `net` holding NaN or Inf, or None."""
    for name, value in net.state_dict().items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            return name
    return None


def diverged(lr, epoch, what):
    sys.exit(f"error: training diverged in epoch {epoch + 1}: {what} (lr {lr}); nothing saved for this "
             f"epoch; lower --lr")


def training_settings(cfg, spec, world):
    """The settings a training run is made of (the model's defaults resolved): recorded in its state and
    its checkpoint; a resume with other values would silently mix two runs."""
    return {"epochs": cfg.epochs or spec.epochs, "batch_size": cfg.batch_size or spec.batch_size,
            "lr": cfg.lr or spec.lr, "weight_decay": spec.weight_decay if cfg.weight_decay < 0 else cfg.weight_decay,
            "val_images": cfg.val_images, "train_images": cfg.train_images, "seed": cfg.seed, "processes": world}


def load_resume_state(ckpt_path, cfg, settings, bare, opt, sched):
    """(start epoch, best val, history) of a training state, loaded into bare/opt/sched; ModelFileError
    (one line) for a state that lacks a part, does not fit, or was started with other settings."""
    ckpt = load_checked(ckpt_path, "fpgai-train-state", cfg.model)
    head = ckpt["header"]
    if not (isinstance(head.get("epoch"), int) and isinstance(head.get("best_val"), (int, float))
            and isinstance(head.get("settings"), dict)):
        raise ModelFileError(f"{ckpt_path}: its header lacks epoch, best_val or settings")
    for key, value in settings.items():
        if head["settings"].get(key) != value:
            old = head["settings"].get(key)
            how = (f"run it on {old} processes" if key == "processes" else f"pass --{key}={old}")
            raise ModelFileError(f"{ckpt_path} was started with {key} {old}, this run has {value}; {how} to "
                                 f"resume it")
    kinds = {"model": dict, "optimizer": dict, "scheduler": dict, "history": list}
    missing = [k for k, kind in kinds.items() if not isinstance(ckpt.get(k), kind)]
    if missing:
        raise ModelFileError(f"{ckpt_path}: a training state without its {' and '.join(missing)} state")
    if not 0 <= head["epoch"] <= settings["epochs"]:
        raise ModelFileError(f"{ckpt_path}: epoch {head['epoch']} of {settings['epochs']}")
    models.load_state(bare, ckpt["model"], ckpt_path)
    for part, target in (("optimizer", opt), ("scheduler", sched)):
        try:
            target.load_state_dict(ckpt[part])
        except (KeyError, ValueError, TypeError, IndexError, RuntimeError, AttributeError) as err:
            raise ModelFileError(f"{ckpt_path}: its {part} state does not fit ({error_line(err)})") from None
    return head["epoch"], head["best_val"], ckpt["history"]


def use_amp(cfg, procs):
    """Whether the steps run under bf16 autocast (--amp; auto: on CUDA)."""
    if cfg.amp == "bf16" and not procs.use_cuda and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        sys.exit("error: --amp=bf16 but this CPU has no bf16 support in oneDNN; use --amp=off")
    return cfg.amp == "bf16" or (cfg.amp == "auto" and procs.use_cuda)


def output_paths(cfg):
    """(training state, raw checkpoint, curves) paths, each checked before any work."""
    ckpt_path = os.path.join(cfg.pretrained_dir, f"{cfg.model}_ckpt.pt")
    raw_path = models.raw_path(cfg)
    plot_path = os.path.join(cfg.pretrained_dir, f"{cfg.model}_training.png")
    try:
        check_writable(cfg.pretrained_dir, "--pretrained_dir")
        if cfg.checkpoint:
            check_output_file(cfg.checkpoint, "--checkpoint")
        check_not_tracked((raw_path, plot_path, ckpt_path), cfg.overwrite, "--pretrained_dir=DIR")
    except WriteError as err:
        sys.exit(f"error: {err}")
    return ckpt_path, raw_path, plot_path


def load_split(cfg, spec, procs):
    """(train_x, train_y, val_x, val_y): the training set, less --val_images drawn (by --seed) for
    validation, cut to --train_images; on CUDA the training images move to the GPU."""
    try:
        images, labels = datasets.load(spec.dataset, "train", cfg.data_dir, cfg.mirror_dir)
    except datasets.DatasetError as err:
        sys.exit(f"error: {err}")
    if cfg.val_images >= len(images):
        sys.exit(f"error: --val_images={cfg.val_images} leaves no training images ({spec.dataset} has "
                 f"{len(images)}); give fewer")
    split = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed))
    val_idx, train_idx = split[:cfg.val_images], split[cfg.val_images:]
    if cfg.train_images:
        train_idx = train_idx[:cfg.train_images]
    val_x, val_y = images[val_idx], labels[val_idx]
    train_x, train_y = images[train_idx], labels[train_idx]
    if procs.use_cuda:  # the whole dataset fits on any GPU: no loader processes needed
        train_x, train_y = train_x.to(procs.device), train_y.to(procs.device)
        torch.backends.cudnn.benchmark = True
    return train_x, train_y, val_x, val_y


def build_net(cfg, procs):
    """(net, bare): the model from --seed (wrapped in DistributedDataParallel under torchrun) and the
    model itself; --pretrained_dir checked for the space its state takes."""
    torch.manual_seed(cfg.seed)
    net = models.build(cfg.model).to(procs.device, memory_format=procs.memory_format)
    if procs.distributed:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[procs.device.index] if procs.use_cuda
                                                        else None)
    bare = net.module if procs.distributed else net
    try:    # per parameter: the state's fp32 weights and two optimizer moments, the fp16 checkpoint
        check_space(cfg.pretrained_dir, 16 * sum(p.numel() for p in bare.parameters()) + 2 ** 20, "--pretrained_dir")
    except WriteError as err:
        sys.exit(f"error: {err}")
    return net, bare


def make_optimizer(net, spec, settings, steps_per_epoch):
    """(optimizer, one-cycle scheduler) of the model's recipe."""
    lr = settings["lr"]
    if spec.optimizer == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=settings["weight_decay"],
                              nesterov=True)
    else:
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=settings["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, epochs=settings["epochs"],
                                                steps_per_epoch=steps_per_epoch)
    return opt, sched


def resume(cfg, ckpt_path, settings, procs, bare, opt, sched):
    """(start epoch, best val, history): a fresh start, or --resume from the training state found."""
    if not (cfg.resume and os.path.exists(ckpt_path)):
        return 0, -1.0, []
    try:
        start_epoch, best_val, history = load_resume_state(ckpt_path, cfg, settings, bare, opt, sched)
    except ModelFileError as err:
        sys.exit(f"error: {err} (delete it or pass --resume=False to start over)")
    if procs.main:
        print(f"resuming {cfg.model} from {ckpt_path} at epoch {start_epoch}/{settings['epochs']}")
    return start_epoch, best_val, history


def train_epoch(cfg, spec, settings, procs, amp, net, opt, sched, train_x, train_y, epoch, steps_per_epoch):
    """One epoch of steps over this process's share of the shuffled training images: (summed loss,
    correct predictions as a tensor, images seen, learning rate of every step)."""
    batch_size, world, device = settings["batch_size"], procs.world, procs.device
    net.train()
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)  # same order after a resume
    order = torch.randperm(len(train_x), generator=gen)[procs.rank::world].to(train_x.device)
    # On CUDA the augmentation draws on the GPU, so no step waits for a host-to-device copy;
    # the CPU keeps the single stream (the shipped LeNet retrains bit for bit).
    aug_gen = gen if device.type == "cpu" else torch.Generator(device=device).manual_seed(cfg.seed * 1000 + epoch)
    bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{settings['epochs']}", disable=not procs.main,
               leave=False, dynamic_ncols=True, mininterval=1.0)
    total_loss = torch.zeros((), device=device)   # summed on the device: no sync per step
    train_correct, train_seen, lrs = torch.zeros((), device=device, dtype=torch.long), 0, []
    for step in bar:
        idx = order[step * batch_size:(step + 1) * batch_size]
        if len(idx) == 0:        # uneven shard tail: keep every rank's step count equal
            idx = order[:batch_size]
        x = train_x[idx].to(device, non_blocking=True)
        y = train_y[idx].to(device, non_blocking=True)
        if spec.augment_pad:
            x = augment(x, aug_gen, spec.augment_pad, spec.augment_flip)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):   # bf16: no loss scaling
            out = net(to_float(x).contiguous(memory_format=procs.memory_format))
            loss = F.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
        total_loss += loss.detach()
        train_correct += (out.detach().argmax(1) == y).sum()
        train_seen += len(y)
        if step % 20 == 19:
            running = total_loss.item()
            if not math.isfinite(running):
                diverged(settings["lr"], epoch, f"the loss is {running} after step {step + 1}")
            bar.set_postfix(loss=f"{running / (step + 1):.4f}")
    return total_loss.item(), train_correct, train_seen, lrs


def check_finite(bare, total_loss, lr, epoch):
    """Exit (diverged) on a loss or a weight that is NaN or Inf."""
    if not math.isfinite(total_loss):
        diverged(lr, epoch, f"the loss is {total_loss}")
    bad = non_finite(bare)
    if bad is not None:
        diverged(lr, epoch, f"'{bad}' holds NaN or Inf")


def save_state(cfg, settings, epoch, best_val, bare, opt, sched, history, ckpt_path):
    """The training state after `epoch`, atomically: what --resume continues from."""
    atomic_save({"header": {"kind": "fpgai-train-state", "version": FORMAT_VERSIONS["fpgai-train-state"],
                            "model": cfg.model, "epoch": epoch + 1, "settings": settings, "best_val": best_val},
                 "model": bare.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "history": history}, ckpt_path)


@stage_main
def main():
    cfg = config.load_or_exit(stage="train_model.py")
    spec = models.spec(cfg.model)
    procs = start_processes(cfg)
    settings = training_settings(cfg, spec, procs.world)
    epochs, batch_size, lr = settings["epochs"], settings["batch_size"], settings["lr"]
    amp = use_amp(cfg, procs)
    ckpt_path, raw_path, plot_path = output_paths(cfg)      # the outputs, before any work
    train_x, train_y, val_x, val_y = load_split(cfg, spec, procs)
    net, bare = build_net(cfg, procs)
    steps_per_epoch = math.ceil(len(train_x) / (batch_size * procs.world))
    opt, sched = make_optimizer(net, spec, settings, steps_per_epoch)
    start_epoch, best_val, history = resume(cfg, ckpt_path, settings, procs, bare, opt, sched)

    if procs.main:
        print(f"training {cfg.model} on {spec.dataset}: {len(train_x)} train / {len(val_x)} val images, "
              f"{epochs} epochs, batch {batch_size}x{procs.world}, {spec.optimizer} lr {lr}, device {procs.device}"
              f"{', bf16 autocast' if amp else ''}")
    for epoch in range(start_epoch, epochs):
        t0 = time.time()
        total_loss, train_correct, train_seen, lrs = train_epoch(cfg, spec, settings, procs, amp, net, opt, sched,
                                                                 train_x, train_y, epoch, steps_per_epoch)
        check_finite(bare, total_loss, lr, epoch)
        if not procs.main:
            continue
        val_acc = evaluate(bare, val_x, val_y, procs.device)
        seconds = time.time() - t0
        # train accuracy: on this process's augmented batches, as the model stood at each step
        history.append({"epoch": epoch + 1, "loss": total_loss / steps_per_epoch, "val_acc": val_acc,
                        "train_acc": train_correct.item() / train_seen, "lr": lrs, "seconds": seconds})
        improved = val_acc > best_val
        if improved:
            best_val = val_acc
            models.save_raw(bare, cfg.model, raw_path, {
                "epoch": epoch + 1, "epochs": epochs, "settings": settings, "val_acc": val_acc,
                "device": str(procs.device.type), "amp": amp,
                "world_size": procs.world, "train_seconds": sum(h["seconds"] for h in history)})
        save_state(cfg, settings, epoch, best_val, bare, opt, sched, history, ckpt_path)
        print(f"epoch {epoch + 1}/{epochs}: loss {history[-1]['loss']:.4f}  "
              f"train {history[-1]['train_acc'] * 100:.2f}%  val {val_acc * 100:.2f}%  "
              f"{seconds:.0f}s{'  (best, saved)' if improved else ''}", flush=True)
    if procs.main and history:
        plot_history(history, cfg.model, plot_path)
        print(f"done: best validation accuracy {best_val * 100:.2f}% -> {raw_path} (curves: {plot_path})")
    stop_processes(procs)


if __name__ == "__main__":
    main()
