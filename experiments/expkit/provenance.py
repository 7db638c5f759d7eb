"""What a study records of the run that made it: the commit its code ran at, and its command line
with the paths outside the repository (the run folder, the data root) as OUT and DATA, so the
RESULTS file it writes names no path outside the repository."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Dict, Optional, Sequence


def commit(where: Path) -> Optional[str]:
    """`git describe --always --dirty` of the checkout holding `where`; None outside git."""
    try:
        r = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=where, capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() or None


def command(argv: Sequence[str], out: str, data_root: Optional[str] = None,
            more: Optional[Dict[str, str]] = None) -> str:
    """The arguments as a RESULTS file records them: the value `out` as OUT, `data_root` as DATA,
    and any other value of `more` by its replacement."""
    names = {str(out): "OUT", **({str(data_root): "DATA"} if data_root else {}), **(more or {})}
    return " ".join(names.get(x, x) for x in argv)


def scrub(obj, out: str, data_root: Optional[str] = None, repo: Optional[Path] = None):
    """`obj` (a study's results: dicts, lists, strings) with every path under the run folder
    written OUT/..., under the data root DATA/..., and under the repository relative to it, so
    the committed evidence names no path outside the repository."""
    names = [(str(Path(out).resolve()), "OUT"), (str(out).rstrip("/"), "OUT")]
    if data_root:
        names += [(str(Path(data_root).resolve()), "DATA"), (str(data_root).rstrip("/"), "DATA")]
    if repo is not None:
        names.append((str(Path(repo).resolve()), "."))

    def one(x):
        if isinstance(x, dict):
            return {k: one(v) for k, v in x.items()}
        if isinstance(x, list):
            return [one(v) for v in x]
        if isinstance(x, str):
            for prefix, name in names:
                if x == prefix or x.startswith(prefix + "/"):
                    return name + x[len(prefix):]
        return x

    return one(obj)
