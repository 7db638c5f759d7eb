"""Data layer: datasets on disk, multi-source union, samplers, transforms, synthetic domains."""

from osnas.data.datasets import (
    REGISTRY,
    ReidDataset,
    build_dataset,
    canonical_name,
    data_root,
    dataset_splits,
    evaluation_splits,
    run_data_info,
)
from osnas.data.multisource import (
    DEFAULT_SYNTH_SOURCES,
    MultiSource,
    build_multisource,
    combine,
    parse_names,
    resolve_sources,
)
from osnas.data import synth_families  # noqa: F401 (registers the hard and geom families with osnas.data.synth)
from osnas.data.samplers import (
    DomainBalancedPKSampler,
    PKSampler,
    RandomBatchSampler,
    RandomIdentitySampler,
    build_train_sampler,
    split_heldout,
    split_identities,
)

__all__ = [
    "REGISTRY", "ReidDataset", "build_dataset", "canonical_name", "data_root", "dataset_splits",
    "evaluation_splits", "run_data_info",
    "DEFAULT_SYNTH_SOURCES", "MultiSource", "build_multisource", "combine",
    "parse_names", "resolve_sources",
    "DomainBalancedPKSampler", "PKSampler", "RandomBatchSampler", "RandomIdentitySampler",
    "build_train_sampler", "split_heldout", "split_identities",
    "ImageDataset", "build_loader", "make_test_loader", "read_image",
    "build_transforms", "transforms_from_config",
]


def __getattr__(name):  # torch / torchvision parts load on first use
    if name in ("ImageDataset", "build_loader", "make_test_loader", "read_image"):
        from osnas.data import dataset

        return getattr(dataset, name)
    if name == "build_transforms":
        from osnas.data.transforms import build_transforms

        return build_transforms
    if name == "transforms_from_config":
        from osnas.data.transforms import from_config

        return from_config
    raise AttributeError(f"module 'osnas.data' has no attribute {name!r}")
