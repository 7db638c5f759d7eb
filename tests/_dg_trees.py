"""Tiny stand-ins of the domain-generalisation datasets, in the folder layouts users have.

Each ``make_*`` writes one dataset under a data root and returns what the test needs to
know about it (ids, files). Images are a few pixels; the .mat files are written in the
same structure as the real ones: GRID's partition file as MATLAB v5 (scipy.io.savemat),
``cuhk-03.mat`` as MATLAB v7.3 (HDF5 with object references, arrays transposed) and the
CUHK03 new-protocol configs as MATLAB v5.
"""

from __future__ import annotations

import io
from itertools import count
from pathlib import Path

import numpy as np
from PIL import Image


def image_bytes(fmt: str = "PNG", w: int = 4, h: int = 8, seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


_BYTES: dict = {}


def touch(folder: Path, names, fmt: str = "PNG") -> None:
    if fmt not in _BYTES:
        _BYTES[fmt] = image_bytes(fmt)
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(_BYTES[fmt])


# ============================================================================ small test sets
def make_viper(root: Path, n: int = 6) -> list[str]:
    """n persons; the i-th files of cam_a/ and cam_b/ are person i (names differ per camera)."""
    base = root / "viper" / "VIPeR"
    touch(base / "cam_a", [f"{i * 7:03d}_{45 + i}.bmp" for i in range(n)], "BMP")
    touch(base / "cam_b", [f"{i * 7:03d}_{90 + 3 * i}.bmp" for i in range(n)], "BMP")
    return sorted(f"{i * 7:03d}" for i in range(n))


def grid_train_ids(n_ids: int, n_splits: int = 10) -> list[list[int]]:
    """Deterministic 'official' splits for a GRID stand-in: half of ids 1..n_ids each."""
    r = np.random.default_rng(42)
    return [(r.permutation(n_ids)[: n_ids // 2] + 1).tolist() for _ in range(n_splits)]


def write_grid_mat(path: Path, splits: list[list[int]]) -> None:
    """trainIdxAll: 1 x K cell of 1x1 structs whose third field holds the 1 x 125 train ids."""
    from scipy.io import savemat

    cells = np.empty((1, len(splits)), dtype=object)
    for k, ids in enumerate(splits):
        s = np.zeros((1, 1), dtype=[("idxProbe", "O"), ("idxGallery", "O"), ("idxTrain", "O")])
        s[0, 0]["idxProbe"] = np.array([[1.0]])
        s[0, 0]["idxGallery"] = np.array([[2.0]])
        s[0, 0]["idxTrain"] = np.asarray(ids, dtype=float).reshape(1, -1)
        cells[0, k] = s
    savemat(str(path), {"trainIdxAll": cells, "features": np.zeros((2, 2))})


def make_grid(root: Path, n_ids: int = 8, n_dis: int = 3, mat: bool = True) -> dict:
    """Probe: one image per id 1..n_ids; gallery: one per id + n_dis distractors (id 0).
    Cameras 1-8 in the names: probe id i camera (i % 8) + 1, gallery the next one."""
    base = root / "grid" / "underground_reid"
    touch(base / "probe", [f"{i:04d}_{i % 8 + 1}_25004_107_32_130_184.jpeg" for i in range(1, n_ids + 1)], "JPEG")
    touch(base / "gallery", [f"{i:04d}_{(i + 1) % 8 + 1}_26000_10_2_13_18.jpeg" for i in range(1, n_ids + 1)]
          + [f"0000_{k % 8 + 1}_3000{k}_1_1_1_1.jpeg" for k in range(n_dis)], "JPEG")
    splits = grid_train_ids(n_ids)
    if mat:
        write_grid_mat(base / "features_and_partitions.mat", splits)
    return {"splits": splits, "base": base}


def make_prid(root: Path, extra_a: int = 3, extra_b: int = 5) -> Path:
    """cam_a persons 1..200+extra_a, cam_b persons 1..200+extra_b (201.. are others)."""
    base = root / "prid2011" / "prid_2011" / "single_shot"
    touch(base / "cam_a", [f"person_{i:04d}.png" for i in range(1, 201 + extra_a)])
    touch(base / "cam_b", [f"person_{i:04d}.png" for i in range(1, 201 + extra_b)])
    return base


def make_ilids(root: Path, n_ids: int = 7) -> dict:
    """Person i (1-based) has 2 + (i % 3) images named PPPPNNN.jpg."""
    folder = root / "ilids" / "i-LIDS_Pedestrian" / "Persons"
    per = {i: 2 + i % 3 for i in range(1, n_ids + 1)}
    touch(folder, [f"{i:04d}{k:03d}.jpg" for i, n in per.items() for k in range(1, n + 1)], "JPEG")
    return per


def make_cuhk01(root: Path, n: int = 7) -> Path:
    folder = root / "cuhk01" / "campus"
    touch(folder, [f"{i:04d}{k:03d}.png" for i in range(1, n + 1) for k in range(1, 5)])
    return folder


# ============================================================================ training sets
CUHK02_SIZES = {"P1": 3, "P2": 2, "P3": 2, "P4": 2, "P5": 3}


def make_cuhk02(root: Path, sizes=CUHK02_SIZES) -> dict:
    """Each pair numbers its persons from 1 again (ids are per pair); 2 images per camera."""
    base = root / "cuhk02" / "Dataset"
    for pair, n in sizes.items():
        for cam in ("cam1", "cam2"):
            touch(base / pair / cam, [f"{i:03d}_{cam[-1]}{k}.png" for i in range(1, n + 1) for k in (1, 2)])
    return dict(sizes)


def make_cuhksysu(root: Path, ids=(3, 15, 7, 1200)) -> list[int]:
    folder = root / "cuhksysu" / "cropped_images"
    touch(folder, [f"p{pid}_s{pid * 10 + k}.jpg" for pid in ids for k in range(2)], "JPEG")
    return sorted(ids)


def make_market_like(base: Path, first_id: int, n_train: int = 3, n_test: int = 2, cams: int = 3,
                     distractor: bool = True) -> Path:
    """A Market-1501-layout stand-in (also DukeMTMC-reID, CUHK03-NP): 2 images per train id,
    one query and one gallery image per test id, and a distractor (id 0) if asked."""
    touch(base / "bounding_box_train", [f"{first_id + i:04d}_c{(i + k) % cams + 1}s1_00{k}001_01.jpg"
                                        for i in range(n_train) for k in range(2)], "JPEG")
    test = range(first_id + n_train, first_id + n_train + n_test)
    touch(base / "query", [f"{p:04d}_c1s1_000101_00.jpg" for p in test], "JPEG")
    touch(base / "bounding_box_test", [f"{p:04d}_c2s1_000201_01.jpg" for p in test]
          + (["0000_c3s1_000001_01.jpg"] if distractor else []), "JPEG")
    return base


# ============================================================================ CUHK03 release
CUHK03_PERSONS = (4, 3, 3, 2, 2)  # persons per camera pair
CUHK03_H, CUHK03_W = 8, 4


def cuhk03_empty(kind: str, c: int, p: int, j: int) -> bool:
    """Which cells of the stand-in are empty (0-based pair c, person p, slot j)."""
    if kind == "labeled":
        return (c + p) % 3 == 0 and j in (3, 4, 8)
    return p == 1 and j == 9


def cuhk03_pixels(c: int, p: int, j: int) -> np.ndarray:
    """MATLAB-order H x W x 3 image; channel values encode (pair, person, slot), one marked pixel."""
    img = np.zeros((CUHK03_H, CUHK03_W, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = c + 1, p + 1, j + 1
    img[5, 2, 0] = 200  # row 5, column 2: checks the transposition on extraction
    return img


def cuhk03_testsets(n: int = 20) -> list[list[tuple[int, int]]]:
    """n classic test sets of 2 persons from pairs 1-3 ([pair, person], 1-based)."""
    pool = [(c + 1, p + 1) for c in range(3) for p in range(CUHK03_PERSONS[c])]
    r = np.random.default_rng(7)
    return [sorted(pool[i] for i in r.choice(len(pool), 2, replace=False)) for _ in range(n)]


def write_cuhk03_mat(path: Path, testsets=None, kinds=("labeled", "detected"), pairs=CUHK03_PERSONS) -> None:
    """cuhk-03.mat as MATLAB v7.3 writes it: 'labeled'/'detected' 5x1 cells (stored 1x5) of
    persons x 10 cells (stored 10 x persons) of H x W x 3 uint8 images (stored 3 x W x H),
    empty cells as MATLAB_empty placeholders; 'testsets' 20x1 cell (stored 1x20) of
    100 x 2 doubles (stored 2 x 100)."""
    import h5py

    testsets = cuhk03_testsets() if testsets is None else testsets
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        n = count()

        def put(arr, cls: str, empty: bool = False):
            ds = refs.create_dataset(f"r{next(n)}", data=arr)
            ds.attrs["MATLAB_class"] = np.bytes_(cls)
            if empty:
                ds.attrs["MATLAB_empty"] = np.uint8(1)
            return ds.ref

        def cell(matlab_shape, refs_list, name=None):
            a = np.empty(matlab_shape, dtype=h5py.ref_dtype)
            for i, r in enumerate(refs_list):
                a[np.unravel_index(i, matlab_shape, order="F")] = r
            if name is None:
                ds = refs.create_dataset(f"r{next(n)}", data=a.T, dtype=h5py.ref_dtype)
            else:
                ds = f.create_dataset(name, data=a.T, dtype=h5py.ref_dtype)
            ds.attrs["MATLAB_class"] = np.bytes_("cell")
            return ds.ref

        for kind in kinds:
            pair_refs = []
            for c, n_p in enumerate(pairs):
                imgs = {}
                for p in range(n_p):
                    for j in range(10):
                        if cuhk03_empty(kind, c, p, j):
                            imgs[(p, j)] = put(np.zeros(2, np.uint64), "double", empty=True)
                        else:
                            imgs[(p, j)] = put(cuhk03_pixels(c, p, j).T, "uint8")
                # MATLAB persons x 10 cell, column-major listing
                pair_refs.append(cell((n_p, 10), [imgs[(p, j)] for j in range(10) for p in range(n_p)]))
            cell((len(pairs), 1), pair_refs, name=kind)
        ts = [put(np.asarray(t, dtype=float).T, "double") for t in testsets]
        cell((len(ts), 1), ts, name="testsets")


def cuhk03_names(kind: str) -> list[str]:
    """The PNG names the reader writes for the stand-in."""
    return sorted(f"{c + 1}_{p + 1:03d}_{1 if j < 5 else 2}_{j + 1:02d}.png" for c, n_p in enumerate(CUHK03_PERSONS)
                  for p in range(n_p) for j in range(10) if not cuhk03_empty(kind, c, p, j))


def write_cuhk03_config(path: Path, kind: str, n_train_persons: int = 8) -> dict:
    """A new-protocol config (MATLAB v5): the first persons train; of each other person the
    first image of each view is a query, the rest gallery. Labels = global person number."""
    from scipy.io import savemat

    names = cuhk03_names(kind)
    persons = sorted({tuple(int(x) for x in n.split("_")[:2]) for n in names})
    label = {cp: i + 1 for i, cp in enumerate(persons)}
    train_p = set(persons[:n_train_persons])
    tr, q, g, seen = [], [], [], set()
    for i, nme in enumerate(names, 1):
        c, p, v = (int(x) for x in nme.split("_")[:3])
        if (c, p) in train_p:
            tr.append(i)
        elif (c, p, v) not in seen:
            seen.add((c, p, v))
            q.append(i)
        else:
            g.append(i)
    fl = np.empty((len(names), 1), dtype=object)
    fl[:, 0] = names
    col = lambda v: np.asarray(v, dtype=float).reshape(-1, 1)  # noqa: E731
    savemat(str(path), {"filelist": fl, "labels": col([label[tuple(int(x) for x in n.split("_")[:2])] for n in names]),
                        "camId": col([int(n.split("_")[2]) for n in names]), "train_idx": col(tr),
                        "query_idx": col(q), "gallery_idx": col(g)})
    return {"names": names, "train": tr, "query": q, "gallery": g, "label": label}


def make_cuhk03_release(root: Path, configs: bool = True) -> Path:
    d = root / "cuhk03"
    write_cuhk03_mat(d / "cuhk03_release" / "cuhk-03.mat")
    if configs:
        for kind in ("labeled", "detected"):
            write_cuhk03_config(d / f"cuhk03_new_protocol_config_{kind}.mat", kind)
    return d


def make_all(root: Path) -> None:
    """Every DG stand-in plus Market, Duke and CUHK03-NP stand-ins (the sources of the protocol)."""
    make_market_like(root / "market1501" / "Market-1501-v15.09.15", 1)
    make_market_like(root / "dukemtmc-reid" / "DukeMTMC-reID", 1, cams=8, distractor=False)
    make_market_like(root / "cuhk03-np" / "labeled", 1, cams=2, distractor=False)
    make_cuhk02(root)
    make_cuhksysu(root)
    make_cuhk03_release(root)
    make_viper(root)
    make_grid(root)
    make_prid(root)
    make_ilids(root)
    make_cuhk01(root)
