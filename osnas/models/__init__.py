"""Models: the OSNet family (one class, a normalisation plan per variant) and the supernet."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Union

from osnas.errors import OsnasError
from osnas.models.osnet import WIDTHS, OSNet

if TYPE_CHECKING:
    from osnas.models.genotype import Genotype

# named builds: name -> (width, genotype name)
MODEL_NAMES = {
    **{w: (w, "osnet") for w in WIDTHS},
    "osnet_ibn_x1_0": ("osnet_x1_0", "osnet_ibn"),
    **{w.replace("osnet_", "osnet_ain_"): (w, "osnet_ain") for w in WIDTHS},
}


def build_model(name_or_genotype: Union[str, Path, "Genotype"], num_classes: int = 0, arch: str = "",
                head: str = "reference", feature_dim: int = 512, last_stride: int = 2) -> OSNet:
    """A model by name (osnet_ain_x1_0, ...), genotype name (osnet_ain), genotype object or file.

    `arch` sets the width for genotypes (default: the genotype's own, else osnet_x1_0).
    """
    from osnas.models.genotype import Genotype, NAMED, load_genotype, named_genotype

    if isinstance(name_or_genotype, Genotype):
        g = name_or_genotype
    elif str(name_or_genotype) in MODEL_NAMES:
        width, gname = MODEL_NAMES[str(name_or_genotype)]
        if arch and arch != width:
            raise OsnasError(f"model {name_or_genotype} has width {width}; --arch {arch} contradicts it")
        g = named_genotype(gname, width)
    elif str(name_or_genotype) in NAMED or Path(str(name_or_genotype)).suffix in (".yaml", ".yml", ".json"):
        g = load_genotype(name_or_genotype)
    else:
        raise OsnasError(f"unknown model {str(name_or_genotype)!r}; valid names: {', '.join(MODEL_NAMES)}, "
                         f"genotype names {', '.join(NAMED)}, or a genotype file (.yaml/.json)")
    width = arch or g.arch or "osnet_x1_0"
    if width not in WIDTHS:
        raise OsnasError(f"unknown arch {width!r}; valid widths: {', '.join(WIDTHS)}")
    m = OSNet(WIDTHS[width], plan={s: [op] for s, op in g.plan.items()}, num_classes=num_classes, head=head,
              feature_dim=feature_dim, last_stride=last_stride)
    m.arch, m.genotype = width, g
    return m


def build_supernet(space, arch: str = "osnet_x1_0", num_classes: int = 0, **kw):
    """The weight-sharing supernet over a search space (name, file or SearchSpace)."""
    from osnas.models.supernet import Supernet

    return Supernet(space, arch=arch, num_classes=num_classes, **kw)


def load_torchreid_weights(model, path_or_state_dict, verbose: bool = True, strict: bool = True):
    """Published torchreid weights onto an osnas model (see osnas.models.torchreid_import)."""
    from osnas.models.torchreid_import import load_torchreid_weights as _load

    return _load(model, path_or_state_dict, verbose=verbose, strict=strict)


__all__ = ["build_model", "build_supernet", "load_torchreid_weights", "OSNet", "MODEL_NAMES", "WIDTHS"]
