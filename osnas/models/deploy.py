"""Deployment: a fast inference module, TorchScript/ONNX export, and `osnas extract`/`export`.

`optimize_for_inference(model)` rebuilds an (eval-mode) osnas OSNet as a new module with
every BatchNorm folded into the convolution or linear layer before it (stem, Lite 3x3,
block conv1, conv3 + end BN, shortcut, transitions, conv5, head fc + BN1d); instance
normalisation stays (it depends on the input). It runs in channels-last memory format and,
with `bf16=True`, in bfloat16 (weights and activations; the embedding is returned as fp32).
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from osnas.errors import OsnasError
from osnas.models.checkpoint import load_model_from_checkpoint

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


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
    without the layout round trip that instance_norm makes (about 3x faster here), and
    on bf16 input with fp32 parameters. `export=True` uses F.instance_norm instead (ONNX
    InstanceNormalization).
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
        if x.dtype == torch.bfloat16 and x.shape[2] * x.shape[3] < 4 * x.shape[1]:
            return _instance_norm_lowres(x, self.weight, self.bias, self.eps)
        # (bf16 input with fp32 affine parameters: the CPU kernel accumulates in fp32)
        return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)


def _instance_norm_lowres(x, weight, bias, eps: float):
    """IN of a channels-last bf16 map with few pixels per channel (statistics in fp32).

    group_norm's bf16 kernel is slow when H*W is small against C (6-10x here); this computes
    mean and mean square with fp32 reductions over (B, H*W, C) and applies one addcmul.
    """
    b, c, h, w = x.shape
    y = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
    mean = y.mean(1, keepdim=True, dtype=torch.float32)
    msq = torch.linalg.vector_norm(y, dim=1, keepdim=True, dtype=torch.float32).pow(2) / (h * w)
    var = (msq - mean * mean).clamp(min=0)
    scale = weight * torch.rsqrt(var + eps)
    shift = bias - mean * scale
    out = torch.addcmul(shift.to(x.dtype), y, scale.to(x.dtype))
    return out.view(b, h, w, c).permute(0, 3, 1, 2)


def _spatial_mean(x):
    """Global average pool (B, C, H, W) -> (B, C); for channels-last bf16 maps as one matmul.

    (bf16 mean/avg-pool reductions over H, W of channels-last maps are several times slower
    than a (1 x HW) @ (HW x C) product, which accumulates in fp32.)
    """
    if x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last):
        b, c, h, w = x.shape
        y = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
        ones = torch.full((1, 1, h * w), 1.0 / (h * w), dtype=x.dtype, device=x.device)
        return torch.matmul(ones, y).view(b, c)
    return x.mean(dim=(2, 3))


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
    if op == "bn":  # a BN after the residual addition has no conv to fold into: its eval affine
        return Affine2d(m)
    return nn.Identity()


class Affine2d(nn.Module):
    """An eval-mode BatchNorm2d as y = x * scale + shift (per channel), in the input's dtype."""

    def __init__(self, bn: nn.Module):
        super().__init__()
        scale, shift = _bn_scale_shift(bn)
        self.register_buffer("scale", scale.float().view(1, -1, 1, 1))
        self.register_buffer("shift", shift.float().view(1, -1, 1, 1))

    def forward(self, x):
        return torch.addcmul(self.shift.to(x.dtype), x, self.scale.to(x.dtype))


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
        return F.relu_(x) if self.relu else x  # in place: x is a fresh tensor


def _fuse_convlayer(layer, export: bool) -> FusedConv:
    """A ConvLayer (stem, transition, conv5): conv -> site op -> ReLU."""
    op, m = _norm_op(layer.norm)
    if op == "bn":
        return FusedConv(fold_conv_bn(layer.conv, m))
    return FusedConv(fold_conv_bn(layer.conv, None), _after(op, m, export))


