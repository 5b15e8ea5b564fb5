"""Shared fixtures: the assets folder (a missing asset fails, never skips) and device selection."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

ASSETS = Path(os.environ.get("CAFFE_TEST_ASSETS", ROOT.parent / "shared" / "assets")).resolve()


def asset(relpath: str) -> Path:
    """Path of a file in the shared assets; fails the test if it is missing."""
    path = ASSETS / relpath
    if not path.exists():
        pytest.fail(f"missing test asset {path} (set CAFFE_TEST_ASSETS)")
    return path


@pytest.fixture(scope="session")
def assets() -> Path:
    if not ASSETS.is_dir():
        pytest.fail(f"assets folder {ASSETS} not found (set CAFFE_TEST_ASSETS)")
    return ASSETS


@pytest.fixture(autouse=True)
def _cpu_mode_and_seed():
    import caffe

    caffe.set_mode_cpu()
    caffe.set_random_seed(1701)
    yield
    caffe.set_mode_cpu()


requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
