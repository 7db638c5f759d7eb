"""Data layer: dataset parsers (reference semantics), union, samplers, held-out split, transforms."""

from __future__ import annotations

import io
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from osnas.data import (
    DomainBalancedPKSampler,
    RandomBatchSampler,
    RandomIdentitySampler,
    build_dataset,
    build_multisource,
    build_train_sampler,
    canonical_name,
    combine,
    parse_names,
    split_heldout,
)
from osnas.errors import OsnasError


def _jpeg(seed: int = 0, size=(32, 64), fmt="JPEG") -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


_IMG = _jpeg()
_PNG = _jpeg(fmt="PNG")


def _touch(folder: Path, names, data=_IMG):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(data)


MARKET = {
    "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s3_015476_04.jpg",
                           "0010_c6s1_001001_02.jpg", "0010_c5s2_001201_01.jpg", "-1_c1s1_000401_03.jpg"],
    "query": ["0001_c1s1_001051_00.jpg", "0001_c3s1_000551_00.jpg", "0003_c2s1_000301_00.jpg"],
    "bounding_box_test": ["0001_c2s1_000301_01.jpg", "0001_c4s2_000321_02.jpg", "0003_c5s3_065187_01.jpg",
                          "0000_c1s1_000000_01.jpg", "0000_c6s1_000010_02.jpg", "-1_c3s1_000401_03.jpg"],
}


def _market(base: Path, files=MARKET):
    for split, names in files.items():
        _touch(base / split, names)
        (base / split / "Thumbs.db").write_bytes(b"not an image")  # real Market has these
        (base / split / "._0002_c1s1_000451_03.jpg").write_bytes(b"macOS resource fork")
    return base


def _triples(items):
    return sorted((Path(p).name, pid, cam) for p, pid, cam, _ in items)


# ============================================================================ Market-1501
@pytest.mark.parametrize("nested", [True, False])
def test_market_semantics(data_root, nested):
    base = data_root / "market1501" / ("Market-1501-v15.09.15" if nested else "")
    _market(base)
    ds = build_dataset("market1501", data_root)
    assert ds.name == "market1501"
    assert _triples(ds.train) == [
        ("0002_c1s1_000451_03.jpg", 0, 0), ("0002_c2s1_000551_01.jpg", 0, 1), ("0007_c3s3_015476_04.jpg", 1, 2),
        ("0010_c5s2_001201_01.jpg", 2, 4), ("0010_c6s1_001001_02.jpg", 2, 5),
    ]
    assert _triples(ds.query) == [
        ("0001_c1s1_001051_00.jpg", 1, 0), ("0001_c3s1_000551_00.jpg", 1, 2), ("0003_c2s1_000301_00.jpg", 3, 1),
    ]
    assert _triples(ds.gallery) == [
        ("0000_c1s1_000000_01.jpg", 0, 0), ("0000_c6s1_000010_02.jpg", 0, 5), ("0001_c2s1_000301_01.jpg", 1, 1),
        ("0001_c4s2_000321_02.jpg", 1, 3), ("0003_c5s3_065187_01.jpg", 3, 4),
    ]
    assert all(it[3] == 0 for it in ds.train + ds.query + ds.gallery)
    assert ds.num_train_pids == 3 and ds.num_train_cams == 5 and ds.skipped == 0
    assert all(Path(p).is_file() for p, *_ in ds.train)


def test_data_info_table(data_root, capsys):
    from osnas.data import run_data_info

    _market(data_root / "market1501" / "Market-1501-v15.09.15")
    run_data_info("market", str(data_root))
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("market1501") and out[1].split() == ["split", "ids", "images", "cameras"]
    assert out[2].split() == ["train", "3", "5", "5"]
    assert out[3].split() == ["query", "2", "3", "3"]
    assert out[4].split() == ["gallery", "3", "5", "5"]
    assert "2 distractor" in out[5]


