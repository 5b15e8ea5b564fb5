"""caffe.util.inductor.compiled: the compiled graphs of caffe's operations go into AOTAutograd's on-disk cache,
so a later process skips tracing and partitioning them again. Each run is a fresh Python with its own
inductor cache folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

COMPILED_SCRIPT = r"""
import json
import torch
from torch._dynamo.utils import counters
from torch._functorch import config
from caffe.ops import convolution as conv
from caffe.util.inductor import compiled
g = torch.Generator().manual_seed(0)
x = torch.randn(4, 3, 17, 19, generator=g)
dy = torch.randn(4, 5, 9, 10, generator=g)
w = torch.randn(5, 3, 3, 3, generator=g, requires_grad=True)
loss = compiled(lambda x, w: (conv.conv2d(x, w, None, (2, 2), (1, 1), (1, 1)) * dy).sum())
loss(x, w).backward()  # the forward form of the weight gradient: a custom autograd Function in the graph
def reduced(a, b):
    with torch.autocast("cpu", torch.bfloat16):
        return (a @ b).float().sum()
m = torch.randn(8, 8, generator=g, requires_grad=True)
compiled(reduced)(m, m.detach()).backward()  # autocast's enter and exit nodes in the graph
grads = [w.grad.flatten().tolist(), m.grad.flatten().tolist()]
flag = config.autograd_cache_allow_custom_autograd_functions
print(json.dumps({"aot": dict(counters["aot_autograd"]), "grads": grads, "flag": flag}))
"""


@pytest.mark.filterwarnings("ignore:Your compiler for AOTAutograd")
def test_a_later_process_takes_caffes_compiled_graphs_from_aotautograds_cache(tmp_path: Path):
    """``compiled`` lets AOTAutograd cache graphs with ``caffe.ops``'s autograd Functions (the convolution's
    forward-form weight gradient) and with autocast regions (bf16/fp16 training), which torch bypasses by
    default: a second process loads both traced graphs instead of tracing and partitioning again, with the
    same gradients; torch's own flag is back after each call."""
    env = {**os.environ, "CAFFE_CONV_WEIGHT_GRAD": "swapped", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path)}
    runs = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", COMPILED_SCRIPT], capture_output=True, text=True, env=env, timeout=300
        )
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert first["aot"].get("autograd_cache_saved") == 2 and "autograd_cache_bypass" not in first["aot"]
    assert second["aot"].get("autograd_cache_hit") == 2
    assert first["flag"] is False and second["flag"] is False
    assert second["grads"] == first["grads"]
