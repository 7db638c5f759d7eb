"""Load published torchreid (deep-person-reid) OSNet checkpoints into an osnas OSNet, and back.

The networks are those of Zhou et al., "Omni-Scale Feature Learning for Person
Re-Identification" (ICCV 2019: OSNet, OSNet-IBN) and "Learning Generalisable Omni-Scale
Representations for Person Re-Identification" (TPAMI 2021: OSNet-AIN). Their published
checkpoints come in two key layouts (every key and shape is listed in the project's
tests/data/torchreid_state_dict_keys.txt):

    plain / IBN   streams conv2a, conv2b.0-1, conv2c.0-2, conv2d.0-3; the transitions live
                  inside the stage: conv2.2.0, conv3.2.0;
                  IBN: `IN` after the residual addition (conv2.0, conv2.1)
    AIN           streams conv2.{t}.layers.{i}; transitions pool2.0, pool3.0;
                  `IN` replaces the branch-end BN (that block has no conv3.bn)

In both, the stem's `conv1.bn` is an InstanceNorm (affine, no running stats) in the IBN/AIN
models and a BatchNorm otherwise; `fc.0`/`fc.1` are Linear + BatchNorm1d; `classifier`.

The layout is detected from the keys, then every key is renamed to the osnas module names
(conv1.norm.ops.X, conv{s}.{i}.conv2.{t}.layers.{i}, .conv3, .end.ops.X, .post.ops.X,
pool2/pool3/conv5 .conv/.norm.ops.X, head.fc.0/.1, head.classifier). Where each `IN` goes
(`end` or `post`) is read per block: a block whose conv3 has no BN holds the IN in place of
it (AIN), otherwise the IN follows the addition (IBN).

Classifier-size mismatches (and a model without a classifier) are skipped and reported.
Any other missing or unexpected key, or a shape mismatch, is a one-line OsnasError that
lists the offending keys and, when the normalisation plans differ, the sites that differ.

`export_torchreid_state_dict` is the inverse: an osnas OSNet whose plan torchreid can express
written under the torchreid key names, in the published key order.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch

from osnas.errors import OsnasError

_STREAMS = {"conv2a": 0, "conv2b": 1, "conv2c": 2, "conv2d": 3}
_TRANSITION = {"conv2.2.0": "pool2", "conv3.2.0": "pool3", "pool2.0": "pool2", "pool3.0": "pool3"}
_NORM_PARAM = re.compile(r"(weight|bias|running_mean|running_var|num_batches_tracked)$")


def _safe_numpy_globals() -> list:
    """numpy scalar/dtype classes that torchreid's training checkpoints carry (e.g. `rank1`).

    Allowed in weights_only loading: they are plain data, not arbitrary code.
    """
    import numpy as np

    out = []
    try:
        out.append(np.core.multiarray.scalar)  # numpy < 2 path, still aliased in 2.x
    except AttributeError:
        pass
    try:
        from numpy._core.multiarray import scalar

        out.append(scalar)
    except ImportError:
        pass
    out.append(np.dtype)
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for n in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
            if hasattr(dtypes, n):
                out.append(getattr(dtypes, n))
    return out


def read_torchreid_checkpoint(path: Union[str, Path]) -> dict:
    """Load a checkpoint file safely (weights_only) and return its raw state dict."""
    from osnas.utils import load_checkpoint

    path = Path(path)
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(4)
        # torch.save writes a zip archive (PK..) or, in the legacy format, a pickle (0x80 ..)
        if head[:2] != b"PK" and head[:1] != b"\x80":
            raise OsnasError(f"{path}: not a PyTorch checkpoint file (neither a zip archive nor a pickle)")
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy's deprecation of np.core access
            safe = _safe_numpy_globals()
        ctx = torch.serialization.safe_globals(safe)
    except Exception:  # older torch without safe_globals: plain weights_only loading
        import contextlib

        ctx = contextlib.nullcontext()
    with ctx:
        obj = load_checkpoint(path, "torchreid checkpoint")
    return extract_state_dict(obj, str(path))


def extract_state_dict(obj: dict, where: str = "state dict") -> Dict[str, torch.Tensor]:
    """The tensors of a raw state dict, `{"state_dict": ...}` or `{"model": ...}`; `module.` stripped."""
    if not isinstance(obj, dict):
        raise OsnasError(f"{where}: expected a state dict (mapping of names to tensors), got {type(obj).__name__}")
    for wrap in ("state_dict", "model"):
        if wrap in obj and isinstance(obj[wrap], dict):
            obj = obj[wrap]
            break
    sd = {}
    for k, v in obj.items():
        if not isinstance(k, str):
            raise OsnasError(f"{where}: not a state dict (key {k!r} is not a string)")
        if not isinstance(v, torch.Tensor):
            raise OsnasError(f"{where}: not a state dict (value of {k!r} is a {type(v).__name__}, expected a tensor)")
        while k.startswith("module."):
            k = k[len("module."):]
        sd[k] = v
    if not sd:
        raise OsnasError(f"{where}: empty state dict")
    if any(".ops." in k for k in sd):
        raise OsnasError(f"{where}: this is an osnas checkpoint (normalisation sites '.ops.'), not a torchreid one; "
                         f"load it with osnas.models.deploy.load_model_from_checkpoint or model.load_state_dict")
    if "conv1.conv.weight" not in sd:
        raise OsnasError(f"{where}: not an OSNet checkpoint of torchreid (no conv1.conv.weight; "
                         f"first keys: {', '.join(list(sd)[:4])})")
    return sd


def detect_layout(sd: Dict[str, torch.Tensor]) -> str:
    """'ain' (conv2.{t}.layers streams, pool2/pool3) or 'plain' (conv2a..d streams; IBN included)."""
    if any(".conv2.0.layers." in k for k in sd) or any(k.startswith("pool2.0.") for k in sd):
        return "ain"
    if any(".conv2a." in k for k in sd) or any(k.startswith("conv2.2.0.") for k in sd):
        return "plain"
    raise OsnasError("state dict: unknown OSNet layout (neither conv2a..conv2d nor conv2.{t}.layers streams)")


def _stem_op(sd) -> str:
    return "bn" if "conv1.bn.running_mean" in sd else "in"


def _block_has(sd, block: str, part: str) -> bool:
    return any(k.startswith(f"{block}.{part}.") for k in sd)


def convert_state_dict(sd: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, str], str]:
    """Rename torchreid keys to osnas keys. Returns (state dict, implied plan {site: op}, layout)."""
    layout = detect_layout(sd)
    plan = {"stem": _stem_op(sd)}
    out: Dict[str, torch.Tensor] = {}
    unknown: List[str] = []
    for k, v in sd.items():
        nk = _rename(k, sd, plan)
        if nk is None:
            unknown.append(k)
        else:
            out[nk] = v
    if unknown:
        raise OsnasError(f"state dict: {len(unknown)} keys not in any torchreid OSNet layout: "
                         f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    return out, plan, layout


def _rename(k: str, sd, plan: Dict[str, str]) -> Optional[str]:
    parts = k.split(".")
    if parts[0] == "conv1":  # stem ConvLayer
        if parts[1] == "conv":
            return k
        if parts[1] == "bn":
            return f"conv1.norm.ops.{plan['stem']}.{'.'.join(parts[2:])}"
        return None
    for pre, unit in _TRANSITION.items():
        if k.startswith(pre + "."):
            rest = k[len(pre) + 1:]
            if rest.startswith("conv."):
                return f"{unit}.{rest}"
            if rest.startswith("bn."):
                plan[unit] = "bn"
                return f"{unit}.norm.ops.bn.{rest[3:]}"
            return None
    if parts[0] == "conv5":
        if parts[1] == "conv":
            return k
        if parts[1] == "bn":
            plan["conv5"] = "bn"
            return f"conv5.norm.ops.bn.{'.'.join(parts[2:])}"
        return None
    if parts[0] == "fc" and len(parts) == 3 and parts[1] in ("0", "1"):
        return f"head.{k}"
    if parts[0] == "classifier":
        return f"head.{k}"
    if parts[0] in ("conv2", "conv3", "conv4") and len(parts) >= 4 and parts[1] in ("0", "1"):
        block = f"{parts[0]}.{parts[1]}"
        sub, rest = parts[2], parts[3:]
        if sub in ("conv1", "downsample", "gate"):
            return k
        if sub in _STREAMS:  # plain: conv2a.{conv1,..} / conv2b.{i}.{...}
            t = _STREAMS[sub]
            if t == 0:
                return f"{block}.conv2.0.layers.0.{'.'.join(rest)}"
            return f"{block}.conv2.{t}.layers.{'.'.join(rest)}"
        if sub == "conv2":  # AIN: conv2.{t}.layers.{i}...
            return k
        if sub == "conv3":
            if rest[0] == "conv":
                return f"{block}.conv3.{'.'.join(rest[1:])}"
            if rest[0] == "bn":
                plan[f"{block}.end"] = "bn"
                return f"{block}.end.ops.bn.{'.'.join(rest[1:])}"
            return None
        if sub == "IN" and _NORM_PARAM.search(k):
            # AIN: IN replaces the branch-end BN (no conv3.bn in the block); IBN: IN after the addition
            site = "end" if not _block_has(sd, block, "conv3.bn") else "post"
            plan[f"{block}.{site}"] = "in"
            return f"{block}.{site}.ops.in.{'.'.join(rest)}"
    return None


def _fill_plan(implied: Dict[str, str]) -> Dict[str, str]:
    from osnas.models.osnet import default_plan

    full = {s: ops[0] for s, ops in default_plan().items()}
    for s in full:
        if s.endswith(".end") and s not in implied:
            full[s] = "none"  # no conv3.bn and no IN: nothing (never produced by torchreid)
    full.update(implied)
    return full


def _list(keys: List[str], n: int = 4) -> str:
    keys = sorted(keys)
    return f"{', '.join(keys[:n])}{f' ... ({len(keys)} in all)' if len(keys) > n else ''}"


def load_torchreid_weights(model, path_or_state_dict, verbose: bool = True, strict: bool = True) -> dict:
    """Copy torchreid OSNet weights (file path or state dict) into `model` (an osnas OSNet).

    Accepts raw state dicts, `{"state_dict": ...}` training checkpoints and `module.`
    prefixes; the layout (plain/IBN or AIN) is detected from the keys. A classifier whose
    size differs from the model's (or a model without classifier) is skipped and reported;
    for a model with the BNNeck head the checkpoint's whole head (fc, classifier) is skipped.
    `strict=False` lets the model hold normalisation ops the checkpoint has no weights for
    (a supernet's other candidates keep their initial values); unexpected keys and shape
    mismatches stay errors.

    Returns {"layout", "loaded": [osnas keys], "skipped": [torchreid keys], "missing": [...],
    "plan": {site: op} implied by the checkpoint}.
    """
    from osnas.models.osnet import ReferenceHead

    where = str(path_or_state_dict) if isinstance(path_or_state_dict, (str, Path)) else "state dict"
    if isinstance(path_or_state_dict, (str, Path)):
        sd = read_torchreid_checkpoint(path_or_state_dict)
    else:
        sd = extract_state_dict(path_or_state_dict, where)
    try:
        conv, implied, layout = convert_state_dict(sd)
    except OsnasError as e:
        raise OsnasError(f"{where}: {str(e).replace('state dict: ', '')}") from None

    target = model.state_dict()
    skipped: List[str] = []
    skip_reasons: List[str] = []
    head_ref = isinstance(getattr(model, "head", None), ReferenceHead)
    if not head_ref:
        hk = [k for k in conv if k.startswith("head.")]
        if hk:
            skipped += [k[len("head."):] for k in hk]
            skip_reasons.append(f"head fc/classifier ({len(hk)} keys: the model has a {model.head_type} head)")
            for k in hk:
                conv.pop(k)
        target = {k: v for k, v in target.items() if not k.startswith("head.")}
    else:
        ck = [k for k in conv if k.startswith("head.classifier.")]
        mk = [k for k in target if k.startswith("head.classifier.")]
        if ck and (not mk or any(k not in target or target[k].shape != conv[k].shape for k in ck)):
            n_ckpt = conv["head.classifier.weight"].shape[0] if "head.classifier.weight" in conv else "?"
            n_model = target["head.classifier.weight"].shape[0] if "head.classifier.weight" in target else 0
            skipped += [k[len("head."):] for k in ck]
            skip_reasons.append(f"classifier ({n_ckpt} classes in the checkpoint, {n_model} in the model)")
            for k in ck:
                conv.pop(k)
            target = {k: v for k, v in target.items() if not k.startswith("head.classifier.")}
        elif not ck:
            target = {k: v for k, v in target.items() if not k.startswith("head.classifier.")}  # keep init

    missing = [k for k in target if k not in conv]
    unexpected = [k for k in conv if k not in target]
    shape_bad = [k for k in conv if k in target and tuple(target[k].shape) != tuple(conv[k].shape)]
    tolerated: List[str] = []
    if not strict:
        tolerated = [k for k in missing if ".ops." in k]
        missing = [k for k in missing if ".ops." not in k]
    if missing or unexpected or shape_bad:
        msg = [f"{where}: torchreid checkpoint ({'OSNet-AIN' if layout == 'ain' else 'OSNet/OSNet-IBN'} layout) "
               f"does not fit this model"]
        plan = getattr(model, "plan", None)
        if plan is not None:
            ck_plan = _fill_plan(implied)
            diff = [f"{s} ({ck_plan[s]} in checkpoint, {'/'.join(plan[s])} in model)"
                    for s in ck_plan if s in plan and plan[s] != [ck_plan[s]]
                    and (strict or ck_plan[s] not in plan[s])]
            if diff:
                msg.append(f"normalisation differs at {len(diff)} sites: {'; '.join(diff[:4])}"
                           f"{' ...' if len(diff) > 4 else ''}")
        if shape_bad:
            ex = [f"{k} {tuple(conv[k].shape)} vs {tuple(target[k].shape)}" for k in sorted(shape_bad)[:3]]
            msg.append(f"{len(shape_bad)} shape mismatches (checkpoint vs model; wrong width?): "
                       f"{', '.join(ex)}{' ...' if len(shape_bad) > 3 else ''}")
        if missing:
            msg.append(f"{len(missing)} missing keys: {_list(missing)}")
        if unexpected:
            msg.append(f"{len(unexpected)} unexpected keys: {_list(unexpected)}")
        raise OsnasError("; ".join(msg))

    with torch.no_grad():
        full = model.state_dict()
        for k, v in conv.items():
            full[k] = v.to(dtype=full[k].dtype) if full[k].is_floating_point() else v.to(full[k].dtype)
        model.load_state_dict(full, strict=True)
    if verbose and skip_reasons:
        print(f"osnas: torchreid weights from {where}: skipped {'; '.join(skip_reasons)}", file=sys.stderr)
    return {"layout": layout, "loaded": sorted(conv), "skipped": skipped, "skip_reasons": skip_reasons,
            "missing": tolerated, "plan": _fill_plan(implied)}


def export_torchreid_state_dict(model, layout: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """The weights of an osnas OSNet under torchreid's key names: the inverse of the import.

    `layout` is 'plain' (conv2a..conv2d streams, transitions conv2.2.0 / conv3.2.0; also the
    IBN model) or 'ain' (conv2.{t}.layers streams, transitions pool2.0 / pool3.0); by default
    'ain' when some block has IN as its branch-end normalisation, else 'plain'. Keys come in
    the published order. Only what torchreid can express is exported: one op per site (derive
    a supernet first), BN or IN in the stem, BN in the transitions and conv5, per block a
    branch-end BN followed by nothing or IN after the addition, or a branch-end IN with nothing
    after it, and the reference head (fc + classifier); anything else is a one-line OsnasError.
    Tensors are copies (detached from the model).
    """
    from osnas.models.osnet import BLOCKS_PER_STAGE, STAGES, T_STREAMS, ReferenceHead, block_names

    plan = getattr(model, "plan", None)
    if plan is None or getattr(model, "nonshared", None):
        raise OsnasError("torchreid export: expected an osnas OSNet with one op per normalisation site")
    multi = [s for s, ops in plan.items() if len(ops) != 1]
    if multi:
        raise OsnasError(f"torchreid export: sites holding several ops (a supernet?): {_list(multi)}; "
                         f"export the derived network instead")
    op = {s: ops[0] for s, ops in plan.items()}
    bad = [f"{s}={op[s]}" for s in ("pool2", "pool3", "conv5") if op[s] != "bn"]
    for b in block_names():
        if (op[f"{b}.end"], op[f"{b}.post"]) not in (("bn", "none"), ("bn", "in"), ("in", "none")):
            bad.append(f"{b}.end={op[f'{b}.end']}/{b}.post={op[f'{b}.post']}")
    if bad:
        raise OsnasError(f"torchreid export: no torchreid OSNet has this normalisation: {_list(bad)}")
    if not isinstance(getattr(model, "head", None), ReferenceHead):
        raise OsnasError(f"torchreid export: torchreid has no {getattr(model, 'head_type', '?')} head "
                         f"(only the reference fc + classifier head)")
    if layout is None:
        layout = "ain" if any(op[f"{b}.end"] == "in" for b in block_names()) else "plain"
    if layout not in ("plain", "ain"):
        raise OsnasError(f"torchreid export: unknown layout {layout!r}; expected plain or ain")

    src = model.state_dict()
    out: Dict[str, torch.Tensor] = {}
    used = set()

    def put(dst: str, prefix: str) -> None:
        """Every model tensor under `prefix.` (in the model's order), renamed to `dst.`."""
        for k, v in src.items():
            if k.startswith(prefix + "."):
                out[dst + k[len(prefix):]] = v.detach().clone()
                used.add(k)

    put("conv1.conv", "conv1.conv")
    put("conv1.bn", f"conv1.norm.ops.{op['stem']}")
    letters = "abcd"
    for s, stage in enumerate(STAGES):
        for i in range(BLOCKS_PER_STAGE):
            b = f"{stage}.{i}"
            put(f"{b}.conv1", f"{b}.conv1")
            for t in range(T_STREAMS):
                if layout == "ain":
                    put(f"{b}.conv2.{t}", f"{b}.conv2.{t}")
                elif t == 0:
                    put(f"{b}.conv2{letters[t]}", f"{b}.conv2.{t}.layers.0")
                else:
                    put(f"{b}.conv2{letters[t]}", f"{b}.conv2.{t}.layers")
            put(f"{b}.gate", f"{b}.gate")
            put(f"{b}.conv3.conv", f"{b}.conv3")
            if op[f"{b}.end"] == "bn":
                put(f"{b}.conv3.bn", f"{b}.end.ops.bn")
            put(f"{b}.downsample", f"{b}.downsample")
            if op[f"{b}.end"] == "in":
                put(f"{b}.IN", f"{b}.end.ops.in")
            elif op[f"{b}.post"] == "in":
                put(f"{b}.IN", f"{b}.post.ops.in")
        if s < 2:
            unit = f"pool{s + 2}"
            dst = f"{unit}.0" if layout == "ain" else f"{stage}.2.0"
            put(f"{dst}.conv", f"{unit}.conv")
            put(f"{dst}.bn", f"{unit}.norm.ops.bn")
    put("conv5.conv", "conv5.conv")
    put("conv5.bn", "conv5.norm.ops.bn")
    put("fc", "head.fc")
    put("classifier", "head.classifier")
    left = [k for k in src if k not in used]
    if left or len(out) != len(src):
        raise OsnasError(f"torchreid export: model tensors without a torchreid name: {_list(left)}")
    return out
