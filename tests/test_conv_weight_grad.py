"""The convolution weight gradient taken as a forward convolution over the batch (caffe/ops/convolution.py).

Checked against ATen's own weight gradient and against finite differences, through the Convolution layer
with either kernel, under torch.compile, and the per-shape choice: measured once, recorded beside
inductor's cache (the first process's answer is every later process's), the global random stream untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from capture import eager_and_compiled_grads
from gradcheck import layer_net, set_inputs

import caffe
from caffe.ops import convolution as conv

# (N, C, H, W, O, kh, kw, stride, pad, dilation)
GEOMETRIES = [
    (4, 3, 17, 19, 5, 3, 3, (2, 2), (1, 1), (1, 1)),
    (2, 4, 13, 12, 6, 5, 3, (1, 2), (2, 0), (2, 1)),
    (2, 3, 31, 29, 4, 11, 11, (4, 4), (0, 0), (1, 1)),  # CaffeNet's conv1 geometry
    (3, 1, 28, 28, 20, 5, 5, (1, 1), (0, 0), (1, 1)),  # LeNet's conv1
    (2, 2, 9, 9, 3, 3, 3, (3, 3), (1, 1), (1, 1)),  # stride > 1 with rows left over (floor)
]


@pytest.fixture
def choices(tmp_path, monkeypatch):
    """An empty record of choices in ``tmp_path`` and an empty in-process memory, the setting ``auto``."""
    monkeypatch.setattr(conv, "_choices_dir", lambda: tmp_path / "choices")
    monkeypatch.setattr(conv, "_chosen", {})
    monkeypatch.setattr(conv.WEIGHT_GRAD, "value", "auto")
    return tmp_path / "choices"


def tensors(geometry, dtype=torch.float64, seed=0):
    n, c, h, w, o, kh, kw, stride, pad, dil = geometry
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    weight = torch.randn(o, c, kh, kw, generator=g, dtype=dtype)
    dy = torch.randn(torch.nn.functional.conv2d(x, weight, None, stride, pad, dil).shape, generator=g, dtype=dtype)
    return x, weight, dy, stride, pad, dil


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_forward_form_equals_atens_weight_gradient(geometry):
    x, weight, dy, stride, pad, dil = tensors(geometry)
    ours = conv.swapped_weight_grad(x, dy, list(weight.shape[2:]), list(stride), list(pad), list(dil))
    aten = conv.aten_weight_grad(x, dy, weight, stride, pad, dil)
    assert ours.shape == weight.shape and ours.is_contiguous()
    torch.testing.assert_close(ours, aten, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("geometry", GEOMETRIES[:3])
def test_function_matches_finite_differences(geometry):
    x, weight, _, stride, pad, dil = tensors(geometry)
    bias = torch.randn(weight.shape[0], dtype=torch.float64)
    args = [t.requires_grad_() for t in (x, weight, bias)]
    assert torch.autograd.gradcheck(
        lambda a, b, c: conv._SwappedWeightGrad.apply(a, b, c, stride, pad, dil), args, eps=1e-6, atol=1e-6
    )


def conv_net(kernel: str) -> caffe.Net:
    text = (
        'type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 6 kernel_size: 3 stride: 2 '
        'pad: 1 weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } }'
    )
    caffe.set_random_seed(3)
    return layer_net(text, {"x": (4, 3, 11, 13)}, phase=caffe.TRAIN, dtype=torch.float32)


def layer_diffs(monkeypatch, kernel: str) -> list[np.ndarray]:
    monkeypatch.setattr(conv.WEIGHT_GRAD, "value", kernel)
    net = conv_net(kernel)
    x = np.random.default_rng(1).standard_normal((4, 3, 11, 13)).astype(np.float32)
    set_inputs(net, {"x": x})
    net.forward()
    net.blobs["y"].diff[...] = np.random.default_rng(2).standard_normal(net.blobs["y"].shape)
    net.clear_param_diffs()
    net.backward()
    layer = net.layers[-1]
    return [net.blobs["y"].data.copy(), net.blobs["x"].diff.copy(), *(b.diff.copy() for b in layer.blobs)]


def test_convolution_layer_gives_the_same_diffs_with_either_kernel(monkeypatch, choices):
    aten = layer_diffs(monkeypatch, "aten")
    swapped = layer_diffs(monkeypatch, "swapped")
    for a, s in zip(aten, swapped, strict=True):
        np.testing.assert_allclose(s, a, rtol=1e-5, atol=1e-5)
    assert not choices.exists()  # a fixed setting measures nothing


def test_auto_measures_once_and_records_the_answer(monkeypatch, choices):
    calls = []

    def measure(*key):
        calls.append(key)
        return "swapped"

    monkeypatch.setattr(conv, "_measure", measure)
    key = ((8, 2, 10, 10), (4, 2, 3, 3), (1, 1), (0, 0), (1, 1))
    assert conv.weight_grad_kernel(key) == "swapped"
    assert conv.weight_grad_kernel(key) == "swapped"
    assert len(calls) == 1
    (recorded,) = choices.iterdir()
    assert recorded.read_text() == "swapped"
    monkeypatch.setattr(conv, "_chosen", {})  # a later process: reads the record, measures nothing
    assert conv.weight_grad_kernel(key) == "swapped" and len(calls) == 1


def test_the_first_recorded_answer_wins(monkeypatch, choices):
    key = ((8, 2, 10, 10), (4, 2, 3, 3), (1, 1), (0, 0), (1, 1))
    choices.mkdir(parents=True)
    (choices / conv._machine_key(key)).write_text("aten")  # another process measured first
    monkeypatch.setattr(conv, "_measure", lambda *key: "swapped")
    assert conv.weight_grad_kernel(key) == "aten"
    monkeypatch.setattr(conv, "_chosen", {})
    looked = []  # raced: nothing recorded when it first looked, the other answer there when it wrote
    real_read = conv._read_choice
    monkeypatch.setattr(conv, "_read_choice", lambda identity: real_read(identity) if looked else looked.append(1))
    assert conv.weight_grad_kernel(key) == "aten"
    assert [p.name for p in choices.iterdir()] == [conv._machine_key(key)]  # no temporary file left


def test_measuring_leaves_the_global_random_stream_alone(choices):
    torch.manual_seed(5)
    state = torch.get_rng_state()
    choice = conv.weight_grad_kernel(((16, 3, 12, 12), (8, 3, 3, 3), (1, 1), (1, 1), (1, 1)))
    assert choice in ("aten", "swapped")
    assert torch.equal(torch.get_rng_state(), state)


def test_only_float32_cpu_training_convolutions_with_larger_than_1x1_kernels_are_candidates():
    x = torch.randn(2, 3, 8, 8)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    assert conv._candidate(x, w)
    assert not conv._candidate(x, torch.randn(4, 3, 1, 1, requires_grad=True))  # 1x1: ATen's was faster
    assert not conv._candidate(x, w.detach())  # no weight gradient wanted
    assert not conv._candidate(x.double(), w.detach().double().requires_grad_())
    with torch.no_grad():
        assert not conv._candidate(x, w)
    with torch.autocast("cpu", torch.bfloat16):
        assert not conv._candidate(x, w)


@pytest.mark.filterwarnings("ignore:Your compiler for AOTAutograd")
def test_compiled_step_uses_the_forward_form_and_matches_eager(monkeypatch, choices):
    monkeypatch.setattr(conv.WEIGHT_GRAD, "value", "swapped")
    x, weight, dy, stride, pad, dil = tensors(GEOMETRIES[1], dtype=torch.float32)

    eager, compiled, _, backward = eager_and_compiled_grads(
        lambda w: (conv.conv2d(x, w, None, stride, pad, dil) * dy).sum(), weight
    )
    assert "caffe.swapped_weight_grad" in backward
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    expected = conv.aten_weight_grad(x, dy, weight, stride, pad, dil)
    torch.testing.assert_close(compiled, expected, rtol=1e-4, atol=1e-4)


def test_the_kernel_choice_is_marked_as_torch_compiler_would_mark_it():
    """The mark is set without importing dynamo; it must be the one torch.compiler.assume_constant_result sets."""

    def plain() -> str:
        return "aten"

    marked = torch.compiler.assume_constant_result(plain)
    names = {k for k in vars(marked) if not k.startswith("__")}
    assert names and all(getattr(conv.weight_grad_kernel, k) == v for k, v in vars(marked).items() if k in names)


EAGER_SCRIPT = r"""
import sys
import torch
from caffe.ops import convolution as conv
x = torch.randn(4, 1, 28, 28)
w = torch.randn(20, 1, 5, 5, requires_grad=True)
conv.conv2d(x, w).sum().backward()
print(sorted(m for m in sys.modules if m.startswith(("torch._dynamo", "torch._inductor"))))
"""


def test_eager_backward_in_the_forward_form_does_not_load_the_compiler():
    """The eager backward calls the forward form itself, not its operator: a custom operator's first call
    imports dynamo (1.8 s of every eager training process on this project's machine)."""
    env = {**os.environ, "CAFFE_CONV_WEIGHT_GRAD": "swapped"}
    done = subprocess.run([sys.executable, "-c", EAGER_SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
