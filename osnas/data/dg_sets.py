"""Readers for the datasets of the domain-generalisation (DG) re-ID benchmarks.

Small test sets, evaluated over several train/test splits: VIPeR, GRID, PRID2011
(single-shot), QMUL iLIDS, CUHK01. Extra training sets: CUHK02, CUHK-SYSU, and the original
CUHK03 release (``cuhk-03.mat``). Folder layouts (under the data root) and conventions are
those of the reference implementation (torchreid), so its numbers can be compared.

API (import from ``osnas.data``; this module only holds the readers)::

    build_dataset(name, root=None, split=0, combine_all=False) -> ReidDataset
        Evaluation split ``split`` of `name`. ``ds.num_splits``: how many there are;
        ``ds.split_desc``: what this one is; ``ds.evaluable`` is False for CUHK-SYSU;
        ``ds.single_gallery_shot`` is True for the classic CUHK03 protocol.
    dataset_splits(name, root=None) -> int
        viper, cuhk01: 20 (10 random id splits x 2 directions: split 2i queries camera A
        against camera B, split 2i+1 the reverse, both with the train ids of random split i);
        grid, prid, ilids: 10; cuhk03_release_classic[_detected]: 20; all others 1.
    evaluation_splits(name, root=None, split=-1) -> list[int]
        The splits to evaluate (-1: all). The protocol's number for a target is the mean
        (± std) over them: VIPeR and CUHK01 average 20 results, the others 10.

Names: ``viper``, ``grid``, ``prid``, ``ilids``, ``cuhk01``, ``cuhk02``, ``cuhksysu`` and
``cuhk03_release`` (labeled boxes, new 767/700 protocol), ``cuhk03_release_detected``
(detected boxes, new protocol), ``cuhk03_release_classic`` (labeled, classic 1,367/100
protocol over the 20 test sets of the .mat), ``cuhk03_release_classic_detected``.

Splits. The random splits are drawn once with a fixed seed (`SPLIT_SEED`) from the sorted
image lists, so they are the same on every machine, and stored beside the images in the
reference's own file and format, where torchreid would also read them: ``splits.json``
(VIPeR, GRID, CUHK01: a list of dicts with ``train``/``query``/``gallery`` rows
``[img_path, pid, camid]`` and ``num_*_pids``; iLIDS: the same keys holding image names)
and ``splits_single_shot.json`` (PRID: ``train``/``test`` lists of person ids). A file
already there, for instance written by the reference, is used as is: its image paths may
come from another machine and are matched to the images on disk by their trailing path
components (relative to the dataset folder) or, failing that, by a unique file name. A
file that does not fit the images on disk is a one-line `OsnasError` naming it. GRID's
splits are the official ones of ``features_and_partitions.mat`` (read only when its
``splits.json`` is missing). The original CUHK03 images live inside the .mat: they are
extracted once, as PNGs, into ``cuhk03/images_labeled/`` or ``cuhk03/images_detected/``.

Identities and cameras (as the reference): train ids relabelled 0..N-1 (sorted), cameras
0-based. Query/gallery ids: VIPeR the 0-based person index; GRID, PRID, iLIDS, CUHK02 the
number in the file name; CUHK01 that number - 1; CUHK03 classic the test id's 0-based rank,
new protocol the label of the config file. Cameras: VIPeR and PRID cam_a 0 / cam_b 1;
GRID the camera field - 1 (0-7); CUHK01 images 1-2 camera 0, 3-4 camera 1; iLIDS query 0 /
gallery 1 (train: the image number - 1, as the reference, the names carry no camera);
CUHK02 pair Pk cam1 2(k-1), cam2 2(k-1)+1; CUHK-SYSU 0; CUHK03 the view - 1. Distractors:
GRID gallery id 0, PRID cam_b ids 201-749; both stay in the gallery and never train
(``combine_all`` leaves them out).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from osnas.data.files import DatasetSpec, _check_root, _list_images, _relabel, _Skips
from osnas.errors import OsnasError, one_line

SPLIT_SEED = 0  # fixed: the drawn splits depend only on the images on disk
NUM_RANDOM_SPLITS = 10
PRID_SHARED = 200  # PRID2011 single-shot: ids 1..200 are seen by both cameras
PRID_MAX_ID = 749  # cam_b holds ids 1..749; 201..749 are gallery distractors
CUHK03_PAIRS = 5
CUHK03_SLOTS = 10  # images per identity in the .mat: 5 per view
CUHK03_CLASSIC_SPLITS = 20
EXTRACT_MARKER = "osnas_extracted.json"  # written last in images_<kind>/: extraction is complete

LAYOUTS = {
    "viper": "viper/VIPeR/cam_a/*.bmp and viper/VIPeR/cam_b/*.bmp",
    "grid": "grid/underground_reid/{probe,gallery}/*.jpeg and grid/underground_reid/features_and_partitions.mat",
    "prid": "prid2011/prid_2011/single_shot/{cam_a,cam_b}/person_NNNN.png",
    "ilids": "ilids/i-LIDS_Pedestrian/Persons/*.jpg",
    "cuhk01": "cuhk01/campus/*.png",
    "cuhk02": "cuhk02/Dataset/P1..P5/{cam1,cam2}/*.png",
    "cuhksysu": "cuhksysu/cropped_images/*.jpg",
    "cuhk03_release": "cuhk03/cuhk03_release/cuhk-03.mat (+ cuhk03/cuhk03_new_protocol_config_{labeled,detected}.mat)",
}
KINDS = tuple(LAYOUTS)


@dataclass
class Loaded:
    """What a reader returns; `datasets.build_dataset` wraps it into a ReidDataset."""

    folder: Path
    train: list
    query: list
    gallery: list
    num_splits: int = 1
    split_desc: str = ""
    evaluable: bool = True
    single_gallery_shot: bool = False
    distractor_pids: frozenset = frozenset()
    notes: list = field(default_factory=list)
    combine_from: list | None = None  # items joining train under combine_all (None: query + gallery)
    skipped: int = 0


def load(spec: DatasetSpec, root: Path, split: int, skips: _Skips) -> Loaded:
    """Read split `split` of the DG dataset `spec` from the data root."""
    d = root / spec.dirs[0]
    if not d.is_dir():
        _check_root(root)
        raise OsnasError(f"{d}: {spec.name} dataset folder not found; expected {LAYOUTS[spec.kind]} under {root}")
    r = _READERS[spec.kind](spec, d, split, skips)
    r.skipped = skips.n
    return r


# ============================================================================ helpers
def _need_dir(path: Path, layout: str) -> None:
    if not path.is_dir():
        raise OsnasError(f"{path}: folder not found; expected {layout}")


def _images(folder: Path, layout: str) -> list[str]:
    names = _list_images(folder)
    if not names:
        raise OsnasError(f"{folder}: no images found; expected {layout}")
    return [str(folder / n) for n in names]


def _check_split(name: str, split: int, n: int) -> None:
    if not 0 <= split < n:
        raise OsnasError(f"{name}: split {split} out of range; expected 0..{n - 1} ({n} evaluation splits)")


def _desc(split: int, n: int, train: list, query: list, gallery: list) -> str:
    qc = "/".join(str(c) for c in sorted({it[2] for it in query}))
    gc = "/".join(str(c) for c in sorted({it[2] for it in gallery}))
    n_tr = len({it[1] for it in train})
    return f"split {split} of {n}: {n_tr} train ids, query cam {qc} -> gallery cam {gc}"


def _rng() -> np.random.Generator:
    return np.random.default_rng(SPLIT_SEED)


def _draw(rng: np.random.Generator, n: int, n_train: int) -> tuple[list[int], list[int]]:
    """One random id split of positions 0..n-1: (sorted train positions, sorted test positions)."""
    order = rng.permutation(n)
    return sorted(order[:n_train].tolist()), sorted(order[n_train:].tolist())


def _write_json(path: Path, data, fallback: str = f"using the same splits drawn in memory (seed {SPLIT_SEED})") -> None:
    """Write atomically (concurrent processes agree: the content is deterministic). A folder
    that cannot be written is not fatal: the same content is made again next time."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        print(f"note: cannot write {path} ({e.strerror or e}); {fallback}", file=sys.stderr)


