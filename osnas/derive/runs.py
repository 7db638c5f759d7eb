"""What derive reads of search runs, and how a genotype records where it came from.

A run is its checkpoint (weights, alphas), its own copy of the searched space (its hash must
match the checkpoint's) and its config.yaml; `load_supernet` rebuilds the supernet and the
run's own batches for the selection methods that score the supernet (perturb, retrieval).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from osnas.errors import OsnasError, first_line
from osnas.models import relax
from osnas.models.genotype import Genotype, genotype_from_probs
from osnas.models.space import SearchSpace, load_space
from osnas.rundir import CHECKPOINT, CONFIG, RUN_JSON, SPACE, recorded_objective, supernet_dirs
from osnas.utils import load_checkpoint, read_json


# ----------------------------------------------------------------------------- reading runs
@dataclass
class SearchRun:
    """What derive reads of one search run: its checkpoint, its space and final probabilities."""

    path: Path
    ck_path: Path
    ck: dict
    space: SearchSpace
    probs: List[torch.Tensor]  # per position, the deterministic probabilities of the alphas (relax.probs)

    def argmax(self) -> List[int]:
        return [int(p.argmax()) for p in self.probs]


def load_run(run: str | Path, checkpoint: str | Path | None = None) -> SearchRun:
    """A search run's checkpoint, space and probabilities, checked to belong together.

    The run's own space.yaml (a copy of the space searched) is used, and its hash must match
    the checkpoint's: a genotype never silently comes from a different space."""
    run = Path(run)
    if not run.is_dir():
        raise OsnasError(f"{run}: search run folder not found")
    info = read_json(run / RUN_JSON, "run description") if (run / RUN_JSON).is_file() else None
    if isinstance(info, dict) and info.get("stage") not in (None, "search"):
        raise OsnasError(f"{run}: not a search run ({RUN_JSON} says stage {info.get('stage')!r})")
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
        pr = relax.probs(a.detach().float().cpu(), ck["relaxation"])
        if pr.numel() != len(p.candidates) or not torch.isfinite(pr).all():
            raise OsnasError(f"{ck_path}: alphas of position {p.name} do not fit its {len(p.candidates)} candidates")
        probs.append(pr)
    return SearchRun(run, ck_path, ck, space, probs)


def expand_runs(paths: Sequence) -> List[Path]:
    """The supernet run folders behind the folders given: a search of several supernets
    (search.runs > 1) stands for each of them, a single supernet's folder for itself."""
    out: List[Path] = []
    for p in paths:
        out += supernet_dirs(p) or [Path(p)]
    return out


def _check_same_space(runs: Sequence[SearchRun]) -> None:
    hashes = {r.space.sha256 for r in runs}
    if len(hashes) > 1:
        raise OsnasError("runs searched different spaces: " + ", ".join(
            f"{r.path} ({r.space.name} {r.space.sha256[:12]})" for r in runs))


# ----------------------------------------------------------------------------- genotype assembly
def _genotype(runs: Sequence[SearchRun], select: str, chosen: List[int], probs: List[torch.Tensor],
              agreement: List[float], extra: Optional[List[dict]] = None) -> Genotype:
    """The genotype of `chosen` (candidate index per position) with its provenance.

    probs: per position the probabilities recorded (the run's, or the mean of the runs');
    extra: per position, more keys for `positions[p]` (scores, votes)."""
    space = runs[0].space
    ck0 = runs[0].ck
    one = len(runs) == 1
    archs = {r.ck.get("arch", "") for r in runs}
    sources: list = []
    for r in runs:
        sources += [s for s in r.ck.get("sources", []) if s not in sources]
    return genotype_from_probs(
        space, probs, arch=archs.pop() if len(archs) == 1 else "", shared=all(r.ck.get("shared", True) for r in runs),
        chosen=chosen, extra=extra, name=f"searched-{space.name}" + ("" if select == "argmax" else f"-{select}"),
        sources=sources, seed=ck0.get("seed") if one else None, step=ck0.get("global_step") if one else None,
        select=select, agreement={p.name: round(float(a), 6) for p, a in zip(space.positions, agreement)},
        runs=[str(r.path) for r in runs])


