"""One training session: what search and retrain share, so each stage's file shows only its algorithm.

A session owns everything around the steps of a training run:
- the run folder: refuses to start over a run that is already there, writes the start
  files (on rank 0), and on `--resume` removes torn temp files and truncates the step log
  to the checkpoint it continues from;
- resume: the checkpoint is read and checked *before* any data is read or the folder is
  touched, and loaded into the stage's objects after they are built (and after every RNG
  draw of their construction), so a resumed run continues the same trajectory, bit for bit;
- atomic checkpoints, written by rank 0 only; under DDP every rank first takes rank 0's BN
  buffers and the ranks check that weights (and alphas) agree;
- stops: Ctrl-C / SIGTERM saves a checkpoint at the next step and exits 130; a non-finite
  loss stops every rank and keeps the last good checkpoint;
- progress on stderr, `log.txt`, and one JSON row per step or epoch in the stage's log.

    with TrainingSession("search", run_dir, cfg.run, ctx, resume, log_name=HISTORY,
                         continue_cmd=...) as run:
        ... build data and model on run.device ...
        counters = run.restore(parts, fresh={...}, write_start=...)
        for ...:
            loss_value = run.check(loss, where)     # before backward
            ...
            run.record(row); run.tick(...)
            if run.stop_requested: run.stop(parts, counters)
        run.save(parts, counters)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

from osnas import distributed as dist
from osnas.config import build_config
from osnas.data import DEFAULT_SYNTH_SOURCES, parse_names
from osnas.errors import NaNLossError, OsnasError, OsnasInterrupted, first_line
from osnas.rundir import CHECKPOINT, CONFIG, supernet_dirs
from osnas.training import check_finite
from osnas.utils import (Progress, append_line, atomic_write_text, load_checkpoint, log, open_append, read_jsonl,
                         load_yaml, remove_stale_temps, resolve_device, rng_state, save_checkpoint, seed_everything,
                         set_rng_state, setup_run_logging)


def resolve_run_config(config_file=None, overrides=None, out=None, resume: bool = False, sources=None,
                       data_root_arg=None, prefix: str = "run") -> tuple:
    """(cfg, run_dir) for a training stage: defaults <- the run's saved config (--resume) <-
    config file <- --set; then --sources / --data-root; no sources = the built-in domains."""
    run_dir = Path(out) if out else None
    base = None
    if resume:
        if run_dir is None:
            raise OsnasError("--resume needs --out RUN_DIR (the run to continue)")
        if not (run_dir / CHECKPOINT).is_file() and not supernet_dirs(run_dir):
            raise OsnasError(f"{run_dir / CHECKPOINT}: no checkpoint to resume from")
        base = load_yaml(run_dir / CONFIG, "run config")
    cfg = build_config(config_file, overrides, base=base)
    if base is not None:
        changed = changed_settings(build_config(base=base).to_dict(), cfg.to_dict())
        # allowed (e.g. more epochs), but the run no longer repeats the uninterrupted one; said once (torchrun: rank 0)
        if changed and os.environ.get("RANK", "0") == "0":
            print(f"warning: resuming {run_dir} with settings that differ from the run's own config.yaml: "
                  f"{', '.join(changed)}; the continued run will not match an uninterrupted one (resume "
                  f"without --config/--set to keep the run's settings)", file=sys.stderr, flush=True)
    if sources:
        cfg.data.sources = parse_names(sources)
    if data_root_arg:
        cfg.data.root = str(data_root_arg)
    if not cfg.data.sources:
        cfg.data.sources = list(DEFAULT_SYNTH_SOURCES)
    if run_dir is None:
        run_dir = Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    return cfg, run_dir


def changed_settings(saved: dict, now: dict, prefix: str = "") -> list:
    """The dotted keys whose values differ between two config dicts, as `key old -> new`."""
    out = []
    for k in sorted(set(saved) | set(now)):
        a, b = saved.get(k), now.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_settings(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} {a!r} -> {b!r}")
    return out


# Under torchrun a Ctrl-C reaches each worker twice: from the terminal (process group) and
# forwarded by the agent. A repeat within this many seconds counts as the same request.
TORCHRUN_REPEAT_S = 5.0


class StopRequest:
    """Set by SIGINT/SIGTERM: the run saves a checkpoint at the next step and exits."""

    def __init__(self):
        self.signum = None

    def __bool__(self):
        return self.signum is not None


@contextmanager
def stop_signals():
    """Ctrl-C / SIGTERM become a StopRequest (a second Ctrl-C gives up at once, except for
    torchrun's forwarded copy of the first one); the previous handlers come back on exit."""
    request, old, first = StopRequest(), {}, [0.0]
    under_torchrun = "TORCHELASTIC_RUN_ID" in os.environ

    def handler(signum, frame):
        if request.signum is not None:
            if under_torchrun and time.monotonic() - first[0] < TORCHRUN_REPEAT_S:
                return
            raise KeyboardInterrupt
        request.signum = signum
        first[0] = time.monotonic()

    for s in (signal.SIGINT, signal.SIGTERM):
        try:
            old[s] = signal.signal(s, handler)
        except ValueError:  # not in the main thread
            pass
    try:
        yield request
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class TrainingSession:
    """The run folder, resume, saves, stops, progress and logging of one search or retrain run.

    stage: "search" | "retrain" (used in messages); log_name: the JSON-lines log, one row per
    step or epoch; log_cut: (row key, checkpoint counter): on resume the rows whose key is not
    below the checkpoint's counter are dropped (a killed run wrote them after it); resume_keys:
    what a checkpoint must hold to be resumed; check: extra test of a loaded checkpoint
    (raises OsnasError) before anything else happens.
    """

    def __init__(self, stage: str, run_dir: Path, run_cfg, ctx: dist.DistContext, resume: bool, *,
                 checkpoint: str, log_name: str, log_cut: tuple, resume_keys: tuple,
                 continue_cmd: str, check: Optional[Callable[[dict], None]] = None):
        self.stage, self.run_dir, self.ctx, self.resume = stage, Path(run_dir), ctx, resume
        self.ck_path, self.log_path, self.log_cut = self.run_dir / checkpoint, self.run_dir / log_name, log_cut
        self.continue_cmd = continue_cmd
        dist.check_sync_bn(run_cfg.sync_bn, ctx)
        if self.run_dir.exists() and not resume and self.ck_path.exists():
            raise OsnasError(f"{self.run_dir}: already holds a {stage} run; use --resume to continue it or another --out")
        # a broken checkpoint fails before any data is read and before the run folder is touched
        self._ck = self._load_resumable(resume_keys, check) if resume else None
        self.seed = run_cfg.seed
        seed_everything(self.seed)
        self.device = ctx.device if ctx.distributed else resolve_device(run_cfg.device)
        if ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            setup_run_logging(self.run_dir)
        else:
            setup_run_logging(None, verbose=False)
        self.progress_enabled = run_cfg.progress and ctx.is_main
        self.stop_requested = False
        self._signal: Optional[StopRequest] = None
        self._log = None
        self._progress: Optional[Progress] = None

    # ------------------------------------------------------------------ life cycle
    def __enter__(self) -> "TrainingSession":
        self._stops = stop_signals()
        self._signal = self._stops.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._stops.__exit__(*exc)
        if self._progress is not None:
            self._progress.close()
        if self._log is not None:
            self._log.close()

    def _load_resumable(self, keys: tuple, check) -> dict:
        ck = load_checkpoint(self.ck_path, f"{self.stage} checkpoint")
        missing = [k for k in keys if ck.get(k) is None]
        if missing:
            raise OsnasError(f"{self.ck_path}: not a {self.stage} checkpoint to resume (missing {', '.join(missing)})")
        if check is not None:
            check(ck)
        return ck

    def restore(self, parts: Dict[str, object], counters: dict, write_start: Callable[[], None]) -> dict:
        """Fresh run: `write_start()` on rank 0 and `counters` as given. Resume: the checkpoint's
        states into `parts` (objects with load_state_dict; None = absent), its RNG state, and
        its counters (same keys as `counters`); the step log is cut back to the checkpoint."""
        if self._ck is not None:
            ck = self._ck
            try:
                for key, obj in parts.items():
                    if obj is not None:
                        obj.load_state_dict(ck[key])
                set_rng_state(ck["rng"])
            except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
                raise OsnasError(f"{self.ck_path}: does not fit this run ({first_line(e)})") from None
            counters = {k: ck[k] for k in counters}
            self._ck = None  # free the memory

            def start():
                remove_stale_temps(self.ck_path)  # left by a write that was killed
                self._truncate_log(counters)
                log.info(f"resumed {self.run_dir} at " + " ".join(f"{k} {v}" for k, v in counters.items())
                         + (f" on {self.ctx.world_size} processes" if self.ctx.distributed else ""))
        else:
            def start():
                write_start()
                atomic_write_text(self.log_path, "")
        dist.on_main(start, self.ctx)  # under DDP: every rank waits for rank 0's writes, shares its errors
        if self.ctx.is_main:
            self._log = open_append(self.log_path)
        return dict(counters)

    def _truncate_log(self, counters: dict) -> None:
        """Keep the log rows written before the checkpoint (a killed run wrote some after it)."""
        row_key, counter = self.log_cut
        rows = [r for r in read_jsonl(self.log_path, f"{self.stage} log", missing_ok=True)
                if r[row_key] < counters[counter]]
        atomic_write_text(self.log_path, "".join(json.dumps(r) + "\n" for r in rows))

    # ------------------------------------------------------------------ steps
    def start_progress(self, total: int, done: int, unit: str = "step") -> None:
        self._progress = Progress(total, self.stage, unit, enabled=self.progress_enabled)
        self._progress.n = done

    def tick(self, **postfix) -> None:
        if self._progress is not None:
            self._progress.update(1, **postfix)

    def check(self, loss: torch.Tensor, where: str) -> float:
        """Before backward: the loss value (the mean over ranks under DDP). A non-finite loss on
        any rank stops every rank (the last good checkpoint is kept); a stop request on any rank
        sets `stop_requested` on all of them at this same step."""
        asked = bool(self._signal)
        if self.ctx.distributed:
            value, bad, self.stop_requested = dist.sync_step(loss, asked, self.ctx)
            if bad:
                raise NaNLossError(f"non-finite loss at {where} on some rank; stopped, the last good checkpoint is kept")
            return value
        check_finite(loss, where)
        self.stop_requested = asked
        return float(loss.detach())

    def record(self, row: dict) -> None:
        """One row of the stage's JSON-lines log (rank 0; flushed, so a kill loses at most it)."""
        if self._log is not None:
            append_line(self._log, json.dumps(row))

    # ------------------------------------------------------------------ saving
    def save(self, parts: Dict[str, object], counters: dict, meta: dict, groups: Dict[str, list]) -> None:
        """An atomic checkpoint of `parts` (state_dict()), RNG, counters and meta, by rank 0.

        Under DDP every rank first takes rank 0's BN buffers, then the ranks verify that the
        tensors in `groups` (weights, alphas, ...) agree."""
        ctx = self.ctx
        if ctx.distributed:
            model = parts["model"]
            dist.sync_buffers(model, ctx)
            dist.check_consistent(groups, ctx, f"{self.stage} " + " ".join(f"{k} {v}" for k, v in counters.items()))
        state = {k: (o.state_dict() if o is not None else None) for k, o in parts.items()}
        dist.on_main(lambda: save_checkpoint({**state, "rng": rng_state(), **counters, **meta}, self.ck_path), ctx)
        if ctx.distributed and ctx.is_main:
            log.info(f"checkpoint at {counters}: {ctx.world_size} ranks agree on {', '.join(groups)} "
                     f"(state sha256 {dist.digest(parts['model'].state_dict().values())[:16]})")

    def stop(self, parts, counters: dict, meta: dict, groups, at: str) -> None:
        """Save and leave with exit code 130, saying where it stopped and how to continue."""
        self.save(parts, counters, meta, groups)
        raise OsnasInterrupted(f"interrupted: checkpoint saved at {at} in {self.run_dir}; "
                               f"continue with: {self.continue_cmd}")