def _read_json(path: Path, expected: int, what: str):
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise OsnasError(f"{path}: cannot read splits file ({one_line(getattr(e, 'strerror', None) or e)[:160]})") \
            from None
    if not isinstance(data, list) or len(data) != expected:
        got = f"{len(data)} entries" if isinstance(data, list) else type(data).__name__
        raise OsnasError(f"{path}: splits file does not fit; expected a JSON list of {expected} splits ({what}), "
                         f"found {got}")
    for k, e in enumerate(data):
        if not isinstance(e, dict):
            raise OsnasError(f"{path}: split {k} is not a JSON object (expected {what})")
    return data


def _stored_splits(path: Path, expected: int, what: str, make):
    """The splits in `path`; drawn by `make()` and written there when the file is missing."""
    if path.exists():
        return _read_json(path, expected, what)
    splits = make()
    _write_json(path, splits)
    return splits


class _ImageIndex:
    """The images on disk, found from a path written elsewhere (maybe on another machine)."""

    def __init__(self, base: Path, paths: list[str]):
        self.base = base
        self.by_rel: dict[str, str] = {}
        seen: dict[str, list] = defaultdict(list)
        for p in paths:
            rel = Path(p).relative_to(base).as_posix()
            self.by_rel[rel] = p
            seen[rel.rsplit("/", 1)[-1]].append(p)
        self.by_name = {n: ps[0] for n, ps in seen.items() if len(ps) == 1}
        self.depth = max((r.count("/") + 1 for r in self.by_rel), default=1)

    def find(self, written) -> str | None:
        if not isinstance(written, str):
            return None
        parts = [x for x in written.replace("\\", "/").split("/") if x]
        for n in range(min(len(parts), self.depth), 0, -1):
            hit = self.by_rel.get("/".join(parts[-n:]))
            if hit is not None:
                return hit
        return self.by_name.get(parts[-1]) if parts else None


def _rows(path: Path, k: int, entry: dict, key: str, index: _ImageIndex) -> list:
    """Rows ``[img_path, pid, camid]`` of one split, mapped onto the images on disk."""
    rows = entry.get(key)
    if not isinstance(rows, list):
        raise OsnasError(f"{path}: split {k} has no list {key!r} (expected rows [img_path, pid, camid])")
    out = []
    for row in rows:
        ok = isinstance(row, (list, tuple)) and len(row) >= 3 and isinstance(row[0], str) and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in row[1:3])
        if not ok:
            raise OsnasError(f"{path}: split {k} {key}: expected rows [img_path, pid, camid] with ids >= 0, "
                             f"got {str(row)[:80]}")
        img = index.find(row[0])
        if img is None:
            raise OsnasError(f"{path}: split {k} {key} lists {row[0]}, not found under {index.base}; "
                             "the splits file does not fit the images on disk")
        out.append((img, int(row[1]), int(row[2]), 0))
    return out


