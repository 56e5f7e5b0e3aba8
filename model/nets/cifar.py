"""CIFAR-10 variants of torchvision's architectures, built with torchvision's own
builders and blocks: only the stems and heads change for 32x32 inputs."""
import torch
from torch import nn
from torchvision.models import mobilenet_v2 as tv_mobilenet_v2
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.models.vgg import cfgs as VGG_CFGS, make_layers

NUM_CLASSES = 10


def _resnet(block, layers):
    """torchvision ResNet with a 3x3 stride-1 stem (no 7x7/2); its 3x3/2 max pool is kept,
    so the stages run at 16, 8, 4 and 2 pixels (about 0.14 GMAC for ResNet18)."""
    net = ResNet(block, layers, num_classes=NUM_CLASSES)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    return net


def resnet18():
    return _resnet(BasicBlock, [2, 2, 2, 2])


def resnet34():
    return _resnet(BasicBlock, [3, 4, 6, 3])


def resnet50():
    return _resnet(Bottleneck, [3, 4, 6, 3])


# (expansion t, channels c, repeats n, stride s): ImageNet's table with the second
# stage at stride 1, and the first conv at stride 1 (below): 32 -> 16 -> 8 -> 4.
MOBILENET_V2_CIFAR = [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2],
                      [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]


def mobilenet_v2():
    net = tv_mobilenet_v2(num_classes=NUM_CLASSES, inverted_residual_setting=MOBILENET_V2_CIFAR)
    net.features[0][0].stride = (1, 1)
    return net


# vgg_small: four 3x3 convs, each followed by a 2x2 max pool (32 -> 2), and a 512 -> 10 head: 245,600
# weights (240 KiB at 8 bits) and 12.7 M MACs an image, sized for an ECP5-85F's block RAM (RTL engine).
VGG_SMALL_CFG = [32, "M", 64, "M", 128, "M", 128, "M"]


class VGG(nn.Module):
    """torchvision's VGG feature stack with BN and one linear head on what its 2x2 max pools leave of a
    32x32 image (the five of vgg11-19: 1x1, the four of vgg_small: 2x2)."""

    def __init__(self, cfg):
        super().__init__()
        self.features = make_layers(cfg, batch_norm=True)
        side = 32 >> cfg.count("M")
        self.classifier = nn.Linear([c for c in cfg if c != "M"][-1] * side * side, NUM_CLASSES)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def vgg11():
    return VGG(VGG_CFGS["A"])


def vgg13():
    return VGG(VGG_CFGS["B"])


def vgg16():
    return VGG(VGG_CFGS["D"])


def vgg19():
    return VGG(VGG_CFGS["E"])


def vgg_small():
    return VGG(VGG_SMALL_CFG)
