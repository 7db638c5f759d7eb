"""Shared test set-up: one CPU thread per test process, tiny run settings, tiny built-in domains.

`TINY` (and the `tiny` fixture) are the `--set` overrides that make a stage run in seconds
(x0.25 width, 64x32 images, batches of 8); `synth_root` is a data root holding the built-in
synthetic domains synth0..synth3 at the tiny preset, generated once per test session.
"""

import os

import pytest
import torch

torch.set_num_threads(1)

TINY = ["model.arch=osnet_x0_25", "data.height=64", "data.width=32", "data.batch_size=8", "data.num_instances=2",
        "data.workers=0", "run.progress=false", "run.log_every=1000"]
# the environment of subprocess runs (CLI, torchrun): tiny synthetic preset, one thread
ENV = {**os.environ, "OSNAS_SYNTH_PRESET": "tiny", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def data_root(tmp_path):
    """An empty data root folder (tests build tiny dataset trees inside)."""
    root = tmp_path / "data"
    root.mkdir()
    return root


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """Tiny built-in synthetic domains synth0..synth3, generated once per test session."""
    from osnas.data.synth import PRESETS, run_synth

    r = tmp_path_factory.mktemp("synth-data")
    run_synth(r / "synth", domains=["synth0", "synth1", "synth2", "synth3"], params=PRESETS["tiny"])
    return r
