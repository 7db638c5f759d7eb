"""The datasets of the domain-generalisation benchmarks (osnas.data.dg_sets): tiny trees in
the layouts users have, checked against the reference's identity, camera and split
conventions; bad inputs; and the whole DG protocol's data side on stand-ins."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

import _dg_trees as T
from osnas.data import (
    DomainBalancedPKSampler,
    build_dataset,
    build_multisource,
    build_train_sampler,
    dataset_splits,
    evaluation_splits,
    run_data_info,
)
from osnas.errors import OsnasError


def _paths(items) -> set:
    return {it[0] for it in items}


def _ids(items) -> set:
    return {it[1] for it in items}


def _one_line_error(match: str, fn, *a, **kw) -> str:
    with pytest.raises(OsnasError) as e:
        fn(*a, **kw)
    msg = str(e.value)
    assert "\n" not in msg and match in msg, msg
    return msg


# ============================================================================ VIPeR
def test_viper_splits_and_directions(data_root):
    T.make_viper(data_root, n=6)
    cam_a = sorted(os.listdir(data_root / "viper" / "VIPeR" / "cam_a"))
    cam_b = sorted(os.listdir(data_root / "viper" / "VIPeR" / "cam_b"))
    assert dataset_splits("viper", data_root) == 20
    for r in range(10):
        fwd, back = build_dataset("viper", data_root, split=2 * r), build_dataset("viper", data_root, split=2 * r + 1)
        assert fwd.num_splits == back.num_splits == 20 and (fwd.split, back.split) == (2 * r, 2 * r + 1)
        assert fwd.train == back.train  # both directions of one random split train on the same ids
        assert fwd.num_train_pids == 3 and len(fwd.train) == 6 and sorted(_ids(fwd.train)) == [0, 1, 2]
        assert Counter(it[2] for it in fwd.train) == {0: 3, 1: 3}
        # cam_a -> cam_b, then cam_b -> cam_a
        assert {it[2] for it in fwd.query} == {0} and {it[2] for it in fwd.gallery} == {1}
        assert {it[2] for it in back.query} == {1} and {it[2] for it in back.gallery} == {0}
        assert (_paths(fwd.query), _paths(fwd.gallery)) == (_paths(back.gallery), _paths(back.query))
        # 3 test persons, one image each side; the pid is the person index: i-th files pair up
        assert len(fwd.query) == len(fwd.gallery) == 3 and _ids(fwd.query) == _ids(fwd.gallery)
        for p, pid, cam, _ in fwd.query + fwd.gallery:
            assert os.path.basename(p) == (cam_a if cam == 0 else cam_b)[pid]
        # train and test persons are disjoint: no image in both, together all 12 images
        assert not _paths(fwd.train) & _paths(fwd.query + fwd.gallery)
        assert len(_paths(fwd.train + fwd.query + fwd.gallery)) == 12
    test_sets = {frozenset(_ids(build_dataset("viper", data_root, split=2 * r).query)) for r in range(10)}
    assert len(test_sets) > 1  # random splits differ
    _one_line_error("split 20 out of range; expected 0..19", build_dataset, "viper", data_root, split=20)


def test_viper_splits_file_is_stored_and_deterministic(data_root):
    T.make_viper(data_root, n=8)
    path = data_root / "viper" / "splits.json"
    ds = build_dataset("viper", data_root, split=5)
    first = json.loads(path.read_text())
    # the reference's format: 20 dicts of rows [img_path, pid, camid] and the id counts
    assert len(first) == 20 and set(first[0]) == {"train", "query", "gallery", "num_train_pids", "num_query_pids",
                                                   "num_gallery_pids"}
    assert first[0]["num_train_pids"] == 4 and all(len(row) == 3 for row in first[0]["train"])
    path.unlink()  # drawn again with the fixed seed: the same splits
    assert build_dataset("viper", data_root, split=5).query == ds.query
    assert json.loads(path.read_text()) == first
    # a stored file wins over a fresh draw (it is read, not redrawn)
    edited = [first[1]] + first[1:]
    path.write_text(json.dumps(edited))
    assert build_dataset("viper", data_root, split=0).query == build_dataset("viper", data_root, split=1).query


def test_viper_reads_reference_splits_as_is(data_root):
    T.make_viper(data_root, n=6)
    a = sorted(os.listdir(data_root / "viper" / "VIPeR" / "cam_a"))
    b = sorted(os.listdir(data_root / "viper" / "VIPeR" / "cam_b"))
    far = "/home/someone/reid-data/viper/VIPeR"  # written on another machine
    split = {"train": [[f"{far}/cam_a/{a[i]}", j, 0] for j, i in enumerate((1, 4, 5))]
             + [[f"{far}/cam_b/{b[i]}", j, 1] for j, i in enumerate((1, 4, 5))],
             "query": [[f"{far}/cam_b/{b[i]}", j, 1] for j, i in enumerate((0, 2, 3))],
             "gallery": [[f"{far}/cam_a/{a[i]}", j, 0] for j, i in enumerate((0, 2, 3))],
             "num_train_pids": 3, "num_query_pids": 3, "num_gallery_pids": 3}
    path = data_root / "viper" / "splits.json"
    path.write_text(json.dumps([split] * 20))
    ds = build_dataset("viper", data_root, split=7)
    base = data_root / "viper" / "VIPeR"
    assert ds.query == [(str(base / "cam_b" / b[i]), j, 1, 0) for j, i in enumerate((0, 2, 3))]  # pids as written
    assert sorted(ds.train) == sorted([(str(base / "cam_a" / a[i]), j, 0, 0) for j, i in enumerate((1, 4, 5))]
                                      + [(str(base / "cam_b" / b[i]), j, 1, 0) for j, i in enumerate((1, 4, 5))])
    # Windows-style paths map too
    win = json.loads(json.dumps([split] * 20).replace("/", "\\\\"))
    path.write_text(json.dumps(win))
    assert build_dataset("viper", data_root, split=7).query == ds.query
    # an image of the file that is not on disk
    bad = json.loads(json.dumps(split))
    bad["query"][0][0] = f"{far}/cam_b/999_0.bmp"
    path.write_text(json.dumps([split] * 19 + [bad]))
    _one_line_error(f"{path}: split 19 query lists {far}/cam_b/999_0.bmp, not found", build_dataset, "viper",
                    data_root)
    # wrong number of splits, wrong coverage, not JSON
    path.write_text(json.dumps([split] * 10))
    _one_line_error(f"{path}: splits file does not fit; expected a JSON list of 20 splits", build_dataset, "viper",
                    data_root)
    short = json.loads(json.dumps(split))
    short["gallery"].pop()
    path.write_text(json.dumps([short] * 20))
    _one_line_error(f"{path}: split 0 does not fit the images", build_dataset, "viper", data_root)
    path.write_text("[{")
    _one_line_error(f"{path}: cannot read splits file", build_dataset, "viper", data_root)


# ============================================================================ CUHK01
def test_cuhk01(data_root):
    T.make_cuhk01(data_root, n=7)
    assert dataset_splits("cuhk01", data_root) == 20
    fwd, back = build_dataset("cuhk01", data_root, split=6), build_dataset("cuhk01", data_root, split=7)
    assert fwd.train == back.train and fwd.num_train_pids == 3 and len(fwd.train) == 12  # 7 // 2 ids x 4 images
    # images 1-2 camera 0, 3-4 camera 1, for train and test alike
    for p, _, cam, _ in fwd.train + fwd.query + fwd.gallery:
        assert cam == (int(os.path.basename(p)[4:7]) - 1) // 2
    assert {it[2] for it in fwd.query} == {0} and {it[2] for it in fwd.gallery} == {1}
    assert {it[2] for it in back.query} == {1} and {it[2] for it in back.gallery} == {0}
    # test ids: the file's person number - 1; 4 test persons with 2 images per camera
    assert all(pid == int(os.path.basename(p)[:4]) - 1 for p, pid, _, _ in fwd.query + fwd.gallery)
    assert len(_ids(fwd.query)) == 4 and len(fwd.query) == len(fwd.gallery) == 8
    train_persons = {os.path.basename(p)[:4] for p in _paths(fwd.train)}
    assert not train_persons & {os.path.basename(p)[:4] for p in _paths(fwd.query)}
    assert len(_paths(fwd.train + fwd.query + fwd.gallery)) == 28


def test_cuhk01_bad_names(data_root):
    folder = T.make_cuhk01(data_root, n=3)
    (folder / "0002003.png").unlink()
    (folder / "0002004.png").unlink()
    _one_line_error(f"{folder}: person 0002 has images of one camera only", build_dataset, "cuhk01", data_root)
    T.touch(folder, ["0002003.png", "0002004.png", "0003009.png"])
    _one_line_error("0003009.png: file name does not match", build_dataset, "cuhk01", data_root)
    assert build_dataset("cuhk01", data_root, skip_unparsable=True).skipped == 1


# ============================================================================ GRID
def test_grid_official_splits(data_root):
    info = T.make_grid(data_root, n_ids=8, n_dis=3)
    assert dataset_splits("grid", data_root) == 10
    for k, train_ids in enumerate(info["splits"]):
        ds = build_dataset("grid", data_root, split=k)
        names = lambda items: {os.path.basename(it[0]) for it in items}  # noqa: E731
        # train: probe and gallery images of the split's 4 ids, relabelled 0..3
        assert {int(n[:4]) for n in names(ds.train)} == set(train_ids) and len(ds.train) == 8
        assert sorted(_ids(ds.train)) == [0, 1, 2, 3]
        # query: the probe images of the other ids, with their own ids; gallery: theirs + distractors
        test_ids = set(range(1, 9)) - set(train_ids)
        assert _ids(ds.query) == test_ids and len(ds.query) == 4
        assert _ids(ds.gallery) == test_ids | {0} and len(ds.gallery) == 4 + 3
        assert all("/probe/" in p for p in _paths(ds.query)) and all("/gallery/" in p for p in _paths(ds.gallery))
        # cameras: the name's second field - 1
        for p, _, cam, _ in ds.train + ds.query + ds.gallery:
            assert cam == int(os.path.basename(p).split("_")[1]) - 1
        # distractors in the gallery only, with id 0
        dis = {p for p in _paths(ds.gallery + ds.train + ds.query) if os.path.basename(p).startswith("0000_")}
        assert len(dis) == 3 and dis == {it[0] for it in ds.gallery if it[1] == 0}
        assert ds.distractor_pids == frozenset({0})
    # combine_all trains on everything but the distractors
    ds = build_dataset("grid", data_root, combine_all=True)
    assert len(ds.train) == 16 and ds.num_train_pids == 8 and not any("/0000_" in p for p in _paths(ds.train))


def test_grid_mat_only_needed_without_splits_file(data_root):
    info = T.make_grid(data_root, n_ids=8)
    mat = info["base"] / "features_and_partitions.mat"
    q0 = build_dataset("grid", data_root, split=3).query
    mat.unlink()
    assert build_dataset("grid", data_root, split=3).query == q0  # splits.json is enough
    (data_root / "grid" / "splits.json").unlink()
    _one_line_error(f"{mat}: GRID partition file not found", build_dataset, "grid", data_root)
    mat.write_bytes(b"MATLAB 5.0 MAT-file, but not really" + bytes(200))
    _one_line_error(f"{mat}: cannot read MATLAB file", build_dataset, "grid", data_root)
    T.write_grid_mat(mat, info["splits"][:9])
    _one_line_error(f"{mat}: 'trainIdxAll' holds 9 splits; expected 10", build_dataset, "grid", data_root)
    T.write_grid_mat(mat, info["splits"][:9] + [[1, 2, 3, 99]])
    _one_line_error(f"{mat}: 'trainIdxAll' split 9 does not fit the probe images", build_dataset, "grid", data_root)
    T.write_grid_mat(mat, info["splits"])
    assert build_dataset("grid", data_root, split=3).query == q0  # the official splits: same again


def test_grid_unpaired_probe(data_root):
    info = T.make_grid(data_root, n_ids=8)
    next((info["base"] / "gallery").glob("0005_*")).unlink()
    _one_line_error(f"{info['base']}: probe/ and gallery/ do not pair up", build_dataset, "grid", data_root)


# ============================================================================ PRID2011
def test_prid_single_shot(data_root):
    T.make_prid(data_root, extra_a=3, extra_b=5)
    assert dataset_splits("prid", data_root) == 10
    seen_test = set()
    for k in range(10):
        ds = build_dataset("prid", data_root, split=k)
        train_files = {os.path.basename(p) for p in _paths(ds.train)}
        train_ids = {int(n[7:11]) for n in train_files}
        assert len(train_ids) == 100 and train_ids <= set(range(1, 201)) and len(ds.train) == 200
        assert sorted(_ids(ds.train)) == list(range(100))
        assert Counter(it[2] for it in ds.train) == {0: 100, 1: 100}
        test_ids = set(range(1, 201)) - train_ids
        # query: cam_a images of the test ids; gallery: their cam_b images + cam_b ids 201..205
        assert _ids(ds.query) == test_ids and {it[2] for it in ds.query} == {0}
        assert all("/cam_a/" in p for p in _paths(ds.query))
        assert _ids(ds.gallery) == test_ids | set(range(201, 206)) and {it[2] for it in ds.gallery} == {1}
        assert all("/cam_b/" in p for p in _paths(ds.gallery)) and len(ds.gallery) == 105
        # cam_a persons above 200 are nobody in cam_b: not used at all
        assert not any(int(os.path.basename(p)[7:11]) > 200 for p in _paths(ds.train + ds.query))
        seen_test.add(frozenset(test_ids))
    assert len(seen_test) == 10
    stored = json.loads((data_root / "prid2011" / "splits_single_shot.json").read_text())
    assert len(stored) == 10 and set(stored[0]) == {"train", "test"} and len(stored[0]["train"]) == 100
    # combine_all: all 200 shared persons train, the 201.. distractors do not
    ds = build_dataset("prid", data_root, combine_all=True)
    assert ds.num_train_pids == 200 and len(ds.train) == 400


def test_prid_reference_file_and_errors(data_root):
    base = T.make_prid(data_root)
    path = data_root / "prid2011" / "splits_single_shot.json"
    path.write_text(json.dumps([{"train": list(range(1, 101)), "test": list(range(101, 201))}] * 10))
    ds = build_dataset("prid", data_root, split=4)
    assert _ids(ds.query) == set(range(101, 201))
    path.write_text(json.dumps([{"train": list(range(1, 101)), "test": list(range(100, 201))}] * 10))
    _one_line_error(f"{path}: split 0 does not fit", build_dataset, "prid", data_root)
    path.unlink()
    (base / "cam_b" / "person_0150.png").unlink()
    _one_line_error(f"{base / 'cam_b'}: person_0150.png not found", build_dataset, "prid", data_root)


# ============================================================================ iLIDS
def test_ilids(data_root):
    per = T.make_ilids(data_root, n_ids=7)
    assert dataset_splits("ilids", data_root) == 10
    for k in range(10):
        ds = build_dataset("ilids", data_root, split=k)
        train_persons = {int(os.path.basename(p)[:4]) for p in _paths(ds.train)}
        assert len(train_persons) == 3 and len(ds.train) == sum(per[p] for p in train_persons)
        # train: all images of the train persons, camera = the image number - 1 (as the reference)
        assert all(cam == int(os.path.basename(p)[4:7]) - 1 for p, _, cam, _ in ds.train)
        test = set(per) - train_persons
        # each test person: one query (camera 0) and one other gallery image (camera 1); the rest unused
        assert sorted(it[1] for it in ds.query) == sorted(it[1] for it in ds.gallery) == sorted(test)
        assert {it[2] for it in ds.query} == {0} and {it[2] for it in ds.gallery} == {1}
        assert not _paths(ds.query) & _paths(ds.gallery)
        assert all(int(os.path.basename(p)[:4]) == pid for p, pid, _, _ in ds.query + ds.gallery)
    stored = json.loads((data_root / "ilids" / "splits.json").read_text())
    assert all(isinstance(n, str) and "/" not in n for n in stored[0]["train"])  # the reference's names format
    (data_root / "ilids" / "splits.json").unlink()
    build_dataset("ilids", data_root)
    assert json.loads((data_root / "ilids" / "splits.json").read_text()) == stored  # redrawn identically


def test_ilids_reference_names_and_errors(data_root):
    T.make_ilids(data_root, n_ids=4)
    path = data_root / "ilids" / "splits.json"
    ref = {"train": ["0001001.jpg", "0001002.jpg", "0001003.jpg", "0002001.jpg", "0002002.jpg", "0002003.jpg",
                     "0002004.jpg"],
           "query": ["0003002.jpg", "0004001.jpg"], "gallery": ["0003001.jpg", "0004003.jpg"]}
    path.write_text(json.dumps([ref] * 10))
    ds = build_dataset("ilids", data_root, split=2)
    assert sorted((os.path.basename(p), pid) for p, pid, _, _ in ds.query) == [("0003002.jpg", 3),
                                                                                ("0004001.jpg", 4)]
    assert ds.num_train_pids == 2
    bad = dict(ref, gallery=["0003001.jpg", "0002001.jpg"])  # gallery person not in the query, and in train
    path.write_text(json.dumps([bad] * 10))
    _one_line_error(f"{path}: split 0 does not fit", build_dataset, "ilids", data_root)
    path.write_text(json.dumps([dict(ref, train=["0009001.jpg"])] * 10))
    _one_line_error(f"{path}: split 0 train lists 0009001.jpg, not found", build_dataset, "ilids", data_root)
    path.unlink()
    (data_root / "ilids" / "i-LIDS_Pedestrian" / "Persons" / "0003001.jpg").unlink()
    _one_line_error("Persons: person 0003 has 1 image; expected at least 2", build_dataset, "ilids", data_root)


# ============================================================================ CUHK02, CUHK-SYSU
def test_cuhk02(data_root):
    sizes = T.make_cuhk02(data_root)
    ds = build_dataset("cuhk02", data_root)
    # P1-P4 train; ids restart in every pair but stay apart: 3+2+2+2 persons
    assert ds.num_train_pids == 9 and len(ds.train) == 9 * 4
    for p, pid, cam, _ in ds.train:
        pair = int(Path(p).parts[-3][1])
        assert cam == 2 * (pair - 1) + (Path(p).parts[-2] == "cam2")
    by_pid = {pid: {(Path(p).parts[-3], os.path.basename(p)[:3]) for p, q, _, _ in ds.train if q == pid}
              for pid in _ids(ds.train)}
    assert all(len(v) == 1 for v in by_pid.values())  # one (pair, person) per label
    # P5: cam1 the query (camera 8), cam2 the gallery (camera 9), original ids
    assert {it[2] for it in ds.query} == {8} and {it[2] for it in ds.gallery} == {9}
    assert _ids(ds.query) == _ids(ds.gallery) == {1, 2, 3}
    assert all("/P5/cam1/" in p for p in _paths(ds.query)) and all("/P5/cam2/" in p for p in _paths(ds.gallery))
    # the DG protocol trains on all five pairs
    full = build_dataset("cuhk02", data_root, combine_all=True)
    assert full.num_train_pids == sum(sizes.values()) == 12 and len(full.train) == 12 * 4


def test_cuhksysu_training_only(data_root, capsys):
    ids = T.make_cuhksysu(data_root, ids=(3, 15, 7, 1200))
    ds = build_dataset("cuhksysu", data_root)
    assert ds.num_train_pids == len(ids) and len(ds.train) == 8 and {it[2] for it in ds.train} == {0}
    assert ds.query == [] and ds.gallery == [] and not ds.evaluable
    # labels follow the sorted person numbers: p3 -> 0, p7 -> 1, p15 -> 2, p1200 -> 3
    assert {os.path.basename(p).split("_")[0]: pid for p, pid, _, _ in ds.train} == {"p3": 0, "p7": 1, "p15": 2,
                                                                                      "p1200": 3}
    _one_line_error("cuhksysu: training-only dataset", evaluation_splits, "cuhksysu", data_root)
    run_data_info("cuhksysu", str(data_root))
    assert "training only" in capsys.readouterr().out


# ============================================================================ CUHK03 release
def test_cuhk03_release_extraction(data_root):
    d = T.make_cuhk03_release(data_root)
    ds = build_dataset("cuhk03_release", data_root)
    out = d / "images_labeled"
    names = sorted(n for n in os.listdir(out) if n.endswith(".png"))
    assert names == T.cuhk03_names("labeled")  # empty cells skipped, nothing else
    # MATLAB H x W x 3 comes back upright: size W x H, the marked pixel at row 5 column 2
    name = "2_003_2_07.png"
    with Image.open(out / name) as im:
        assert im.size == (T.CUHK03_W, T.CUHK03_H)
        assert im.getpixel((2, 5)) == (200, 3, 7) and im.getpixel((0, 0)) == (2, 3, 7)
    # idempotent: nothing is rewritten; a lost file is extracted again
    stamp = (out / name).stat().st_mtime_ns
    assert build_dataset("cuhk03_release", data_root).train == ds.train
    assert (out / name).stat().st_mtime_ns == stamp
    (out / name).unlink()
    build_dataset("cuhk03_release", data_root)
    assert (out / name).is_file()
    # detected images go to their own folder
    build_dataset("cuhk03_release_detected", data_root)
    assert sorted(n for n in os.listdir(d / "images_detected") if n.endswith(".png")) == T.cuhk03_names("detected")


def test_cuhk03_release_new_protocol(data_root):
    d = T.make_cuhk03_release(data_root)
    cfg = T.write_cuhk03_config(d / "cuhk03_new_protocol_config_labeled.mat", "labeled")
    ds = build_dataset("cuhk03_release", data_root)
    names = cfg["names"]
    file_of = lambda items: sorted(os.path.basename(p) for p in _paths(items))  # noqa: E731
    assert file_of(ds.train) == sorted(names[i - 1] for i in cfg["train"])
    assert file_of(ds.query) == sorted(names[i - 1] for i in cfg["query"])
    assert file_of(ds.gallery) == sorted(names[i - 1] for i in cfg["gallery"])
    assert ds.num_train_pids == 8 and sorted(_ids(ds.train)) == list(range(8))
    # query/gallery keep the config's labels; camera = the view - 1
    for p, pid, cam, _ in ds.query + ds.gallery:
        c, per, view = (int(x) for x in os.path.basename(p).split("_")[:3])
        assert pid == cfg["label"][(c, per)] and cam == view - 1
    assert ds.num_splits == 1 and not ds.single_gallery_shot
    full = build_dataset("cuhk03_release", data_root, combine_all=True)
    assert full.num_train_pids == 14 and len(full.train) == len(names)


def test_cuhk03_release_classic(data_root):
    T.make_cuhk03_release(data_root)
    tests = T.cuhk03_testsets()
    assert dataset_splits("cuhk03_release_classic", data_root) == 20
    for k in (0, 13, 19):
        ds = build_dataset("cuhk03_release_classic", data_root, split=k)
        persons = lambda items: {tuple(int(x) for x in os.path.basename(p).split("_")[:2])  # noqa: E731
                                 for p in _paths(items)}
        assert persons(ds.query) == set(tests[k]) and ds.query == ds.gallery  # query = gallery = test images
        assert not persons(ds.train) & set(tests[k]) and len(persons(ds.train)) == 12
        assert sorted(_ids(ds.query)) == [0, 1] and ds.single_gallery_shot and ds.num_splits == 20
        assert {it[2] for it in ds.query} == {0, 1}
    full = build_dataset("cuhk03_release_classic", data_root, combine_all=True)
    assert len(full.train) == len(T.cuhk03_names("labeled")) and full.num_train_pids == 14  # test images once


def test_cuhk03_release_bad_inputs(data_root):
    d = data_root / "cuhk03"
    mat = d / "cuhk03_release" / "cuhk-03.mat"
    (d / "cuhk03_release").mkdir(parents=True)
    _one_line_error(f"{mat}: CUHK03 file not found", build_dataset, "cuhk03_release", data_root)
    mat.write_bytes(b"not an HDF5 file at all" * 10)
    _one_line_error(f"{mat}: cannot read as a MATLAB v7.3 (HDF5) file", build_dataset, "cuhk03_release", data_root)
    T.write_cuhk03_mat(mat, kinds=("labeled",))
    _one_line_error(f"{mat}: no 'detected' cell array", build_dataset, "cuhk03_release_detected", data_root)
    _one_line_error(f"{d / 'cuhk03_new_protocol_config_labeled.mat'}: new-protocol split file not found",
                    build_dataset, "cuhk03_release", data_root)
    cfg = d / "cuhk03_new_protocol_config_labeled.mat"
    cfg.write_bytes(b"garbage")
    _one_line_error(f"{cfg}: cannot read MATLAB file", build_dataset, "cuhk03_release", data_root)
    T.write_cuhk03_config(cfg, "detected")  # the other kind's file list: images not extracted here
    _one_line_error(f"{cfg}: filelist names", build_dataset, "cuhk03_release", data_root)
    T.write_cuhk03_mat(mat, testsets=T.cuhk03_testsets(19))
    _one_line_error(f"{mat}: 'testsets' holds 19 test sets; expected 20", build_dataset, "cuhk03_release_classic",
                    data_root)
    T.write_cuhk03_mat(mat, pairs=(2, 2, 2, 2))
    _one_line_error(f"{mat}: 'labeled' holds 4 camera pairs; expected 5", build_dataset, "cuhk03_release_classic",
                    data_root)


# ============================================================================ bad inputs, info, API
@pytest.mark.parametrize("name,make,remove,expect", [
    ("viper", T.make_viper, "viper/VIPeR/cam_b", "viper/VIPeR/cam_b: folder not found"),
    ("grid", T.make_grid, "grid/underground_reid/probe", "underground_reid/probe: folder not found"),
    ("prid", T.make_prid, "prid2011/prid_2011/single_shot/cam_a", "single_shot/cam_a: folder not found"),
    ("ilids", T.make_ilids, "ilids/i-LIDS_Pedestrian/Persons", "i-LIDS_Pedestrian/Persons: folder not found"),
    ("cuhk01", T.make_cuhk01, "cuhk01/campus", "cuhk01/campus: folder not found"),
    ("cuhk02", T.make_cuhk02, "cuhk02/Dataset/P3/cam2", "Dataset/P3/cam2: folder not found"),
    ("cuhksysu", T.make_cuhksysu, "cuhksysu/cropped_images", "cuhksysu/cropped_images: folder not found"),
    ("cuhk03_release", T.make_cuhk03_release, "cuhk03/cuhk03_release", "cuhk-03.mat: CUHK03 file not found"),
])
def test_missing_folders(data_root, name, make, remove, expect):
    _one_line_error(f"{data_root / Path(remove).parts[0]}: {name} dataset folder not found", build_dataset, name,
                    data_root)
    make(data_root)
    shutil.rmtree(data_root / remove)
    msg = _one_line_error(expect, build_dataset, name, data_root)
    assert str(data_root) in msg
    _one_line_error(f"{data_root / 'nope'}: data root not found", build_dataset, name, data_root / "nope")


def test_viper_unequal_cameras(data_root):
    T.make_viper(data_root, n=4)
    next((data_root / "viper" / "VIPeR" / "cam_b").iterdir()).unlink()
    _one_line_error("VIPeR: expected as many images in cam_a/ as in cam_b/", build_dataset, "viper", data_root)


@pytest.mark.parametrize("name,lines", [
    ("viper", ["train 3 6 2", "query 3 3 1", "gallery 3 3 1"]),
    ("grid", ["train 4 8", "query 4 4", "gallery 5 7"]),
    ("prid", ["train 100 200 2", "query 100 100 1", "gallery 105 105 1"]),
    ("ilids", ["train 3", "query 4 4 1", "gallery 4 4 1"]),
    ("cuhk01", ["train 3 12 2", "query 4 8 1", "gallery 4 8 1"]),
    ("cuhk02", ["train 9 36 8", "query 3 6 1", "gallery 3 6 1"]),
    ("cuhksysu", ["train 4 8 1", "query 0 0 0", "gallery 0 0 0"]),
    ("cuhk03_release_classic", ["train 12", "query 2", "gallery 2"]),
])
def test_data_info(data_root, capsys, name, lines):
    T.make_all(data_root)
    run_data_info(name, str(data_root))
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(name) and out[1].split() == ["split", "ids", "images", "cameras"]
    for row, want in zip(out[2:5], lines):
        assert row.split()[: len(want.split())] == want.split()
    n = {"viper": 20, "cuhk01": 20, "cuhk03_release_classic": 20, "grid": 10, "prid": 10, "ilids": 10}.get(name)
    split_lines = [ln for ln in out if "evaluation splits:" in ln]
    assert (split_lines[0].split()[2].rstrip(";") == str(n)) if n else not split_lines
    if name in ("grid", "prid"):
        assert any("distractor" in ln for ln in out)


def test_evaluation_splits_api(data_root):
    T.make_all(data_root)
    assert evaluation_splits("viper", data_root) == list(range(20))
    assert evaluation_splits("grid", data_root, split=-1) == list(range(10))
    assert evaluation_splits("ilids", data_root, split=4) == [4]
    assert evaluation_splits("market", data_root, split=4) == [0]  # single-split targets ignore eval.split
    _one_line_error("eval.split=10: prid has 10 evaluation splits; expected -1 (all) or 0..9", evaluation_splits,
                    "prid", data_root, split=10)
    _one_line_error("market1501: split 1 requested but the dataset has a single split", build_dataset, "market",
                    data_root, split=1)


def test_eval_config_split_default():
    from osnas.config import EvalConfig

    assert EvalConfig().split == -1


def test_data_layer_does_not_import_config():
    import ast

    for f in Path(__file__).resolve().parents[1].joinpath("osnas", "data").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            mods = [node.module] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not any(m and m.startswith("osnas.config") for m in mods), f


# ============================================================================ training through the union
def test_multisource_trains_on_dg_sets(data_root):
    T.make_all(data_root)
    ms = build_multisource("viper,cuhk02,cuhksysu,cuhk03_release", data_root)
    assert ms.domain_names == ["viper", "cuhk02", "cuhksysu", "cuhk03_release"]
    assert [ds.num_train_pids for ds in ms.datasets] == [3, 9, 4, 8] and ms.num_classes == 24
    assert ms.pid_offsets == [0, 3, 12, 16]
    assert {it[3] for it in ms.train} == {0, 1, 2, 3}
    for d, ds in enumerate(ms.datasets):  # each source's labels moved into its own range
        assert {it[1] for it in ms.train if it[3] == d} == {ms.pid_offsets[d] + p for p in _ids(ds.train)}
    s = DomainBalancedPKSampler(ms.train, batch_size=16, num_instances=2, seed=0)
    batches = list(s)
    assert batches and all(Counter(ms.train[i][3] for i in b) == {0: 4, 1: 4, 2: 4, 3: 4} for b in batches)


def test_dg_protocol_end_to_end(data_root):
    """The large-scale DG protocol on stand-ins: train on market, duke, cuhk02, cuhk03,
    cuhksysu with combine_all; evaluate every split of viper, prid, grid, ilids."""
    T.make_all(data_root)
    ms = build_multisource("market,duke,cuhk02,cuhk03,cuhksysu", data_root, combine_all=True)
    assert ms.domain_names == ["market1501", "dukemtmcreid", "cuhk02", "cuhk03_labeled", "cuhksysu"]
    # all images of every source (distractor id 0 left out): market/duke/cuhk03-np 5 ids, cuhk02 12, sysu 4
    assert [ds.num_train_pids for ds in ms.datasets] == [5, 5, 12, 5, 4] and ms.num_classes == 31
    assert [len(ds.train) for ds in ms.datasets] == [10, 10, 48, 10, 8]
    sampler = build_train_sampler("domain_pk", ms.train, batch_size=20, num_instances=2, seed=1)
    batch = next(iter(sampler))
    assert Counter(ms.train[i][3] for i in batch) == {d: 4 for d in range(5)}
    expected = {"viper": 20, "prid": 10, "grid": 10, "ilids": 10}
    for target, n in expected.items():
        splits = evaluation_splits(target, data_root)
        assert splits == list(range(n))
        for k in splits:
            ds = build_dataset(target, data_root, split=k)
            assert ds.split == k and ds.query and ds.gallery
            assert not _paths(ds.train) & _paths(ds.query + ds.gallery)
            assert all(Path(p).is_file() for p in _paths(ds.query + ds.gallery))
            q_ids = _ids(ds.query)
            assert q_ids <= _ids(ds.gallery)  # every query has its match in the gallery
            # a match in another camera for every query (else the metric would skip it)
            gal = {(it[1], it[2]) for it in ds.gallery}
            assert all(any(pid == g and cam != c for g, c in gal) for _, pid, cam, _ in ds.query)


def test_dg_protocol_config_loads():
    """experiments/dg_protocol/config.yaml: valid keys, the protocol's sources and targets."""
    from osnas.config import build_config
    from osnas.data import parse_names

    path = Path(__file__).resolve().parents[1] / "experiments" / "dg_protocol" / "config.yaml"
    cfg = build_config(str(path))
    assert cfg.data.combine_all is True and cfg.eval.split == -1
    assert parse_names(cfg.data.sources) == ["market1501", "dukemtmcreid", "cuhk02", "cuhk03_labeled", "cuhksysu"]
    assert parse_names(cfg.data.targets) == ["viper", "prid", "grid", "ilids"]
    assert cfg.data.batch_size % (len(cfg.data.sources) * cfg.data.num_instances) == 0
