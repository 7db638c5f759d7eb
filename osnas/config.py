"""Typed configuration: every default lives here, once.

A run's configuration = these defaults <- an optional YAML file (`--config`) <- dotted
overrides (`--set search.epochs=5`). Unknown keys and wrong types are errors that name the
key. The resolved config is written to `config.yaml` in every run folder, so a stage can be
re-run from its folder alone.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from osnas.errors import OsnasError
from osnas.rundir import CONFIG
from osnas.utils import atomic_write_text, load_yaml


@dataclass
class DataConfig:
    root: str = ""  # "" -> $OSNAS_DATA or ./data
    sources: list = field(default_factory=list)  # dataset names; [] -> built-in synthetic sources
    targets: list = field(default_factory=list)  # held-out datasets for eval-crossdomain
    height: int = 256
    width: int = 128
    batch_size: int = 64
    num_instances: int = 4  # K of PK sampling (P = batch_size / K)
    sampler: str = "domain_pk"  # random | pk | domain_pk
    workers: int = 2
    skip_unparsable: bool = False  # count and skip file names that do not parse, instead of failing
    combine_all: bool = False  # train on train+query+gallery (+ MSMT17's list_val), as the reference search on MSMT17
    # transforms
    flip: bool = True
    pad_crop: bool = False
    pad: int = 10
    color_jitter: bool = True
    brightness: float = 0.2
    contrast: float = 0.15
    saturation: float = 0.0
    hue: float = 0.0
    random_erasing: bool = False  # hurts cross-domain (Zhou et al., TPAMI 2021); strong baseline uses p=0.5
    erasing_prob: float = 0.5
    mean: list = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class ModelConfig:
    arch: str = "osnet_x1_0"  # width of the backbone: osnet_x1_0 / x0_75 / x0_5 / x0_25
    head: str = "reference"  # reference (FC512+BN+ReLU) | bnneck
    last_stride: int = 2  # 1 drops the last down-sampling (strong baseline)
    feature_dim: int = 512


@dataclass
class SearchConfig:
    # The defaults are the recipe the measurements pick (experiments/README.md): several supernets
    # (`runs`), each trained on single paths drawn from its alphas (`weight_step=sampled`), the
    # alphas stepped every `alpha_every` weight steps on data the weights never saw (`objective`),
    # read off by retrieval (osnas derive) and combined by vote.
    space: str = "osnet_stem_blocks"  # name in search_spaces/ or a YAML file; plain OSNet is in this one
    runs: int = 3  # supernets per search (seeds seed..seed+runs-1; unseen: each keeps another source out)
    shared: bool = True  # weight sharing; False reproduces the reference (a block per candidate)
    relaxation: str = ""  # "" = the space's own; softmax | gumbel | sigmoid (binary positions)
    tau_init: float = 10.0  # Gumbel temperature (reference: 10, halved every 20 epochs, floor 1)
    tau_decay_every: int = 20
    tau_factor: float = 0.5
    tau_min: float = 1.0
    order: str = "first"  # first | second (bilevel) | single (single-level, the reference)
    # auto: unseen with >= 2 sources, identities with 1 | unseen (one source never trained on) |
    # identities (kept-out people of every source) | lodo (leave-one-domain-out) | heldout (held-out images)
    objective: str = "auto"
    unseen_domain: str = ""  # objective=unseen: the source kept out ("" = supernet k keeps out the k-th from the last)
    alpha_loss: str = "triplet"  # id | triplet | both (unseen and identities judge people the classifier never saw)
    val_fraction: float = 0.3  # heldout: share of each identity's images; identities: share of each source's ids
    alpha_init: float = 0.0  # alphas start equal (softmax of zeros = uniform)
    alpha_lr: float = 3e-3
    alpha_betas: list = field(default_factory=lambda: [0.5, 0.999])
    alpha_weight_decay: float = 0.0
    alpha_every: int = 2  # one alpha step every N weight steps (fewer, larger alpha steps: raise alpha_lr)
    # sampled: one path drawn from the alphas | mixed: every candidate, weighted by the alphas |
    # uniform: one path drawn uniformly, no alpha step (derive asks the supernet: --select retrieval-pooled)
    weight_step: str = "sampled"
    entropy_weight: float = 0.0  # alpha loss + w * mean position entropy, w ramped 0 -> entropy_weight over the alpha epochs
    # deployment cost (osnas/search/budget.py): "" = none | proxy | a cost table file from `osnas profile`
    cost_table: str = ""
    cost_budget: float = 0.0  # latency relative to the all-BN network of the same width; 0 = no budget
    cost_weight: float = 1.0  # exponent of the alpha loss's max(1, E[cost] / budget) factor
    optimizer: str = "sgd"  # weight optimiser
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    epochs: int = 20
    steps_per_epoch: int = 50
    warmup_epochs: int = 2  # epochs with alphas frozen
    grad_clip: float = 5.0
    label_smooth: float = 0.1
    margin: float = 0.3


@dataclass
class TrainConfig:
    epochs: int = 60
    steps_per_epoch: int = 0  # 0 = one pass over the training set
    optimizer: str = "amsgrad"  # sgd | adam | amsgrad
    lr: float = 0.0015
    weight_decay: float = 5e-4
    momentum: float = 0.9
    schedule: str = "cosine"  # cosine | step | constant
    milestones: list = field(default_factory=lambda: [40, 70])
    gamma: float = 0.1
    warmup_epochs: int = 0  # linear warm-up (strong baseline: 10)
    warmup_factor: float = 0.1
    fixbase_epochs: int = 0  # first epochs train only the classifier (reference DG recipe: 10)
    label_smooth: float = 0.1
    id_weight: float = 1.0
    triplet_weight: float = 0.0  # batch-hard triplet (strong baseline: 1.0)
    margin: float = 0.3
    center_weight: float = 0.0  # strong baseline: 0.0005
    grad_clip: float = 0.0
    amp: bool = False  # mixed precision where the device supports it


@dataclass
class EvalConfig:
    metric: str = "cosine"  # cosine | euclidean (squared, as the reference)
    rerank: bool = False
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    batch_size: int = 128
    max_rank: int = 50
    chunk_size: int = 2048  # queries per chunk: bounds memory on large galleries
    flip_test: bool = False
    split: int = -1  # targets with several splits (VIPeR, GRID, PRID, iLIDS, CUHK01): -1 = all, K = only K


@dataclass
class RunConfig:
    seed: int = 1
    device: str = "auto"
    checkpoint_every: int = 1  # epochs
    log_every: int = 10  # steps
    progress: bool = True
    sync_bn: bool = False  # under DDP: SyncBatchNorm (CUDA only)
    ddp_check: bool = False  # under DDP: verify ranks agree on weights/alphas after every step (always at checkpoints)


@dataclass
class AnalyzeConfig:
    """`osnas analyze`: a short plain-OSNet training, then per-site statistics of the channels."""

    epochs: int = 4  # training of the plain OSNet that is measured (copied into train.epochs)
    steps_per_epoch: int = 50  # copied into train.steps_per_epoch (0 = one pass over the sources)
    batches: int = 8  # PK batches of each source's training images whose statistics are measured
    max_sites: int = 2  # at most this many IN sites suggested (0: always plain OSNet)
    min_score: float = 0.0  # a site is suggested only where domain_share - identity_share exceeds this
    space: str = "osnet_stem_blocks"  # the search space whose positions the suggestion is expressed in


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    analyze: AnalyzeConfig = field(default_factory=AnalyzeConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- merging
def _section_types(obj) -> dict:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _check_type(key: str, value: Any, default: Any) -> Any:
    """Coerce/check `value` against the type of the default; name the key on a mismatch."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise OsnasError(f"config key {key}: expected true/false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise OsnasError(f"config key {key}: expected an integer, got {value!r}")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        raise OsnasError(f"config key {key}: expected a number, got {value!r}")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        if value is None:
            return ""
        raise OsnasError(f"config key {key}: expected a string, got {value!r}")
    if isinstance(default, list):
        if isinstance(value, str):  # "a,b" on the command line
            return [v for v in value.split(",") if v]
        if isinstance(value, (list, tuple)):
            return list(value)
        raise OsnasError(f"config key {key}: expected a list, got {value!r}")
    return value


