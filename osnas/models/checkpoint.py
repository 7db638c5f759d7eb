"""Retrain checkpoints as model files: what they hold to rebuild their network anywhere.

A retrain checkpoint carries, besides the weights, the network's description (`model_spec`:
genotype, width, head, embedding size, last stride, classes) and the input it was trained on
(size, normalisation), so `eval-crossdomain`, `extract` and `export` need nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

from osnas.errors import OsnasError
from osnas.models.genotype import Genotype, load_genotype
from osnas.rundir import INPUT_SPEC_KEYS, MODEL_SPEC_KEYS
from osnas.utils import load_checkpoint


def model_spec(genotype: Genotype, arch: str, head: str, feature_dim: int, last_stride: int, num_classes: int,
               input_size, mean, std) -> dict:
    """The checkpoint fields that rebuild a network (read by `load_model_from_checkpoint`), and the
    input size and normalisation it was trained with (eval-crossdomain's defaults)."""
    spec = {"genotype": genotype.to_dict(), "arch": arch, "head": head, "feature_dim": feature_dim,
            "last_stride": last_stride, "num_classes": num_classes, "input_size": list(input_size),
            "mean": list(mean), "std": list(std)}
    assert tuple(spec) == MODEL_SPEC_KEYS + INPUT_SPEC_KEYS
    return spec


def load_model_from_checkpoint(path: Union[str, Path]):
    """(model in eval mode, checkpoint dict) from an osnas retrain checkpoint.

    Expected keys (written by `osnas retrain`; see `model_spec`):
      model        state dict of the OSNet
      genotype     Genotype.to_dict() (or a named genotype: osnet, osnet_ibn, osnet_ain)
      arch         width name, e.g. osnet_x1_0
      head         reference | bnneck
      feature_dim  embedding size of the reference head (512)
      last_stride  1 or 2
      num_classes  classifier size (0: none)
    Anything else (optimiser, epoch, RNG ...) is ignored. A missing key, or weights that do
    not fit the described network, is a one-line OsnasError naming the file.
    """
    from osnas.models import build_model

    ck = load_checkpoint(path, "retrain checkpoint")
    missing = [k for k in ("model",) + MODEL_SPEC_KEYS if k not in ck]
    if missing:
        hint = ("; it looks like a torchreid checkpoint: use --model NAME --weights FILE"
                if "state_dict" in ck or "conv1.conv.weight" in ck else
                "; search checkpoints go through `osnas derive` and `osnas retrain` first")
        raise OsnasError(f"{path}: not a retrain checkpoint (missing {', '.join(missing)}){hint}")
    g = ck["genotype"]
    try:
        if isinstance(g, str):
            g = load_genotype(g)
        elif isinstance(g, dict):
            g = Genotype(**g)
        else:
            raise OsnasError(f"genotype is a {type(g).__name__}, expected a mapping")
        model = build_model(g, num_classes=int(ck["num_classes"]), arch=ck["arch"] or "", head=ck["head"],
                            feature_dim=int(ck["feature_dim"]), last_stride=int(ck["last_stride"]))
    except OsnasError as e:
        raise OsnasError(f"{path}: bad model description: {e}") from None
    except (TypeError, ValueError) as e:
        raise OsnasError(f"{path}: bad model description ({e})") from None
    sd = ck["model"]
    if not isinstance(sd, dict):
        raise OsnasError(f"{path}: 'model' is a {type(sd).__name__}, expected a state dict")
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise OsnasError(f"{path}: weights do not fit the described architecture ({'; '.join(lines[1:3])[:300]})") from None
    return model.eval(), ck