class FusedStreams(nn.Module):
    """The T Lite-3x3 streams of an OS block (BN folded into each depthwise conv) and the gate.

    The shared aggregation gate runs once on all streams' pooled features (a (T, B, mid)
    batch through the same two FC layers) instead of T times.
    """

    def __init__(self, block):
        super().__init__()
        self.streams = nn.ModuleList([nn.Sequential(*[m for ly in st.layers for m in (
            fold_conv_bn(ly.conv1, None), fold_conv_bn(ly.conv2, ly.bn), nn.ReLU(inplace=True))])
            for st in block.conv2])
        g = block.gate
        self.fc1 = nn.Linear(g.fc1.in_channels, g.fc1.out_channels)
        self.fc2 = nn.Linear(g.fc2.in_channels, g.fc2.out_channels)
        with torch.no_grad():
            self.fc1.weight.copy_(g.fc1.weight.flatten(1))
            self.fc1.bias.copy_(g.fc1.bias)
            self.fc2.weight.copy_(g.fc2.weight.flatten(1))
            self.fc2.bias.copy_(g.fc2.bias)

    def forward(self, x1):
        outs = [s(x1) for s in self.streams]  # T x (B, mid, H, W)
        pooled = torch.stack([_spatial_mean(o) for o in outs], 0)  # (T, B, mid)
        # the gate's tiny FCs run in fp32 (also on the bf16 path: no cost, less rounding)
        g = torch.sigmoid(self.fc2(F.relu(self.fc1(pooled.float()))))
        g = g.to(outs[0].dtype)[:, :, :, None, None]  # (T, B, mid, 1, 1)
        x2 = outs[0].mul_(g[0])  # in place: fewer passes over memory, no new allocations
        for t in range(1, len(outs)):
            x2 = x2.addcmul_(outs[t], g[t])
        return x2


class FusedBlock(nn.Module):
    """OS block with BN folded: ReLU(post(end(conv3(streams(conv1(x))))) + shortcut(x))."""

    def __init__(self, block, export: bool = False):
        super().__init__()
        self.conv1 = FusedConv(fold_conv_bn(block.conv1.conv, block.conv1.bn))
        self.streams = FusedStreams(block)
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
        out = self.conv3(self.streams(self.conv1(x))).add_(identity)
        if self.post is not None:
            out = self.post(out)
        return F.relu_(out)


class FusedHead(nn.Module):
    """Reference head: ReLU(fc folded with BN1d). BNNeck head: its eval BN as a per-channel affine."""

    def __init__(self, head):
        super().__init__()
        from osnas.models.osnet import ReferenceHead

        self.reference = isinstance(head, ReferenceHead)
        if self.reference:
            self.fc = fold_linear_bn(head.fc[0], head.fc[1])
        else:
            scale, shift = _bn_scale_shift(head.bottleneck)
            self.register_buffer("scale", scale.float())
            self.register_buffer("shift", shift.float())

    def forward(self, f):
        if self.reference:
            return F.relu(self.fc(f.float()))  # fp32 head (also on the bf16 path)
        return f.float() * self.scale + self.shift


class InferenceOSNet(nn.Module):
    """Inference-only OSNet built by `fold_bn` / `optimize_for_inference`: x -> embedding (fp32).

    `channels_last` converts the input to channels-last memory (the weights are converted by
    the caller); `bf16` casts the input to bfloat16 (weights likewise).
    """

    def __init__(self, model, export: bool = False, channels_last: bool = False, bf16: bool = False):
        super().__init__()
        _check_model(model)
        self.conv1 = _fuse_convlayer(model.conv1, export)
        self.blocks = nn.ModuleList([FusedBlock(b, export) for s in ("conv2", "conv3", "conv4")
                                     for b in getattr(model, s)])
        self.pool2 = _fuse_convlayer(model.pool2, export)
        self.pool3 = _fuse_convlayer(model.pool3, export)
        self.conv5 = _fuse_convlayer(model.conv5, export)
        self.head = FusedHead(model.head)
        self.last_stride = model.last_stride
        self.channels_last, self.bf16 = channels_last, bf16
        self.feature_dim = model.feature_dim
        self.eval()

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
        return self.head(_spatial_mean(x)).float()


def _check_model(model):
    from osnas.models.osnet import OSNet

    if isinstance(model, (InferenceOSNet, DeployedModel)):
        raise OsnasError("model is already optimised for inference; pass the original osnas OSNet")
    if not isinstance(model, OSNet):
        raise OsnasError(f"expected an osnas OSNet, got {type(model).__name__}")
    if getattr(model, "nonshared", None):
        raise OsnasError("cannot optimise a non-shared supernet: derive a genotype first")
    multi = [s for s, ops in model.plan.items() if len(ops) != 1]
    if multi:
        raise OsnasError(f"cannot optimise a supernet (sites {', '.join(multi[:3])} hold several ops): "
                         f"derive a genotype first")


