"""Faults: failing checkpoint writes (disk full, permission), atomicity under SIGKILL, stale temp files.

Tests run as root, where permission bits stop nothing: failures are injected by
monkeypatching the OS calls the atomic writer uses.
"""

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from osnas import utils
from conftest import TINY
from osnas.errors import OsnasError
from osnas.search import read_history, run_search
from osnas.utils import atomic_write_bytes, load_checkpoint, remove_stale_temps, save_checkpoint

ONE = TINY + ["search.runs=1"]  # one supernet: the run folder is its own
SEARCH = ONE + ["search.epochs=2", "search.steps_per_epoch=2", "search.warmup_epochs=1"]


def _temps(folder: Path):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _eacces(*a, **k):
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))


@pytest.mark.parametrize("where,fail", [("os.replace", _enospc), ("os.fsync", _enospc),
                                        ("tempfile.mkstemp", _eacces), ("os.fdopen", _enospc)])
def test_failing_write_keeps_previous_file(tmp_path, monkeypatch, where, fail):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint({"step": torch.tensor(1)}, path)
    before = path.read_bytes()
    mod, name = where.split(".")
    monkeypatch.setattr(getattr(utils, mod), name, fail)
    with pytest.raises(OsnasError) as e:
        save_checkpoint({"step": torch.tensor(2)}, path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "cannot write" in msg
    assert os.strerror(errno.ENOSPC if fail is _enospc else errno.EACCES) in msg
    monkeypatch.undo()
    assert path.read_bytes() == before and int(load_checkpoint(path)["step"]) == 1
    assert _temps(tmp_path) == []  # the temp file of the failed write is gone


def test_write_into_missing_or_file_parent(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OsnasError, match="cannot write"):
        atomic_write_bytes(blocker / "sub" / "a.json", b"{}")
    assert blocker.read_text() == "x"


@pytest.fixture(scope="session")
def root(synth_root):
    """The tiny built-in domains (tests/conftest.py)."""
    return synth_root


def test_search_disk_full_at_checkpoint_then_resume(root, tmp_path, monkeypatch):
    """The end-of-epoch save fails (disk full): a one-line error, the previous checkpoint intact,
    no temp files; once there is room again, --resume finishes the run as if nothing happened."""
    out = tmp_path / "run"
    run_search(data_root=str(root), out=str(out),
               overrides=ONE + ["search.epochs=1", "search.steps_per_epoch=2", "search.warmup_epochs=1"])
    ck_before = (out / "checkpoint.pth").read_bytes()
    real_replace = os.replace

    def full(src, dst):
        if str(dst).endswith("checkpoint.pth"):
            _enospc()
        return real_replace(src, dst)

    monkeypatch.setattr(utils.os, "replace", full)
    # resume with one more epoch: the epoch's checkpoint write fails
    longer = ONE + ["search.epochs=2", "search.steps_per_epoch=2", "search.warmup_epochs=1"]
    with pytest.raises(OsnasError) as e:
        run_search(data_root=str(root), out=str(out), overrides=longer, resume=True)
    assert "No space left on device" in str(e.value) and "\n" not in str(e.value)
    assert (out / "checkpoint.pth").read_bytes() == ck_before and _temps(out) == []
    monkeypatch.undo()
    # the failed run's history rows past the checkpoint are dropped on resume
    run_search(data_root=str(root), out=str(out), overrides=longer, resume=True)
    rows = read_history(out)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert load_checkpoint(out / "checkpoint.pth")["global_step"] == 4


def test_history_write_failure_is_one_line(root, tmp_path, monkeypatch):
    import osnas.session as session

    def broken(f, line):
        raise OsnasError(f"cannot write {f.name}: No space left on device; the last checkpoint is kept")

    monkeypatch.setattr(session, "append_line", broken)
    with pytest.raises(OsnasError, match="alphas.jsonl: No space left"):
        run_search(data_root=str(root), out=str(tmp_path / "r"), overrides=SEARCH)
    # and the real helper turns an OSError into that error
    monkeypatch.undo()

    class Full:
        name = "h.jsonl"

        def write(self, s):
            _enospc()

    with pytest.raises(OsnasError, match="cannot write h.jsonl: No space left on device"):
        utils.append_line(Full(), "{}")


WRITER = textwrap.dedent("""
    import os, sys, time, torch
    from osnas import utils
    from osnas.utils import save_checkpoint
    real_fsync = os.fsync

    def slow_fsync(fd):  # a slow disk: the temp file lives long enough to be killed in the middle
        time.sleep(0.2)
        real_fsync(fd)

    utils.os.fsync = slow_fsync
    path = sys.argv[1]
    base = torch.arange(2_000_000, dtype=torch.float32)
    i = 0
    while True:
        i += 1
        save_checkpoint({"i": torch.tensor(i), "w": base + i}, path)
        print(i, flush=True)
""")


def test_sigkill_during_writes_never_leaves_a_torn_checkpoint(tmp_path):
    """SIGKILL a process that rewrites a checkpoint in a loop, in the middle of a write (a temp
    file exists) and at an arbitrary moment: the checkpoint always loads and holds one complete
    write; the killed writes' temp files are what remove_stale_temps (run on --resume) deletes."""
    path = tmp_path / "checkpoint.pth"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for mid_write in (True, True, False):
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True, env=env)
        assert proc.stdout.readline().strip()  # one complete write
        n_temps = len(_temps(tmp_path))
        t0 = time.time()
        while mid_write and len(_temps(tmp_path)) <= n_temps:
            assert time.time() - t0 < 60 and proc.poll() is None
            time.sleep(0.005)
        if not mid_write:
            time.sleep(0.25)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        ck = load_checkpoint(path)
        assert torch.equal(ck["w"], torch.arange(2_000_000, dtype=torch.float32) + int(ck["i"]))
    stale = _temps(tmp_path)
    assert len(stale) >= 2  # the two kills in the middle of a write
    assert remove_stale_temps(path) == len(stale) and _temps(tmp_path) == []
    load_checkpoint(path)


def test_resume_removes_stale_temp_files(root, tmp_path):
    out = run_search(data_root=str(root), out=str(tmp_path / "r"),
                     overrides=ONE + ["search.epochs=1", "search.steps_per_epoch=1", "search.warmup_epochs=0"])
    (out / ".checkpoint.pth.abc123.tmp").write_bytes(b"half a checkpoint")
    run_search(data_root=str(root), out=str(out), resume=True,
               overrides=ONE + ["search.epochs=2", "search.steps_per_epoch=1", "search.warmup_epochs=0"])
    assert _temps(out) == [] and load_checkpoint(out / "checkpoint.pth")["global_step"] == 2
