"""What every dataset reader shares: the registry entry of a dataset, image listing, train-id
relabelling, the data-root check and the skip-or-fail policy for unparsable file names.
(datasets.py reads the large re-ID sets; dg_sets.py the small domain-generalisation ones.)"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from osnas.errors import OsnasError

IMG_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    kind: str  # market | msmt | synth | custom | one of dg_sets.KINDS
    dirs: tuple = ()  # candidate dataset folders relative to the data root, first match wins
    example: str = "0002_c1s1_000451_03.jpg"
    combine_junk: frozenset = frozenset({-1})  # ids left out when query/gallery join train
    description: str = ""
    variant: tuple = ()  # reader options, e.g. ("labeled", "new") for the CUHK03 release


class _Skips:
    def __init__(self, allowed: bool):
        self.allowed = allowed
        self.n = 0

    def bad(self, msg: str) -> None:
        if not self.allowed:
            raise OsnasError(f"{msg}; set data.skip_unparsable=true to skip such files")
        self.n += 1


def _list_images(d: Path) -> list[str]:
    try:
        names = sorted(e.name for e in os.scandir(d)
                       if e.is_file() and e.name.lower().endswith(IMG_EXTS) and not e.name.startswith("."))
    except OSError as e:
        raise OsnasError(f"{d}: cannot read folder ({e.strerror or e})") from None
    return names


def _relabel(items: list) -> list:
    pids = sorted({it[1] for it in items})
    m = {p: i for i, p in enumerate(pids)}
    return [(p, m[pid], cam, ds) for p, pid, cam, ds in items]


def _check_root(root: Path) -> None:
    if not root.exists():
        raise OsnasError(f"{root}: data root not found (set --data-root or $OSNAS_DATA to the folder holding the datasets)")
    if not root.is_dir():
        raise OsnasError(f"{root}: data root is not a folder")
