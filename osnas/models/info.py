"""Model size and structure: parameters, multiply-accumulates, where instance normalisation sits.

`osnas info MODEL` prints all three. MACs count the convolutions and linear layers (the
usual convention for OSNet: at 256x128, x1.0 978.9M, x0.75 571.8M, x0.5 272.9M, x0.25
82.3M, classifier excluded); normalisation, pooling and activations are not counted.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.nn as nn

from osnas.errors import OsnasError

_SITE_WHAT = {
    "stem": "after the 7x7 stem conv",
    "end": "end of the residual branch (after its last 1x1 conv)",
    "post": "after the residual addition, before the ReLU",
    "pool": "in the transition (after its 1x1 conv)",
    "conv5": "after conv5 (1x1 conv)",
}
_IN_STYLE = {"end": " (AIN style)", "post": " (IBN style)"}


def _is_classifier(name: str) -> bool:
    return name == "classifier" or name.endswith(".classifier") or ".classifier." in name \
        or name.startswith("classifier.")


def count_params(model: nn.Module, exclude_classifier: bool = True) -> int:
    """Number of parameters (trainable or not), without the classifier by default."""
    return sum(p.numel() for n, p in model.named_parameters()
               if not (exclude_classifier and _is_classifier(n.rsplit(".", 1)[0])))


def count_macs(model: nn.Module, height: int = 256, width: int = 128, exclude_classifier: bool = True) -> int:
    """Multiply-accumulates of one image (conv + linear), by forward hooks on an eval forward.

    The model's mode is restored afterwards. The classifier (not used at inference) is not
    run in eval mode, so it is never counted.
    """
    if height < 32 or width < 16:
        raise OsnasError(f"input size {height}x{width} too small; OSNet needs at least 32x16")
    total = [0]

    def conv_hook(m: nn.Conv2d, inp, out):
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total[0] += out.numel() // out.shape[0] * k

    def linear_hook(m: nn.Linear, inp, out):
        total[0] += out.numel() // out.shape[0] * m.in_features

    hooks = []
    for n, m in model.named_modules():
        if exclude_classifier and _is_classifier(n):
            continue
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    try:
        p = next(model.parameters(), None)
        x = torch.zeros(1, 3, height, width, dtype=p.dtype if p is not None else torch.float32,
                        device=p.device if p is not None else "cpu")
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return total[0]


def in_table(model) -> List[Tuple[str, str, str]]:
    """One row per normalisation site: (site, op(s), where it sits)."""
    from osnas.models.osnet import site_kind

    plan = getattr(model, "plan", None)
    if plan is None:
        raise OsnasError(f"{type(model).__name__}: not an osnas OSNet (no normalisation plan)")
    return [(s, "/".join(ops), _SITE_WHAT[site_kind(s)]) for s, ops in plan.items()]


def describe_in(model) -> Dict[str, str]:
    """Where IN sits: {site: description} for every site holding instance normalisation.

    For a supernet (several candidate ops per site) the sites where IN is a candidate are
    listed, with the candidates named.
    """
    from osnas.models.osnet import site_kind

    out = {}
    for s, ops in getattr(model, "plan", {}).items():
        if "in" in ops:
            what = _SITE_WHAT[site_kind(s)] + _IN_STYLE.get(site_kind(s), "")
            out[s] = what if ops == ["in"] else f"{what}; candidate among {'/'.join(ops)}"
    return out


def _matching_name(model) -> str:
    from osnas.models.genotype import NAMED

    plan = {s: ops[0] for s, ops in model.plan.items() if len(ops) == 1}
    for name, p in NAMED.items():
        if p == plan:
            return name
    return ""


def run_info(model_name_or_genotype, height: int = 256, width: int = 128) -> dict:
    """`osnas info`: print parameters, MACs and a per-site normalisation table."""
    from osnas.models import build_model

    if height <= 0 or width <= 0:
        raise OsnasError(f"--height/--width must be positive, got {height}x{width}")
    model = build_model(model_name_or_genotype, num_classes=0)
    params = count_params(model)
    macs = count_macs(model, height, width)
    arch = getattr(model, "arch", "")
    same = _matching_name(model)
    g = getattr(model, "genotype", None)
    print(f"model        {model_name_or_genotype}" + (f"  (genotype {g.name})" if g is not None and g.name else ""))
    print(f"width        {arch} channels {list(model.channels)}"
          + (f"; same normalisation as {same}" if same else ""))
    print(f"parameters   {params:,} ({params / 1e6:.2f}M, classifier excluded)")
    print(f"MACs         {macs:,} ({macs / 1e6:.1f}M at {height}x{width}; conv + linear)")
    print(f"embedding    {model.feature_dim}-d")
    ins = describe_in(model)
    print(f"IN sites     {len(ins)}: {', '.join(ins) if ins else 'none (plain OSNet)'}")
    print()
    rows = in_table(model)
    w = max(len(r[0]) for r in rows)
    print(f"{'site':<{w}}  {'op':<4}  where")
    for s, op, what in rows:
        mark = "  <- IN" if "in" in op.split("/") else ""
        print(f"{s:<{w}}  {op:<4}  {what}{mark}")
    return {"params": params, "macs": macs, "in_sites": list(ins), "arch": arch}