def test_market_combine_all(data_root):
    _market(data_root / "market1501")
    ds = build_dataset("market", data_root, combine_all=True)
    # train ids 0..2, then query/gallery ids 1, 3 -> 3, 4; distractors (0) and junk (-1) left out
    assert Counter(it[1] for it in ds.train) == {0: 2, 1: 1, 2: 2, 3: 4, 4: 2}
    assert ds.num_train_pids == 5
    assert len(ds.query) == 3 and len(ds.gallery) == 5


def test_market_unparsable(data_root):
    base = _market(data_root / "market1501")
    _touch(base / "query", ["badname.jpg"])
    with pytest.raises(OsnasError, match="badname.jpg"):
        build_dataset("market1501", data_root)
    ds = build_dataset("market1501", data_root, skip_unparsable=True)
    assert ds.skipped == 1 and len(ds.query) == 3


def test_market_bad_inputs(tmp_path, data_root):
    with pytest.raises(OsnasError, match=str(tmp_path / "nope")):
        build_dataset("market1501", tmp_path / "nope")
    with pytest.raises(OsnasError, match="Market-1501-v15.09.15"):  # says which layouts were tried
        build_dataset("market1501", data_root)
    base = _market(data_root / "market1501")
    import shutil

    shutil.rmtree(base / "query")
    with pytest.raises(OsnasError, match=r"market1501/query"):
        build_dataset("market1501", data_root)
    (base / "query").mkdir()
    with pytest.raises(OsnasError, match=r"market1501/query: no usable images"):
        build_dataset("market1501", data_root)
    # a split with only junk is empty too
    _touch(base / "query", ["-1_c1s1_000401_03.jpg"])
    with pytest.raises(OsnasError, match="query"):
        build_dataset("market1501", data_root)
    # a dataset folder without any split folder
    other = data_root / "other"
    (other / "dukemtmc-reid" / "DukeMTMC-reID").mkdir(parents=True)
    with pytest.raises(OsnasError, match="DukeMTMC-reID"):
        build_dataset("duke", other)


def test_unknown_name_lists_valid(data_root):
    with pytest.raises(OsnasError) as e:
        build_dataset("viper2", data_root)
    msg = str(e.value)
    assert "viper2" in msg and "market1501" in msg and "msmt17" in msg and "duke=dukemtmcreid" in msg
    assert "\n" not in msg


def test_aliases():
    assert canonical_name("market") == "market1501"
    assert canonical_name("Market1501") == "market1501"
    assert canonical_name("duke") == "dukemtmcreid"
    assert canonical_name("msmt") == "msmt17"
    assert canonical_name("cuhk03") == "cuhk03_labeled"
    assert canonical_name("cuhk03_detected") == "cuhk03_detected"
    assert canonical_name("synth2") == "synth2"
    assert canonical_name("custom:/x/Y") == "custom:/x/Y"
    assert parse_names("market, duke,msmt") == ["market1501", "dukemtmcreid", "msmt17"]
    assert parse_names("") == [] and parse_names(None) == []
    with pytest.raises(OsnasError, match="twice"):
        parse_names("market,market1501")
    with pytest.raises(OsnasError, match="nope"):
        parse_names("market,nope")


# ============================================================================ Duke, CUHK03-NP
def test_duke(data_root):
    base = data_root / "dukemtmc-reid" / "DukeMTMC-reID"
    _touch(base / "bounding_box_train", ["0001_c2_f0046182.jpg", "0001_c8_f0050000.jpg", "0005_c1_f0000001.jpg"])
    _touch(base / "query", ["0005_c1_f0046182.jpg", "0019_c7_f0001000.jpg"])
    _touch(base / "bounding_box_test", ["0005_c3_f0046182.jpg", "0019_c8_f0001100.jpg", "7000_c4_f0002000.jpg"])
    ds = build_dataset("duke", data_root)
    assert ds.name == "dukemtmcreid"
    assert _triples(ds.train) == [("0001_c2_f0046182.jpg", 0, 1), ("0001_c8_f0050000.jpg", 0, 7),
                                  ("0005_c1_f0000001.jpg", 1, 0)]
    assert _triples(ds.query) == [("0005_c1_f0046182.jpg", 5, 0), ("0019_c7_f0001000.jpg", 19, 6)]
    assert [it[1] for it in sorted(ds.gallery)] == [5, 19, 7000]
    assert ds.num_train_cams == 3