def _triple_splits(path: Path, splits: list, index: _ImageIndex, all_images: list[str]) -> list[tuple]:
    """(train, query, gallery) of every split of a rows-format file; each split must hold
    every image once (true of VIPeR, GRID and CUHK01 splits)."""
    n_img = len(all_images)
    out = []
    for k, e in enumerate(splits):
        tr, q, g = (_rows(path, k, e, key, index) for key in ("train", "query", "gallery"))
        paths = [it[0] for it in tr + q + g]
        if len(paths) != n_img or len(set(paths)) != n_img:
            raise OsnasError(f"{path}: split {k} does not fit the images under {index.base}: expected each of the "
                             f"{n_img} images once in train+query+gallery, found {len(paths)} rows for "
                             f"{len(set(paths))} images")
        n_tr = len({it[1] for it in tr})
        if "num_train_pids" in e and e["num_train_pids"] != n_tr:
            raise OsnasError(f"{path}: split {k} says num_train_pids {e['num_train_pids']} but its train rows hold "
                             f"{n_tr} ids")
        out.append((tr, q, g))
    return out


def _checked(spec: DatasetSpec, split: int, n: int) -> int:
    _check_split(spec.name, split, n)
    return split


def _entry(train, query, gallery) -> dict:
    """One split in the reference's rows format (absolute image paths)."""
    ids = lambda rows: len({r[1] for r in rows})  # noqa: E731
    return {"train": train, "query": query, "gallery": gallery, "num_train_pids": ids(train),
            "num_query_pids": ids(query), "num_gallery_pids": ids(gallery)}


