"""Small float models with random weights and BN statistics that exercise every
integer op, and their quantized integer graphs; shared by the engine tests."""
import torch
import torch.nn.functional as F
from torch import nn

from model.api import make_cfg
from model.quant.quantize import build_integer_graph


def _randomize_bn(model, gen):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)
    return model


class ConvPoolNet(nn.Module):
    """MNIST-shaped: padded/strided convs, grouped conv, ReLU6, max pool with padding, avg pool, linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.grouped = nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=4), nn.ReLU6())
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(12 * 3 * 3, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.avg(self.grouped(self.pool(self.stem(x)))), 1))


class ResidualNet(nn.Module):
    """CIFAR-shaped: residual adds (with and without ReLU), depthwise conv, linear bottleneck, global avg pool."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.relu = nn.ReLU(inplace=True)
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16, bias=False),
                                nn.BatchNorm2d(16), nn.ReLU6(inplace=True))
        self.project = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.down = nn.Conv2d(16, 16, 1, stride=2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = self.relu(self.body(x) + x)
        x = self.project(self.dw(x)) + self.down(x)      # linear bottleneck: no ReLU after the add
        return self.fc(torch.flatten(self.gap(x), 1))


class BranchNet(nn.Module):
    """CIFAR-shaped: a BatchNorm after a ReLU (not foldable: a standalone per-channel affine),
    concats of branches of different scales (one with a fused ReLU, one of a tensor with itself)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.bn = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 6, 1)
        self.b = nn.Sequential(nn.Conv2d(8, 10, 3, padding=1), nn.ReLU6())
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32 * 2 * 2, 10)

    def forward(self, x):
        x = self.bn(self.stem(x))
        x = torch.relu(torch.cat([self.a(x), self.b(x)], dim=1))
        x = self.pool(x)
        x = torch.cat((x, x), 1)
        return self.fc(torch.flatten(self.gap(x), 1))


class SqueezeExcite(nn.Module):
    """torchvision's SqueezeExcitation: x * gate(fc2(relu(fc1(gap(x))))), 1x1 convs as the fcs."""

    def __init__(self, c, squeeze, gate, gate_first=False):
        super().__init__()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.gate, self.gate_first = gate, gate_first

    def forward(self, x):
        s = self.gate(self.fc2(torch.relu(self.fc1(self.gap(x)))))
        return s * x if self.gate_first else x * s


class ActivationNet(nn.Module):
    """CIFAR-shaped: elementwise functions as lookup tables (modules, and functions with their
    arguments), a ReLU that cannot be fused (after a max pool), a ReLU fused into a table,
    squeeze-and-excitation products broadcast over HxW (each way round), a same-shape product."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(12),
                                  nn.Hardswish())                                       # 12x16x16
        self.pool = nn.MaxPool2d(2)                                                     # 12x8x8
        self.relu = nn.ReLU()                                                           # unfusable: a lut
        self.a = nn.Sequential(nn.Conv2d(12, 16, 3, padding=1), nn.LeakyReLU(0.1))
        self.b = nn.Conv2d(12, 16, 1)
        self.se = SqueezeExcite(16, 4, nn.Sigmoid(), gate_first=True)
        self.c = nn.Sequential(nn.Conv2d(16, 20, 3, stride=2, padding=1), nn.GELU())  # 20x4x4
        self.d = nn.Sequential(nn.Conv2d(20, 20, 3, padding=1, groups=20), nn.ELU(alpha=0.7))
        self.se2 = SqueezeExcite(20, 8, nn.Hardsigmoid())
        self.e = nn.Conv2d(20, 24, 1)
        self.mish = nn.Mish()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(24, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.relu(self.pool(self.stem(x)))
        x = self.a(x) * torch.tanh(self.b(x))                  # gated, same shape
        x = F.silu(self.se(x))
        x = self.se2(self.d(self.c(x)))
        x = self.mish(F.relu(F.gelu(self.e(x), approximate="tanh")))       # the ReLU fused into GELU's table
        y = torch.flatten(self.gap(x), 1)
        return self.fc2(F.leaky_relu(self.fc1(y), negative_slope=0.2))


def channel_shuffle(x, groups):
    """torchvision.models.shufflenetv2.channel_shuffle, as written there."""
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, -1, height, width)


class DataMovementNet(nn.Module):
    """CIFAR-shaped: the ops that only move data: channel split (x.chunk, torch.split with sizes,
    x.split, x[:, a:b] slicing, an unused piece), channel shuffles with groups 2 (torchvision's
    function) and 4 (the method spelling, reshape), nearest upsampling x2 (nn.Upsample) and (2, 1)
    (F.interpolate), a max pool on a shuffled tensor, a slice flattened into the linear layer; reflect,
    replicate and constant (non-zero) pads."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())                                                    # 16x16x16
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.MaxPool2d(2)                                                             # 16x8x8
        self.mix = nn.Conv2d(16, 24, 1)                                                         # 24x8x8
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.cu = nn.Conv2d(16, 8, 3, stride=(1, 2), padding=1)                                 # 8x16x8
        self.gap = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(18 * 2 * 2, 10)

    def forward(self, x):
        x = self.stem(x)
        a, b = x.chunk(2, dim=1)
        x = self.pool(channel_shuffle(torch.cat([a, self.b(b)], dim=1), 2))
        y = self.mix(x)
        p, _, r = torch.split(y, [8, 12, 4], dim=1)
        s, t = y.split(12, dim=1)
        n, c, h, w = y.shape
        z = torch.cat([torch.cat([p, r], 1), s], 1).reshape(n, 4, c // 4, h, w).transpose(1, 2)
        z = z.contiguous().view(n, c, h, w)
        u = self.cu(self.up(z[:, 4:20]))                                                      # 8x16x8
        v = F.interpolate(t[:, :8], scale_factor=(2, 1), mode="nearest")                       # 8x16x8
        w = F.pad(F.pad(F.pad(x[:, 12:], (1, 0, 2, 1), mode="reflect"), (0, 2, 1, 0), mode="replicate"),
                  (1, 1, 0, 1), value=0.3)                                                     # 4x12x12
        q = torch.cat([self.gap(torch.cat([u, v], dim=1)), self.gap(w)], dim=1)                 # 20x2x2
        return self.fc(torch.flatten(q[:, 2:], 1))


class GeometryNet(nn.Module):
    """CIFAR-shaped: the window geometries beyond a symmetric pad: "same" with an even kernel (one
    more row/column after), dilation (dense, grouped and depthwise, with "same"), TF-style
    asymmetric zero pads folded into the conv(s) reading them (F.pad, nn.ZeroPad2d, one pad read
    by two convs), a pad of W only, a non-square dilation with stride 2; adaptive average pools
    with windows that are not uniform: 8x8 -> 3x5 (overlapping), 2x2 -> 3x5 (repeating)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 4, padding="same", bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU())                                                    # 8x32x32
        self.down = nn.Conv2d(8, 12, 3, stride=2)                                               # 12x16x16
        self.dil = nn.Sequential(nn.Conv2d(12, 12, 3, padding=2, dilation=2, groups=12), nn.ReLU6())
        self.dil_same = nn.Conv2d(12, 16, 3, padding="same", dilation=3, groups=4)
        self.pad = nn.ZeroPad2d((1, 1, 0, 1))
        self.a = nn.Conv2d(16, 8, 3, stride=(2, 2))                                             # 8x8x8
        self.b = nn.Conv2d(16, 8, (2, 4), stride=2, dilation=(2, 1))                            # 8x8x8
        self.w_only = nn.Conv2d(16, 16, (1, 3), dilation=(1, 2), groups=16)
        self.pool = nn.AdaptiveAvgPool2d((3, 5))
        self.fc = nn.Linear(32 * 3 * 5, 10)

    def forward(self, x):
        x = self.down(F.pad(self.stem(x), (0, 1, 0, 1)))
        x = self.dil_same(self.dil(x))
        p = self.pad(x)
        x = torch.cat([self.a(p), self.b(p)], dim=1)
        x = self.w_only(F.pad(x, (2, 2)))
        x = torch.cat([self.pool(x), F.adaptive_avg_pool2d(F.adaptive_avg_pool2d(x, 2), (3, 5))], dim=1)
        return self.fc(torch.flatten(x, 1))


ARCHS = {"conv_pool": (ConvPoolNet, "mnist", (1, 28, 28)), "residual": (ResidualNet, "cifar10", (3, 32, 32)),
         "branch": (BranchNet, "cifar10", (3, 32, 32)), "activations": (ActivationNet, "cifar10", (3, 32, 32)),
         "data_movement": (DataMovementNet, "cifar10", (3, 32, 32)), "geometry": (GeometryNet, "cifar10", (3, 32, 32))}


def random_quantized(arch, weight_mode="per_channel", seed=0, calib=64, multiplier_bits=16, archs=None, n_test=32,
                     **widths):
    """(state_dict, quant_list, uint8 test images) for a random model of `arch` (from `archs`,
    by default ARCHS: name -> (class, dataset, input shape)); `widths`: weight_bits=4, act_bits=4, ..."""
    cls, dataset, shape = (archs or ARCHS)[arch]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = _randomize_bn(cls(), gen).eval()
    images = torch.randint(0, 256, (calib + n_test, *shape), generator=gen, dtype=torch.uint8)
    cfg = make_cfg(model="lenet" if dataset == "mnist" else "resnet18", weight_mode=weight_mode,
                   multiplier_bits=multiplier_bits, **widths)
    state, quant_list = build_integer_graph(net, images[:calib], cfg, dataset, {})
    return state, quant_list, images[calib:]
