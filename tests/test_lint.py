"""The code base passes ruff (the project's linter), so CI catches lint errors too."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_check_is_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed (it is a test dependency: pip install -e '.[test]')")
    result = subprocess.run([ruff, "check", "--quiet", str(ROOT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_proto_module_is_current():
    """caffe_pb2.py must be what scripts/generate_proto.py makes from caffe.proto (when protoc is here)."""
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.fail("grpcio-tools is not installed (it is a test dependency: pip install -e '.[test]')")
    proto = ROOT / "caffe" / "proto"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_proto.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (proto / "caffe_pb2.py").exists()