def fold_bn(model, export: bool = False) -> InferenceOSNet:
    """The BN-folded fp32 network (eager, contiguous memory format); `model` is left untouched.

    `export=True` keeps IN as F.instance_norm (ONNX InstanceNormalization).
    """
    _check_model(model)
    return InferenceOSNet(model, export=export)


# ----------------------------------------------------------------------------- optimised module
BACKENDS = ("eager", "jit", "jit_mkldnn", "inductor")


class DeployedModel(nn.Module):
    """What `optimize_for_inference` returns: embedding = model(images), under inference_mode.

    Input: (B, 3, H, W) float32 images, ImageNet-normalised. Output: (B, D) float32.
    `self.net` is the BN-folded eager network; `self.runner` what actually runs (the same
    module, a frozen TorchScript module or a torch.compile'd one).
    """

    def __init__(self, net: InferenceOSNet, runner, backend: str, bf16: bool, channels_last: bool):
        super().__init__()
        self.net = net
        object.__setattr__(self, "runner", runner)  # not a submodule (it shares net's weights)
        self.backend, self.bf16, self.channels_last = backend, bf16, channels_last
        self.feature_dim = net.feature_dim
        self.eval()

    def train(self, mode: bool = True):
        if mode:
            raise OsnasError("an optimised inference model cannot be trained; train the original OSNet")
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if x.dtype != torch.float32:
                x = x.float()
            if self.backend == "inductor":
                import torch._inductor.config as ic

                with ic.patch(freezing=True):
                    y = self.runner(x).float()
            else:
                y = self.runner(x).float()
        # a normal tensor, not an inference tensor (those refuse later in-place updates)
        return y.clone() if torch.is_inference(y) and not torch.is_inference_mode_enabled() else y