@pytest.mark.parametrize("name,sub", [("cuhk03", "labeled"), ("cuhk03_labeled", "labeled"),
                                      ("cuhk03_detected", "detected")])
def test_cuhk03_np(data_root, name, sub):
    for s, other in (("labeled", 0), ("detected", 100)):
        base = data_root / "cuhk03-np" / s
        _touch(base / "bounding_box_train", [f"{other + 1:04d}_c1_1.png", f"{other + 1:04d}_c2_2.png",
                                             f"{other + 3:04d}_c2_1.png"], _PNG)
        _touch(base / "query", [f"{other + 8:04d}_c1_1.png"], _PNG)
        _touch(base / "bounding_box_test", [f"{other + 8:04d}_c2_3.png", f"{other + 9:04d}_c2_1.png"], _PNG)
    ds = build_dataset(name, data_root)
    off = 0 if sub == "labeled" else 100
    assert sub in ds.root
    assert [(pid, cam) for _, pid, cam, _ in sorted(ds.train)] == [(0, 0), (0, 1), (1, 1)]
    assert [(pid, cam) for _, pid, cam, _ in ds.query] == [(off + 8, 0)]
    assert sorted(it[1] for it in ds.gallery) == [off + 8, off + 9]


# ============================================================================ MSMT17
MSMT_TRAIN = [("0000/0000_011_01_0303morning_0015_0.jpg", 0), ("0000/0000_012_07_0303morning_0016_0.jpg", 0),
              ("0002/0002_001_15_0303noon_0100_1.jpg", 2)]
MSMT_VAL = [("0001/0001_005_03_0303afternoon_0001_0.jpg", 1)]
MSMT_QUERY = [("0000/0000_000_02_0303morning_0001_0.jpg", 0), ("0004/0004_003_10_0303noon_0008_0.jpg", 4)]
MSMT_GALLERY = [("0000/0000_001_05_0303morning_0009_1.jpg", 0), ("0004/0004_010_12_0303noon_0010_0.jpg", 4),
                ("0005/0005_000_01_0303noon_0010_0.jpg", 5)]


def _msmt(root: Path, version: str):
    tr, te = ("train", "test") if version == "MSMT17_V1" else ("mask_train_v2", "mask_test_v2")
    base = root / "msmt17" / version
    for lst, d, rows in (("list_train.txt", tr, MSMT_TRAIN), ("list_val.txt", tr, MSMT_VAL),
                         ("list_query.txt", te, MSMT_QUERY), ("list_gallery.txt", te, MSMT_GALLERY)):
        for rel, _ in rows:
            _touch((base / d / rel).parent, [Path(rel).name])
        (base / lst).write_text("".join(f"{rel} {pid}\n" for rel, pid in rows))
    return base