# ============================================================================ VIPeR
def _read_viper(spec: DatasetSpec, d: Path, split: int, skips: _Skips) -> Loaded:
    layout = LAYOUTS["viper"] + " (one image per person and camera)"
    base = d / "VIPeR"
    cam_a, cam_b = base / "cam_a", base / "cam_b"
    _need_dir(cam_a, layout)
    _need_dir(cam_b, layout)
    a, b = _images(cam_a, layout), _images(cam_b, layout)
    if len(a) != len(b) or len(a) < 2:
        raise OsnasError(f"{base}: expected as many images in cam_a/ as in cam_b/ (the i-th files of both are the "
                         f"same person), found {len(a)} and {len(b)}")
    n = len(a)

    def make():
        rng, out = _rng(), []
        for tr, te in (_draw(rng, n, n // 2) for _ in range(NUM_RANDOM_SPLITS)):
            train = [row for lab, i in enumerate(tr) for row in ([a[i], lab, 0], [b[i], lab, 1])]
            qa, gb = [[a[i], i, 0] for i in te], [[b[i], i, 1] for i in te]
            out += [_entry(train, qa, gb), _entry(train, gb, qa)]  # both directions, same train ids
        return out

    path = d / "splits.json"
    n_eval = 2 * NUM_RANDOM_SPLITS
    splits = _stored_splits(path, n_eval, "rows [img_path, pid, camid]", make)
    allimg = a + b
    tr, q, g = _triple_splits(path, splits, _ImageIndex(d, allimg), allimg)[_checked(spec, split, n_eval)]
    return Loaded(d, tr, q, g, n_eval, _desc(split, n_eval, tr, q, g))


# ============================================================================ CUHK01
_CUHK01_RE = re.compile(r"^(\d{4})(\d{3})\.")


def _read_cuhk01(spec: DatasetSpec, d: Path, split: int, skips: _Skips) -> Loaded:
    layout = LAYOUTS["cuhk01"] + " named PPPPNNN.png (person, image 1-4)"
    campus = d / "campus"
    _need_dir(campus, layout)
    items = []  # (path, person 0-based, camid)
    for p in _images(campus, layout):
        m = _CUHK01_RE.match(os.path.basename(p))
        img = int(m.group(2)) if m else 0
        if not m or not 1 <= img <= 4:
            skips.bad(f"{p}: file name does not match PPPPNNN.png with NNN 001-004 (expected e.g. 0001001.png)")
            continue
        items.append((p, int(m.group(1)) - 1, (img - 1) // 2))
    cams = defaultdict(set)
    for _, pid, cam in items:
        cams[pid].add(cam)
    one_view = [pid for pid, c in sorted(cams.items()) if len(c) < 2]
    if one_view:
        raise OsnasError(f"{campus}: person {one_view[0] + 1:04d} has images of one camera only; expected images 1-2 "
                         "(camera 0) and 3-4 (camera 1) for every person")
    persons = sorted(cams)
    if len(persons) < 2:
        raise OsnasError(f"{campus}: expected images of at least 2 persons (971 in CUHK01), found {len(persons)}")

    def make():
        rng, out = _rng(), []
        for tr, _ in (_draw(rng, len(persons), len(persons) // 2) for _ in range(NUM_RANDOM_SPLITS)):
            lab = {persons[i]: j for j, i in enumerate(tr)}
            train = [[p, lab[pid], cam] for p, pid, cam in items if pid in lab]
            test0 = [[p, pid, cam] for p, pid, cam in items if pid not in lab and cam == 0]
            test1 = [[p, pid, cam] for p, pid, cam in items if pid not in lab and cam == 1]
            out += [_entry(train, test0, test1), _entry(train, test1, test0)]
        return out

    path = d / "splits.json"
    n = 2 * NUM_RANDOM_SPLITS
    splits = _stored_splits(path, n, "rows [img_path, pid, camid]", make)
    allimg = [it[0] for it in items]
    tr, q, g = _triple_splits(path, splits, _ImageIndex(d, allimg), allimg)[_checked(spec, split, n)]
    return Loaded(d, tr, q, g, n, _desc(split, n, tr, q, g))


# ============================================================================ GRID
_GRID_RE = re.compile(r"^(\d+)_(\d+)_")


def _grid_folder(folder: Path, skips: _Skips) -> list:
    out = []
    for p in _images(folder, LAYOUTS["grid"]):
        m = _GRID_RE.match(os.path.basename(p))
        if not m or not 1 <= int(m.group(2)) <= 8:
            skips.bad(f"{p}: file name does not match IIII_C_... with camera C 1-8 (expected e.g. "
                      "0001_1_25004_107_32_130_184.jpeg)")
            continue
        out.append((p, int(m.group(1)), int(m.group(2)) - 1))
    return out


def _grid_train_ids(mat: Path, probe_ids: set) -> list[list[int]]:
    """The 10 official train-id lists of GRID's partition file (MATLAB v5)."""
    if not mat.is_file():
        raise OsnasError(f"{mat}: GRID partition file not found (expected features_and_partitions.mat with "
                         "'trainIdxAll', the 10 official splits)")
    from scipy.io import loadmat

    try:
        m = loadmat(str(mat), variable_names=["trainIdxAll"])  # skips the (large) features
    except Exception as e:  # scipy raises several types for damaged or non-MATLAB files
        raise OsnasError(f"{mat}: cannot read MATLAB file ({one_line(e)[:160]})") from None
    if "trainIdxAll" not in m:
        raise OsnasError(f"{mat}: no variable 'trainIdxAll' (expected the 10 official GRID splits)")
    cells = np.asarray(m["trainIdxAll"], dtype=object).ravel()
    if len(cells) != NUM_RANDOM_SPLITS:
        raise OsnasError(f"{mat}: 'trainIdxAll' holds {len(cells)} splits; expected {NUM_RANDOM_SPLITS}")
    want = len(probe_ids) // 2
    out = []
    for k, c in enumerate(cells):
        c = np.asarray(c)
        if c.dtype.names:  # a struct: the train ids are its third field (where the reference reads them)
            if len(c.dtype.names) < 3 or c.size < 1:
                raise OsnasError(f"{mat}: 'trainIdxAll' split {k} is a struct without a third field (the train ids)")
            c = np.asarray(c.ravel()[0][c.dtype.names[2]])
        try:
            ids = [int(v) for v in np.asarray(c, dtype=float).ravel()]
        except (TypeError, ValueError):
            raise OsnasError(f"{mat}: 'trainIdxAll' split {k} does not hold numbers (the train ids)") from None
        if len(ids) != want or len(set(ids)) != want or not set(ids) <= probe_ids:
            raise OsnasError(f"{mat}: 'trainIdxAll' split {k} does not fit the probe images: expected {want} distinct "
                             f"ids among the {len(probe_ids)} probe ids, found {len(set(ids))} distinct of {len(ids)} "
                             f"({len(set(ids) - probe_ids)} not in probe/)")
        out.append(ids)
    return out


def _read_grid(spec: DatasetSpec, d: Path, split: int, skips: _Skips) -> Loaded:
    base = d / "underground_reid"
    probe_dir, gallery_dir = base / "probe", base / "gallery"
    _need_dir(probe_dir, LAYOUTS["grid"])
    _need_dir(gallery_dir, LAYOUTS["grid"])
    probe, gallery = _grid_folder(probe_dir, skips), _grid_folder(gallery_dir, skips)
    probe_ids = {pid for _, pid, _ in probe}
    gal_ids = {pid for _, pid, _ in gallery if pid != 0}
    if 0 in probe_ids or probe_ids != gal_ids:
        raise OsnasError(f"{base}: probe/ and gallery/ do not pair up: expected the same person ids in both (and id 0, "
                         f"the distractors, in gallery/ only); probe has {len(probe_ids)} ids, gallery "
                         f"{len(gal_ids)}, {len(probe_ids ^ gal_ids)} unpaired")

    def make():
        out = []
        for ids in _grid_train_ids(base / "features_and_partitions.mat", probe_ids):
            lab = {pid: j for j, pid in enumerate(sorted(ids))}
            train = [[p, lab[pid], c] for p, pid, c in probe + gallery if pid in lab]
            out.append(_entry(train, [[p, pid, c] for p, pid, c in probe if pid not in lab],
                              [[p, pid, c] for p, pid, c in gallery if pid not in lab]))
        return out

    path = d / "splits.json"
    splits = _stored_splits(path, NUM_RANDOM_SPLITS, "rows [img_path, pid, camid]", make)
    allimg = [it[0] for it in probe + gallery]
    tr, q, g = _triple_splits(path, splits, _ImageIndex(d, allimg), allimg)[_checked(spec, split, NUM_RANDOM_SPLITS)]
    dis = {p for p, pid, _ in gallery if pid == 0}
    if not dis <= {it[0] for it in g if it[1] == 0}:
        raise OsnasError(f"{path}: split {split} does not keep the distractor images (id 0) in the gallery with id 0; "
                         "expected them in the gallery only")
    n_dis = sum(1 for it in g if it[1] == 0)
    return Loaded(d, tr, q, g, NUM_RANDOM_SPLITS, _desc(split, NUM_RANDOM_SPLITS, tr, q, g),
                  distractor_pids=frozenset({0}), notes=[] if n_dis else ["no distractors (id 0) in the gallery"])


# ============================================================================ PRID2011
_PRID_RE = re.compile(r"^person_(\d+)\.", re.IGNORECASE)


def _prid_folder(folder: Path, skips: _Skips) -> dict[int, str]:
    out = {}
    for p in _images(folder, LAYOUTS["prid"]):
        m = _PRID_RE.match(os.path.basename(p))
        if not m:
            skips.bad(f"{p}: file name does not match person_NNNN.png (expected e.g. person_0001.png)")
            continue
        out[int(m.group(1))] = p
    return out


def _read_prid(spec: DatasetSpec, d: Path, split: int, skips: _Skips) -> Loaded:
    base = d / "prid_2011" / "single_shot"
    cam_a, cam_b = base / "cam_a", base / "cam_b"
    _need_dir(cam_a, LAYOUTS["prid"])
    _need_dir(cam_b, LAYOUTS["prid"])
    a, b = _prid_folder(cam_a, skips), _prid_folder(cam_b, skips)
    shared = list(range(1, PRID_SHARED + 1))
    for folder, imgs in ((cam_a, a), (cam_b, b)):
        missing = [pid for pid in shared if pid not in imgs]
        if missing:
            raise OsnasError(f"{folder}: person_{missing[0]:04d}.png not found ({len(missing)} missing); expected "
                             f"persons 1-{PRID_SHARED} in both cam_a/ and cam_b/")

    def make():
        rng = _rng()
        return [{"train": [shared[i] for i in tr], "test": [shared[i] for i in te]}
                for tr, te in (_draw(rng, PRID_SHARED, PRID_SHARED // 2) for _ in range(NUM_RANDOM_SPLITS))]

    path = d / "splits_single_shot.json"
    splits = _stored_splits(path, NUM_RANDOM_SPLITS, "'train' and 'test' lists of person ids", make)
    for k, e in enumerate(splits):
        tr, te = e.get("train"), e.get("test")
        ok = all(isinstance(x, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in x)
                 for x in (tr, te))
        if not ok or len(set(tr)) != len(tr) or len(set(te)) != len(te) or set(tr) & set(te) \
                or set(tr) | set(te) != set(shared):
            raise OsnasError(f"{path}: split {k} does not fit; expected 'train' and 'test' lists of person ids that "
                             f"split 1-{PRID_SHARED} in two disjoint parts")
    _check_split(spec.name, split, NUM_RANDOM_SPLITS)
    e = splits[split]
    lab = {pid: j for j, pid in enumerate(sorted(e["train"]))}
    train = [(img[pid], lab[pid], cam, 0) for pid in sorted(lab) for img, cam in ((a, 0), (b, 1))]
    query = [(a[pid], pid, 0, 0) for pid in sorted(e["test"])]
    gallery = [(b[pid], pid, 1, 0) for pid in sorted(e["test"])]
    gallery += [(b[pid], pid, 1, 0) for pid in sorted(b) if PRID_SHARED < pid <= PRID_MAX_ID]
    dis = frozenset(range(PRID_SHARED + 1, PRID_MAX_ID + 1))
    notes = []
    unused = [pid for pid in a if pid > PRID_SHARED or pid < 1] + [pid for pid in b if pid > PRID_MAX_ID or pid < 1]
    if unused:
        notes.append(f"{len(unused)} image(s) not used (cam_a ids above {PRID_SHARED} are persons cam_b never saw)")
    return Loaded(d, train, query, gallery, NUM_RANDOM_SPLITS, _desc(split, NUM_RANDOM_SPLITS, train, query, gallery),
                  distractor_pids=dis, notes=notes)


# ============================================================================ iLIDS
_ILIDS_RE = re.compile(r"^(\d{4})(\d{3})")


def _read_ilids(spec: DatasetSpec, d: Path, split: int, skips: _Skips) -> Loaded:
    layout = LAYOUTS["ilids"] + " named PPPPNNN.jpg (person, image)"
    persons_dir = d / "i-LIDS_Pedestrian" / "Persons"
    _need_dir(persons_dir, layout)
    by_pid: dict[int, list[str]] = defaultdict(list)
    for p in _images(persons_dir, layout):
        name = os.path.basename(p)
        if not _ILIDS_RE.match(name):
            skips.bad(f"{p}: file name does not start with PPPPNNN (expected e.g. 0001001.jpg)")
            continue
        by_pid[int(name[:4])].append(name)
    single = [pid for pid, v in sorted(by_pid.items()) if len(v) < 2]
    if single:
        raise OsnasError(f"{persons_dir}: person {single[0]:04d} has {len(by_pid[single[0]])} image; expected at least "
                         "2 per person (one query, one gallery)")
    pids = sorted(by_pid)
    if len(pids) < 2:
        raise OsnasError(f"{persons_dir}: expected images of at least 2 persons (119 in iLIDS), found {len(pids)}")

    def make():
        rng, out = _rng(), []
        for _ in range(NUM_RANDOM_SPLITS):
            tr, te = _draw(rng, len(pids), len(pids) // 2)
            q, g = [], []
            for i in te:
                names = by_pid[pids[i]]
                j, k = rng.choice(len(names), 2, replace=False).tolist()
                q.append(names[j])
                g.append(names[k])
            out.append({"train": [n for i in tr for n in by_pid[pids[i]]], "query": q, "gallery": g})
        return out

    path = d / "splits.json"
    splits = _stored_splits(path, NUM_RANDOM_SPLITS, "'train'/'query'/'gallery' lists of image names", make)
    index = _ImageIndex(persons_dir, [str(persons_dir / n) for v in by_pid.values() for n in v])
    parsed = []
    for k, e in enumerate(splits):
        part = {}
        for key in ("train", "query", "gallery"):
            rows = e.get(key)
            if not isinstance(rows, list):
                raise OsnasError(f"{path}: split {k} has no list {key!r} (expected image names)")
            imgs = []
            for r in rows:
                img = index.find(r[0] if isinstance(r, list) and r else r)
                if img is None:
                    raise OsnasError(f"{path}: split {k} {key} lists {str(r)[:80]}, not found under {persons_dir}; "
                                     "the splits file does not fit the images on disk")
                imgs.append(img)
            part[key] = imgs
        pid_of = lambda p: int(os.path.basename(p)[:4])  # noqa: E731
        tr_ids = {pid_of(p) for p in part["train"]}
        q_ids, g_ids = [pid_of(p) for p in part["query"]], [pid_of(p) for p in part["gallery"]]
        if sorted(q_ids) != sorted(g_ids) or len(set(q_ids)) != len(q_ids) or tr_ids & set(q_ids) \
                or set(part["query"]) & set(part["gallery"]):
            raise OsnasError(f"{path}: split {k} does not fit; expected one query and one other gallery image for "
                             "each test person, and no test person in train")
        parsed.append(part)
    _check_split(spec.name, split, NUM_RANDOM_SPLITS)
    part = parsed[split]
    train = _relabel([(p, int(os.path.basename(p)[:4]), int(os.path.basename(p)[4:7]) - 1, 0) for p in part["train"]])
    query = [(p, int(os.path.basename(p)[:4]), 0, 0) for p in part["query"]]
    gallery = [(p, int(os.path.basename(p)[:4]), 1, 0) for p in part["gallery"]]
    return Loaded(d, train, query, gallery, NUM_RANDOM_SPLITS, _desc(split, NUM_RANDOM_SPLITS, train, query, gallery))


# ============================================================================ CUHK02
CUHK02_PAIRS = ("P1", "P2", "P3", "P4", "P5")
CUHK02_TEST_PAIR = "P5"


def _read_cuhk02(spec: DatasetSpec, d: Path, split: int, skips: _Skips) -> Loaded:
    _check_split(spec.name, split, 1)
    base = d / "Dataset"
    train_keyed, query, gallery = [], [], []
    for k, pair in enumerate(CUHK02_PAIRS):
        for v, cam in enumerate(("cam1", "cam2")):
            folder = base / pair / cam
            _need_dir(folder, LAYOUTS["cuhk02"])
            camid = 2 * k + v
            for p in _images(folder, LAYOUTS["cuhk02"]):
                token = os.path.basename(p).split("_", 1)[0]
                if "_" not in os.path.basename(p) or not token:
                    skips.bad(f"{p}: file name has no 'ID_' prefix (expected e.g. 001_1.png)")
                    continue
                if pair != CUHK02_TEST_PAIR:
                    train_keyed.append((p, (pair, token), camid))
                    continue
                try:
                    pid = int(token)
                except ValueError:
                    skips.bad(f"{p}: person id {token!r} is not a number (expected e.g. 001_1.png)")
                    continue
                (query if v == 0 else gallery).append((p, pid, camid, 0))
    keys = sorted({key for _, key, _ in train_keyed}, key=lambda t: (t[0], _natural(t[1])))
    lab = {key: j for j, key in enumerate(keys)}
    train = [(p, lab[key], cam, 0) for p, key, cam in train_keyed]
    return Loaded(d, train, query, gallery, 1, "", notes=[
        f"train: pairs {', '.join(CUHK02_PAIRS[:-1])}; query/gallery: pair {CUHK02_TEST_PAIR} cam1/cam2 "
        "(combine_all trains on all five)"])


def _natural(token: str):
    return (0, int(token), "") if token.isdigit() else (1, 0, token)


# ============================================================================ CUHK-SYSU
_SYSU_RE = re.compile(r"^p?(\d+)$", re.IGNORECASE)


def _read_cuhksysu(spec: DatasetSpec, d: Path, split: int, skips: _Skips) -> Loaded:
    _check_split(spec.name, split, 1)
    folder = d / "cropped_images"
    _need_dir(folder, LAYOUTS["cuhksysu"])
    items = []
    for p in _images(folder, LAYOUTS["cuhksysu"]):
        name = os.path.basename(p)
        m = _SYSU_RE.match(name.split("_", 1)[0]) if "_" in name else None
        if not m:
            skips.bad(f"{p}: file name does not start with a person id and '_' (expected e.g. p1_s1.jpg)")
            continue
        items.append((p, int(m.group(1)), 0, 0))
    if not items:
        raise OsnasError(f"{folder}: no usable images (expected files named like p1_s1.jpg)")
    return Loaded(d, _relabel(items), [], [], 1, "", evaluable=False)


# ============================================================================ CUHK03 (original release)
def _h5_cells(obj, mat: Path, what: str) -> np.ndarray:
    """Object references of a MATLAB v7.3 cell array, in MATLAB's (row, column) order
    (HDF5 stores MATLAB arrays transposed)."""
    import h5py

    if not isinstance(obj, h5py.Dataset) or h5py.check_ref_dtype(obj.dtype) is None:
        raise OsnasError(f"{mat}: {what} is not a cell array (expected MATLAB v7.3 object references)")
    return np.asarray(obj[()]).T


def _h5_open(mat: Path):
    import h5py

    if not mat.is_file():
        raise OsnasError(f"{mat}: CUHK03 file not found; expected {LAYOUTS['cuhk03_release']}")
    try:
        return h5py.File(str(mat), "r")
    except (OSError, ValueError) as e:
        raise OsnasError(f"{mat}: cannot read as a MATLAB v7.3 (HDF5) file ({one_line(e)[:160]})") from None


def _save_png(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG")
        os.replace(tmp, path)
    except OSError as e:
        raise OsnasError(f"{path}: cannot write extracted image ({e.strerror or e})") from None


def _cuhk03_extract_all(mat: Path, kind: str, out: Path) -> list[str]:
    """Write every image of `kind` as out/{pair}_{person:03d}_{view}_{slot:02d}.png (the
    names the new-protocol files list), skipping files already there; return the names."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OsnasError(f"{out}: cannot create image folder ({e.strerror or e})") from None
    names = []
    with _h5_open(mat) as f:
        try:
            if kind not in f:
                raise OsnasError(f"{mat}: no {kind!r} cell array (expected 'labeled', 'detected' and 'testsets')")
            pairs = _h5_cells(f[kind], mat, repr(kind)).ravel()
            if len(pairs) != CUHK03_PAIRS:
                raise OsnasError(f"{mat}: {kind!r} holds {len(pairs)} camera pairs; expected {CUHK03_PAIRS}")
            for c, ref in enumerate(pairs, 1):
                cell = _h5_cells(f[ref], mat, f"{kind!r} pair {c}")
                if cell.ndim != 2 or cell.shape[1] != CUHK03_SLOTS:
                    raise OsnasError(f"{mat}: {kind!r} pair {c} is a {'x'.join(map(str, cell.shape))} cell array; "
                                     f"expected persons x {CUHK03_SLOTS} images")
                for p in range(cell.shape[0]):
                    n0 = len(names)
                    for j in range(CUHK03_SLOTS):
                        ds = f[cell[p, j]]
                        if ds.ndim != 3 or int(np.asarray(ds.attrs.get("MATLAB_empty", 0)).ravel()[0]):
                            continue  # an empty cell: fewer than 10 images for this person
                        name = f"{c}_{p + 1:03d}_{1 if j < CUHK03_SLOTS // 2 else 2}_{j + 1:02d}.png"
                        if not (out / name).is_file():
                            arr = np.asarray(ds[()]).T  # MATLAB H x W x 3 is stored as 3 x W x H
                            if arr.shape[2] != 3 or arr.dtype != np.uint8:
                                raise OsnasError(f"{mat}: {kind!r} pair {c} person {p + 1} image {j + 1} is "
                                                 f"{arr.dtype} {'x'.join(map(str, arr.shape))}; expected H x W x 3 "
                                                 "uint8")
                            _save_png(arr, out / name)
                        names.append(name)
                    if len(names) == n0:
                        raise OsnasError(f"{mat}: {kind!r} pair {c} person {p + 1} has no image; expected 1-10")
        except OsnasError:
            raise
        except Exception as e:  # h5py raises KeyError/ValueError/OSError/TypeError on damaged structures
            raise OsnasError(f"{mat}: cannot read the {kind!r} images ({one_line(e)[:160]})") from None
    return names


def _cuhk03_images(mat: Path, kind: str, out: Path) -> list[str]:
    """Names of the extracted PNGs of `kind`; extracts them on first use (idempotent: a
    marker written last records the source file, so a changed .mat is extracted again)."""
    if not mat.is_file():
        raise OsnasError(f"{mat}: CUHK03 file not found; expected {LAYOUTS['cuhk03_release']}")
    st = mat.stat()
    stamp = {"source": str(mat), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "kind": kind}
    marker = out / EXTRACT_MARKER
    try:
        m = json.loads(marker.read_text())
        names = m["images"] if all(m.get(k) == v for k, v in stamp.items()) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) and (out / n).is_file() for n in names):
        names = _cuhk03_extract_all(mat, kind, out)
        _write_json(marker, {**stamp, "images": names}, "the images will be checked again next time")
    return names


def _cuhk03_testsets(mat: Path, persons: set) -> list[set]:
    with _h5_open(mat) as f:
        try:
            if "testsets" not in f:
                raise OsnasError(f"{mat}: no 'testsets' cell array (the {CUHK03_CLASSIC_SPLITS} classic test sets)")
            refs = _h5_cells(f["testsets"], mat, "'testsets'").ravel()
            if len(refs) != CUHK03_CLASSIC_SPLITS:
                raise OsnasError(f"{mat}: 'testsets' holds {len(refs)} test sets; expected {CUHK03_CLASSIC_SPLITS}")
            out = []
            for k, ref in enumerate(refs):
                a = np.asarray(f[ref][()]).T  # MATLAB 100 x 2 [pair, person], 1-based
                if a.ndim != 2 or a.shape[1] != 2:
                    raise OsnasError(f"{mat}: test set {k} has shape {a.shape[::-1]} in the file; expected "
                                     "[pair, person] rows")
                s = {(int(c), int(p)) for c, p in a}
                if not s <= persons:
                    raise OsnasError(f"{mat}: test set {k} names {len(s - persons)} person(s) without images")
                out.append(s)
            return out
        except OsnasError:
            raise
        except Exception as e:
            raise OsnasError(f"{mat}: cannot read 'testsets' ({one_line(e)[:160]})") from None


def _mat_field(m: dict, key: str, cfg: Path) -> np.ndarray:
    if key not in m:
        raise OsnasError(f"{cfg}: no variable {key!r}; expected train_idx, query_idx, gallery_idx, labels, filelist")
    return np.asarray(m[key]).ravel()


def _cuhk03_new_protocol(d: Path, kind: str, out: Path, names: list[str]) -> tuple[list, list, list, Path]:
    fname = f"cuhk03_new_protocol_config_{kind}.mat"
    cands = [d / fname, d / "cuhk03_release" / fname]
    cfg = next((c for c in cands if c.is_file()), None)
    if cfg is None:
        raise OsnasError(f"{cands[0]}: new-protocol split file not found (the 767/700 protocol needs it; the classic "
                         "protocol is cuhk03_release_classic)")
    from scipy.io import loadmat

    try:
        m = loadmat(str(cfg))
    except Exception as e:
        raise OsnasError(f"{cfg}: cannot read MATLAB file ({one_line(e)[:160]})") from None
    try:
        files = [str(np.asarray(x).ravel()[0]) for x in _mat_field(m, "filelist", cfg)]
        labels = [int(v) for v in _mat_field(m, "labels", cfg)]
        idx = {k: [int(v) - 1 for v in _mat_field(m, f"{k}_idx", cfg)] for k in ("train", "query", "gallery")}
    except OsnasError:
        raise
    except (TypeError, ValueError, IndexError) as e:
        raise OsnasError(f"{cfg}: unexpected content ({one_line(e)[:120]}); expected numeric indices/labels and a "
                         "cell array of file names") from None
    if len(files) != len(labels):
        raise OsnasError(f"{cfg}: filelist has {len(files)} names but labels {len(labels)}; "
                         "expected one label per file")
    for k, v in idx.items():
        if v and (min(v) < 0 or max(v) >= len(files)):
            raise OsnasError(f"{cfg}: {k}_idx holds indices outside 1..{len(files)} (1-based into filelist)")
    have = set(names)
    missing = [n for n in files if n not in have]
    if missing:
        raise OsnasError(f"{cfg}: filelist names {missing[0]} ({len(missing)} in all), not among the images of {out} "
                         "extracted from cuhk-03.mat; expected the config of the same release")

    def items(ix):
        return [(str(out / files[i]), labels[i], int(files[i].split("_")[2]) - 1, 0) for i in ix]

    return _relabel(items(idx["train"])), items(idx["query"]), items(idx["gallery"]), cfg


def _read_cuhk03_release(spec: DatasetSpec, d: Path, split: int, skips: _Skips) -> Loaded:
    kind, protocol = spec.variant
    mat = d / "cuhk03_release" / "cuhk-03.mat"
    out = d / f"images_{kind}"
    names = _cuhk03_images(mat, kind, out)
    if protocol == "new":
        _check_split(spec.name, split, 1)
        train, query, gallery, cfg = _cuhk03_new_protocol(d, kind, out, names)
        return Loaded(d, train, query, gallery, 1, "", notes=[f"{kind} images in {out}; split from {cfg.name}"])
    meta = [(tuple(int(x) for x in n.split("_")[:3]), str(out / n)) for n in names]  # ((pair, person, view), path)
    persons = {(c, p) for (c, p, _), _ in meta}
    tests = _cuhk03_testsets(mat, persons)
    _check_split(spec.name, split, CUHK03_CLASSIC_SPLITS)
    test = tests[split]
    tr_lab = {key: j for j, key in enumerate(sorted(persons - test))}
    te_lab = {key: j for j, key in enumerate(sorted(test))}
    train = [(path, tr_lab[(c, p)], v - 1, 0) for (c, p, v), path in meta if (c, p) in tr_lab]
    test_items = [(path, te_lab[(c, p)], v - 1, 0) for (c, p, v), path in meta if (c, p) in te_lab]
    return Loaded(d, train, list(test_items), list(test_items), CUHK03_CLASSIC_SPLITS,
                  _desc(split, CUHK03_CLASSIC_SPLITS, train, test_items, test_items), single_gallery_shot=True,
                  combine_from=list(test_items),
                  notes=[f"{kind} images in {out}; classic protocol: query = gallery = the test images, "
                         "scored with one gallery image per id (single_gallery_shot)"])


_READERS = {
    "viper": _read_viper,
    "grid": _read_grid,
    "prid": _read_prid,
    "ilids": _read_ilids,
    "cuhk01": _read_cuhk01,
    "cuhk02": _read_cuhk02,
    "cuhksysu": _read_cuhksysu,
    "cuhk03_release": _read_cuhk03_release,
}
