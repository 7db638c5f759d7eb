"""OSNet with a normalisation *plan*: one class for the fixed models, the derived ones and the supernet.

Every normalisation site of the network is named (see `norm_sites`):

    stem                       after the 7x7 stem conv          (bn | in)
    conv{2,3,4}.{0,1}.end      after the block's last 1x1 conv  (bn | in | none)
    conv{2,3,4}.{0,1}.post     after the residual addition      (none | in | bn)
    pool2, pool3               in the transitions                (bn | in)
    conv5                      after the final 1x1 conv          (bn | in)

A plan maps each site to the list of ops it holds. A derived network holds one op per site;
the weight-sharing supernet holds several, and `forward(x, mix)` mixes them with weights
(the convolutions are shared, only normalisation differs). A "unit" is the smallest module
that owns sites (the stem, a block, a transition, conv5); mixing is expressed per unit as
combos: a list of (weight, {site: op}) whose outputs are summed. With one-hot weights the
supernet's output is exactly the derived network's (1*a + 0*b == a in IEEE arithmetic).

In the non-shared mode (the reference search) a unit holds one whole copy per candidate,
and its combos are (weight, candidate_name).

Tensor shapes for a 256x128 input at x1.0: stem (B,64,64,32) -> conv2 (B,256,64,32) ->
pool2 (B,256,32,16) -> conv3 (B,384,32,16) -> pool3 (B,384,16,8) -> conv4 (B,512,16,8) ->
conv5 (B,512,16,8) -> pool (B,512) -> fc (B,512).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from osnas.errors import OsnasError

WIDTHS = {
    "osnet_x1_0": (64, 256, 384, 512),
    "osnet_x0_75": (48, 192, 288, 384),
    "osnet_x0_5": (32, 128, 192, 256),
    "osnet_x0_25": (16, 64, 96, 128),
}
STAGES = ("conv2", "conv3", "conv4")
BLOCKS_PER_STAGE = 2
# the forward, step by step (OSNet.step): each a unit of normalisation sites, then the head
STEPS = ("stem", "conv2.0", "conv2.1", "pool2", "conv3.0", "conv3.1", "pool3",
         "conv4.0", "conv4.1", "conv5", "head")
T_STREAMS = 4
SITE_OPS = {"stem": ("bn", "in"), "end": ("bn", "in", "none"), "post": ("none", "in", "bn"),
            "pool": ("bn", "in"), "conv5": ("bn", "in")}

Combo = Tuple[Optional[torch.Tensor], object]  # (weight or None, {site: op} or candidate name)


def block_names() -> List[str]:
    return [f"{s}.{i}" for s in STAGES for i in range(BLOCKS_PER_STAGE)]


def norm_sites() -> List[str]:
    """All normalisation sites in network order."""
    sites = ["stem"]
    for s, stage in enumerate(STAGES):
        for i in range(BLOCKS_PER_STAGE):
            sites += [f"{stage}.{i}.end", f"{stage}.{i}.post"]
        if s < 2:
            sites.append(f"pool{s + 2}")
    return sites + ["conv5"]


def site_kind(site: str) -> str:
    if site in ("stem", "conv5"):
        return site
    if site.startswith("pool"):
        return "pool"
    return site.rsplit(".", 1)[1]  # end | post


def site_unit(site: str) -> str:
    """The unit (module) that owns a site: 'conv2.0.end' -> 'conv2.0'."""
    return site.rsplit(".", 1)[0] if site_kind(site) in ("end", "post") else site


def default_plan() -> Dict[str, List[str]]:
    """Plain OSNet: BN everywhere, nothing after the addition."""
    return {s: ["none"] if site_kind(s) == "post" else ["bn"] for s in norm_sites()}


def check_plan(plan: Dict[str, Sequence[str]]) -> Dict[str, List[str]]:
    """Validate a plan {site: op or [ops]}; missing sites take the plain-OSNet op."""
    full = default_plan()
    valid = set(full)
    for site, ops in plan.items():
        if site not in valid:
            raise OsnasError(f"unknown normalisation site {site!r}; valid sites: {', '.join(full)}")
        ops = [ops] if isinstance(ops, str) else list(ops)
        allowed = SITE_OPS[site_kind(site)]
        for op in ops:
            if op not in allowed:
                raise OsnasError(f"site {site!r}: unknown op {op!r}; allowed here: {', '.join(allowed)}")
        if not ops or len(set(ops)) != len(ops):
            raise OsnasError(f"site {site!r}: expected a non-empty list of distinct ops, got {ops!r}")
        full[site] = ops
    return full


# ----------------------------------------------------------------------------- layers
def make_norm(op: str, channels: int) -> nn.Module:
    if op == "bn":
        return nn.BatchNorm2d(channels)
    if op == "in":
        return nn.InstanceNorm2d(channels, affine=True)
    if op == "none":
        return nn.Identity()
    raise OsnasError(f"unknown normalisation op {op!r}; expected bn, in or none")


class NormSite(nn.Module):
    """The candidate normalisation ops of one site, by name: ops['bn'], ops['in'], ops['none']."""

    def __init__(self, channels: int, ops: Sequence[str]):
        super().__init__()
        self.ops = nn.ModuleDict({op: make_norm(op, channels) for op in ops})

    def forward(self, x: torch.Tensor, op: Optional[str] = None) -> torch.Tensor:
        if op is None:
            if len(self.ops) != 1:
                raise RuntimeError(f"site with ops {list(self.ops)} needs an op choice")
            op = next(iter(self.ops))
        return self.ops[op](x)


class ConvLayer(nn.Module):
    """conv (k x k) -> normalisation site -> ReLU: the stem, transitions and conv5."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, padding: int, site: str, ops: Sequence[str]):
        super().__init__()
        self.site = site
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False)
        self.norm = NormSite(cout, ops)

    def forward(self, x: torch.Tensor, combos: Optional[List[Combo]] = None) -> torch.Tensor:
        x = self.conv(x)
        if combos is None:
            return F.relu(self.norm(x))
        # mixed: ReLU(sum_k w_k norm_k(x)), shared convolution
        return F.relu(_weighted_sum((w, self.norm(x, a[self.site])) for w, a in combos))