@pytest.mark.parametrize("version", ["MSMT17_V1", "MSMT17_V2"])
def test_msmt17(data_root, version):
    base = _msmt(data_root, version)
    ds = build_dataset("msmt", data_root)
    assert ds.name == "msmt17" and ds.root.endswith(version)
    # train = list_train only (as the reference), relabelled in sorted order (0, 2 -> 0, 1);
    # the list_val image (id 1) is not trained on
    assert _triples(ds.train) == [("0000_011_01_0303morning_0015_0.jpg", 0, 0),
                                  ("0000_012_07_0303morning_0016_0.jpg", 0, 6),
                                  ("0002_001_15_0303noon_0100_1.jpg", 1, 14)]
    assert ds.num_train_pids == 2
    assert _triples(ds.query) == [("0000_000_02_0303morning_0001_0.jpg", 0, 1), ("0004_003_10_0303noon_0008_0.jpg", 4, 9)]
    assert [(pid, cam) for _, pid, cam, _ in ds.gallery] == [(0, 4), (4, 11), (5, 0)]
    # a list line pointing at a missing image: list file, line number and the missing path
    (base / "list_query.txt").write_text("".join(f"{r} {p}\n" for r, p in MSMT_QUERY) + "0009/0009_000_01_x_0_0.jpg 9\n")
    with pytest.raises(OsnasError, match=r"list_query.txt:3: image .*0009_000_01_x_0_0.jpg not found"):
        build_dataset("msmt17", data_root)
    (base / "list_query.txt").write_text("just-a-path\n")
    with pytest.raises(OsnasError, match=r"list_query.txt:1: expected"):
        build_dataset("msmt17", data_root)
    (base / "list_query.txt").unlink()
    with pytest.raises(OsnasError, match=r"list_query.txt: list file not found"):
        build_dataset("msmt17", data_root)


@pytest.mark.parametrize("version", ["MSMT17_V1", "MSMT17_V2"])
def test_msmt17_combine_all_adds_val(data_root, version):
    _msmt(data_root, version)
    ds = build_dataset("msmt17", data_root, combine_all=True)
    # list_train + list_val relabelled together (ids 0, 1, 2 -> 0, 1, 2), then query/gallery
    # ids 0, 4, 5 -> 3, 4, 5 (a new label space after the train ids, as combine_all does)
    assert _triples(ds.train) == [
        ("0000_000_02_0303morning_0001_0.jpg", 3, 1), ("0000_001_05_0303morning_0009_1.jpg", 3, 4),
        ("0000_011_01_0303morning_0015_0.jpg", 0, 0), ("0000_012_07_0303morning_0016_0.jpg", 0, 6),
        ("0001_005_03_0303afternoon_0001_0.jpg", 1, 2), ("0002_001_15_0303noon_0100_1.jpg", 2, 14),
        ("0004_003_10_0303noon_0008_0.jpg", 4, 9), ("0004_010_12_0303noon_0010_0.jpg", 4, 11),
        ("0005_000_01_0303noon_0010_0.jpg", 5, 0)]
    assert ds.num_train_pids == 6
    assert len(ds.query) == 2 and len(ds.gallery) == 3  # evaluation sets unchanged
    # without combine_all the val image stays out, but list_val is still read and checked
    plain = build_dataset("msmt17", data_root)
    assert "0001_005_03_0303afternoon_0001_0.jpg" not in {Path(p).name for p, *_ in plain.train}
    (data_root / "msmt17" / version / "list_val.txt").unlink()
    with pytest.raises(OsnasError, match=r"list_val.txt: list file not found"):
        build_dataset("msmt17", data_root)


def test_msmt17_missing(data_root):
    with pytest.raises(OsnasError, match="MSMT17_V1.*MSMT17_V2"):
        build_dataset("msmt17", data_root)
    (data_root / "msmt17" / "MSMT17_V2" / "mask_train_v2").mkdir(parents=True)
    with pytest.raises(OsnasError, match="mask_test_v2"):
        build_dataset("msmt17", data_root)


# ============================================================================ custom
def test_custom_market_folder(tmp_path, data_root, monkeypatch):
    base = _market(tmp_path / "mine")
    for name, root in ((f"custom:{base}", data_root), ("custom", base), ("custom:mine", tmp_path)):
        ds = build_dataset(name, root)
        assert ds.num_train_pids == 3 and len(ds.query) == 3 and len(ds.gallery) == 5
    monkeypatch.chdir(tmp_path)  # relative roots give absolute item paths
    ds = build_dataset("custom", "mine")
    assert all(os.path.isabs(p) and os.path.isfile(p) for p, *_ in ds.train + ds.query + ds.gallery)


