"""Shared test setup: one CPU thread per test process, a temporary data root."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def data_root(tmp_path):
    """An empty data root folder (tests build tiny dataset trees inside)."""
    root = tmp_path / "data"
    root.mkdir()
    return root
