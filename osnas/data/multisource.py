"""Several source datasets in one label space, with a domain id per image."""

from __future__ import annotations

from dataclasses import dataclass, field

from osnas.errors import OsnasError

# with no --sources: the first synthetic domains are the sources, the last one the target
DEFAULT_SYNTH_SOURCES = ("synth0", "synth1", "synth2")


def parse_names(names) -> list[str]:
    """'market,duke' / ['market', 'duke'] -> ['market1501', 'dukemtmcreid'] (aliases resolved).

    Empty -> []. Unknown names and duplicates are OsnasErrors.
    """
    from osnas.data.datasets import canonical_name

    if names is None:
        return []
    if isinstance(names, str):
        names = names.split(",")
    out = []
    for n in names:
        n = str(n).strip()
        if not n:
            continue
        c = canonical_name(n)
        if c in out:
            raise OsnasError(f"dataset {n!r} listed twice (as {c})")
        out.append(c)
    return out


def resolve_sources(names) -> list[str]:
    """Parsed source names; the built-in synthetic sources when none are given."""
    out = parse_names(names)
    return out or list(DEFAULT_SYNTH_SOURCES)


@dataclass
class MultiSource:
    """Union of source datasets.

    train: (img_path, global_pid, camid, domain_id); global_pid = offset[domain] + local pid.
    datasets[d]: the per-source ReidDataset (its query/gallery keep their own ids).
    """

    domain_names: list
    datasets: list
    train: list
    pid_offsets: list
    num_classes: int = field(init=False)
    num_domains: int = field(init=False)

    def __post_init__(self):
        self.num_classes = len({it[1] for it in self.train})
        self.num_domains = len(self.domain_names)


def combine(datasets) -> MultiSource:
    """Union of already-built ReidDatasets (in order: domain id = position)."""
    train, offsets, off = [], [], 0
    for d, ds in enumerate(datasets):
        offsets.append(off)
        train += [(p, off + pid, cam, d) for p, pid, cam, *_ in ds.train]
        off += ds.num_train_pids
    return MultiSource([ds.name for ds in datasets], list(datasets), train, offsets)


def build_multisource(names, root=None, skip_unparsable: bool = False, combine_all: bool = False) -> MultiSource:
    """Build and union the named sources (comma string or list; [] -> built-in synthetic sources)."""
    from osnas.data.datasets import build_dataset

    srcs = resolve_sources(names)
    return combine([build_dataset(n, root, skip_unparsable=skip_unparsable, combine_all=combine_all) for n in srcs])