def merge_dict(cfg: Config, d: dict, origin: str = "config") -> Config:
    """Merge a nested dict {section: {key: value}} into cfg, strictly."""
    if d is None:
        return cfg
    if not isinstance(d, dict):
        raise OsnasError(f"{origin}: expected a mapping of sections, got {type(d).__name__}")
    sections = {f.name for f in dataclasses.fields(cfg)}
    for sec, vals in d.items():
        if sec not in sections:
            raise OsnasError(f"{origin}: unknown config section {sec!r}; valid: {', '.join(sorted(sections))}")
        obj = getattr(cfg, sec)
        if vals is None:
            continue
        if not isinstance(vals, dict):
            raise OsnasError(f"{origin}: section {sec!r} must be a mapping, got {vals!r}")
        keys = _section_types(obj)
        for k, v in vals.items():
            if k not in keys:
                raise OsnasError(f"{origin}: unknown config key {sec}.{k}; valid keys of {sec}: {', '.join(keys)}")
            setattr(obj, k, _check_type(f"{sec}.{k}", v, getattr(obj, k)))
    return cfg


def parse_override(s: str) -> tuple[str, str, Any]:
    """'search.epochs=5' -> ('search', 'epochs', 5); the value is parsed as YAML."""
    if "=" not in s:
        raise OsnasError(f"--set {s!r}: expected section.key=value")
    key, raw = s.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise OsnasError(f"--set {s!r}: expected section.key=value, e.g. search.epochs=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return parts[0], parts[1], value


def build_config(config_file: str | None = None, overrides: list | None = None, base: dict | None = None) -> Config:
    """Defaults <- base dict (e.g. a run's saved config) <- config file <- --set overrides."""
    cfg = Config()
    if base:
        merge_dict(cfg, base, "saved config")
    if config_file:
        merge_dict(cfg, load_yaml(config_file, "config file"), str(config_file))
    for s in overrides or []:
        sec, k, v = parse_override(s)
        merge_dict(cfg, {sec: {k: v}}, f"--set {s}")
    return cfg


def save_config(cfg: Config, run_dir: str | Path) -> Path:
    p = Path(run_dir) / CONFIG
    atomic_write_text(p, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return p
