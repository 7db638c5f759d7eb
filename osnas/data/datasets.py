"""Re-ID datasets on disk: Market-1501, DukeMTMC-reID, MSMT17, CUHK03-NP, custom folders,
the built-in synthetic domains, and (read in `osnas.data.dg_sets`) the sets of the
domain-generalisation benchmarks: VIPeR, GRID, PRID2011, iLIDS, CUHK01, CUHK02, CUHK-SYSU
and the original CUHK03 release.

``build_dataset(name, root, split=K)`` returns a `ReidDataset` whose ``train``, ``query`` and
``gallery`` are lists of ``(img_path, pid, camid, dsetid)`` with the reference (torchreid)
semantics: junk id -1 is dropped everywhere, the distractor id 0 is kept in the gallery,
cameras are 0-based, train ids are relabelled 0..N-1 in sorted order of the original ids,
query/gallery keep their original ids, dsetid is 0. Datasets evaluated over several
train/test splits say how many in ``ReidDataset.num_splits``; `evaluation_splits` lists
the ones an evaluator loops over (see `osnas.data.dg_sets` for the split conventions).

Everything a user can get wrong raises `OsnasError` with one line naming the path.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from osnas.data.files import DatasetSpec, _check_root, _list_images, _relabel, _Skips
from osnas.errors import OsnasError

MARKET_SPLITS = ("bounding_box_train", "query", "bounding_box_test")
MARKET_RE = re.compile(r"([-\d]+)_c(\d)")
LIST_FILES = ("train.txt", "query.txt", "gallery.txt")

Item = tuple  # (img_path: str, pid: int, camid: int, dsetid: int)


# ============================================================================ registry


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
    # domain-generalisation sets (osnas.data.dg_sets); the folder is the first of `dirs`
    "viper": DatasetSpec("viper", "viper", ("viper",), "VIPeR/cam_a/000_45.bmp", frozenset({-1}),
                         "VIPeR (10 random 316/316 id splits x 2 directions)"),
    "grid": DatasetSpec("grid", "grid", ("grid",), "0001_1_25004_107_32_130_184.jpeg", frozenset({0, -1}),
                        "GRID (10 official 125/125 id splits, 775 gallery distractors)"),
    "prid": DatasetSpec("prid", "prid", ("prid2011",), "person_0001.png", frozenset(range(201, 750)) | {-1},
                        "PRID2011 single-shot (10 random 100/100 id splits, cam_b ids 201-749 distractors)"),
    "ilids": DatasetSpec("ilids", "ilids", ("ilids",), "0001001.jpg", frozenset({-1}),
                         "QMUL iLIDS (10 random 59/60 id splits)"),
    "cuhk01": DatasetSpec("cuhk01", "cuhk01", ("cuhk01",), "0001001.png", frozenset({-1}),
                          "CUHK01 (10 random 485/486 id splits x 2 directions)"),
    "cuhk02": DatasetSpec("cuhk02", "cuhk02", ("cuhk02",), "P1/cam1/001_1.png", frozenset({-1}),
                          "CUHK02 (train P1-P4, test P5)"),
    "cuhksysu": DatasetSpec("cuhksysu", "cuhksysu", ("cuhksysu",), "p1_s1.jpg", frozenset({-1}),
                            "CUHK-SYSU person crops (training only)"),
    "cuhk03_release": DatasetSpec("cuhk03_release", "cuhk03_release", ("cuhk03",), "cuhk-03.mat", frozenset({-1}),
                                  "CUHK03 release, labeled boxes, new 767/700 protocol", ("labeled", "new")),
    "cuhk03_release_detected": DatasetSpec(
        "cuhk03_release_detected", "cuhk03_release", ("cuhk03",), "cuhk-03.mat", frozenset({-1}),
        "CUHK03 release, detected boxes, new 767/700 protocol", ("detected", "new")),
    "cuhk03_release_classic": DatasetSpec(
        "cuhk03_release_classic", "cuhk03_release", ("cuhk03",), "cuhk-03.mat", frozenset({-1}),
        "CUHK03 release, labeled boxes, classic 1367/100 protocol (20 splits)", ("labeled", "classic")),
    "cuhk03_release_classic_detected": DatasetSpec(
        "cuhk03_release_classic_detected", "cuhk03_release", ("cuhk03",), "cuhk-03.mat", frozenset({-1}),
        "CUHK03 release, detected boxes, classic 1367/100 protocol (20 splits)", ("detected", "classic")),
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
    "prid2011": "prid",
    "i-lids": "ilids",
    "qmul_ilids": "ilids",
    "cuhk-sysu": "cuhksysu",
    "cuhk_sysu": "cuhksysu",
    "cuhk03_release_labeled": "cuhk03_release",
    "cuhk03_release_classic_labeled": "cuhk03_release_classic",
}
_MSMT_IMG_DIRS = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}
_MSMT_LISTS = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")


def data_root(cfg_root: str = "") -> Path:
    """The datasets folder: the given one, else $OSNAS_DATA, else ./data."""
    return Path(cfg_root or os.environ.get("OSNAS_DATA") or "data")


_DEFAULT_DISTRACTORS = frozenset({0})


def valid_names() -> str:
    al = ", ".join(f"{a}={c}" for a, c in ALIASES.items() if a in ("market", "duke", "msmt", "cuhk03", "prid2011"))
    return f"{', '.join(REGISTRY)}, synth0..synthN, hard0..hardN, geom0..geomN, custom:PATH (aliases: {al})"


def canonical_name(name: str) -> str:
    """'Market' -> 'market1501', 'duke' -> 'dukemtmcreid', 'synth2' / 'hard2' / 'geom2' kept
    (built-in synthetic families), 'custom:X' kept."""
    from osnas.data.synth import parse_domain

    raw = str(name).strip()
    if raw.lower().startswith("custom:"):
        return "custom:" + raw.split(":", 1)[1]
    low = raw.lower()
    if low == "custom":
        return "custom"
    low = ALIASES.get(low, low)
    if low in REGISTRY:
        return low
    if parse_domain(low) is not None:  # a synthetic index >= 64 is a one-line OsnasError there
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
    split: int = 0  # which evaluation split this is (0 for single-split datasets)
    num_splits: int = 1  # how many evaluation splits the dataset has (an evaluator averages over them)
    split_desc: str = ""  # what this split is, e.g. "split 3 of 20: 316 train ids, query cam 1 -> gallery cam 0"
    evaluable: bool = True  # False: training-only dataset (CUHK-SYSU), no query/gallery
    single_gallery_shot: bool = False  # the classic CUHK03 metric (one gallery image per id, 10 draws)
    distractor_pids: frozenset = _DEFAULT_DISTRACTORS  # gallery ids that are nobody in the query
    notes: tuple = ()  # extra lines for `osnas data info`
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


def _load_msmt(spec: DatasetSpec, root: Path, skip_unparsable: bool, combine_all: bool = False):
    """MSMT17 as the reference reads it: train = list_train.txt only (30,248 images, 1,041
    ids); list_val.txt (2,373 more, 32,621 in all) joins training only with combine_all,
    together with query (11,659) and gallery (82,161). Published MSMT17 numbers train
    without the val images, so adding them by default would not be comparable."""
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
    val = parse_msmt_list(d / "list_val.txt", d / tr_name, skips)  # read (and checked) always
    if combine_all:  # as the reference: list_val joins training only when everything is combined
        train += val
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
def _single_split(name: str, split) -> None:
    if int(split) != 0:
        raise OsnasError(f"{name}: split {split} requested but the dataset has a single split (0)")


def build_dataset(name: str, root=None, skip_unparsable: bool = False, combine_all: bool = False,
                  split: int = 0) -> ReidDataset:
    """Load dataset `name` from the data root (default: $OSNAS_DATA or ./data).

    name: market1501|market, dukemtmcreid|duke, msmt17|msmt, cuhk03 (= cuhk03_labeled),
    cuhk03_labeled, cuhk03_detected, synth0..synthN, hard0..hardN, geom0..geomN (built-in
    synthetic families, generated on first use; see osnas.data.synth_families),
    custom:PATH, or custom (root = the dataset folder); the domain-generalisation sets
    viper, grid, prid, ilids, cuhk01, cuhk02, cuhksysu, cuhk03_release[_detected],
    cuhk03_release_classic[_detected] (see osnas.data.dg_sets).
    combine_all: train on train + query + gallery (junk/distractor ids left out); MSMT17
    adds list_val too.
    split: which evaluation split (0..num_splits-1); datasets with one split accept 0 only.
    """
    root = Path(os.path.abspath(data_root(str(root) if root is not None else "")))  # item paths are absolute
    cname = canonical_name(name)
    junk = frozenset({-1})
    extra: dict = {}
    combine_from = None  # query/gallery items that join train under combine_all (None: query + gallery)
    if cname.startswith("custom"):
        _single_split(cname, split)
        folder = _resolve_custom(cname, root)
        train, query, gallery, skipped, junk = _load_custom(cname, folder, skip_unparsable)
        d = folder
    elif cname in REGISTRY and REGISTRY[cname].kind == "msmt":
        _single_split(cname, split)
        d, train, query, gallery, skipped = _load_msmt(REGISTRY[cname], root, skip_unparsable, combine_all)
    elif cname in REGISTRY and REGISTRY[cname].kind == "market":
        _single_split(cname, split)
        spec = REGISTRY[cname]
        d = _find_market_dir(spec, root)
        train, query, gallery, skipped = _load_market(cname, d, skip_unparsable, spec.example)
        junk = spec.combine_junk
    elif cname in REGISTRY:  # a domain-generalisation set
        from osnas.data import dg_sets

        spec = REGISTRY[cname]
        r = dg_sets.load(spec, root, int(split), _Skips(skip_unparsable))
        d, train, query, gallery, skipped = r.folder, r.train, r.query, r.gallery, r.skipped
        junk = spec.combine_junk
        combine_from = r.combine_from
        extra = dict(split=int(split), num_splits=r.num_splits, split_desc=r.split_desc, evaluable=r.evaluable,
                     single_gallery_shot=r.single_gallery_shot, distractor_pids=r.distractor_pids,
                     notes=tuple(r.notes))
    else:  # synthetic domain
        from osnas.data.synth import ensure_synth

        _single_split(cname, split)
        if root.exists() and not root.is_dir():
            raise OsnasError(f"{root}: data root is not a folder")
        (d,) = ensure_synth(root, [cname])
        train, query, gallery, skipped = _load_market(cname, d, skip_unparsable, "0002_c1s1_000451_03.jpg")
        junk = frozenset({0, -1})
    if combine_all:
        if combine_from is None:
            train = _combine_all(train, query, gallery, junk)
        else:
            train = _combine_all(train, combine_from, [], junk)
    return ReidDataset(cname, os.path.abspath(d), train, query, gallery, skipped, **extra)


def dataset_splits(name: str, root=None, skip_unparsable: bool = False) -> int:
    """How many evaluation splits dataset `name` has (1 for all but the small DG test sets
    and the classic CUHK03 protocol). Builds split 0, so it also checks the data."""
    return build_dataset(name, root, skip_unparsable=skip_unparsable).num_splits


def evaluation_splits(name: str, root=None, split: int = -1, skip_unparsable: bool = False) -> list[int]:
    """The evaluation splits to loop over for target `name`: all of them for split=-1
    (EvalConfig.split default), else [split]. Datasets with a single split give [0] whatever
    `split` is, so one eval.split can be applied to a mixed list of targets. Averaging the
    per-split results over this list gives the published protocol (20 results for VIPeR
    and CUHK01: both directions of the 10 random splits). A training-only dataset
    (CUHK-SYSU) or a split out of range is an OsnasError."""
    return splits_to_evaluate(build_dataset(name, root, skip_unparsable=skip_unparsable), split)


def splits_to_evaluate(ds: ReidDataset, split: int = -1) -> list[int]:
    """`evaluation_splits` of an already built dataset (any of its splits)."""
    if not ds.evaluable:
        raise OsnasError(f"{ds.name}: training-only dataset (no query/gallery); it cannot be an evaluation target")
    n = ds.num_splits
    k = int(split)
    if n == 1:
        return [0]
    if k == -1:
        return list(range(n))
    if 0 <= k < n:
        return [k]
    raise OsnasError(f"eval.split={k}: {ds.name} has {n} evaluation splits; expected -1 (all) or 0..{n - 1}")


def _distractor_text(pids: frozenset) -> str:
    if pids == _DEFAULT_DISTRACTORS:
        return "with id 0"
    lo, hi = min(pids), max(pids)
    return f"with ids {lo}-{hi}" if len(pids) == hi - lo + 1 else f"with ids {', '.join(map(str, sorted(pids)))}"


def format_info(ds: ReidDataset) -> str:
    rows = [("train", *ReidDataset.stats(ds.train)), ("query", *ReidDataset.stats(ds.query)),
            ("gallery", *ReidDataset.stats(ds.gallery))]
    lines = [f"{ds.name}  ({ds.root})", f"  {'split':<8} {'ids':>7} {'images':>8} {'cameras':>8}"]
    lines += [f"  {s:<8} {a:>7} {b:>8} {c:>8}" for s, a, b, c in rows]
    n_dis = sum(1 for it in ds.gallery if it[1] in ds.distractor_pids) if ds.distractor_pids else 0
    if n_dis:
        lines.append(f"  gallery holds {n_dis} distractor image(s) {_distractor_text(ds.distractor_pids)}")
    if ds.num_splits > 1:
        lines.append(f"  evaluation splits: {ds.num_splits}; shown: {ds.split_desc or f'split {ds.split}'}")
    if not ds.evaluable:
        lines.append("  training only: no query/gallery, not an evaluation target")
    lines += [f"  {n}" for n in ds.notes]
    if ds.skipped:
        lines.append(f"  skipped {ds.skipped} file(s) whose names did not parse")
    return "\n".join(lines)


def run_data_info(name: str, data_root=None, split: int = 0) -> ReidDataset:
    """`osnas data info NAME`: print ids / images / cameras per subset (of `split`), and the
    number of evaluation splits where there are several."""
    ds = build_dataset(name, data_root, split=split)
    print(format_info(ds))
    return ds