def _agreement(per_run: List[List[int]], chosen: List[int]) -> List[float]:
    """Per position, the fraction of runs whose own choice is the chosen candidate."""
    return [sum(rc[i] == c for rc in per_run) / len(per_run) for i, c in enumerate(chosen)]


def _mean_probs(runs: Sequence[SearchRun]) -> List[torch.Tensor]:
    return [torch.stack([r.probs[i] for r in runs]).mean(0) for i in range(len(runs[0].probs))]


def _best(keys: Sequence[tuple]) -> int:
    """Index of the largest key tuple; on a full tie the earliest (the space's candidate order)."""
    best = 0
    for j, k in enumerate(keys):
        if k > keys[best]:
            best = j
    return best


def run_config(run: SearchRun, needed_for: str = ""):
    """The run's config.yaml as a Config; missing: an OsnasError saying what needs it, or the
    defaults when nothing does (`needed_for` empty). A config that says `search.objective: auto`
    gets the objective the run resolved it to (its run.json), so a run reads the same data
    whatever `auto` means in a later version."""
    from osnas.config import build_config
    from osnas.utils import load_yaml

    cfg_path = run.path / CONFIG
    if cfg_path.is_file():
        cfg = build_config(base=load_yaml(cfg_path, "run config"))
        recorded = recorded_objective(run.path) if cfg.search.objective == "auto" else None
        if recorded:
            cfg.search.objective = recorded
        return cfg
    if needed_for:
        raise OsnasError(f"{cfg_path}: the run's config is missing ({needed_for})")
    return build_config()


@dataclass
class Scoring:
    """A run's supernet rebuilt for scoring, with the run's own first batches on its device."""

    model: torch.nn.Module  # the supernet in eval mode
    data: object  # the run's SearchBatches, through the evaluation transform
    val: list  # the alpha batches: N per source the alpha step draws from
    calib: Optional[list]  # the weight batches of the same steps (when asked for)
    device: torch.device
    val_index: Optional[list] = None  # per alpha batch, the dataset index of each image (a PK stream repeats images)
    batches: int = 0  # the `batches` it was loaded with


def load_supernet(run: SearchRun, batches: int = 4, data_root: str | None = None, device: str = "auto",
                  weight_batches: bool = False) -> Scoring:
    """A run's checkpoint rebuilt from its config.yaml, with steps of its batch plan
    (SearchBatches.plan_steps from step 0, the run's seed): `batches` per source the alpha step
    draws from, i.e. lodo and identities N x (number of sources) steps, heldout and unseen N
    steps. Images go through the evaluation transform (no augmentation)."""
    from osnas.search.bilevel import search_batches, search_supernet
    from osnas.training import batch_loader
    from osnas.utils import resolve_device

    if batches < 1:
        raise OsnasError(f"--batches must be >= 1, got {batches}")
    cfg = run_config(run, "scoring the supernet needs the run's data settings")
    d, s = cfg.data, cfg.search
    if data_root:
        d.root = str(data_root)
    data = search_batches(cfg, cfg.run.seed, train=False)
    dev = resolve_device(device)
    ck = run.ck
    cfg.model.arch, s.shared, s.relaxation = ck.get("arch") or cfg.model.arch, ck.get("shared", s.shared), \
        ck["relaxation"]
    model = search_supernet(cfg, run.space, data.num_classes)
    try:
        model.load_state_dict(ck["model"])
    except (RuntimeError, KeyError, TypeError) as e:
        raise OsnasError(f"{run.ck_path}: supernet weights do not fit the run's {CONFIG} ({first_line(e)})") from None
    per = data.alpha_steps_per_source()
    plan = data.plan_steps(0, batches * per)  # [weight, alpha] per step

    def load(keys):
        return [[t.to(dev) for t in b] for b in batch_loader(data.dataset, keys, 0)]

    return Scoring(model.to(dev).eval(), data, load(plan[1::2]), load(plan[0::2]) if weight_batches else None, dev,
                   [[int(k[0]) for k in keys] for keys in plan[1::2]], batches)
