"""Generated data with a planted answer for the stem's normalisation (BN or IN); see
tests/test_planted.py for why each answer is right.

block_images         IN right: identity = a code of bright/dark blocks (spatial pattern);
                     every image has its own random contrast, brightness and channel gains.
scaled_level_images  IN wrong: identity = the image's level t along a fixed colour
                     direction, i.e. its per-channel means and scales; spatial content from
                     a few textures shared by all identities.
"""

from __future__ import annotations

import numpy as np

DATA_MEAN = np.array([0.485, 0.456, 0.406]) * 255  # osnas's default data.mean, in pixel values
DATA_STD = np.array([0.229, 0.224, 0.225]) * 255  # osnas's default data.std, in pixel values


def _codes(rng, n, bits):
    """n distinct random binary codes of `bits` bits, each with 2..bits-2 ones."""
    seen, out = set(), []
    while len(out) < n:
        c = tuple(int(v) for v in rng.integers(0, 2, size=bits))
        if c not in seen and 2 <= sum(c) <= bits - 2:
            seen.add(c)
            out.append(np.array(c, float))
    return out


def block_images(rng, n_ids, per_id, h, w, contrast, brightness, colour=0.3, noise=6.0, grid=(4, 2), codes=None,
                 cams=(1, 2)):
    """Identities as binary block codes P on a grid (bright/dark blocks, grey); per image:
    value = 255 * (b + a * g_c * P) + noise, with a ~ logU(contrast), b ~ U(brightness),
    g_c ~ U(1 - colour, 1 + colour) per channel. Returns (items, codes); pass `codes` to
    reuse the same patterns in another domain."""
    bits = grid[0] * grid[1]
    codes = codes if codes is not None else _codes(rng, n_ids, bits)
    bh, bw = h // grid[0], w // grid[1]
    out = []
    for pid in range(1, n_ids + 1):
        pattern = np.kron(codes[pid - 1].reshape(grid), np.ones((bh, bw)))[:, :, None]
        for k in range(per_id):
            a = float(np.exp(rng.uniform(np.log(contrast[0]), np.log(contrast[1]))))
            b = float(rng.uniform(*brightness))
            g = rng.uniform(1 - colour, 1 + colour, size=3)
            img = 255 * (b + a * g[None, None, :] * pattern) + rng.normal(0, noise, size=(h, w, 3))
            out.append((pid, cams[k % len(cams)], img))
    return out, codes


def from_normalised(s):
    """Pixel values whose osnas-normalised image ((x / 255 - mean) / std) is `s` (H, W, 3)."""
    return DATA_MEAN + DATA_STD * s


def scaled_level_images(rng, n_ids, per_id, h, w, levels, jitter=0.1, texture=0.5, direction=(0.6, 0.3, -0.3),
                        n_textures=4, cams=(1, 2)):
    """Normalised image = t * (v + T_k): v a fixed colour direction, T_k one of `n_textures`
    textures shared by all identities (image k of every identity uses T_(k mod n)), t the
    identity's level (levels[id], shuffled) times a per-image jitter exp(N(0, jitter)).
    The identity is only in the per-channel means (t v) and scales (t); the stem conv has
    no bias, so its output is t times that of v + T_k, and IN cancels t exactly (borders
    included): after IN every identity looks the same."""
    assert n_ids <= len(levels)
    lv = np.asarray(levels, float)[rng.permutation(len(levels))[:n_ids]]
    pool = [np.kron(rng.normal(0, 1, size=(h // 4, w // 4, 3)), np.ones((4, 4, 1))) * texture
            for _ in range(n_textures)]
    v = np.asarray(direction, float)[None, None, :]
    out = []
    for pid in range(1, n_ids + 1):
        for k in range(per_id):
            t = lv[pid - 1] * float(np.exp(rng.normal(0, jitter)))
            out.append((pid, cams[k % len(cams)], from_normalised(t * (v + pool[k % n_textures]))))
    return out
