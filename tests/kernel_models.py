"""Random float models with awkward shapes for the C engine's optimized kernels (not a test module):
odd sizes, non-square kernels, strides, padding, grouped and depthwise convs incl. a channel
multiplier, channel counts that are not multiples of 4 or 16, 1x1 convs read in place, linear layers
of odd width; and their exports."""
import torch
from torch import nn

from tests.c_engine import export_graph, make_export
from tests.random_models import random_quantized


def cbr(cin, cout, k, stride=1, padding=0, groups=1, act=nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, stride=stride, padding=padding, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class AwkwardNet(nn.Module):
    """CIFAR-shaped, every conv path of the optimized engine."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 5, (3, 5), stride=(1, 2), padding=(1, 2))          # 5x32x16, K = 45
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)                        # 5x16x8
        self.expand = cbr(5, 20, 1, act=nn.ReLU6)                               # 1x1, C % 4 != 0: im2col
        self.dw = cbr(20, 20, 3, stride=2, padding=1, groups=20, act=nn.ReLU6)  # depthwise, 8x4
        self.project = cbr(20, 40, 1, act=None)                                 # 1x1 read in place
        self.grouped = cbr(40, 36, 3, padding=1, groups=4)                      # cin_g 10, cout_g 9
        self.dw_mult = cbr(36, 72, 3, padding=1, groups=36)                     # cin_g 1, cout_g 2: GEMM path
        self.body = cbr(72, 72, 1, act=None)
        self.relu = nn.ReLU()
        self.wide = cbr(72, 70, 3, padding=1)                                   # 5 blocks of 16, last 6
        self.down = nn.Conv2d(70, 33, 2, stride=2)                              # 4x2, with bias
        self.avg = nn.AvgPool2d(2)                                              # 33x2x1
        self.fc1 = nn.Linear(66, 37)                                            # K % 4 != 0
        self.fc2 = nn.Linear(37, 10)

    def forward(self, x):
        x = self.dw_mult(self.grouped(self.project(self.dw(self.expand(self.pool(self.stem(x)))))))
        x = self.relu(self.body(x) + x)
        x = self.avg(self.down(self.wide(x)))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


class MobileNetish(nn.Module):
    """CIFAR-shaped: an inverted residual with a wide depthwise (tails of 16-channel
    vectors; the VNNI kernel's 64-channel chunks and a last one of at most 32), stride 2, a linear
    bottleneck add, a 5x5 depthwise of 40 channels (more than one 4-row group, in a 64-channel
    chunk), global average pool."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 24, 3, stride=2, padding=1)                          # 24x16x16
        self.expand = cbr(24, 150, 1, act=nn.ReLU6)
        self.dw = cbr(150, 150, 3, padding=1, groups=150, act=nn.ReLU6)
        self.project = cbr(150, 24, 1, act=None)
        self.widen = cbr(24, 40, 1)
        self.dw2 = cbr(40, 40, 5, stride=2, padding=2, groups=40)               # 5x5 depthwise, 8x8
        self.head = cbr(40, 100, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(100, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.dw(self.expand(x)))
        x = self.head(self.dw2(self.widen(x)))
        return self.fc(torch.flatten(self.gap(x), 1))


class TinyMnist(nn.Module):
    """MNIST-shaped: single-channel input, 5x5 kernels, odd channel counts, a ceil_mode max pool
    whose last windows reach past the padded input."""

    def __init__(self):
        super().__init__()
        self.c1 = cbr(1, 7, 5, padding=2)
        self.pool = nn.MaxPool2d(2)
        self.c2 = cbr(7, 17, 5)                                                 # 10x10
        self.pool2 = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)       # 6x6 (5x5 without ceil_mode)
        self.fc = nn.Linear(17 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool2(self.c2(self.pool(self.c1(x)))), 1))


ARCHS = {"awkward": (AwkwardNet, "cifar10", (3, 32, 32)), "mobilenetish": (MobileNetish, "cifar10", (3, 32, 32)),
         "tiny_mnist": (TinyMnist, "mnist", (1, 28, 28))}


def export(folder, arch, mode, seed, bits, tweak=None):
    """Like tests/c_engine.py's make_export, for the graphs here as well as tests/random_models.py's."""
    if arch not in ARCHS:
        return make_export(folder, arch, mode, seed=seed, multiplier_bits=bits)
    state, quant, images = random_quantized(arch, mode, seed, multiplier_bits=bits, archs=ARCHS, n_test=24)
    if tweak:
        tweak(state, quant)
    return export_graph(folder, state, quant, images, seed, mode="bin")
