"""`osnas derive`: freeze a search run's answer into a genotype file.

The genotype is the argmax of the alphas in the run's checkpoint, per position, over the
run's own copy of the space it searched (its hash must match the checkpoint's). The file
records the choice, probabilities and entropy of every position and where it came from
(space and hash, sources, seed, step), so every later result can be traced back to it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from osnas.errors import OsnasError
from osnas.models import relax
from osnas.models.genotype import Genotype, genotype_from_probs
from osnas.models.space import load_space
from osnas.rundir import CHECKPOINT, GENOTYPE, SPACE
from osnas.utils import load_checkpoint


def derive_from_run(run: str | Path, checkpoint: str | Path | None = None) -> Genotype:
    """The argmax genotype of a search run, from its checkpoint's alphas.

    The run's own space.yaml (a copy of the space searched) is used, and its hash must match
    the checkpoint's: a genotype never silently comes from a different space.
    """
    run = Path(run)
    if not run.is_dir():
        raise OsnasError(f"{run}: search run folder not found")
    ck_path = Path(checkpoint) if checkpoint else run / CHECKPOINT
    ck = load_checkpoint(ck_path, "search checkpoint")
    for key in ("model", "space_sha256", "positions", "relaxation"):
        if key not in ck:
            raise OsnasError(f"{ck_path}: not a search checkpoint (missing {key!r})")
    space_file = run / SPACE
    if not space_file.is_file():
        raise OsnasError(f"{space_file}: the run's copy of its search space is missing")
    space = load_space(space_file)
    if space.sha256 != ck["space_sha256"]:
        raise OsnasError(f"{space_file}: search space hash {space.sha256[:12]} does not match the checkpoint's "
                         f"{ck['space_sha256'][:12]}; the space file was changed after the search")
    names = [p.name for p in space.positions]
    if names != list(ck["positions"]):
        raise OsnasError(f"{ck_path}: positions {ck['positions']} do not fit space {space.name} ({names})")
    alphas = [ck["model"].get(f"alphas.{i}") for i in range(len(names))]
    if any(a is None for a in alphas):
        raise OsnasError(f"{ck_path}: alphas missing from the checkpoint")
    probs = []
    for p, a in zip(space.positions, alphas):
        pr = relax.probs(a.float(), ck["relaxation"])
        if pr.numel() != len(p.candidates) or not torch.isfinite(pr).all():
            raise OsnasError(f"{ck_path}: alphas of position {p.name} do not fit its {len(p.candidates)} candidates")
        probs.append(pr)
    return genotype_from_probs(space, probs, arch=ck.get("arch", ""), shared=ck.get("shared", True),
                               name=f"searched-{space.name}", sources=list(ck.get("sources", [])),
                               seed=ck.get("seed"), step=ck.get("global_step"))


def run_derive(run, out=None, checkpoint=None) -> Path:
    g = derive_from_run(run, checkpoint)
    path = Path(out) if out else Path(run) / GENOTYPE
    g.save(path)
    width = max(len(k) for k in g.positions)
    print(f"genotype of {run} ({g.space}, step {g.step}, sources {','.join(g.sources)}):", file=sys.stderr)
    for k, v in g.positions.items():
        print(f"  {k:<{width}}  {v['choice']:<8} p={v['probs'][v['choice']]:.3f}  H={v['entropy']:.3f}", file=sys.stderr)
    print(f"IN at: {', '.join(g.in_sites()) or 'nowhere'}", file=sys.stderr)
    print(str(path))
    return path
