"""caffe.util.inductor: inductor's vector-ISA probe runs once per machine, and only a full pass is remembered.

Each case runs in a fresh Python (the probe's verdicts are cached per process) with its own inductor cache
folder; ``VecISA.check_build`` (inductor's build-and-load probe of one instruction set) is replaced by a
counting stand-in, so the cases show exactly when the probe runs.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64"), reason="inductor probes vector ISAs on x86 only"
)

SCRIPT = r"""
import json, sys
from torch._inductor import config, cpu_vec_isa
from caffe.util import inductor

failing = sys.argv[1]
calls = []
def check_build(self, code):
    calls.append(str(self))
    return str(self) != failing
cpu_vec_isa.VecISA.check_build = check_build
inductor.prepare_inductor()
inductor.prepare_inductor()  # idempotent
valid = [str(isa) for isa in cpu_vec_isa.valid_vec_isa_list()]
print(json.dumps({"calls": calls, "ok": config.cpp.vec_isa_ok, "valid": valid,
                  "reported": inductor.reported_isas(), "marker": str(inductor.probe_marker())}))
"""


def _run(cache: Path, failing: str = "") -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, failing], capture_output=True, text=True, env=env, timeout=300, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def remembered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """An inductor cache folder after one full probe, and that first run's report (shared by the cases that
    need a remembered verdict)."""
    cache = tmp_path_factory.mktemp("inductor")
    return cache, _run(cache)


def test_probe_runs_once_per_machine(remembered: tuple[Path, dict]) -> None:
    cache, first = remembered
    if not first["reported"]:
        pytest.skip("this CPU reports no vector ISA inductor knows")
    assert sorted(set(first["calls"])) == sorted(first["reported"])  # probed every reported set
    assert first["ok"] is True and first["valid"] == first["reported"]
    assert Path(first["marker"]).is_file() and Path(first["marker"]).parent.parent == cache
    second = _run(cache)
    # The remembered verdict: no probe of the sets themselves (inductor still probes the AVX-512 extensions,
    # BF16 and VNNI, whatever the setting: those checks are its own).
    assert "avx2" in first["calls"] and "avx2" not in second["calls"]
    assert len(second["calls"]) < len(first["calls"])
    assert second["ok"] is True and second["valid"] == first["valid"]
    assert second["marker"] == first["marker"]


def test_a_failed_probe_is_never_remembered(tmp_path: Path) -> None:
    first = _run(tmp_path, failing="avx2")
    if "avx2" not in first["reported"]:
        pytest.skip("this CPU does not report AVX2")
    assert "avx2" not in first["valid"] and first["ok"] is None
    assert not Path(first["marker"]).exists()
    second = _run(tmp_path, failing="avx2")
    assert "avx2" in second["calls"] and second["ok"] is None  # probed again


def test_the_users_setting_is_left_alone(remembered: tuple[Path, dict]) -> None:
    cache = remembered[0]
    script = SCRIPT.replace(
        "inductor.prepare_inductor()\n", "config.cpp.vec_isa_ok = False\ninductor.prepare_inductor()\n", 1
    )
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    done = subprocess.run([sys.executable, "-c", script, ""], capture_output=True, text=True, env=env, timeout=300)
    assert json.loads(done.stdout.strip().splitlines()[-1])["ok"] is False
