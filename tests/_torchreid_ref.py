"""A minimal, independent re-implementation of torchreid's OSNet module layouts (test only).

Written from REFERENCE.md sections 1-2 and the published state-dict key names
(/work/shared/reference/torchreid_state_dict_keys.txt), so that the importer can be checked
against the reference network's *forward* without the torchreid package:

- `ref_osnet(channels, ibn=False)`: torchreid/models/osnet.py layout (plain and IBN):
  streams conv2a, conv2b.0-1, conv2c.0-2, conv2d.0-3; transitions inside the stage
  (conv2.2 = Sequential(Conv1x1, AvgPool)); IBN: IN stem, IN after the addition in conv2.*.
- `ref_osnet_ain(channels)`: torchreid/models/osnet_ain.py layout: streams
  conv2.{t}.layers.{i}; separate pool2/pool3; in conv2.0, conv2.1, conv3.1, conv4.0 the
  branch-end conv3 has no BN and is followed by IN, then the shortcut, then ReLU.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvLayer(nn.Module):
    def __init__(self, cin, cout, k, stride=1, padding=0, groups=1, IN=False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False, groups=groups)
        self.bn = nn.InstanceNorm2d(cout, affine=True) if IN else nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class Conv1x1(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, stride=stride, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class Conv1x1Linear(nn.Module):
    def __init__(self, cin, cout, stride=1, bn=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, stride=stride, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(cout) if bn else None

    def forward(self, x):
        x = self.conv(x)
        return self.bn(x) if self.bn is not None else x


class LightConv3x3(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 1, stride=1, padding=0, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False, groups=cout)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.bn(self.conv2(self.conv1(x))))


class ChannelGate(nn.Module):
    def __init__(self, cin, reduction=16):
        super().__init__()
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(cin, cin // reduction, 1, bias=True, padding=0)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(cin // reduction, cin, 1, bias=True, padding=0)
        self.gate_activation = nn.Sigmoid()

    def forward(self, x):
        inp = x
        x = self.global_avgpool(x)
        x = self.relu(self.fc1(x))
        x = self.gate_activation(self.fc2(x))
        return inp * x


class OSBlock(nn.Module):
    """osnet.py block: IN (IBN) after the residual addition, before the ReLU."""

    def __init__(self, cin, cout, IN=False, bottleneck_reduction=4):
        super().__init__()
        mid = cout // bottleneck_reduction
        self.conv1 = Conv1x1(cin, mid)
        self.conv2a = LightConv3x3(mid, mid)
        self.conv2b = nn.Sequential(LightConv3x3(mid, mid), LightConv3x3(mid, mid))
        self.conv2c = nn.Sequential(*[LightConv3x3(mid, mid) for _ in range(3)])
        self.conv2d = nn.Sequential(*[LightConv3x3(mid, mid) for _ in range(4)])
        self.gate = ChannelGate(mid)
        self.conv3 = Conv1x1Linear(mid, cout)
        self.downsample = Conv1x1Linear(cin, cout) if cin != cout else None
        self.IN = nn.InstanceNorm2d(cout, affine=True) if IN else None

    def forward(self, x):
        identity = x
        x1 = self.conv1(x)
        x2 = self.gate(self.conv2a(x1)) + self.gate(self.conv2b(x1)) + self.gate(self.conv2c(x1)) \
            + self.gate(self.conv2d(x1))
        x3 = self.conv3(x2)
        if self.downsample is not None:
            identity = self.downsample(identity)
        out = x3 + identity
        if self.IN is not None:
            out = self.IN(out)
        return F.relu(out)


class RefOSNet(nn.Module):
    def __init__(self, num_classes, channels, IN=False, feature_dim=512):
        super().__init__()
        self.conv1 = ConvLayer(3, channels[0], 7, stride=2, padding=3, IN=IN)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = self._make_layer(channels[0], channels[1], True, IN)
        self.conv3 = self._make_layer(channels[1], channels[2], True, False)
        self.conv4 = self._make_layer(channels[2], channels[3], False, False)
        self.conv5 = Conv1x1(channels[3], channels[3])
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channels[3], feature_dim), nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(feature_dim, num_classes)

    @staticmethod
    def _make_layer(cin, cout, reduce, IN):
        layers = [OSBlock(cin, cout, IN=IN), OSBlock(cout, cout, IN=IN)]
        if reduce:
            layers.append(nn.Sequential(Conv1x1(cout, cout), nn.AvgPool2d(2, stride=2)))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.conv4(self.conv3(self.conv2(x))))
        v = self.global_avgpool(x).view(x.size(0), -1)
        v = self.fc(v)
        if not self.training:
            return v
        return self.classifier(v)


# ----------------------------------------------------------------------------- AIN
class LightConvStream(nn.Module):
    def __init__(self, cin, cout, depth):
        super().__init__()
        layers = [LightConv3x3(cin, cout)] + [LightConv3x3(cout, cout) for _ in range(depth - 1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class AINBlock(nn.Module):
    """osnet_ain.py OSBlock (IN_in=False) and OSBlockINin (IN_in=True: conv3 without BN, then IN)."""

    def __init__(self, cin, cout, IN_in=False, reduction=4, T=4):
        super().__init__()
        mid = cout // reduction
        self.conv1 = Conv1x1(cin, mid)
        self.conv2 = nn.ModuleList([LightConvStream(mid, mid, t) for t in range(1, T + 1)])
        self.gate = ChannelGate(mid)
        self.conv3 = Conv1x1Linear(mid, cout, bn=not IN_in)
        self.downsample = Conv1x1Linear(cin, cout) if cin != cout else None
        self.IN = nn.InstanceNorm2d(cout, affine=True) if IN_in else None

    def forward(self, x):
        identity = x
        x1 = self.conv1(x)
        x2 = 0
        for conv2_t in self.conv2:
            x2 = x2 + self.gate(conv2_t(x1))
        x3 = self.conv3(x2)
        if self.IN is not None:
            x3 = self.IN(x3)  # IN inside the residual
        if self.downsample is not None:
            identity = self.downsample(identity)
        return F.relu(x3 + identity)


class RefOSNetAIN(nn.Module):
    BLOCKS = [[True, True], [False, True], [True, False]]  # IN_in per block

    def __init__(self, num_classes, channels, feature_dim=512):
        super().__init__()
        self.conv1 = ConvLayer(3, channels[0], 7, stride=2, padding=3, IN=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = self._make_layer(self.BLOCKS[0], channels[0], channels[1])
        self.pool2 = nn.Sequential(Conv1x1(channels[1], channels[1]), nn.AvgPool2d(2, stride=2))
        self.conv3 = self._make_layer(self.BLOCKS[1], channels[1], channels[2])
        self.pool3 = nn.Sequential(Conv1x1(channels[2], channels[2]), nn.AvgPool2d(2, stride=2))
        self.conv4 = self._make_layer(self.BLOCKS[2], channels[2], channels[3])
        self.conv5 = Conv1x1(channels[3], channels[3])
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channels[3], feature_dim), nn.BatchNorm1d(feature_dim), nn.ReLU())
        self.classifier = nn.Linear(feature_dim, num_classes)

    @staticmethod
    def _make_layer(blocks, cin, cout):
        return nn.Sequential(AINBlock(cin, cout, blocks[0]), AINBlock(cout, cout, blocks[1]))

    def forward(self, x):
        x = self.maxpool(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = self.pool3(self.conv3(x))
        x = self.conv5(self.conv4(x))
        v = self.fc(self.global_avgpool(x).view(x.size(0), -1))
        if not self.training:
            return v
        return self.classifier(v)


WIDTHS = {"x1_0": (64, 256, 384, 512), "x0_75": (48, 192, 288, 384), "x0_5": (32, 128, 192, 256),
          "x0_25": (16, 64, 96, 128)}


def build_reference(name: str, num_classes: int = 1000) -> nn.Module:
    """'osnet_x1_0', 'osnet_x0_25', 'osnet_ibn_x1_0', 'osnet_ain_x0_25', ..."""
    width = name.rsplit("_", 2)[-2] + "_" + name.rsplit("_", 1)[-1]
    ch = WIDTHS[width]
    if name.startswith("osnet_ain_"):
        return RefOSNetAIN(num_classes, ch)
    if name.startswith("osnet_ibn_"):
        return RefOSNet(num_classes, ch, IN=True)
    return RefOSNet(num_classes, ch)


def randomise_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BN statistics (so every mapped tensor matters in the comparison)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                t.fill_(int(torch.randint(0, 1000, (1,), generator=g)))
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif t.dim() == 1:  # norm affine / biases
                t.copy_(torch.randn(t.shape, generator=g) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
            else:
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5)
    return model


def read_keys_file(path, model_name: str):
    """[(key, shape tuple)] of one model from the shared keys file."""
    out = []
    for line in open(path):
        if line.startswith("#") or not line.strip():
            continue
        m, k, shape = line.split()
        if m == model_name:
            out.append((k, () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))))
    return out
