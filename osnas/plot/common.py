"""Shared style for the osnas figures: candidate colours, warm-up spans, saving."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

import matplotlib

if "matplotlib.pyplot" not in sys.modules:  # headless; figures are built without pyplot anyway
    matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from osnas.errors import OsnasError  # noqa: E402
from osnas.utils import atomic_write_bytes  # noqa: E402

FORMATS = ("png", "svg")
DPI = 150
CHOSEN_COLOR = "#d62728"
WARMUP_COLOR = "0.85"

# stable colours for the candidate names of the shipped spaces; anything else takes the next free one
_KNOWN = {"plain": "#1f77b4", "bn": "#1f77b4", "in_res": "#ff7f0e", "in": "#ff7f0e", "in_post": "#2ca02c",
          "both": "#9467bd", "none": "#7f7f7f"}
_SPARE = ["#8c564b", "#e377c2", "#bcbd22", "#17becf", "#2ca02c", "#d62728", "#9467bd", "#7f7f7f"]


def candidate_colors(names: Iterable[str]) -> Dict[str, str]:
    """name -> colour, the same name always the same colour within a figure."""
    out: Dict[str, str] = {}
    spare = [c for c in _SPARE]
    for n in names:
        if n in out:
            continue
        if n in _KNOWN and _KNOWN[n] not in out.values():
            out[n] = _KNOWN[n]
        else:
            free = [c for c in spare if c not in out.values()]
            out[n] = free[0] if free else matplotlib.colormaps["tab20"](len(out) % 20)
    return out


def series_colors(n: int) -> List:
    """n distinguishable colours (runs, positions)."""
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def spans(steps: np.ndarray, mask: np.ndarray) -> List[Tuple[float, float]]:
    """Contiguous [start, end] step ranges where mask holds, padded by half a step."""
    out, start = [], None
    for i, m in enumerate(mask):
        if m and start is None:
            start = i
        if start is not None and (not m or i == len(mask) - 1):
            end = i if m else i - 1
            out.append((float(steps[start]) - 0.5, float(steps[end]) + 0.5))
            start = None
    return out


def shade_warmup(ax, steps: np.ndarray, warm: np.ndarray, tag: str = "") -> bool:
    """Grey band over the warm-up steps (alphas frozen); True if any. gid warmup:TAG:k (unique in SVG)."""
    sp = spans(steps, warm)
    for k, (a, b) in enumerate(sp):
        ax.axvspan(a, b, color=WARMUP_COLOR, alpha=0.6, lw=0, zorder=0, gid=f"warmup:{tag}:{k}")
    return bool(sp)


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def grid_shape(n: int) -> Tuple[int, int]:
    ncols = 4 if n > 9 else 3 if n > 4 else n
    return (n + ncols - 1) // ncols, ncols


def slug(text: str) -> str:
    """A file-name-safe version of a label."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")
    return s or "x"


def unique_slugs(paths: Sequence[Path]) -> List[str]:
    """Short, unique names for run folders: the folder name, with its parent where names repeat."""
    base = [slug(Path(p).resolve().name) for p in paths]
    if len(set(base)) == len(base):
        return base
    two = [slug(f"{Path(p).resolve().parent.name}_{Path(p).resolve().name}") for p in paths]
    if len(set(two)) == len(two):
        return two
    return [f"{b}_{i}" for i, b in enumerate(base)]


def save_figure(fig: Figure, path: Path, fmt: str) -> Path:
    """Render to memory, then write atomically; a failing write is an OsnasError naming the path."""
    if fmt not in FORMATS:
        raise OsnasError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    buf = io.BytesIO()
    meta = {"Date": None} if fmt == "svg" else {"Software": None}
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "osnas"}):
        fig.savefig(buf, format=fmt, dpi=DPI, metadata=meta)
    atomic_write_bytes(path, buf.getvalue())
    return path