class Conv1x1BN(nn.Module):
    """1x1 conv + BN (+ ReLU): the fixed BN layers inside a block."""

    def __init__(self, cin: int, cout: int, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = relu

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x


class LightConv3x3(nn.Module):
    """Lite 3x3: 1x1 conv -> depthwise 3x3 conv -> BN -> ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False, groups=cout)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv2(self.conv1(x))))


class LightStream(nn.Module):
    """Stream t: t stacked Lite 3x3 layers (receptive field grows with t)."""

    def __init__(self, channels: int, depth: int):
        super().__init__()
        self.layers = nn.Sequential(*[LightConv3x3(channels, channels) for _ in range(depth)])

    def forward(self, x):
        return self.layers(x)


class ChannelGate(nn.Module):
    """Aggregation gate shared by all streams: GAP -> FC -> ReLU -> FC -> sigmoid (channel weights)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=True)

    def forward(self, x):
        g = F.adaptive_avg_pool2d(x, 1)  # (B, C, 1, 1)
        g = torch.sigmoid(self.fc2(F.relu(self.fc1(g))))
        return x * g


class OSBlock(nn.Module):
    """Omni-scale residual block with named normalisation sites `end` and `post`.

    out = ReLU(post(end(conv3(sum_t gate(stream_t(conv1(x))))) + shortcut(x)))
    """

    def __init__(self, cin: int, cout: int, name: str, end_ops: Sequence[str], post_ops: Sequence[str]):
        super().__init__()
        mid = cout // 4  # bottleneck reduction 4
        self.name = name
        self.conv1 = Conv1x1BN(cin, mid)
        self.conv2 = nn.ModuleList([LightStream(mid, t) for t in range(1, T_STREAMS + 1)])
        self.gate = ChannelGate(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.end = NormSite(cout, end_ops)
        self.downsample = Conv1x1BN(cin, cout, relu=False) if cin != cout else None
        self.post = NormSite(cout, post_ops)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.conv1(x)  # (B, mid, H, W)
        x2 = self.gate(self.conv2[0](x1))
        for stream in self.conv2[1:]:
            x2 = x2 + self.gate(stream(x1))  # one gate shared by all T streams
        return self.conv3(x2)  # (B, cout, H, W), before the end normalisation

    def forward(self, x: torch.Tensor, combos: Optional[List[Combo]] = None) -> torch.Tensor:
        identity = self.downsample(x) if self.downsample is not None else x
        x3 = self.branch(x)
        if combos is None:
            return F.relu(self.post(self.end(x3) + identity))
        end_site, post_site = f"{self.name}.end", f"{self.name}.post"
        # shared convolutions; each distinct (end op) sum and (end, post) output computed once
        summed: Dict[str, torch.Tensor] = {}
        outs: Dict[Tuple[str, str], torch.Tensor] = {}
        terms = []
        for w, a in combos:
            e, p = a[end_site], a[post_site]
            if e not in summed:
                summed[e] = self.end(x3, e) + identity
            if (e, p) not in outs:
                outs[(e, p)] = F.relu(self.post(summed[e], p))
            terms.append((w, outs[(e, p)]))
        return _weighted_sum(terms)


class Candidates(nn.Module):
    """Non-shared mode (the reference search): one whole unit per candidate, outputs summed."""

    def __init__(self, units: Dict[str, nn.Module]):
        super().__init__()
        self.cands = nn.ModuleDict(units)

    def forward(self, x: torch.Tensor, combos: List[Combo]) -> torch.Tensor:
        return _weighted_sum((w, self.cands[c](x)) for w, c in combos)


def _weighted_sum(terms) -> torch.Tensor:
    """sum_k w_k * y_k; fused (one output buffer, BLAS dots for dL/dw) when every w is a tensor."""
    terms = list(terms)
    if len(terms) == 1 and terms[0][0] is None:
        return terms[0][1]
    if any(w is None for w, _ in terms):
        raise RuntimeError("mixing weights missing for some combos")
    ws = torch.stack([w.reshape(()) for w, _ in terms])
    return _MixSum.apply(ws, *[y for _, y in terms])


class _MixSum(torch.autograd.Function):
    """out = sum_k ws[k] * ys[k]; the supernet's mixing, its hot spot.

    Default autograd runs k multiplies and k-1 adds forward and, backward, k multiplies for
    dL/dy plus k multiply-and-sum passes (with full-size temporaries) for dL/dw. Here the
    forward accumulates into one buffer and dL/dw_k = <g, y_k> is one BLAS dot each.
    With one-hot weights the result is exactly the chosen y (1*y + 0*z == y).
    """

    @staticmethod
    def forward(ctx, ws, *ys):
        wl = ws.tolist()
        out = torch.mul(ys[0], wl[0])
        for w, y in zip(wl[1:], ys[1:]):
            out.add_(y, alpha=w)
        ctx.save_for_backward(ws, *ys)
        return out

    @staticmethod
    def backward(ctx, g):
        ws, *ys = ctx.saved_tensors
        g = g.contiguous()
        gflat = g.reshape(-1)
        gw = torch.stack([torch.dot(gflat, y.contiguous().reshape(-1)) for y in ys]) \
            if ctx.needs_input_grad[0] else None
        gys = [g * w if ctx.needs_input_grad[i + 1] else None for i, w in enumerate(ws.tolist())]
        return (gw, *gys)


# ----------------------------------------------------------------------------- heads
class ReferenceHead(nn.Module):
    """Global average pool -> FC(512) -> BN1d -> ReLU: the embedding. Classifier on top."""

    def __init__(self, cin: int, feature_dim: int, num_classes: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(cin, feature_dim), nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(feature_dim, num_classes) if num_classes > 0 else None
        self.dim = feature_dim

    def forward(self, f: torch.Tensor):
        v = self.fc(f)  # (B, feature_dim)
        if not self.training:
            return v
        return (self.classifier(v) if self.classifier is not None else None), v


class BNNeckHead(nn.Module):
    """Strong-baseline BNNeck: triplet on the pooled feature, ID loss and inference after a BN."""

    def __init__(self, cin: int, num_classes: int):
        super().__init__()
        self.bottleneck = nn.BatchNorm1d(cin)
        self.bottleneck.bias.requires_grad_(False)  # BNNeck learns a scale only: its shift stays 0 (Luo et al., TMM 2019)
        self.classifier = nn.Linear(cin, num_classes, bias=False) if num_classes > 0 else None
        self.dim = cin

    def forward(self, f: torch.Tensor):
        b = self.bottleneck(f)
        if not self.training:
            return b
        return (self.classifier(b) if self.classifier is not None else None), f


# ----------------------------------------------------------------------------- network
class OSNet(nn.Module):
    """OSNet whose normalisation sites follow `plan` ({site: [ops]}).

    Eval mode returns the embedding (B, dim); train mode returns (logits, feature) where the
    feature is what the triplet loss should see. `forward(x, mix)` takes per-unit combos
    when a site holds several ops (the supernet builds `mix` from its alphas).
    """

    def __init__(self, channels: Sequence[int] = WIDTHS["osnet_x1_0"], plan: Optional[dict] = None,
                 num_classes: int = 0, head: str = "reference", feature_dim: int = 512, last_stride: int = 2,
                 nonshared: Optional[Dict[str, Dict[str, dict]]] = None):
        super().__init__()
        if head not in ("reference", "bnneck"):
            raise OsnasError(f"unknown head {head!r}; expected reference or bnneck")
        if last_stride not in (1, 2):
            raise OsnasError(f"last_stride must be 1 or 2, got {last_stride}")
        c0, c1, c2, c3 = channels
        self.channels = tuple(channels)
        self.plan = check_plan(plan or {})
        self.nonshared = nonshared or {}  # unit -> {candidate: {site: op}}
        self.head_type, self.last_stride, self.num_classes = head, last_stride, num_classes

        self.conv1 = self._unit("stem", lambda p: ConvLayer(3, c0, 7, 2, 3, "stem", p["stem"]))
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cins = {"conv2": c0, "conv3": c1, "conv4": c2}
        couts = {"conv2": c1, "conv3": c2, "conv4": c3}
        for stage in STAGES:
            blocks = []
            for i in range(BLOCKS_PER_STAGE):
                name, cin = f"{stage}.{i}", cins[stage] if i == 0 else couts[stage]
                blocks.append(self._unit(name, lambda p, n=name, ci=cin, co=couts[stage]:
                                         OSBlock(ci, co, n, p[f"{n}.end"], p[f"{n}.post"])))
            setattr(self, stage, nn.ModuleList(blocks))
        self.pool2 = self._unit("pool2", lambda p: ConvLayer(c1, c1, 1, 1, 0, "pool2", p["pool2"]))
        self.pool3 = self._unit("pool3", lambda p: ConvLayer(c2, c2, 1, 1, 0, "pool3", p["pool3"]))
        self.conv5 = self._unit("conv5", lambda p: ConvLayer(c3, c3, 1, 1, 0, "conv5", p["conv5"]))
        self.head = ReferenceHead(c3, feature_dim, num_classes) if head == "reference" else BNNeckHead(c3, num_classes)
        self.feature_dim = self.head.dim
        self._init_params()

    def _unit(self, name: str, make):
        if name not in self.nonshared:
            return make(self.plan)
        return Candidates({c: make(check_plan({**{k: [v[0]] for k, v in self.plan.items()}, **a}))
                           for c, a in self.nonshared[name].items()})

    def _init_params(self):
        # torchreid's initialisation, so from-scratch training matches the reference
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.InstanceNorm2d)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def in_sites(self) -> List[str]:
        """Sites whose (single) op is instance normalisation."""
        return [s for s, ops in self.plan.items() if ops == ["in"]]

    # -- forward
    def step(self, name: str, x: torch.Tensor, mix: Optional[Dict[str, List[Combo]]] = None):
        """One step of the forward, by its unit's name (STEPS, in order): the unit with its
        combos from `mix` where it has some, and the fixed pooling after it. Callers that run
        part of the network (derive scores subnets that share a prefix once) chain steps."""
        mix = mix or {}
        if name == "head":  # x: the last feature maps (B, c3, h, w)
            return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))  # (B, c3) into the head
        if name == "stem":
            unit = self.conv1
        elif "." in name:  # a block: stage.index
            stage, i = name.split(".")
            unit = getattr(self, stage)[int(i)]
        else:  # pool2, pool3, conv5
            unit = getattr(self, name)
        x = unit(x, mix[name]) if name in mix else unit(x)
        if name == "stem":
            return self.maxpool(x)
        if name == "pool2" or (name == "pool3" and self.last_stride == 2):
            return F.avg_pool2d(x, 2, stride=2)
        return x

    def featuremaps(self, x: torch.Tensor, mix: Optional[Dict[str, List[Combo]]] = None) -> torch.Tensor:
        for name in STEPS[:-1]:
            x = self.step(name, x, mix)
        return x  # (B, c3, h, w)

    def forward(self, x: torch.Tensor, mix: Optional[Dict[str, List[Combo]]] = None):
        return self.step("head", self.featuremaps(x, mix), mix)


