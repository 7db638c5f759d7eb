"""Small shared helpers: atomic writes, safe checkpoint loading, seeding, progress, logging."""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from osnas.errors import OsnasError

log = logging.getLogger("osnas")


# ----------------------------------------------------------------------------- files
def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same folder + rename.

    A killed process leaves either the old file or the new one, never a torn one. A failing
    write (disk full, permission) raises OsnasError and leaves the previous file untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OsnasError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise OsnasError(f"cannot write {path}: {e.strerror or e}; the previous file is kept") from None
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a power cut after it keeps the new file)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temps(path: str | Path) -> int:
    """Delete temp files a killed atomic write of `path` left behind (`.NAME.*.tmp`); returns how many.

    Only for files this process owns (rank 0 of the run writing `path`).
    """
    path = Path(path)
    n = 0
    for p in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            p.unlink()
            n += 1
        except OSError:
            pass
    return n


def open_append(path: str | Path):
    """Open a log (JSON lines) for appending; a failure is a one-line OsnasError."""
    try:
        return open(path, "a")
    except OSError as e:
        raise OsnasError(f"cannot write {path}: {e.strerror or e}; the last checkpoint is kept") from None


def append_line(f, line: str) -> None:
    """Append one line and flush (a killed run loses at most this line); disk full etc. -> OsnasError."""
    try:
        f.write(line + "\n")
        f.flush()
    except OSError as e:
        raise OsnasError(f"cannot write {f.name}: {e.strerror or e}; the last checkpoint is kept") from None


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise OsnasError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise OsnasError(f"{path}: not a valid {what} ({e})") from None


