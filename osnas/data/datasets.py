"""Re-ID datasets on disk: Market-1501, DukeMTMC-reID, MSMT17, CUHK03-NP, custom folders and
the built-in synthetic domains.

``build_dataset(name, root)`` returns a `ReidDataset` whose ``train``, ``query`` and
``gallery`` are lists of ``(img_path, pid, camid, dsetid)`` with the reference (torchreid)
semantics: junk id -1 is dropped everywhere, the distractor id 0 is kept in the gallery,
cameras are 0-based, train ids are relabelled 0..N-1 in sorted order of the original ids,
query/gallery keep their original ids, dsetid is 0.

Everything a user can get wrong raises `OsnasError` with one line naming the path.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from osnas.errors import OsnasError

IMG_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
MARKET_SPLITS = ("bounding_box_train", "query", "bounding_box_test")
MARKET_RE = re.compile(r"([-\d]+)_c(\d)")
LIST_FILES = ("train.txt", "query.txt", "gallery.txt")

Item = tuple  # (img_path: str, pid: int, camid: int, dsetid: int)


# ============================================================================ registry
@dataclass(frozen=True)
class DatasetSpec:
    name: str
    kind: str  # market | msmt | synth | custom
    dirs: tuple = ()  # candidate dataset folders relative to the data root, first match wins
    example: str = "0002_c1s1_000451_03.jpg"
    combine_junk: frozenset = frozenset({-1})  # ids left out when query/gallery join train
    description: str = ""


REGISTRY: dict[str, DatasetSpec] = {
    "market1501": DatasetSpec(
        "market1501", "market", ("market1501/Market-1501-v15.09.15", "market1501"), "0002_c1s1_000451_03.jpg",
        frozenset({0, -1}), "Market-1501",
    ),
    "dukemtmcreid": DatasetSpec(
        "dukemtmcreid", "market", ("dukemtmc-reid/DukeMTMC-reID", "dukemtmc-reid"), "0001_c2_f0046182.jpg",
        frozenset({-1}), "DukeMTMC-reID",
    ),
    "msmt17": DatasetSpec("msmt17", "msmt", ("msmt17/MSMT17_V1", "msmt17/MSMT17_V2"),
                          "0000_011_01_0303morning_0015_0.jpg", frozenset({-1}), "MSMT17"),
    "cuhk03_labeled": DatasetSpec("cuhk03_labeled", "market", ("cuhk03-np/labeled",), "0001_c1_1.png",
                                  frozenset({-1}), "CUHK03-NP labeled (767/700 protocol)"),
    "cuhk03_detected": DatasetSpec("cuhk03_detected", "market", ("cuhk03-np/detected",), "0001_c1_1.png",
                                   frozenset({-1}), "CUHK03-NP detected (767/700 protocol)"),
}
ALIASES = {
    "market": "market1501",
    "market-1501": "market1501",
    "duke": "dukemtmcreid",
    "dukemtmc": "dukemtmcreid",
    "dukemtmc-reid": "dukemtmcreid",
    "msmt": "msmt17",
    "cuhk03": "cuhk03_labeled",
    "cuhk03-np": "cuhk03_labeled",
    "cuhk03_np": "cuhk03_labeled",
}
_MSMT_IMG_DIRS = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}
_MSMT_LISTS = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")


def valid_names() -> str:
    al = ", ".join(f"{a}={c}" for a, c in ALIASES.items() if a in ("market", "duke", "msmt", "cuhk03"))
    return f"{', '.join(REGISTRY)}, synth0..synthN, custom:PATH (aliases: {al})"


def canonical_name(name: str) -> str:
    """'Market' -> 'market1501', 'duke' -> 'dukemtmcreid', 'synth2' -> 'synth2', 'custom:X' kept."""
    from osnas.data.synth import domain_index

    raw = str(name).strip()
    if raw.lower().startswith("custom:"):
        return "custom:" + raw.split(":", 1)[1]
    low = raw.lower()
    if low == "custom":
        return "custom"
    low = ALIASES.get(low, low)
    if low in REGISTRY:
        return low
    if domain_index(low) is not None:
        return low
    raise OsnasError(f"unknown dataset {raw!r}; valid: {valid_names()}")


# ============================================================================ the dataset object
@dataclass
class ReidDataset:
    name: str
    root: str  # the dataset folder that was read
    train: list
    query: list
    gallery: list
    skipped: int = 0  # unparsable file names skipped (skip_unparsable=True)
    num_train_pids: int = field(init=False)
    num_train_cams: int = field(init=False)

    def __post_init__(self):
        self.num_train_pids = len({it[1] for it in self.train})
        self.num_train_cams = len({it[2] for it in self.train})

    @staticmethod
    def stats(items) -> tuple[int, int, int]:
        """(ids, images, cameras) of a split."""
        return len({it[1] for it in items}), len(items), len({it[2] for it in items})

    def __repr__(self):
        return (f"ReidDataset({self.name!r}, train={len(self.train)} imgs/{self.num_train_pids} ids, "
                f"query={len(self.query)}, gallery={len(self.gallery)}, root={self.root!r})")


# ============================================================================ parsing helpers
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


def parse_market_folder(d: Path, skips: _Skips, example: str, relabel: bool = False) -> list:
    """Images of one split folder named like Market-1501 (regex ``([-\\d]+)_c(\\d)``)."""
    if not d.is_dir():
        raise OsnasError(
            f"{d}: split folder not found; expected the Market-1501 layout with "
            f"{', '.join(s + '/' for s in MARKET_SPLITS)}"
        )
    out = []
    base = str(d)
    for fn in _list_images(d):
        m = MARKET_RE.search(fn)
        try:
            pid, cam = (int(m.group(1)), int(m.group(2))) if m else (None, None)
        except ValueError:
            pid = None
        if pid is None or pid < -1 or cam < 1:
            skips.bad(f"{os.path.join(base, fn)}: file name does not match PID_cCAM... (expected e.g. {example})")
            continue
        if pid == -1:  # junk
            continue
        out.append((os.path.join(base, fn), pid, cam - 1, 0))
    if not out:
        raise OsnasError(f"{d}: no usable images found (expected *.jpg/*.png files named like {example})")
    return _relabel(out) if relabel else out


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise OsnasError(f"{path}: list file not found")
    try:
        return path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise OsnasError(f"{path}: cannot read list file ({getattr(e, 'strerror', None) or e})") from None


def parse_msmt_list(list_path: Path, img_dir: Path, skips: _Skips) -> list:
    """MSMT17 list: ``relative/path.jpg pid``; camera = third '_' field of the name - 1."""
    out = []
    for i, line in enumerate(_read_lines(list_path), 1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(maxsplit=1)
        try:
            rel, pid = parts[0], int(parts[1])
        except (IndexError, ValueError):
            raise OsnasError(f"{list_path}:{i}: expected 'relative/path.jpg pid', got {line.strip()[:80]!r}") from None
        path = img_dir / rel
        if not path.is_file():
            raise OsnasError(f"{list_path}:{i}: image {path} not found")
        try:
            cam = int(os.path.basename(rel).split("_")[2]) - 1
        except (IndexError, ValueError):
            cam = -1
        if cam < 0:
            skips.bad(f"{path}: file name has no camera field (expected e.g. 0000_011_01_0303morning_0015_0.jpg)")
            continue
        if pid == -1:
            continue
        out.append((str(path), pid, cam, 0))
    if not out:
        raise OsnasError(f"{list_path}: no images listed (expected lines 'relative/path.jpg pid')")
    return out


def parse_custom_list(list_path: Path, base: Path) -> list:
    """Custom list: ``relative/path pid camid`` (camid 0-based as written)."""
    out = []
    for i, line in enumerate(_read_lines(list_path), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.strip().rsplit(maxsplit=2)
        try:
            rel, pid, cam = parts[0], int(parts[1]), int(parts[2])
        except (IndexError, ValueError):
            raise OsnasError(f"{list_path}:{i}: expected 'relative/path pid camid', got {line.strip()[:80]!r}") from None
        if cam < 0 or pid < -1:
            raise OsnasError(f"{list_path}:{i}: expected pid >= -1 and camid >= 0, got pid {pid}, camid {cam}")
        path = base / rel
        if not path.is_file():
            raise OsnasError(f"{list_path}:{i}: image {path} not found")
        if pid == -1:
            continue
        out.append((str(path), pid, cam, 0))
    if not out:
        raise OsnasError(f"{list_path}: no images listed (expected lines 'relative/path pid camid')")
    return out


def _combine_all(train: list, query: list, gallery: list, junk) -> list:
    """train + query + gallery (junk ids left out) in one label space, like torchreid."""
    n = len({it[1] for it in train})
    pids = sorted({it[1] for it in query + gallery if it[1] not in junk})
    m = {p: n + i for i, p in enumerate(pids)}
    return list(train) + [(p, m[pid], c, d) for p, pid, c, d in query + gallery if pid not in junk]


# ============================================================================ layouts
def _check_root(root: Path) -> None:
    if not root.exists():
        raise OsnasError(f"{root}: data root not found (set --data-root or $OSNAS_DATA to the folder holding the datasets)")
    if not root.is_dir():
        raise OsnasError(f"{root}: data root is not a folder")


def _find_market_dir(spec: DatasetSpec, root: Path) -> Path:
    cands = [root / d for d in spec.dirs]
    for c in cands:
        if c.is_dir() and any((c / s).is_dir() for s in MARKET_SPLITS):
            return c
    existing = [c for c in cands if c.is_dir()]
    if existing:
        raise OsnasError(
            f"{existing[0]}: no {', '.join(s + '/' for s in MARKET_SPLITS)} inside; expected the "
            f"{spec.description or spec.name} layout (tried {', '.join(str(c) for c in cands)})"
        )
    _check_root(root)
    raise OsnasError(
        f"{spec.name}: dataset not found under {root}; tried {', '.join(str(c) for c in cands)} "
        f"(each with {', '.join(s + '/' for s in MARKET_SPLITS)})"
    )


def _load_market(name: str, d: Path, skip_unparsable: bool, example: str):
    skips = _Skips(skip_unparsable)
    train = parse_market_folder(d / "bounding_box_train", skips, example, relabel=True)
    query = parse_market_folder(d / "query", skips, example)
    gallery = parse_market_folder(d / "bounding_box_test", skips, example)
    return train, query, gallery, skips.n


def _load_msmt(spec: DatasetSpec, root: Path, skip_unparsable: bool):
    cands = [root / d for d in spec.dirs]
    d = next((c for c in cands if c.is_dir()), None)
    if d is None:
        _check_root(root)
        raise OsnasError(
            f"msmt17: dataset not found under {root}; tried {cands[0]} (train/, test/) and {cands[1]} "
            f"(mask_train_v2/, mask_test_v2/), each with {', '.join(_MSMT_LISTS)}"
        )
    tr_name, te_name = _MSMT_IMG_DIRS[d.name]
    for sub in (tr_name, te_name):
        if not (d / sub).is_dir():
            raise OsnasError(f"{d / sub}: image folder not found; expected {d.name} with {tr_name}/ and {te_name}/")
    skips = _Skips(skip_unparsable)
    train = parse_msmt_list(d / "list_train.txt", d / tr_name, skips)
    train += parse_msmt_list(d / "list_val.txt", d / tr_name, skips)  # as torchreid: train += val
    query = parse_msmt_list(d / "list_query.txt", d / te_name, skips)
    gallery = parse_msmt_list(d / "list_gallery.txt", d / te_name, skips)
    return d, _relabel(train), query, gallery, skips.n


def _resolve_custom(name: str, root: Path) -> Path:
    if name == "custom":
        folder = root
        tried = [root]
    else:
        p = Path(name.split(":", 1)[1]).expanduser()
        tried = [p] if p.is_absolute() else [p, root / p]
        folder = next((t for t in tried if t.is_dir()), None)
    if folder is None or not folder.is_dir():
        raise OsnasError(f"{name}: custom dataset folder not found (tried {', '.join(str(t) for t in tried)})")
    return Path(os.path.abspath(folder))


def _load_custom(name: str, folder: Path, skip_unparsable: bool):
    has_market = [s for s in MARKET_SPLITS if (folder / s).is_dir()]
    has_lists = [f for f in LIST_FILES if (folder / f).is_file()]
    if has_market:
        train, query, gallery, n = _load_market(name, folder, skip_unparsable, "0002_c1s1_000451_03.jpg")
        return train, query, gallery, n, frozenset({0, -1})
    if has_lists:
        train = _relabel(parse_custom_list(folder / "train.txt", folder))
        query = parse_custom_list(folder / "query.txt", folder)
        gallery = parse_custom_list(folder / "gallery.txt", folder)
        return train, query, gallery, 0, frozenset({-1})
    raise OsnasError(
        f"{folder}: not a custom re-ID dataset; expected either folders "
        f"{', '.join(s + '/' for s in MARKET_SPLITS)} (Market-1501 names) or list files "
        f"{', '.join(LIST_FILES)} (lines 'relative/path pid camid')"
    )


# ============================================================================ entry points
def build_dataset(name: str, root=None, skip_unparsable: bool = False, combine_all: bool = False) -> ReidDataset:
    """Load dataset `name` from the data root (default: $OSNAS_DATA or ./data).

    name: market1501|market, dukemtmcreid|duke, msmt17|msmt, cuhk03 (= cuhk03_labeled),
    cuhk03_labeled, cuhk03_detected, synth0..synthN (generated on first use),
    custom:PATH, or custom (root = the dataset folder).
    combine_all: train on train + query + gallery (junk/distractor ids left out).
    """
    from osnas.config import data_root

    root = Path(os.path.abspath(data_root(str(root) if root is not None else "")))  # item paths are absolute
    cname = canonical_name(name)
    junk = frozenset({-1})
    if cname.startswith("custom"):
        folder = _resolve_custom(cname, root)
        train, query, gallery, skipped, junk = _load_custom(cname, folder, skip_unparsable)
        d = folder
    elif cname in REGISTRY and REGISTRY[cname].kind == "msmt":
        d, train, query, gallery, skipped = _load_msmt(REGISTRY[cname], root, skip_unparsable)
    elif cname in REGISTRY:
        spec = REGISTRY[cname]
        d = _find_market_dir(spec, root)
        train, query, gallery, skipped = _load_market(cname, d, skip_unparsable, spec.example)
        junk = spec.combine_junk
    else:  # synthetic domain
        from osnas.data.synth import ensure_synth

        if root.exists() and not root.is_dir():
            raise OsnasError(f"{root}: data root is not a folder")
        (d,) = ensure_synth(root, [cname])
        train, query, gallery, skipped = _load_market(cname, d, skip_unparsable, "0002_c1s1_000451_03.jpg")
        junk = frozenset({0, -1})
    if combine_all:
        train = _combine_all(train, query, gallery, junk)
    return ReidDataset(cname, os.path.abspath(d), train, query, gallery, skipped)


def format_info(ds: ReidDataset) -> str:
    rows = [("train", *ReidDataset.stats(ds.train)), ("query", *ReidDataset.stats(ds.query)),
            ("gallery", *ReidDataset.stats(ds.gallery))]
    lines = [f"{ds.name}  ({ds.root})", f"  {'split':<8} {'ids':>7} {'images':>8} {'cameras':>8}"]
    lines += [f"  {s:<8} {a:>7} {b:>8} {c:>8}" for s, a, b, c in rows]
    n_dis = sum(1 for it in ds.gallery if it[1] == 0)
    if n_dis:
        lines.append(f"  gallery holds {n_dis} distractor image(s) with id 0")
    if ds.skipped:
        lines.append(f"  skipped {ds.skipped} file(s) whose names did not parse")
    return "\n".join(lines)


def run_data_info(name: str, data_root=None) -> ReidDataset:
    """`osnas data info NAME`: print ids / images / cameras per split."""
    ds = build_dataset(name, data_root)
    print(format_info(ds))
    return ds
