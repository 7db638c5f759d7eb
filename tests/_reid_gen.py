"""Tiny generated re-ID datasets in the Market-1501 layout (PNG, lossless) for fast tests.

`write_market(folder, train, query, gallery)` takes lists of (pid, cam, HxWx3 uint8 array)
and writes `bounding_box_train/`, `query/`, `bounding_box_test/` with names like
`0002_c1s1_000451_03.png`, readable as dataset `custom:FOLDER`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


def write_market(folder, train, query=(), gallery=()) -> Path:
    """Write the three split folders; a source used only for training gets a one-image
    query and gallery (copies of its first two training images) so that the layout is valid."""
    folder = Path(folder)
    train = list(train)
    if not query and not gallery:
        query, gallery = train[:1], train[1:2]
    for split, items in (("train", train), ("query", query), ("gallery", gallery)):
        d = folder / SPLITS[split]
        d.mkdir(parents=True, exist_ok=True)
        for n, (pid, cam, img) in enumerate(items):
            assert pid >= 1 and 1 <= cam <= 9, (pid, cam)  # 0000 is a distractor id, -1 junk
            arr = np.clip(np.asarray(img), 0, 255).astype(np.uint8)
            Image.fromarray(arr, "RGB").save(d / f"{pid:04d}_c{cam}s1_{n:06d}_01.png")
    return folder


def random_ids(rng, n_ids, per_id, h, w, cams=(1, 2), noise=20.0):
    """Identities = fixed random low-frequency patterns, images = pattern + noise; cams alternate."""
    out = []
    for pid in range(1, n_ids + 1):
        base = rng.uniform(40, 215, size=(h // 4, w // 4, 3))
        base = np.kron(base, np.ones((4, 4, 1)))
        for k in range(per_id):
            img = base + rng.normal(0, noise, size=base.shape)
            out.append((pid, cams[k % len(cams)], img))
    return out


def two_tiny_sources(root, h: int, w: int) -> str:
    """Two tiny source domains (4 identities x 4 images, h x w) as custom Market-style folders
    under root; returns the --sources value naming them."""
    rng = np.random.default_rng(0)
    for d in range(2):
        write_market(root / f"d{d}", random_ids(rng, 4, 4, h, w))
    return f"custom:{root / 'd0'},custom:{root / 'd1'}"
