"""The weight-sharing supernet: one OSNet whose searched sites hold every candidate op.

Candidates of a position share all convolutions and differ only in normalisation, so a
weight step costs little more than a plain OSNet step. The non-shared mode builds one whole
unit per candidate (the reference search) for comparison. Alphas live here, one tensor per
position; `forward` turns them into per-unit mixing combos for `OSNet.forward(x, mix)`.

A single-path weight step (`search.weight_step=sampled`) runs one candidate per position,
drawn from the alphas' probabilities (`sample_path`, then `forward(x, path=...)`): it costs
what the derived network's step costs, and each candidate's weights learn to work on their
own, as a one-hot derivation will use them (single-path one-shot NAS: Guo et al., ECCV 2020;
GDAS, Dong & Yang, CVPR 2019, samples from the alphas in the same way).
"""

from __future__ import annotations

import itertools
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from osnas.errors import OsnasError
from osnas.models.genotype import Genotype, genotype_from_probs
from osnas.models.osnet import WIDTHS, OSNet, derived_state_dict, site_unit
from osnas.models import relax
from osnas.models.space import SearchSpace, load_space

DRAWS = ("alphas", "uniform")  # how sample_path draws a single path


class Supernet(nn.Module):
    def __init__(self, space, arch: str = "osnet_x1_0", num_classes: int = 0, head: str = "reference",
                 feature_dim: int = 512, last_stride: int = 2, shared: bool = True,
                 relaxation: Optional[str] = None, alpha_init: float = 0.0):
        super().__init__()
        self.space: SearchSpace = load_space(space)
        if arch not in WIDTHS:
            raise OsnasError(f"unknown arch {arch!r}; valid widths: {', '.join(WIDTHS)}")
        self.arch, self.shared = arch, shared
        self.relaxation = relaxation or self.space.relaxation
        if self.relaxation not in relax.RELAXATIONS:
            raise OsnasError(f"unknown relaxation {self.relaxation!r}; valid: {', '.join(relax.RELAXATIONS)}")
        if self.relaxation == "sigmoid" and any(len(p.candidates) != 2 for p in self.space.positions):
            raise OsnasError(f"sigmoid relaxation needs binary positions; space {self.space.name} has more candidates")
        self.tau = 1.0
        positions = self.space.positions
        nonshared = None
        if not shared:
            units = [p.unit for p in positions]
            dup = {u for u in units if units.count(u) > 1}
            if dup:
                raise OsnasError(f"non-shared mode needs one position per unit; {sorted(dup)} have several")
            nonshared = {p.unit: p.candidates for p in positions}
        self.net = OSNet(WIDTHS[arch], plan=self.space.plan(), num_classes=num_classes, head=head,
                         feature_dim=feature_dim, last_stride=last_stride, nonshared=nonshared)
        self.alphas = nn.ParameterList([
            nn.Parameter(torch.full((relax.alpha_size(self.relaxation, len(p.candidates)),), float(alpha_init)))
            for p in positions])
        # per unit: the positions that touch it, and the fixed ops of its other sites
        fixed = self.space.fixed_plan()
        self._unit_positions: Dict[str, List[int]] = {}
        self._unit_fixed: Dict[str, Dict[str, str]] = {}
        for i, p in enumerate(positions):
            self._unit_positions.setdefault(p.unit, []).append(i)
        for u in self._unit_positions:
            self._unit_fixed[u] = {s: op for s, op in fixed.items() if site_unit(s) == u}

    # -- parameters
    def arch_parameters(self) -> List[nn.Parameter]:
        return list(self.alphas)

    def weight_parameters(self) -> List[nn.Parameter]:
        return list(self.net.parameters())

    @property
    def positions(self):
        return self.space.positions

    # -- alphas -> weights
    def probs(self) -> List[torch.Tensor]:
        return [relax.probs(a.detach(), self.relaxation) for a in self.alphas]

    def mix_weights(self) -> List[torch.Tensor]:
        return [relax.weights(a, self.relaxation, self.tau, self.training) for a in self.alphas]

    def build_mix(self, weights: List[torch.Tensor]) -> Dict[str, list]:
        """Per-unit combos: the product of the candidates of every position touching the unit."""
        mix = {}
        for u, idx in self._unit_positions.items():
            combos = []
            for choice in itertools.product(*[range(len(self.positions[i].candidates)) for i in idx]):
                w = None
                for i, c in zip(idx, choice):
                    w = weights[i][c] if w is None else w * weights[i][c]
                combos.append((w, self._combo(u, idx, choice)))
            mix[u] = combos
        return mix

    def _combo(self, unit: str, idx: List[int], choice) -> object:
        """What the unit runs for one candidate per touching position: {site: op} when candidates
        share the unit, else the candidate's name (its own copy of the unit)."""
        if not self.shared:
            return self.positions[idx[0]].names[choice[0]]
        assign = dict(self._unit_fixed[unit])
        for i, c in zip(idx, choice):
            assign.update(self.positions[i].candidates[self.positions[i].names[c]])
        return assign

    def sample_path(self, generator: Optional[torch.Generator] = None, draw: str = "alphas") -> List[int]:
        """One candidate index per position (`draw`, one of DRAWS): from the alphas'
        probabilities, or every candidate alike whatever the alphas (`uniform`)."""
        if draw not in DRAWS:
            raise OsnasError(f"unknown path draw {draw!r}; valid: {', '.join(DRAWS)}")
        probs = [torch.ones(len(p.candidates)) for p in self.positions] if draw == "uniform" else self.probs()
        return [int(torch.multinomial(p.float(), 1, generator=generator)) for p in probs]

    def path_mix(self, path: List[int]) -> Dict[str, list]:
        """Per-unit combos of a single path: one combo per unit and no mixing weight, so only
        the chosen candidate's ops run (the output equals the derived network's)."""
        return {u: [(None, self._combo(u, idx, [path[i] for i in idx]))] for u, idx in self._unit_positions.items()}

    def forward(self, x: torch.Tensor, weights: Optional[List[torch.Tensor]] = None,
                path: Optional[List[int]] = None):
        """Mixed forward (weights, default the alphas' mixing weights), or one path (candidate indices)."""
        if path is not None:
            if len(path) != len(self.positions):
                raise ValueError(f"path has {len(path)} choices for {len(self.positions)} positions")
            return self.net(x, self.path_mix(path))
        return self.net(x, self.build_mix(weights if weights is not None else self.mix_weights()))

    # -- derivation
    def choices(self) -> Dict[str, str]:
        return {p.name: p.names[int(pr.argmax())] for p, pr in zip(self.positions, self.probs())}

    def onehot(self, choices: Dict[str, str]) -> List[torch.Tensor]:
        out = []
        for p in self.positions:
            w = torch.zeros(len(p.candidates))
            w[p.names.index(choices[p.name])] = 1.0
            out.append(w)
        return out

    def genotype(self, **meta) -> Genotype:
        """The argmax architecture of the current alphas, with their probabilities."""
        return genotype_from_probs(self.space, self.probs(), arch=self.arch, shared=self.shared, **meta)

    def derived_state_dict(self, genotype: Genotype) -> dict:
        """Weights of the derived network (load into build_model(genotype) with strict=True)."""
        return derived_state_dict(self.net.state_dict(), {s: [op] for s, op in genotype.plan.items()},
                                  genotype.nonshared)