def test_custom_lists(tmp_path):
    base = tmp_path / "lists"
    _touch(base / "imgs", ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg"])
    (base / "train.txt").write_text("imgs/a.jpg 10 0\nimgs/b.jpg 10 1\n\nimgs/c.jpg 4 2\n")
    (base / "query.txt").write_text("imgs/d.jpg 7 0\n")
    (base / "gallery.txt").write_text("imgs/e.jpg 7 3\nimgs/f.jpg 0 1\n")
    ds = build_dataset(f"custom:{base}", None)
    assert _triples(ds.train) == [("a.jpg", 1, 0), ("b.jpg", 1, 1), ("c.jpg", 0, 2)]
    assert _triples(ds.query) == [("d.jpg", 7, 0)]
    assert _triples(ds.gallery) == [("e.jpg", 7, 3), ("f.jpg", 0, 1)]
    (base / "gallery.txt").write_text("imgs/e.jpg 7 3\nimgs/zz.jpg 0 1\n")
    with pytest.raises(OsnasError, match=r"gallery.txt:2: image .*zz.jpg not found"):
        build_dataset(f"custom:{base}", None)


def test_custom_bad(tmp_path):
    with pytest.raises(OsnasError, match="missing_dir"):
        build_dataset(f"custom:{tmp_path / 'missing_dir'}", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(OsnasError, match=r"empty: not a custom re-ID dataset"):
        build_dataset("custom", tmp_path / "empty")


# ============================================================================ images
def test_image_dataset_and_corrupt(data_root):
    from osnas.data import ImageDataset, build_transforms, make_test_loader

    base = _market(data_root / "market1501")
    ds = build_dataset("market1501", data_root)
    tf = build_transforms(64, 32, train=False)
    img, pid, cam, dsetid, idx = ImageDataset(ds.query, tf)[2]
    assert tuple(img.shape) == (3, 64, 32) and (pid, cam, dsetid, idx) == (3, 1, 0, 2)
    batch = next(iter(make_test_loader(ds.gallery, tf, batch_size=4, workers=0)))
    assert tuple(batch[0].shape) == (4, 3, 64, 32)
    bad = base / "query" / "0001_c1s1_001051_00.jpg"
    bad.write_bytes(_IMG[: len(_IMG) // 3])  # truncated
    items = build_dataset("market1501", data_root).query  # parsing does not open images
    i = [Path(p).name for p, *_ in items].index(bad.name)
    with pytest.raises(OsnasError, match=rf"{bad}: cannot decode image"):
        ImageDataset(items, tf)[i]
    bad.write_bytes(b"garbage")
    with pytest.raises(OsnasError, match=rf"{bad}: cannot decode image"):
        ImageDataset(items, tf)[i]


def test_transforms_shapes():
    import torch

    from osnas.config import DataConfig
    from osnas.data import build_transforms
    from osnas.data.transforms import from_config

    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 32, 3), dtype=np.uint8))
    t = build_transforms(256, 128, train=True, flip=True, pad_crop=True, pad=10, color_jitter=True,
                         saturation=0.1, hue=0.05, random_erasing=True, erasing_prob=1.0)
    x = t(im)
    assert x.shape == (3, 256, 128) and x.dtype == torch.float32
    assert from_config(DataConfig(height=64, width=32), train=True)(im).shape == (3, 64, 32)
    y = build_transforms(256, 128, train=False)(im)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    assert torch.allclose(y * std + mean, build_transforms(256, 128, False, mean=(0, 0, 0), std=(1, 1, 1))(im),
                          atol=1e-5)


# ============================================================================ union
def _fake(name, pids, cams=2):
    from osnas.data.datasets import ReidDataset

    train = [(f"/{name}/{p}_{c}.jpg", p, c, 0) for p in pids for c in range(cams)]
    return ReidDataset(name, f"/{name}", train, train[:1], train[1:2])


def test_multisource_union():
    ms = combine([_fake("a", [0, 1, 2]), _fake("b", [0, 1]), _fake("c", [0, 1, 2, 3])])
    assert ms.num_classes == 9 and ms.num_domains == 3 and ms.domain_names == ["a", "b", "c"]
    assert ms.pid_offsets == [0, 3, 5]
    assert {(it[3], it[1]) for it in ms.train} == {(0, 0), (0, 1), (0, 2), (1, 3), (1, 4),
                                                   (2, 5), (2, 6), (2, 7), (2, 8)}
    assert ms.train[6] == ("/b/0_0.jpg", 3, 0, 1)
    assert sum(1 for it in ms.train if it[3] == 2) == 8


def test_build_multisource_aliases(data_root):
    _market(data_root / "market1501")
    base = data_root / "dukemtmc-reid" / "DukeMTMC-reID"
    _touch(base / "bounding_box_train", ["0001_c2_f0046182.jpg", "0009_c8_f0050000.jpg"])
    _touch(base / "query", ["0005_c1_f0046182.jpg"])
    _touch(base / "bounding_box_test", ["0005_c3_f0046182.jpg"])
    ms = build_multisource("market,duke", data_root)
    assert ms.domain_names == ["market1501", "dukemtmcreid"] and ms.num_classes == 5
    assert sorted({(it[1], it[3]) for it in ms.train}) == [(0, 0), (1, 0), (2, 0), (3, 1), (4, 1)]
    assert ms.domain_names.index(canonical_name("duke")) == 1


# ============================================================================ samplers
def _items(n_ids=12, per=(1, 7), domains=1, seed=0):
    r = np.random.default_rng(seed)
    items, pid = [], 0
    for d in range(domains):
        for _ in range(n_ids):
            for j in range(int(r.integers(per[0], per[1] + 1))):
                items.append((f"d{d}/{pid}_{j}.jpg", pid, j % 3, d))
            pid += 1
    return items


def test_pk_sampler():
    items = _items()
    s = RandomIdentitySampler(items, batch_size=16, num_instances=4, seed=3)
    batches = list(s)
    assert len(batches) == len(s) > 0
    for b in batches:
        c = Counter(items[i][1] for i in b)
        assert len(b) == 16 and len(c) == 4 and set(c.values()) == {4}
    singles = [p for p, n in Counter(it[1] for it in items).items() if n == 1]
    assert singles  # identities with < K images are sampled with replacement
    assert list(RandomIdentitySampler(items, 16, 4, seed=3)) == batches
    s.set_epoch(1)
    assert list(s) != batches
    s.set_epoch(0)
    assert list(s) == batches
    assert list(RandomIdentitySampler(items, 16, 4, seed=4)) != batches
    # fixed number of batches per epoch
    assert len(list(RandomIdentitySampler(items, 16, 4, num_batches=37))) == 37


@pytest.mark.parametrize("world_size", [2, 3])
def test_sampler_sharding(world_size):
    items = _items(n_ids=20, domains=2)
    for make in (lambda r: RandomIdentitySampler(items, 8, 2, seed=1, rank=r, world_size=world_size),
                 lambda r: DomainBalancedPKSampler(items, 8, 2, seed=1, rank=r, world_size=world_size),
                 lambda r: RandomBatchSampler(len(items), 8, seed=1, rank=r, world_size=world_size)):
        full = make(0).epoch_plan()
        shards = [list(make(r)) for r in range(world_size)]
        n = len(shards[0])
        assert n > 0 and all(len(sh) == n == len(make(r)) for r, sh in enumerate(shards))
        for r, sh in enumerate(shards):
            assert sh == full[r::world_size][:n]  # disjoint slices of the epoch's batches
        pos = [set(range(r, len(full), world_size)[:n]) for r in range(world_size)]
        assert not set.intersection(*pos)


def test_domain_balanced_sampler():
    items = _items(n_ids=10, domains=3, per=(2, 6))
    s = DomainBalancedPKSampler(items, batch_size=24, num_instances=4, seed=0)
    assert s.P_d == 2 and s.batch_size == 24
    batches = list(s)
    assert len(batches) == len(s) > 0
    for b in batches:
        dom = Counter(items[i][3] for i in b)
        assert dom == {0: 8, 1: 8, 2: 8}
        assert set(Counter(items[i][1] for i in b).values()) == {4}
    assert list(DomainBalancedPKSampler(items, 24, 4, seed=0)) == batches
    # a batch size that does not split evenly is rounded down
    assert DomainBalancedPKSampler(items, 64, 4).batch_size == 60
    # subset of domains, and "next batch from domain d"
    sub = DomainBalancedPKSampler(items, 16, 4, domains=[0, 2])
    assert all(set(Counter(items[i][3] for i in b)) == {0, 2} for b in sub)
    it = s.domain_batches(1)
    for _ in range(20):  # endless: goes on past one pass
        b = next(it)
        assert len(b) == 24 and {items[i][3] for i in b} == {1}
    assert next(s.domain_batches(1)) == next(s.domain_batches(1, epoch=0))
    with pytest.raises(OsnasError):
        next(s.domain_batches(7))
    with pytest.raises(OsnasError):
        DomainBalancedPKSampler(items, 4, 4)


def test_sampler_errors_and_factory():
    items = _items(n_ids=3)
    with pytest.raises(OsnasError, match="identities"):
        RandomIdentitySampler(items, 16, 4)
    with pytest.raises(OsnasError, match="multiple"):
        RandomIdentitySampler(items, 10, 4)
    with pytest.raises(OsnasError, match="sampler"):
        build_train_sampler("nope", items, 8)
    assert isinstance(build_train_sampler("random", items, 4), RandomBatchSampler)
    assert isinstance(build_train_sampler("pk", items, 4, 2), RandomIdentitySampler)


def test_loader_with_batch_sampler(data_root):
    from osnas.data import ImageDataset, build_loader, build_transforms

    _market(data_root / "market1501")
    ds = build_dataset("market1501", data_root)
    s = RandomIdentitySampler(ds.train, 4, 2, seed=0)
    ld = build_loader(ImageDataset(ds.train, build_transforms(64, 32, train=True)), batch_sampler=s, workers=0, seed=0)
    imgs, pids, cams, dsetids, idx = next(iter(ld))
    assert imgs.shape == (4, 3, 64, 32) and len(set(pids.tolist())) == 2


def test_split_heldout():
    items = _items(n_ids=15, per=(1, 9), domains=2)
    tr, va = split_heldout(items, 0.3, seed=5)
    assert sorted(tr + va) == sorted(items) and not set(tr) & set(va)
    counts = Counter(it[1] for it in items)
    for pid, n in counts.items():
        ntr = sum(1 for it in tr if it[1] == pid)
        nva = sum(1 for it in va if it[1] == pid)
        if n >= 2:
            assert ntr >= 1 and nva >= 1 and nva == min(max(round(n * 0.3), 1), n - 1)
        else:
            assert (ntr, nva) == (1, 0)
    assert split_heldout(items, 0.3, seed=5) == (tr, va)
    assert split_heldout(items, 0.3, seed=6) != (tr, va)
    with pytest.raises(OsnasError):
        split_heldout(items, 1.0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=60), st.floats(0.05, 0.95), st.integers(0, 99))
def test_split_heldout_property(pids, fraction, seed):
    items = [(f"{i}.jpg", p, 0, p % 2) for i, p in enumerate(pids)]
    tr, va = split_heldout(items, fraction, seed)
    assert sorted(tr + va) == sorted(items)
    c = Counter(pids)
    assert {it[1] for it in va} == {p for p, n in c.items() if n >= 2}
    assert {it[1] for it in tr} == set(c)