def derived_state_dict(supernet_state: dict, plan: Dict[str, List[str]],
                       nonshared_choice: Optional[Dict[str, str]] = None) -> dict:
    """Weights of the derived network out of a supernet's state dict.

    Shared mode: keep every key except the normalisation ops not chosen. Non-shared: take
    the chosen candidate's copy of each unit (`conv2.0.cands.<c>.x` -> `conv2.0.x`).
    """
    out = {}
    nonshared_choice = nonshared_choice or {}
    for k, v in supernet_state.items():
        if ".cands." in k:
            prefix, rest = k.split(".cands.", 1)
            cand, rest = rest.split(".", 1)
            unit = _module_to_unit(prefix)
            if nonshared_choice.get(unit) != cand:
                continue
            k = f"{prefix}.{rest}"
        if ".ops." in k:
            site = _key_site(k)
            op = k.split(".ops.", 1)[1].split(".", 1)[0]
            if plan[site] != [op]:
                continue
        out[k] = v
    return out


def _module_to_unit(prefix: str) -> str:
    return {"conv1": "stem"}.get(prefix, prefix)


def _key_site(key: str) -> str:
    """'conv2.0.end.ops.in.weight' -> 'conv2.0.end'; 'conv1.norm.ops.bn.bias' -> 'stem'."""
    head = key.split(".ops.", 1)[0]
    if head.endswith(".norm"):
        return _module_to_unit(head[: -len(".norm")].replace(".cands.", "."))
    return head