@contextlib.contextmanager
def _quiet():
    """Silence TorchScript's deprecation and tracer warnings (expected here, not actionable)."""
    with warnings.catch_warnings():
        for cat in (FutureWarning, UserWarning, DeprecationWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", cat)
        yield


def optimize_for_inference(model, channels_last: bool = True, bf16: bool = False, backend: str = "jit",
                           example_size: Sequence[int] = (256, 128)) -> DeployedModel:
    """A NEW eval-mode inference module equal to `model.eval()(x)` (the embedding).

    Every BN is folded into the conv/linear layer before it (IN stays); the streams' gate
    is batched; memory is channels-last (`channels_last`); `bf16` runs the convolutions'
    weights and the activations in bfloat16 (IN statistics, the gates' and the head's small
    FC layers in fp32) and returns fp32. `backend`:
      eager       the folded PyTorch modules
      jit         traced + frozen TorchScript (constant weights, no Python overhead; default)
      jit_mkldnn  jit + torch.jit.optimize_for_inference (oneDNN layouts, conv+ReLU fusion)
      inductor    torch.compile with freezing: fuses the elementwise ops into C++ kernels and
                  prepacks the convolutions; fastest, but the first call per input shape
                  compiles for minutes (cached on disk afterwards)
    `example_size` (H, W) is the size traced for the jit backends (any size runs afterwards).
    The original model is not modified.
    """
    if backend not in BACKENDS:
        raise OsnasError(f"unknown inference backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    _check_model(model)
    net = InferenceOSNet(model, channels_last=channels_last, bf16=bf16)
    if bf16:
        for m in net.modules():  # conv weights to bf16; the (tiny) gate and head FCs, IN and BNNeck stay fp32
            if isinstance(m, nn.Conv2d):
                m.to(torch.bfloat16)
    p0 = next(model.parameters(), None)
    device = p0.device if p0 is not None else torch.device("cpu")
    net = net.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    for p in net.parameters():
        p.requires_grad_(False)
    net.eval()
    runner = net
    if backend in ("jit", "jit_mkldnn"):
        h, w = example_size
        ex = torch.randn(2, 3, int(h), int(w), device=device)
        with _quiet():
            with torch.inference_mode(False), torch.no_grad():
                runner = torch.jit.freeze(torch.jit.trace(net, ex, check_trace=False).eval())
                if backend == "jit_mkldnn":
                    runner = torch.jit.optimize_for_inference(runner)
            with torch.inference_mode():
                for _ in range(2):  # the profiling executor optimises the graph on the first runs
                    runner(ex)
    elif backend == "inductor":
        runner = torch.compile(net, dynamic=False)
    return DeployedModel(net, runner, backend, bf16, channels_last)


# ----------------------------------------------------------------------------- export
def _export_net(model) -> nn.Module:
    if isinstance(model, DeployedModel):
        raise OsnasError("export the original osnas OSNet, not an optimised module")
    _check_model(model)
    return InferenceOSNet(model, export=True).eval()


def export_torchscript(model, path: Union[str, Path], height: int = 256, width: int = 128) -> Path:
    """Trace the BN-folded fp32 network at (1, 3, height, width), freeze it and save it.

    `torch.jit.load(path)(images)` returns the (B, D) embedding; any batch size works.
    """
    from osnas.utils import atomic_write_bytes
    import io

    net = _export_net(model)
    ex = torch.randn(2, 3, height, width)
    with _quiet(), torch.no_grad():
        ts = torch.jit.freeze(torch.jit.trace(net, ex, check_trace=False).eval())
        buf = io.BytesIO()
        torch.jit.save(ts, buf)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


ONNX_OPSET = 18


def export_onnx(model, path: Union[str, Path], height: int = 256, width: int = 128, opset: int = ONNX_OPSET,
                exporters: Sequence[str] = ("torchscript", "dynamo")) -> Path:
    """Export the BN-folded fp32 network to ONNX: input `images` (B, 3, height, width), output
    `embedding` (B, D); dynamic batch; IN as InstanceNormalization.

    Tries torch.onnx.export's TorchScript-based exporter first (it emits
    InstanceNormalization directly; still present in torch 2.15, deprecated), then the
    dynamo exporter (needs onnxscript).
    """
    from osnas.utils import atomic_write_bytes

    net = _export_net(model)
    path = Path(path)
    try:  # as every osnas output: its folder is made (atomic_write_bytes does the same for the file)
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OsnasError(f"cannot write {path}: {e.strerror or e}") from None
    ex = torch.randn(2, 3, height, width)
    tmp = path.with_name(f".{path.name}.tmp-export")
    errors = []
    try:
        for exporter in exporters:
            kw = dict(input_names=["images"], output_names=["embedding"], opset_version=opset)
            if exporter == "dynamo":
                from torch.export import Dim

                kw.update(dynamo=True, dynamic_shapes={"x": {0: Dim("batch", min=1, max=4096)}},
                          external_data=False)
            else:
                kw.update(dynamo=False, dynamic_axes={"images": {0: "batch"}, "embedding": {0: "batch"}})
            try:
                with _quiet(), torch.no_grad():
                    torch.onnx.export(net, (ex,), str(tmp), **kw)
                break
            except Exception as e:  # noqa: BLE001 - try the next exporter; report all if all fail
                first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                errors.append(f"{exporter} exporter: {first}")
        else:
            raise OsnasError(f"{path}: ONNX export failed ({'; '.join(errors)})")
        data = tmp.read_bytes()
    finally:
        if tmp.exists():
            tmp.unlink()
    atomic_write_bytes(path, data)
    return path


def _check_model_args(checkpoint, model_name, weights) -> None:
    if checkpoint and model_name:
        raise OsnasError("give either --checkpoint or --model (with optional --weights), not both")
    if checkpoint and weights:
        raise OsnasError("--weights goes with --model; a --checkpoint already holds its weights")
    if not checkpoint and not model_name:
        raise OsnasError("expected --checkpoint FILE or --model NAME (with optional --weights FILE)")


def _model_from_args(checkpoint, model_name, weights) -> nn.Module:
    _check_model_args(checkpoint, model_name, weights)
    if checkpoint:
        return load_model_from_checkpoint(checkpoint)[0]
    from osnas.models import build_model
    from osnas.models.torchreid_import import load_torchreid_weights

    m = build_model(model_name, num_classes=0)
    if weights:
        load_torchreid_weights(m, weights, verbose=True)
    else:
        print(f"osnas: warning: no --weights given: {model_name} has random weights", file=sys.stderr)
    return m.eval()


# ----------------------------------------------------------------------------- images
def list_images(folder: Union[str, Path]) -> List[Path]:
    """Image files (jpg/jpeg/png/bmp, any case) under `folder`, recursively, sorted by relative path."""
    folder = Path(folder)
    if not folder.exists():
        raise OsnasError(f"{folder}: image folder not found")
    if not folder.is_dir():
        raise OsnasError(f"{folder}: not a folder (expected a folder of .jpg/.png/.bmp images)")
    files = sorted((p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()),
                   key=lambda p: p.relative_to(folder).as_posix())
    if not files:
        raise OsnasError(f"{folder}: no images found (looked for {', '.join(IMAGE_EXTS)} recursively)")
    return files


def load_image(path: Path, height: int, width: int) -> torch.Tensor:
    """(3, H, W) float32, resized (bilinear) and ImageNet-normalised; OsnasError if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((width, height), Image.BILINEAR)
            a = np.asarray(im, dtype=np.float32) / 255.0
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OsnasError(f"{path}: cannot read image ({msg[:160]})") from None
    a = (a - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def _check_size(height: int, width: int, batch_size: int = 1):
    if height < 32 or width < 16:
        raise OsnasError(f"image size {height}x{width} too small: OSNet needs at least 32x16 (--height/--width)")
    if batch_size < 1:
        raise OsnasError(f"--batch-size must be >= 1, got {batch_size}")


def run_extract(checkpoint=None, model=None, weights=None, images=None, out=None, batch_size: int = 64,
                height: int = 256, width: int = 128, bf16: bool = False, backend: str = "jit") -> dict:
    """`osnas extract`: embed every image under `images` and write `out` (.npz).

    The .npz holds `features` (N, D) float32 (the model's eval embedding, not normalised)
    and `names` (N,) the image paths relative to `images`, in sorted order.
    """
    from osnas.utils import Progress, atomic_write_bytes
    import io

    _check_size(height, width, batch_size)
    if not images:
        raise OsnasError("expected --images FOLDER")
    if not out:
        raise OsnasError("expected --out FILE.npz")
    _check_model_args(checkpoint, model, weights)
    files = list_images(images)
    net = _model_from_args(checkpoint, model, weights)
    fast = optimize_for_inference(net, bf16=bf16, backend=backend, example_size=(height, width))
    root = Path(images)
    feats = []
    prog = Progress(len(files), "extract", "img")
    for i in range(0, len(files), batch_size):
        chunk = files[i:i + batch_size]
        x = torch.stack([load_image(p, height, width) for p in chunk])
        feats.append(fast(x).numpy().astype(np.float32))
        prog.update(len(chunk))
    prog.close()
    features = np.concatenate(feats, 0)
    names = np.array([p.relative_to(root).as_posix() for p in files])
    buf = io.BytesIO()
    np.savez(buf, features=features, names=names)
    atomic_write_bytes(out, buf.getvalue())
    print(f"wrote {out}: {features.shape[0]} images x {features.shape[1]}-d features"
          f"{' (bf16)' if bf16 else ''}")
    return {"out": str(out), "n": int(features.shape[0]), "dim": int(features.shape[1])}


def run_export(checkpoint=None, model=None, weights=None, fmt: str = "onnx", out=None, height: int = 256,
               width: int = 128) -> Path:
    """`osnas export`: write the BN-folded fp32 network as ONNX or TorchScript."""
    _check_size(height, width)
    if not out:
        raise OsnasError("expected --out FILE")
    if fmt not in ("onnx", "torchscript"):
        raise OsnasError(f"unknown export format {fmt!r}; expected onnx or torchscript")
    _check_model_args(checkpoint, model, weights)
    net = _model_from_args(checkpoint, model, weights)
    path = export_onnx(net, out, height, width) if fmt == "onnx" else export_torchscript(net, out, height, width)
    print(f"wrote {path} ({fmt}, input (B, 3, {height}, {width}) ImageNet-normalised, "
          f"output (B, {net.feature_dim}) embedding)")
    return path