def read_jsonl(path: str | Path, what: str, missing_ok: bool = False) -> list:
    """Rows of a JSON-lines file (one object per line). A torn last line (a run killed while
    writing it) is dropped; any other bad line is a one-line error. A missing or empty file
    is an error unless `missing_ok` (then [])."""
    path = Path(path)
    if not path.is_file():
        if missing_ok:
            return []
        raise OsnasError(f"{path}: {what} not found")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise OsnasError(f"{path}: cannot read {what} ({e})") from None
    numbered = [(i, ln) for i, ln in enumerate(lines) if ln.strip()]
    rows = []
    for k, (i, ln) in enumerate(numbered):
        try:
            row = json.loads(ln)
        except json.JSONDecodeError:
            if k == len(numbered) - 1:
                break  # torn last line of a killed run
            raise OsnasError(f"{path}: line {i + 1} is not valid JSON (expected one {what} row per line)") from None
        if not isinstance(row, dict):
            raise OsnasError(f"{path}: line {i + 1}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    if not rows and not missing_ok:
        raise OsnasError(f"{path}: {what} is empty (no complete row yet)")
    return rows


def load_yaml(path: str | Path, what: str = "YAML file") -> Any:
    """A YAML (or JSON) file through yaml.safe_load; every failure is one line naming the path."""
    path = Path(path)
    if not path.is_file():
        raise OsnasError(f"{path}: {what} not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise OsnasError(f"{path}: invalid YAML{where} ({getattr(e, 'problem', None) or e})") from None
    except UnicodeDecodeError:
        raise OsnasError(f"{path}: not a text file, expected {what}") from None
    except OSError as e:
        raise OsnasError(f"{path}: cannot read {what} ({e.strerror or e})") from None


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(obj: dict, path: str | Path) -> None:
    """torch.save into memory, then an atomic write: a killed run never leaves a corrupt file."""
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, what: str = "checkpoint") -> dict:
    """Load with weights_only=True; every failure is a one-line OsnasError naming the path."""
    path = Path(path)
    if not path.exists():
        raise OsnasError(f"{path}: {what} not found")
    if path.is_dir():
        raise OsnasError(f"{path}: is a folder, expected a {what} file (.pth/.pt)")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = _unpickling_reason(str(e))
        raise OsnasError(
            f"{path}: refused to load {what}: it holds objects that weights_only loading does not "
            f"allow ({first[:160]})"
        ) from None
    except Exception as e:  # RuntimeError, EOFError, BadZipFile, ...; garbage bytes raise almost anything
        if isinstance(e, OSError) and e.errno is not None:  # EIO, EACCES...: the file exists but cannot be read
            raise OsnasError(f"{path}: cannot read {what} ({e.strerror or e})") from None
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OsnasError(f"{path}: not a readable {what} (truncated or corrupt: {msg[:160]})") from None
    if not isinstance(obj, dict):
        raise OsnasError(f"{path}: expected a {what} holding a dict, got {type(obj).__name__}")
    return obj


def _unpickling_reason(msg: str) -> str:
    """The gist of torch's multi-paragraph weights_only refusal (which global or opcode it refused)."""
    msg = re.sub(r"\x1b\[[0-9;]*m", "", msg)
    i = msg.find("WeightsUnpickler error:")
    if i >= 0:
        rest = [ln.strip() for ln in msg[i + len("WeightsUnpickler error:"):].splitlines() if ln.strip()]
        if rest:
            return rest[0].split(". Please use")[0]
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    return lines[0] if lines else "unpickling refused"


# ----------------------------------------------------------------------------- randomness
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    """All RNG states needed to continue the same trajectory after --resume."""
    # plain ints, lists and tensors only, so the checkpoint loads with weights_only=True
    v, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [v, list(mt), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict) -> None:
    v, mt, gauss = state["python"]
    random.setstate((v, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])


# ----------------------------------------------------------------------------- progress
class Progress:
    """Progress on stderr with rate and ETA: a tqdm bar on a terminal, periodic lines otherwise.

    Periodic lines (every `every` seconds) keep CI logs and redirected runs readable.
    """

    def __init__(self, total: int, desc: str, unit: str = "it", every: float = 10.0, enabled: bool = True):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.n = 0
        self.t0 = self._last = time.time()
        self.enabled = enabled
        self.postfix = ""
        self._bar = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr)
            except ImportError:
                self._bar = None

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        if postfix:
            self.postfix = " ".join(f"{k}={_fmt(v)}" for k, v in postfix.items())
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix_str(self.postfix)
            return
        now = time.time()
        if now - self._last >= self.every or self.n >= self.total:
            self._last = now
            el = now - self.t0
            rate = self.n / el if el > 0 else 0.0
            eta = (self.total - self.n) / rate if rate > 0 else float("nan")
            print(
                f"{self.desc}: {self.n}/{self.total} {self.unit} [{_hms(el)}<{_hms(eta)}, "
                f"{rate:.2f} {self.unit}/s] {self.postfix}".rstrip(),
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _hms(s: float) -> str:
    if s != s or s == float("inf"):
        return "?"
    s = int(s)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


# ----------------------------------------------------------------------------- logging
def setup_run_logging(run_dir: str | Path | None, verbose: bool = True) -> None:
    """Log to stderr and, when a run folder is given, to run_dir/log.txt."""
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    if verbose:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        log.addHandler(sh)
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(Path(run_dir) / "log.txt")
        fh.setFormatter(fmt)
        log.addHandler(fh)
    log.propagate = False


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise OsnasError(f"unknown device {name!r}; expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OsnasError(f"device {name!r} requested but CUDA is not available on this machine")
    return dev


def environment() -> dict:
    """What a run's numbers depend on beyond its config and seed: the library versions, the CPU
    and the thread count. A run is bit-exact on one machine and library set, but not across
    them (float-level differences grow through training), so run.json records them."""
    import platform

    import PIL

    from osnas import __version__

    cpu = platform.processor() or platform.machine()
    try:  # Linux: the model name is in /proc/cpuinfo (platform.processor() is often empty there)
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"osnas": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "pillow": PIL.__version__, "platform": platform.platform(), "cpu": cpu,
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
