"""Deployment: a fast inference module, TorchScript/ONNX export, and `osnas extract`/`export`.

`optimize_for_inference(model)` rebuilds an (eval-mode) osnas OSNet as a new module with
every BatchNorm folded into the convolution or linear layer before it (stem, Lite 3x3,
block conv1, conv3 + end BN, shortcut, transitions, conv5, head fc + BN1d); instance
normalisation stays (it depends on the input). It runs in channels-last memory format and,
with `bf16=True`, in bfloat16 (weights and activations; the embedding is returned as fp32).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from osnas.errors import OsnasError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
CHECKPOINT_KEYS = ("model", "genotype", "arch", "head", "feature_dim", "last_stride", "num_classes")


# ----------------------------------------------------------------------------- BN folding
def _bn_scale_shift(bn: nn.Module):
    """Eval-mode BN as y = x * scale + shift (per channel)."""
    std = torch.sqrt(bn.running_var.double() + bn.eps)
    w = bn.weight.double() if bn.weight is not None else torch.ones_like(std)
    b = bn.bias.double() if bn.bias is not None else torch.zeros_like(std)
    scale = w / std
    shift = b - bn.running_mean.double() * scale
    return scale, shift


def fold_conv_bn(conv: nn.Conv2d, bn: Optional[nn.Module]) -> nn.Conv2d:
    """A new Conv2d (with bias) equal to bn(conv(x)) in eval mode; a copy of conv if bn is None."""
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias=bn is not None or conv.bias is not None)
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64)
    if bn is not None:
        scale, shift = _bn_scale_shift(bn)
        w = w * scale.view(-1, 1, 1, 1)
        b = b * scale + shift
    with torch.no_grad():
        new.weight.copy_(w.float())
        if new.bias is not None:
            new.bias.copy_(b.float())
    return new


def fold_linear_bn(linear: nn.Linear, bn: nn.Module) -> nn.Linear:
    new = nn.Linear(linear.in_features, linear.out_features, bias=True)
    scale, shift = _bn_scale_shift(bn)
    b = linear.bias.detach().double() if linear.bias is not None else torch.zeros(linear.out_features,
                                                                                    dtype=torch.float64)
    with torch.no_grad():
        new.weight.copy_((linear.weight.detach().double() * scale.view(-1, 1)).float())
        new.bias.copy_((b * scale + shift).float())
    return new


class InstanceNormCL(nn.Module):
    """Affine instance normalisation that keeps channels-last tensors channels-last.

    Same result as nn.InstanceNorm2d(affine=True, track_running_stats=False): it computes
    group_norm with one group per channel, whose CPU kernel works on channels-last input
    without the layout round trip that instance_norm makes. `export=True` uses
    F.instance_norm instead (ONNX InstanceNormalization).
    """

    def __init__(self, norm: nn.InstanceNorm2d, export: bool = False):
        super().__init__()
        self.num_features, self.eps, self.export = norm.num_features, norm.eps, export
        c = norm.num_features
        w = norm.weight.detach().clone() if norm.weight is not None else torch.ones(c)
        b = norm.bias.detach().clone() if norm.bias is not None else torch.zeros(c)
        self.weight, self.bias = nn.Parameter(w, requires_grad=False), nn.Parameter(b, requires_grad=False)

    def forward(self, x):
        if self.export:
            return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)
        if x.dtype != torch.float32:  # statistics in fp32 (bf16 sums lose precision)
            return F.group_norm(x.float(), self.num_features, self.weight.float(), self.bias.float(),
                                self.eps).to(x.dtype)
        return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)


def _norm_op(site) -> tuple:
    """(op name, module) of a NormSite holding exactly one op."""
    if len(site.ops) != 1:
        raise OsnasError(f"cannot optimise a network whose normalisation sites hold several ops "
                         f"({list(site.ops)}): derive a genotype first")
    op = next(iter(site.ops))
    return op, site.ops[op]


def _after(op: str, m: nn.Module, export: bool) -> nn.Module:
    """What remains after a conv once a BN has been folded into it."""
    if op == "in":
        return InstanceNormCL(m, export=export)
    if op == "bn":  # only for BNs that cannot be folded (after an addition)
        return copy.deepcopy(m).eval()
    return nn.Identity()


class FusedConv(nn.Module):
    """conv (+ folded BN) -> optional remaining norm (IN) -> optional ReLU."""

    def __init__(self, conv: nn.Conv2d, norm: Optional[nn.Module] = None, relu: bool = True):
        super().__init__()
        self.conv = conv
        self.norm = norm if norm is not None and not isinstance(norm, nn.Identity) else None
        self.relu = relu

    def forward(self, x):
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x) if self.relu else x


def _fuse_convlayer(layer, export: bool) -> FusedConv:
    """A ConvLayer (stem, transition, conv5): conv -> site op -> ReLU."""
    op, m = _norm_op(layer.norm)
    if op == "bn":
        return FusedConv(fold_conv_bn(layer.conv, m))
    return FusedConv(fold_conv_bn(layer.conv, None), _after(op, m, export))


class FusedStreams(nn.Module):
    """The T Lite-3x3 streams of an OS block with the aggregation gate, BN folded.

    All streams read the same input, so each depth level runs as one convolution over the
    streams still active: level d concatenates the 1x1 convs of the streams of depth > d
    (one conv on the shared input at d=0, then a grouped 1x1 conv), and one depthwise 3x3
    over all of them. The shared gate runs once on all streams' pooled features.
    """

    def __init__(self, block, concat: bool = True):
        super().__init__()
        streams = block.conv2
        self.concat = concat
        self.sep = nn.ModuleList([nn.Sequential(*[m for ly in st.layers for m in (
            copy.deepcopy(ly.conv1), fold_conv_bn(ly.conv2, ly.bn), nn.ReLU())]) for st in streams])
        self.T = len(streams)
        self.mid = streams[0].layers[0].conv1.in_channels
        mid, T = self.mid, self.T
        pw, dw = [], []
        for d in range(T):  # depth level d: streams t >= d (stream t has t+1 layers)
            layers = [streams[t].layers[d] for t in range(d, T)]
            n = len(layers)
            w1 = torch.cat([ly.conv1.weight.detach() for ly in layers], 0)  # (n*mid, mid, 1, 1)
            c1 = nn.Conv2d(mid if d == 0 else n * mid, n * mid, 1, bias=False, groups=1 if d == 0 else n)
            with torch.no_grad():
                c1.weight.copy_(w1)
            dws = [fold_conv_bn(ly.conv2, ly.bn) for ly in layers]
            c2 = nn.Conv2d(n * mid, n * mid, 3, padding=1, groups=n * mid, bias=True)
            with torch.no_grad():
                c2.weight.copy_(torch.cat([c.weight for c in dws], 0))
                c2.bias.copy_(torch.cat([c.bias for c in dws], 0))
            pw.append(c1)
            dw.append(c2)
        self.pw, self.dw = nn.ModuleList(pw), nn.ModuleList(dw)
        g = block.gate
        self.fc1 = nn.Linear(mid, g.fc1.out_channels)
        self.fc2 = nn.Linear(g.fc1.out_channels, mid)
        with torch.no_grad():
            self.fc1.weight.copy_(g.fc1.weight.flatten(1))
            self.fc1.bias.copy_(g.fc1.bias)
            self.fc2.weight.copy_(g.fc2.weight.flatten(1))
            self.fc2.bias.copy_(g.fc2.bias)

    def forward(self, x1):
        mid, T = self.mid, self.T
        outs: List[torch.Tensor] = []
        y = x1
        if not self.concat:
            outs = [s(x1) for s in self.sep]
        for d in range(T if self.concat else 0):
            y = F.relu(self.dw[d](self.pw[d](y)))  # (B, (T-d)*mid, H, W)
            outs.append(y[:, :mid])  # stream d finishes here
            if d + 1 < T:
                y = y[:, mid:]
        # gate: GAP of every stream at once, shared MLP, sigmoid
        pooled = torch.stack([o.mean(dim=(2, 3)) for o in outs], 0)  # (T, B, mid)
        g = torch.sigmoid(self.fc2(F.relu(self.fc1(pooled))))[:, :, :, None, None]  # (T, B, mid, 1, 1)
        x2 = outs[0] * g[0]
        for t in range(1, T):
            x2 = x2 + outs[t] * g[t]
        return x2


class FusedBlock(nn.Module):
    def __init__(self, block, export: bool, concat: bool = True):
        super().__init__()
        self.conv1 = FusedConv(fold_conv_bn(block.conv1.conv, block.conv1.bn))
        self.streams = FusedStreams(block, concat)
        end_op, end_m = _norm_op(block.end)
        if end_op == "bn":
            self.conv3 = FusedConv(fold_conv_bn(block.conv3, end_m), relu=False)
        else:
            self.conv3 = FusedConv(fold_conv_bn(block.conv3, None), _after(end_op, end_m, export), relu=False)
        self.downsample = (FusedConv(fold_conv_bn(block.downsample.conv, block.downsample.bn), relu=False)
                           if block.downsample is not None else None)
        post_op, post_m = _norm_op(block.post)
        self.post = _after(post_op, post_m, export) if post_op != "none" else None

    def forward(self, x):
        identity = self.downsample(x) if self.downsample is not None else x
        out = self.conv3(self.streams(self.conv1(x))) + identity
        if self.post is not None:
            out = self.post(out)
        return F.relu(out)


class FusedHead(nn.Module):
    def __init__(self, head):
        super().__init__()
        from osnas.models.osnet import ReferenceHead

        self.reference = isinstance(head, ReferenceHead)
        if self.reference:
            self.fc = fold_linear_bn(head.fc[0], head.fc[1])
        else:  # BNNeck: the BN itself is the whole (affine) head
            scale, shift = _bn_scale_shift(head.bottleneck)
            self.register_buffer("scale", scale.float())
            self.register_buffer("shift", shift.float())

    def forward(self, f):
        if self.reference:
            return F.relu(self.fc(f))
        return f * self.scale + self.shift


class InferenceOSNet(nn.Module):
    """The inference-only network produced by `optimize_for_inference` (returns the embedding)."""

    def __init__(self, model, export: bool = False, channels_last: bool = True, bf16: bool = False,
                 concat: bool = True):
        super().__init__()
        self.conv1 = _fuse_convlayer(model.conv1, export)
        self.blocks = nn.ModuleList([FusedBlock(b, export, concat) for s in ("conv2", "conv3", "conv4")
                                     for b in getattr(model, s)])
        self.pool2 = _fuse_convlayer(model.pool2, export)
        self.pool3 = _fuse_convlayer(model.pool3, export)
        self.conv5 = _fuse_convlayer(model.conv5, export)
        self.head = FusedHead(model.head)
        self.last_stride = model.last_stride
        self.channels_last, self.bf16 = channels_last, bf16
        self.feature_dim = model.feature_dim

    def forward(self, x):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.bf16:
            x = x.to(torch.bfloat16)
        x = F.max_pool2d(self.conv1(x), 3, 2, 1)
        x = self.blocks[1](self.blocks[0](x))
        x = F.avg_pool2d(self.pool2(x), 2, 2)
        x = self.blocks[3](self.blocks[2](x))
        x = self.pool3(x)
        if self.last_stride == 2:
            x = F.avg_pool2d(x, 2, 2)
        x = self.conv5(self.blocks[5](self.blocks[4](x)))
        f = x.mean(dim=(2, 3))
        return self.head(f).float()


def fold_bn(model, export: bool = False) -> InferenceOSNet:
    """BN-folded fp32 copy of `model` (contiguous format; eager; for inspection and export)."""
    _check_model(model)
    return InferenceOSNet(model.eval() if False else copy.deepcopy(model).eval(), export=export,
                          channels_last=False, bf16=False).eval()


def _check_model(model):
    from osnas.models.osnet import OSNet

    if not isinstance(model, OSNet):
        raise OsnasError(f"expected an osnas OSNet, got {type(model).__name__}")
    if getattr(model, "nonshared", None):
        raise OsnasError("cannot optimise a non-shared supernet: derive a genotype first")
    multi = [s for s, ops in model.plan.items() if len(ops) != 1]
    if multi:
        raise OsnasError(f"cannot optimise a supernet (sites {', '.join(multi[:3])} hold several ops): "
                         f"derive a genotype first")
