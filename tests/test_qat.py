"""Quantization-aware fine-tuning (--qat_epochs, model/quant/qat.py) on a tiny CNN and tiny data
(seconds): it beats post-training quantization alone at 2 bits on held-out images, a resumed run
ends where an uninterrupted one does, its tuple is one the engines load and they agree on it, and
quant_model.py refuses it without labels (one line) and runs it under torchrun.

The data: 8x8 grey images of 8 classes, each a fixed random template plus as much uniform noise.
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model import api
from model.formats.tuple_check import tuple_problem
from model.quant import qat
from model.quant.quantize import QuantizeError
from tests.scripts import ROOT, run

CLASSES = 8


def tiny_data(n, seed):
    templates = torch.rand(CLASSES, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=gen)
    images = 0.5 * templates[labels] + 0.5 * torch.rand(n, 1, 8, 8, generator=gen)
    return (images * 255).round().to(torch.uint8), labels


TINY_NET = '''
import torch.nn.functional as F
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 8)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        return self.fc(F.relu(self.conv2(x)).flatten(1))
'''


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(folder with tiny_net.py and its checkpoint, trained float net, training set, held-out set)."""
    folder = tmp_path_factory.mktemp("qat")
    (folder / "tiny_net.py").write_text(TINY_NET)
    namespace = {}
    exec(TINY_NET, namespace)
    torch.manual_seed(0)
    net = namespace["Tiny"]()
    train, held_out = tiny_data(2000, 1), tiny_data(1000, 2)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(200):
        idx = torch.randint(0, len(train[0]), (64,))
        loss = F.cross_entropy(net(train[0][idx].float() / 255), train[1][idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(net.eval().state_dict(), folder / "tiny.pth")
    return folder, net, train, held_out


def quantize(tiny, qat_epochs, state_path=None, weight_bits=2):
    """The tuple of the tiny net, from rounding to nearest (the post-training methods alone come close
    to float on this task) and `qat_epochs` of fine-tuning."""
    _, net, (images, labels), _ = tiny
    cfg = api.make_cfg(model="tiny", weight_bits=weight_bits, weight_method="rtn", calib_images=256,
                       qat_epochs=qat_epochs)
    return api.quantize_cfg(net, images[:256], cfg, api.CUSTOM_DATASET,
                            fine_tuning=qat.FineTuning(images, labels, batch_size=64, state_path=state_path))


def accuracy_and_loss(state, quant_list, images, labels):
    """Of the integer model (the torch engine) on labelled images: accuracy, cross-entropy of its logits."""
    q = torch.as_tensor(api.run_integer(state, quant_list, images, engine="torch", batch=500)).double()
    logits = quant_list[-1]["scale"] * (q - quant_list[-1]["zero_point"])
    return (logits.argmax(1) == labels).double().mean().item(), F.cross_entropy(logits, labels).item()


def test_qat_beats_post_training_at_2_bits(tiny):
    held_out = tiny[3]
    float_acc = (tiny[1](held_out[0].float() / 255).argmax(1) == held_out[1]).double().mean().item()
    ptq_acc, ptq_loss = accuracy_and_loss(*quantize(tiny, 0), *held_out)
    state, quant_list = quantize(tiny, 2)
    qat_acc, qat_loss = accuracy_and_loss(state, quant_list, *held_out)
    assert float_acc > 0.95                      # the task is learnt; 2-bit rounding is what costs
    assert qat_loss < 0.5 * ptq_loss and qat_acc >= ptq_acc + 0.1, (ptq_acc, ptq_loss, qat_acc, qat_loss)
    assert tuple_problem(state, quant_list) is None
    assert quant_list[0]["widths"]["qat_epochs"] == 2
    assert all(op["weight_bits"] == 2 for op in quant_list if op["op"] in ("conv", "linear"))
    images = held_out[0][:200]
    assert np.array_equal(api.run_integer(state, quant_list, images, engine="numpy"),
                          api.run_integer(state, quant_list, images, engine="torch"))


def test_the_integer_weights_are_the_ones_fine_tuned(tiny, monkeypatch):
    """The learned steps are the weight scales: the float weights quantized at them give the stored integers."""
    _, net, (images, labels), _ = tiny
    seen = {}
    fine_tune = qat.fine_tune

    def keep(gm, ptq, data, cfg, fingerprint):
        learned = fine_tune(gm, ptq, data, cfg, fingerprint)
        seen.update({op["name"]: (module.weight.detach().double(), learned.weight_scales[op["name"]])
                     for module, op in qat.weighted_layers(gm, ptq)})
        return learned
    monkeypatch.setattr(qat, "fine_tune", keep)
    cfg = api.make_cfg(model="tiny", weight_bits=3, calib_images=256, qat_epochs=1)
    state, _ = api.quantize_cfg(net, images[:256], cfg, api.CUSTOM_DATASET,
                                fine_tuning=qat.FineTuning(images, labels, batch_size=64))
    assert set(seen) == {"conv1", "conv2", "fc"}
    for name, (weight, scales) in seen.items():
        steps = torch.as_tensor(scales).view(-1, *[1] * (weight.dim() - 1))
        assert torch.equal(torch.clamp(torch.floor(weight / steps + 0.5), -3, 3).to(torch.int8),
                           state[f"{name}.weight"]), name


def test_the_fine_tuning_starts_from_the_post_training_result(tiny):
    """GPTQ's codes and the corrected biases are where the fine-tuning starts: one that cannot move (the
    smallest learning rate) gives back the post-training integer weights, and biases within a step (the
    activation steps it learned moved by as little), where re-rounding the float weights would not."""
    _, net, (images, labels), _ = tiny
    tuples = [api.quantize_cfg(net, images[:256], api.make_cfg(model="tiny", weight_bits=3, calib_images=256,
                                                               qat_epochs=epochs, qat_lr=1e-6),
                               api.CUSTOM_DATASET, fine_tuning=qat.FineTuning(images[:128], labels[:128], batch_size=64))
              for epochs in (0, 1)]
    (ptq, ptq_list), (tuned, _) = tuples
    assert ptq_list[0]["widths"]["weight_method"] == "auto"      # GPTQ and bias correction at 3 bits
    for name in ("conv1", "conv2", "fc"):
        assert torch.equal(tuned[f"{name}.weight"], ptq[f"{name}.weight"]), name
        assert (tuned[f"{name}.bias"] - ptq[f"{name}.bias"]).abs().max() <= 1, name


class Residual(torch.nn.Module):
    """A residual block, an average pool and a linear layer: ops whose outputs take grids of their own
    besides the convolutions'."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, CLASSES)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(x + self.conv2(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_the_fine_tuning_sees_the_integer_graphs_rounding(tiny, monkeypatch):
    """At 4-bit activations the fake-quantized graph the fine-tuning starts from computes what the
    post-training integer graph does, the add's and the pool's 16-level grids included: their logits
    differ by 0.07 steps of the logits' grid on average (at most 1 here; 4 with those two in float)."""
    _, _, (images, labels), held_out = tiny
    torch.manual_seed(0)
    net = Residual()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(100):
        idx = torch.randint(0, len(images), (64,))
        loss = F.cross_entropy(net(images[idx].float() / 255), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    x = held_out[0][:200]
    seen = {}
    train = qat._train

    def look_first(gm, *args):
        with torch.no_grad():
            seen["logits"] = gm(x.float() / 255).double()
        return train(gm, *args)
    monkeypatch.setattr(qat, "_train", look_first)
    cfg = dict(model="residual", weight_bits=4, act_bits=4, calib_images=256)
    api.quantize_cfg(net, images[:256], api.make_cfg(**cfg, qat_epochs=1), api.CUSTOM_DATASET,
                     fine_tuning=qat.FineTuning(images[:64], labels[:64], batch_size=64))
    state, quant_list = api.quantize_cfg(net, images[:256], api.make_cfg(**cfg), api.CUSTOM_DATASET)
    assert {op["op"] for op in quant_list} >= {"add", "avgpool"}
    logits = quant_list[-1]
    engine = logits["scale"] * (torch.as_tensor(api.run_integer(state, quant_list, x, engine="torch")).double()
                                - logits["zero_point"])
    assert (seen["logits"] - engine).abs().mean() <= logits["scale"], \
        ((seen["logits"] - engine).abs().mean() / logits["scale"])


def test_resume_ends_where_an_uninterrupted_run_does(tiny, tmp_path, monkeypatch):
    whole = quantize(tiny, 2, state_path=str(tmp_path / "whole_qat.pt"))
    save_state = qat.save_state

    def stop_after_first_epoch(path, *args):
        save_state(path, *args)
        raise KeyboardInterrupt
    monkeypatch.setattr(qat, "save_state", stop_after_first_epoch)
    path = str(tmp_path / "tiny_qat.pt")
    with pytest.raises(KeyboardInterrupt):
        quantize(tiny, 2, state_path=path)
    monkeypatch.setattr(qat, "save_state", save_state)
    assert torch.load(path, weights_only=True)["header"]["epoch"] == 1
    resumed = quantize(tiny, 2, state_path=path)
    assert whole[1] == resumed[1]
    assert whole[0].keys() == resumed[0].keys() and all(torch.equal(whole[0][k], resumed[0][k]) for k in whole[0])
    # another width is another run: its state is not resumed but started over
    other = quantize(tiny, 2, state_path=path, weight_bits=3)
    assert other[1][0]["widths"]["weight_bits"] == 3
    assert torch.load(path, weights_only=True)["header"]["settings"] != torch.load(
        str(tmp_path / "whole_qat.pt"), weights_only=True)["header"]["settings"]


def test_distillation_beats_post_training_at_2_bits_without_labels(tiny):
    """--qat_loss=distill: the float model's outputs are the targets, the labels are not read (None)."""
    _, net, (images, _), held_out = tiny
    ptq_acc, _ = accuracy_and_loss(*quantize(tiny, 0), *held_out)
    cfg = api.make_cfg(model="tiny", weight_bits=2, weight_method="rtn", calib_images=256, qat_epochs=2,
                       qat_loss="distill")
    state, quant_list = api.quantize_cfg(net, images[:256], cfg, api.CUSTOM_DATASET,
                                         fine_tuning=qat.FineTuning(images, None, batch_size=64))
    qat_acc, _ = accuracy_and_loss(state, quant_list, *held_out)
    assert qat_acc >= ptq_acc + 0.1, (ptq_acc, qat_acc)
    assert quant_list[0]["widths"]["qat_loss"] == "distill"


def test_qat_without_labelled_images_is_refused(tiny):
    with pytest.raises(QuantizeError, match="needs labelled training images"):
        api.quantize_cfg(tiny[1], tiny[2][0][:64], api.make_cfg(model="tiny", qat_epochs=1), api.CUSTOM_DATASET)
    with pytest.raises(QuantizeError, match="needs labelled training images"):
        api.quantize_cfg(tiny[1], tiny[2][0][:64], api.make_cfg(model="tiny", qat_epochs=1), api.CUSTOM_DATASET,
                         fine_tuning=qat.FineTuning(tiny[2][0], None))


def _cli_args(folder, npz, quant_dir="quant"):
    return [f"--model={folder / 'tiny_net.py'}:Tiny", f"--checkpoint={folder / 'tiny.pth'}",
            f"--calib_data={npz}", "--calib_images=256", "--weight_bits=3", f"--quant_dir={folder / quant_dir}"]


def test_quant_model_refuses_qat_on_unlabelled_data(tiny):
    folder, _, (images, _), _ = tiny
    np.savez(folder / "unlabelled.npz", x=images[:300].numpy())
    r = run("quant_model.py", *_cli_args(folder, folder / "unlabelled.npz"), "--qat_epochs=1")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"error: --qat_epochs=1 fine-tunes on labelled images, and {folder / 'unlabelled.npz'} has no labels (an "
        f"array y); add them, fine-tune with --qat_loss=distill, or leave --qat_epochs out"]
    # distillation needs no labels: the same images fine-tune, and the tuple says how
    r = run("quant_model.py", *_cli_args(folder, folder / "unlabelled.npz", "distilled"), "--qat_epochs=1",
            "--qat_loss=distill")
    assert r.returncode == 0, r.stderr[-2000:]
    _, quant_list = torch.load(folder / "distilled" / "Tiny_quant.tuple", weights_only=False)
    assert quant_list[0]["widths"]["qat_loss"] == "distill" and "train " not in r.stdout.split("QAT epoch 1/1:")[-1]


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="no torchrun")
def test_quant_model_fine_tunes_under_torchrun(tiny):
    """Two processes (gloo on the CPU): one tuple, written once, that the test stage loads."""
    folder, _, (images, labels), _ = tiny
    np.savez(folder / "labelled.npz", x=images[:512].numpy(), y=labels[:512].numpy())
    args = _cli_args(folder, folder / "labelled.npz")
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    r = subprocess.run([torchrun, "--nproc_per_node=2", os.path.join(ROOT, "quant_model.py"), *args,
                        "--qat_epochs=1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("saved ") == 1 and "QAT epoch 1/1" in r.stdout
    state = torch.load(folder / "quant" / "Tiny_qat.pt", weights_only=True)
    assert state["header"]["settings"]["processes"] == 2 and state["header"]["epoch"] == 1
    np.savez(folder / "test.npz", x=images[:100].numpy(), y=labels[:100].numpy())
    r = run("test_model.py", *args[:2], f"--quant_dir={folder / 'quant'}", f"--test_data={folder / 'test.npz'}",
            "--columns=quant,np")
    assert r.returncode == 0, r.stderr[-2000:]
