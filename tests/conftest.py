"""Shared fixtures: the assets folder (a missing asset fails, never skips) and device selection."""

from __future__ import annotations

import gc
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

# A shell without job control starts a background command (`.ci/run &`) with SIGINT ignored, and every process
# this one starts would inherit that: the studio's stand-in jobs would then outlive the SIGINT of an abort or a
# stop (measured: two studio tests failed so). The suite runs with Python's own Ctrl-C handling instead.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (pyproject's default): one worker per CPU this process may use, at most 8 (xdist's own count
    is of physical cores where psutil is installed, which can be half the CPUs of a virtual machine)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, 8))


# Under pytest-xdist the workers share the machine's cores: each worker, and every process its tests start,
# computes on one thread instead of all of them (measured on 2 cores: the suite in 733 s with one thread a
# worker, 991 s with two, 1224 s without workers).
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")
    _threads = os.environ["OMP_NUM_THREADS"].split(",")[0]  # OpenMP's nested form "a,b": the outer count
    torch.set_num_threads(int(_threads) if _threads.strip().isdigit() and int(_threads) > 0 else 1)

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


_ROOT_LITTER_OK = {".pytest_cache", "test-artifacts", ".ruff_cache", "__pycache__", ".coverage"}


@pytest.fixture(autouse=True)
def _cpu_mode_and_seed():
    import caffe

    caffe.set_mode_cpu()
    caffe.set_random_seed(1701)
    before = set(os.listdir(ROOT))
    yield
    caffe.set_mode_cpu()
    # a test writes under tmp_path: a file left beside the repository's own (a solver's default snapshot
    # prefix is the working directory) would land in the next commit
    litter = sorted(set(os.listdir(ROOT)) - before - _ROOT_LITTER_OK)
    if litter:
        pytest.fail(f"the test left {', '.join(litter)} in the repository root {ROOT}; write under tmp_path")


requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def item_decodes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """The names of the records a Data layer's source decodes one by one (``DatumSource.decode``) in this test:
    those of databases under its ``tmp_path`` (an earlier test's net, not yet collected, may still be reading
    ahead on its threads; collecting it first stops them)."""
    from caffe.layers.data import DatumSource

    gc.collect()
    decoded: list[str] = []
    decode = DatumSource.decode
    mine = str(tmp_path)

    def counting(self: DatumSource, record: object) -> object:
        name = record.name  # type: ignore[attr-defined]
        if name.startswith(mine):
            decoded.append(name)
        return decode(self, record)  # type: ignore[arg-type]

    monkeypatch.setattr(DatumSource, "decode", counting)
    return decoded


@pytest.fixture(scope="session")
def crnn_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the small CRNN's train net (``crnn.prototxt``, tests/ocr_fixtures.py) and its weights after 150
    steps (``crnn.caffemodel``), trained once per session (the layer and the deploy tests share it)."""
    from ocr_fixtures import train_crnn

    folder = tmp_path_factory.mktemp("crnn")
    train_crnn(folder).save(str(folder / "crnn.caffemodel"))
    return folder
