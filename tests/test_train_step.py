"""Training speed work (issue 18): the strided MAX pooling kernel, the compiled training engine.

The pooling kernel is checked against ATen's ``max_pool2d`` (values and Caffe's first-maximum
gradient, ties included); the compiled engine against the eager one on the same seeded runs: LeNet on
MNIST (same losses and weights to float rounding), the six update rules against Caffe's equations
(tests/test_solvers.py's reference), and an exact resume. Compiles are slow on a CPU (seconds per
net, inductor's on-disk cache helps the next time), so only these run on the compiled path.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from capture import compiled_without_grad, eager_and_compiled_grads
from conftest import asset
from test_cli_train import mnist, write_solver  # noqa: F401  (fixture)
from test_solvers import POLICIES, SOLVER_SETTINGS, run_and_compare

import caffe
from caffe import engine as caffe_engine
from caffe import train_step
from caffe.ops import pooling
from caffe.ops.pooling import max_pool2d, max_pool2d_with_indices
from caffe.util import inductor


# ---------------------------------------------------------------------------------------------- pooling
def _pool_out(shape: tuple[int, ...], kernel: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int]:
    return ((shape[-2] - kernel[0]) // stride[0] + 1, (shape[-1] - kernel[1]) // stride[1] + 1)


@pytest.mark.parametrize(
    ("shape", "kernel", "stride"),
    [
        ((2, 3, 8, 8), (2, 2), (2, 2)),  # tiling
        ((2, 3, 7, 9), (2, 2), (2, 2)),  # tiling, last row and column in no window
        ((2, 3, 9, 7), (3, 3), (2, 2)),  # overlapping (AlexNet's)
        ((1, 2, 6, 8), (3, 2), (1, 2)),  # rectangular
    ],
)
@pytest.mark.parametrize("ties", [False, True])
def test_strided_max_pool_equals_atens_values_and_first_maximum_gradient(shape, kernel, stride, ties):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    if ties:  # few distinct values: windows hold several maxima, the first one (scan order) takes the diff
        x = torch.randint(0, 3, shape, generator=gen).double()
    out = _pool_out(shape, kernel, stride)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = F.max_pool2d(a, kernel, stride), max_pool2d(b, kernel, stride, out)
    assert torch.equal(ya, yb)
    dy = torch.randn(ya.shape, generator=gen, dtype=torch.float64)
    ya.backward(dy)
    yb.backward(dy)
    assert torch.equal(a.grad, b.grad)
    with torch.no_grad():
        assert torch.equal(max_pool2d(x, kernel, stride, out), ya.detach())
    cl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(max_pool2d(cl, kernel, stride, out), ya.detach())


def _caffe_max_pool(x: torch.Tensor, kernel, stride, pad, ceil: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Caffe's MAX pooling written out (pooling_layer.cpp's loops): windows clipped to the image, each
    window's first maximum in scan order; the top and each window's index in the input plane."""
    n, c, h, w = x.shape
    size = [
        (math.ceil if ceil else math.floor)((d + 2 * p - k) / s) + 1 for d, k, s, p in zip((h, w), kernel, stride, pad)
    ]
    for i, (d, s, p) in enumerate(zip((h, w), stride, pad)):
        if p and (size[i] - 1) * s >= d + p:
            size[i] -= 1  # the last window must start inside the image (or its padding)
    y = torch.empty(n, c, *size, dtype=x.dtype)
    idx = torch.empty(n, c, *size, dtype=torch.int64)
    for i in range(size[0]):
        for j in range(size[1]):
            h0, w0 = i * stride[0] - pad[0], j * stride[1] - pad[1]
            h1, w1 = min(h0 + kernel[0], h), min(w0 + kernel[1], w)
            h0, w0 = max(h0, 0), max(w0, 0)
            for a in range(n):
                for b in range(c):
                    best, at = -math.inf, -1
                    for r in range(h0, h1):
                        for q in range(w0, w1):
                            if x[a, b, r, q] > best:
                                best, at = float(x[a, b, r, q]), r * w + q
                    y[a, b, i, j], idx[a, b, i, j] = best, at
    return y, idx


@pytest.mark.parametrize(
    ("shape", "kernel", "stride", "pad", "ceil"),
    [
        ((2, 3, 9, 9), (3, 3), (2, 2), (0, 0), True),  # AlexNet's, ceil
        ((2, 3, 10, 10), (3, 3), (2, 2), (0, 0), True),  # GoogLeNet's pool1: the last window overhangs
        ((2, 4, 6, 6), (3, 3), (1, 1), (1, 1), True),  # GoogLeNet's inception pools
        ((1, 2, 7, 8), (3, 2), (2, 1), (1, 0), False),  # rectangular, floor
    ],
)
def test_channels_last_max_pool_is_caffes_pooling(shape, kernel, stride, pad, ceil):
    """max_pool2d_with_indices (a channels-last copy through ATen's vectorized kernel) against Caffe's loops
    written out, on values with many ties: the same top, indices (first maximum) and gradient."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 3, shape, generator=gen).double()
    expected_y, expected_idx = _caffe_max_pool(x, kernel, stride, pad, ceil)
    xg = x.clone().requires_grad_()
    y, idx = max_pool2d_with_indices(xg, kernel, stride, pad, ceil)
    assert y.is_contiguous() and idx.is_contiguous()
    assert torch.equal(y, expected_y) and torch.equal(idx, expected_idx)
    dy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    y.backward(dy)
    expected_dx = torch.zeros(shape[0], shape[1], shape[2] * shape[3], dtype=torch.float64)
    expected_dx.scatter_add_(2, expected_idx.flatten(2), dy.flatten(2))  # each window's diff to its first maximum
    assert torch.equal(xg.grad, expected_dx.view(shape))


def test_tiling_pool_gradient_by_finite_differences():
    x = torch.randn(1, 2, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: max_pool2d(t, (2, 2), (2, 2), (2, 3)), (x,))


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_captured_pooling_operator_is_caffes_pooling(channels_last):
    """The operator compiled training steps call (ATen's kernels, opaque to inductor) in any input layout:
    Caffe's top, first-maximum indices and gradient, on values with ties."""
    shape, kernel, stride, pad, ceil = (2, 3, 10, 10), (3, 3), (2, 2), (0, 0), True
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(0, 3, shape, generator=gen).double()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected_y, expected_idx = _caffe_max_pool(x, kernel, stride, pad, ceil)
    xg = x.clone().requires_grad_()
    y, idx = pooling.captured_max_pool2d(xg, list(kernel), list(stride), list(pad), ceil)
    assert torch.equal(y, expected_y) and torch.equal(idx, expected_idx)
    assert y.is_contiguous(memory_format=torch.channels_last)  # ATen's vectorized layout, whatever came in
    dy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    (dx,) = torch.autograd.grad(y, xg, dy)
    expected_dx = torch.zeros(shape[0], shape[1], shape[2] * shape[3], dtype=torch.float64)
    expected_dx.scatter_add_(2, expected_idx.flatten(2), dy.flatten(2))
    assert torch.equal(dx, expected_dx.view(shape))
    distinct = torch.randn(1, 2, 5, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t: pooling.captured_max_pool2d(t, [3, 2], [2, 2], [1, 0], False)[0], (distinct,)
    )


@pytest.mark.filterwarnings("ignore:Your compiler for AOTAutograd")
@pytest.mark.parametrize(("kernel", "stride"), [((2, 2), (2, 2)), ((3, 3), (2, 2))])  # LeNet's; AlexNet's
def test_compiled_training_pools_through_the_operator_and_matches_eager(kernel, stride):
    """Captured with a gradient, the Pooling layer's kernels become the operator pair (inductor's own
    forward-with-indices and backward ran 1.2-3.6x slower); without one, plain ATen stays."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 4, (2, 3, 9, 9), generator=gen).float()
    dy = torch.randn(2, 3, 4, 4, generator=gen)
    out = _pool_out(x.shape, kernel, stride)
    eager, compiled, forward, backward = eager_and_compiled_grads(
        lambda t: (max_pool2d(t * 1.0, kernel, stride, out) * dy).sum(), x
    )
    assert "caffe.max_pool2d" in forward and "caffe.max_pool2d_backward" in backward
    assert torch.equal(compiled, eager)  # ties included: the same first maxima
    top, code = compiled_without_grad(lambda t: max_pool2d(t, kernel, stride, out), x)
    assert "caffe.max_pool2d" not in code
    assert torch.equal(top, F.max_pool2d(x, kernel, stride))


@pytest.mark.filterwarnings("ignore:Your compiler for AOTAutograd")
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_pooling_layer_uses_the_operator_when_compiled_for_training(channels_last):
    """The Pooling layer (CaffeNet's 3x3/2, ceil) routes a compiled training capture to the operator whatever the
    input's layout (a grouped convolution's top may arrive channels-last), with eager's gradient."""
    from caffe.layer import create_layer
    from caffe.proto import caffe_pb2 as pb

    param = pb.LayerParameter(name="pool", type="Pooling")
    param.pooling_param.pool = pb.PoolingParameter.MAX
    param.pooling_param.kernel_size, param.pooling_param.stride = 3, 2
    layer = create_layer(param)
    shape = (2, 4, 9, 9)
    layer.setup([shape], 1)
    x = torch.randint(0, 4, shape, generator=torch.Generator().manual_seed(4)).float()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    eager, compiled, forward, _ = eager_and_compiled_grads(lambda t: layer.forward([t])[0].square().sum(), x)
    assert "caffe.max_pool2d" in forward
    assert torch.equal(compiled, eager)


# ---------------------------------------------------------------------------------------------- engines
def test_a_process_choice_takes_its_default_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    from caffe.util.choice import Choice

    monkeypatch.setenv("CAFFE_TEST_CHOICE", "b")
    choice = Choice("test choice", ("a", "b"), "CAFFE_TEST_CHOICE", "a")
    assert choice.value == "b"
    choice.set("a")
    assert choice.value == "a"
    with pytest.raises(caffe.CaffeError, match="unknown test choice 'c'; choose one of a, b"):
        choice.set("c")
    monkeypatch.setenv("CAFFE_TEST_CHOICE", "z")
    with pytest.raises(caffe.CaffeError, match="CAFFE_TEST_CHOICE='z' is not one of a, b"):
        Choice("test choice", ("a", "b"), "CAFFE_TEST_CHOICE", "a")


def test_engine_choice_and_refusal():
    assert train_step.resolve_engine("auto", train_step.AUTO_MIN_ITERATIONS) == "compiled"
    assert train_step.resolve_engine("auto", train_step.AUTO_MIN_ITERATIONS - 1) == "eager"
    assert train_step.resolve_engine("eager", 10**6) == "eager"
    lenet = caffe.Net(str(asset("caffe-ref/examples/mnist/lenet.prototxt")), caffe.TEST)
    caffenet = caffe.Net(str(asset("caffe-ref/models/bvlc_reference_caffenet/deploy.prototxt")), caffe.TEST)
    assert train_step.resolve_engine("auto", 10**6, lenet) == "compiled"  # convolutions over 1 and 20 channels
    assert train_step.resolve_engine("auto", 10**6, caffenet) == "eager"  # over 96, 256, 384: eager was faster
    assert train_step.resolve_engine("compiled", 10, caffenet) == "compiled"
    resnet = caffe.Net(str(asset("models/open_nsfw_resnet50_1by2/deploy.prototxt")), caffe.TEST)
    assert train_step.has_large_convolutions(resnet) and train_step.has_batch_norm(resnet)
    assert train_step.resolve_engine("auto", 10**6, resnet) == "compiled"  # BatchNorm: measured 1.3x eager
    with pytest.raises(caffe.CaffeError, match="unknown training engine 'jit'"):
        train_step.set_train_engine("jit")


def test_auto_compiles_shorter_runs_of_a_step_this_machine_compiled_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    lenet = caffe.Net(str(asset("caffe-ref/examples/mnist/lenet.prototxt")), caffe.TEST)
    short = train_step.AUTO_CACHED_MIN_ITERATIONS
    assert train_step.resolve_engine("auto", short, lenet) == "eager"  # never compiled here: 15-25 s to repay
    inductor.remember_compiled(train_step.step_identity(lenet), 1.2)
    marker_files = list((tmp_path / "inductor" / "neocaffe" / "compiled").iterdir())
    assert len(marker_files) == 1 and json.loads(marker_files[0].read_text()) == {"compile seconds": 1.2}
    assert train_step.resolve_engine("auto", short, lenet) == "compiled"
    assert train_step.resolve_engine("auto", short - 1, lenet) == "eager"
    assert train_step.resolve_engine("eager", short, lenet) == "eager"
    lenet.blobs["data"].reshape(32, 1, 28, 28)  # other input shapes: another compile
    assert train_step.resolve_engine("auto", short, lenet) == "eager"
    lenet.blobs["data"].reshape(64, 1, 28, 28)
    assert train_step.resolve_engine("auto", short, lenet) == "compiled"
    changed = caffe.Net(str(asset("caffe-ref/examples/mnist/lenet.prototxt")), caffe.TEST)
    changed.net_param.layer[1].convolution_param.kernel_size[0] = 3  # another net (the record keys its layers)
    assert train_step.step_identity(changed) != train_step.step_identity(lenet)
    caffenet = caffe.Net(str(asset("caffe-ref/models/bvlc_reference_caffenet/deploy.prototxt")), caffe.TEST)
    inductor.remember_compiled(train_step.step_identity(caffenet), 60.0)
    assert train_step.resolve_engine("auto", short, caffenet) == "eager"  # large convolutions: eager as fast
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cleared"))  # inductor's cache gone: so is the record
    assert train_step.resolve_engine("auto", short, lenet) == "eager"


def test_a_compiled_step_is_remembered(mnist: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: F811
    """The first successful compile of a step is recorded beside inductor's cache (the compile is stubbed)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(mnist / "inductor"))
    monkeypatch.setattr(train_step, "compiled", lambda function, **options: function)
    solver_file = write_solver(mnist, "remember", mnist / "lenet_train_test.prototxt", max_iter=2, test_interval=1000)
    solver = caffe.get_solver(str(solver_file), engine="compiled")
    identity = train_step.step_identity(solver.net)
    assert not inductor.compiled_before(identity)
    solver.step(1)  # the (stubbed) compile
    assert solver.train_engine_for(1).step.compile_seconds is not None and inductor.compiled_before(identity)
    assert not inductor.compiled_before(train_step.step_identity(solver.net, "bf16"))


def test_inductor_cache_dir_is_inductors_own(tmp_path: Path):
    """neocaffe finds inductor's cache folder without importing inductor, where inductor itself would."""
    script = (
        "import sys\nfrom caffe.util import inductor\nfound = inductor.inductor_cache_dir()\n"
        "assert 'torch._inductor' not in sys.modules\n"
        "from torch._inductor.runtime.cache_dir_utils import cache_dir\nprint(found, cache_dir())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    for given in (None, "relative-cache"):
        if given is not None:
            env["TORCHINDUCTOR_CACHE_DIR"] = given
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
        )
        assert done.returncode == 0, done.stderr
        found, theirs = done.stdout.split()
        assert found == theirs


def test_cuda_graphs_are_for_gpu_nets_only(monkeypatch: pytest.MonkeyPatch):
    """CAFFE_CUDA_GRAPHS=on asks inductor for CUDA graphs on a GPU net; a CPU net's step is compiled as always."""
    lenet = caffe.Net(str(asset("caffe-ref/examples/mnist/lenet.prototxt")), caffe.TEST)
    monkeypatch.setattr(train_step.CUDA_GRAPHS, "value", "on")
    asked: list[dict] = []
    monkeypatch.setattr(train_step, "compiled", lambda function, **options: asked.append(options) or function)
    assert not train_step.CompiledStep(lenet).cuda_graphs
    assert "triton.cudagraphs" not in asked[-1] and asked[-1]["keep_output_stride"] is False
    if torch.cuda.is_available():
        caffe.set_mode_gpu()
        try:
            gpu_net = caffe.Net(str(asset("caffe-ref/examples/mnist/lenet.prototxt")), caffe.TEST)
        finally:
            caffe.set_mode_cpu()
        assert train_step.CompiledStep(gpu_net).cuda_graphs and asked[-1]["triton.cudagraphs"] is True
    with pytest.raises(caffe.CaffeError, match="unknown CUDA graphs setting 'yes'"):
        train_step.CUDA_GRAPHS.set("yes")


def _lenet_run(
    folder: Path, name: str, engine: str, iters: int
) -> tuple[list[float], list[np.ndarray], dict[str, np.ndarray]]:
    solver_file = write_solver(
        folder, name, folder / "lenet_train_test.prototxt", max_iter=iters, display=1, snapshot=0, test_interval=1000
    )
    caffe.set_random_seed(7)
    solver = caffe.get_solver(str(solver_file), engine=engine)
    losses = []
    for _ in range(iters):
        solver.step(1)
        losses.append(solver.smoothed_loss)
    tops = {}
    for blob_name, blob in solver.net.blobs.items():
        tops[blob_name] = blob.data
        assert tops[blob_name].flags.c_contiguous, blob_name  # Caffe's layout, whatever the compiled code used
    return losses, [b.data.copy() for b in solver.net.learnable_params], {k: v.copy() for k, v in tops.items()}


def test_compiled_lenet_trains_as_the_eager_one(mnist: Path, caplog: pytest.LogCaptureFixture):  # noqa: F811
    eager_losses, eager_weights, eager_tops = _lenet_run(mnist, "eager", "eager", 12)
    with caplog.at_level(logging.INFO, logger="caffe"):
        compiled_losses, compiled_weights, compiled_tops = _lenet_run(mnist, "compiled", "compiled", 12)
    assert "Compiling the training step (8 layers after the data layers; " in caplog.text
    assert "Compiled the training step (8 layers after the data layers" in caplog.text
    np.testing.assert_allclose(compiled_losses, eager_losses, rtol=1e-5)
    assert eager_losses[-1] < eager_losses[0] - 0.1  # it learns
    for a, b in zip(compiled_weights, eager_weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert set(compiled_tops) == set(eager_tops) and "conv2" in compiled_tops
    for name, value in eager_tops.items():  # every blob holds the last forward's values, as after an eager step
        np.testing.assert_allclose(compiled_tops[name], value, rtol=1e-3, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("kind", sorted(SOLVER_SETTINGS))
def test_update_rules_on_the_compiled_path(tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(train_step.TRAIN_ENGINE, "value", "compiled")
    base_lr = 0.5 if kind == "AdaDelta" else 0.1
    solver = run_and_compare(
        tmp_path,
        f"type: '{kind}' base_lr: {base_lr} weight_decay: 0.01 max_iter: 100 {POLICIES['step']} "
        f"{SOLVER_SETTINGS[kind]}",
    )
    assert solver.train_engine_for(1).name == "compiled"


def test_resume_on_the_compiled_path_is_exact(mnist: Path):  # noqa: F811
    solver_file = write_solver(mnist, "resume", mnist / "lenet_train_test.prototxt", max_iter=8, snapshot=4)
    caffe.set_random_seed(3)
    straight = caffe.get_solver(str(solver_file), engine="compiled")
    straight.solve()
    caffe.set_random_seed(4)
    resumed = caffe.get_solver(str(solver_file), engine="compiled")
    resumed.solve(str(mnist / "resume_iter_4.solverstate"))
    for a, b in zip(resumed.net.learnable_params, straight.net.learnable_params, strict=True):
        np.testing.assert_array_equal(a.data, b.data)


def test_a_python_layer_net_trains_eagerly_and_says_why(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    module = tmp_path / "twice_layer.py"
    module.write_text(
        "import caffe\n"
        "class Twice(caffe.Layer):\n"
        "    def setup(self, bottom, top): pass\n"
        "    def reshape(self, bottom, top): top[0].reshape(*bottom[0].data.shape)\n"
        "    def forward(self, bottom, top): top[0].data[...] = 2 * bottom[0].data\n"
        "    def backward(self, top, propagate_down, bottom): bottom[0].diff[...] = 2 * top[0].diff\n"
    )
    net = tmp_path / "net.prototxt"
    net.write_text(
        """
        layer { name: "data" type: "DummyData" top: "x" top: "t"
                dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 }
                                   data_filler { type: "gaussian" } data_filler { type: "gaussian" } } }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
                inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
        layer { name: "twice" type: "Python" bottom: "y" top: "z"
                python_param { module: "twice_layer" layer: "Twice" } }
        layer { name: "loss" type: "EuclideanLoss" bottom: "z" bottom: "t" top: "loss" }
        """
    )
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text(f'net: "{net}" base_lr: 0.1 lr_policy: "fixed" max_iter: 2 snapshot_prefix: "{tmp_path}/s"')
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        with caplog.at_level(logging.INFO, logger="caffe"):
            solver = caffe.get_solver(str(solver_file), engine="compiled")
            solver.step(2)
    finally:
        sys.path.remove(str(tmp_path))
    assert "Training eagerly: the net cannot be compiled (layer 'twice' (Python) has its own backward)" in caplog.text
    assert solver.train_engine_for(2).name == "eager"


MLP_WITH_BN = """
layer { name: "data" type: "DummyData" top: "x" top: "label"
        dummy_data_param { shape { dim: 8 dim: 6 } shape { dim: 8 }
                           data_filler { type: "gaussian" } data_filler { type: "constant" value: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
layer { name: "bn" type: "BatchNorm" bottom: "y" top: "y" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "y" bottom: "label" top: "loss" }
"""


@pytest.fixture
def no_cpp_compiler(monkeypatch: pytest.MonkeyPatch):
    """Inductor's C++ compiler search finds nothing (a machine without g++)."""
    from torch._inductor import config

    assert inductor.cpp_compiler_found()  # this machine has one (other tests compile)
    monkeypatch.setattr(config.cpp, "cxx", (None, "/nonexistent/g++"))
    monkeypatch.delenv("TORCH_INDUCTOR_INSTALL_GXX", raising=False)
    inductor.cpp_compiler_found.cache_clear()
    yield
    inductor.cpp_compiler_found.cache_clear()


def test_without_a_cpp_compiler_the_cpu_trains_and_infers_without_compiling(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, no_cpp_compiler: None
):
    """Every CPU compile would fail: the compiled training engine trains eagerly and says why (nothing tried),
    a reduced precision (compiled only) is refused, ``caffe time`` times the layers eagerly, and the compiled
    inference engine hands the net to the fused one, with the same outputs."""
    assert not inductor.cpp_compiler_found()
    net = tmp_path / "net.prototxt"
    net.write_text(MLP_WITH_BN)
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text(f'net: "{net}" base_lr: 0.1 lr_policy: "fixed" max_iter: 2 snapshot_prefix: "{tmp_path}/s"')
    with caplog.at_level(logging.INFO, logger="caffe"):
        solver = caffe.get_solver(str(solver_file), engine="compiled")
        solver.step(2)
    assert "Training eagerly: the net cannot be compiled (no C++ compiler for inductor's CPU code" in caplog.text
    assert solver.train_engine_for(2).name == "eager" and "Compiling the training step" not in caplog.text
    with pytest.raises(caffe.CaffeError, match=r"training precision bf16 needs the compiled training step: no C\+\+"):
        caffe.get_solver(str(solver_file), precision="bf16").step(1)

    messages = _time_compiled(net, caplog)
    _, eager_only = _side_by_side(messages, ["data", "ip", "bn", "loss"])
    assert eager_only == {"data": "data layer", **dict.fromkeys(["ip", "bn", "loss"], "no C++ compiler")}

    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(
        """
        input: "x" input_shape { dim: 2 dim: 6 }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
                inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
        layer { name: "prob" type: "Softmax" bottom: "y" top: "prob" }
        """
    )
    x = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    outputs = {}
    for engine in ("eager", "compiled"):
        monkeypatch.setattr(caffe_engine.INFERENCE_ENGINE, "value", engine)
        caffe.set_random_seed(3)
        model = caffe.Net(str(deploy), caffe.TEST)
        with caplog.at_level(logging.INFO, logger="caffe"):
            outputs[engine] = model.forward(x=x)["prob"].copy()
    assert "The fused inference engine runs instead of the compiled one: no C++ compiler" in caplog.text
    np.testing.assert_allclose(outputs["compiled"], outputs["eager"], rtol=1e-6)


_FIGURE = r"([0-9.e+-]+)"
_COMPILED_LINE = re.compile(
    rf"^ *(\S+)\tforward: {_FIGURE} ms \(compiled {_FIGURE} ms\)\.\tbackward: {_FIGURE} ms \(compiled {_FIGURE} ms\)\.$"
)
_EAGER_ONLY_LINE = re.compile(rf"^ *(\S+)\tforward: {_FIGURE} ms \(eager only: ([^)]+)\)\.\tbackward: {_FIGURE} ms\.$")


def _time_compiled(net: Path, caplog: pytest.LogCaptureFixture) -> list[str]:
    """``caffe time --engine compiled`` on ``net``: its log messages."""
    from caffe.tools.cli import main

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="caffe"):
        assert main(["time", "--model", str(net), "--iterations", "2", "--engine", "compiled"]) == 0
    return [record.getMessage() for record in caplog.records]


def _side_by_side(messages: list[str], layers: list[str]) -> tuple[dict[str, list[float]], dict[str, str]]:
    """The block 'eager and compiled' after Caffe's per-layer lines (kept as they were, every layer):
    layer -> its four figures (eager and compiled forward, eager and compiled backward) or why eager only."""
    caffe_lines = messages.index("Average time per layer: ")
    for k, name in enumerate(layers):
        forward, backward = messages[caffe_lines + 1 + 2 * k : caffe_lines + 3 + 2 * k]
        assert re.fullmatch(rf" *{name}\tforward: {_FIGURE} ms\.", forward)
        assert re.fullmatch(rf" *{name}\tbackward: {_FIGURE} ms\.", backward)
    header = messages.index("Average time per layer, eager and compiled:")
    assert header > caffe_lines
    compiled: dict[str, list[float]] = {}
    eager_only: dict[str, str] = {}
    for name, line in zip(layers, messages[header + 1 : header + 1 + len(layers)], strict=True):
        if match := _COMPILED_LINE.match(line):
            assert match[1] == name
            compiled[name] = [float(x) for x in match.groups()[1:]]
        else:
            match = _EAGER_ONLY_LINE.match(line)
            assert match and match[1] == name, line
            eager_only[name] = match[3]
    return compiled, eager_only


def test_caffe_time_shows_the_compiled_step_beside_the_eager_one(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """With ``--engine compiled``, ``caffe time`` keeps Caffe's lines and adds each layer's figures with its
    forward compiled alone (layers the compiled step captures; data and Python layers eager only), then
    the whole-net forward-backward of both training engines."""
    net = tmp_path / "mlp.prototxt"
    net.write_text(MLP_WITH_BN)
    messages = _time_compiled(net, caplog)
    compiled, eager_only = _side_by_side(messages, ["data", "ip", "bn", "loss"])
    assert eager_only == {"data": "data layer"}
    assert set(compiled) == {"ip", "bn", "loss"}
    assert all(figure > 0 for figures in compiled.values() for figure in figures)
    text = "\n".join(messages)
    assert "Average Forward-Backward, whole net, eager training engine:" in text
    assert "Average Forward-Backward, whole net, compiled training engine:" in text
    assert "Compiled / eager time:" in text
    assert "timed eagerly only" not in text  # no compile failed

    net.write_text(
        """
        layer { name: "data" type: "DummyData" top: "x" top: "label"
                dummy_data_param { shape { dim: 8 dim: 6 } shape { dim: 8 }
                                   data_filler { type: "gaussian" } data_filler { type: "constant" value: 1 } } }
        layer { name: "twice" type: "Python" bottom: "x" top: "z"
                python_param { module: "pylayers.scale_layers" layer: "TimesParam" param_str: "2" } }
        layer { name: "ip" type: "InnerProduct" bottom: "z" top: "y"
                inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "y" bottom: "label" top: "loss" }
        """
    )
    messages = _time_compiled(net, caplog)
    compiled, eager_only = _side_by_side(messages, ["data", "twice", "ip", "loss"])
    assert eager_only == {"data": "data layer", "twice": "own backward"}
    assert set(compiled) == {"ip", "loss"}
    assert all(figure > 0 for figures in compiled.values() for figure in figures)
    assert any("Training eagerly: the net cannot be compiled" in m for m in messages)


def test_test_passes_run_on_the_inference_engine(mnist: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: F811
    """Issue 18, item 3: the solver's test passes are gradient-free whole-net forwards, which the net hands
    to its inference engine (fused by default), not the eager layer-by-layer path."""
    from caffe.engine import InferencePlan

    runs = []
    original = InferencePlan.run
    monkeypatch.setattr(InferencePlan, "run", lambda self: runs.append(self.net) or original(self))
    solver_file = write_solver(mnist, "tests_on_engine", mnist / "lenet_train_test.prototxt", max_iter=2, snapshot=0)
    solver = caffe.get_solver(str(solver_file), engine="eager")
    solver.step(1)  # the test at iteration 0 (test_initialization), then a training iteration (eager)
    assert len(runs) == solver.param.test_iter[0] and all(net is solver.test_nets[0] for net in runs)
    runs.clear()
    results = solver.test(0)
    assert len(runs) == solver.param.test_iter[0] and all(net is solver.test_nets[0] for net in runs)
    assert 0.0 <= results["accuracy"] <= 1.0


BN_DROPOUT_NET = """
layer { name: "data" type: "DummyData" top: "x" top: "label"
        dummy_data_param { shape { dim: 8 dim: 3 dim: 6 dim: 6 } shape { dim: 8 }
                           data_filler { type: "gaussian" } data_filler { type: "constant" value: 1 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" }
layer { name: "sc" type: "Scale" bottom: "c" top: "c" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }
layer { name: "drop" type: "Dropout" bottom: "c" top: "c" dropout_param { dropout_ratio: 0.3 } }
layer { name: "ip" type: "InnerProduct" bottom: "c" top: "y"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "y" bottom: "label" top: "loss" }
"""


def test_batchnorm_statistics_and_dropout_masks_on_the_compiled_path():
    """BatchNorm's running statistics (updated in place during the forward) and Dropout's random masks
    come out of the compiled step as out of the eager one (inductor's fallback_random: torch's generator),
    without a recompile per iteration."""
    from google.protobuf import text_format

    from caffe.proto import caffe_pb2 as pb

    runs = {}
    for engine in ("eager", "compiled"):
        param = pb.SolverParameter(base_lr=0.1, lr_policy="fixed", momentum=0.9, max_iter=100)
        text_format.Parse(BN_DROPOUT_NET, param.net_param)
        caffe.set_random_seed(5)
        solver = caffe.get_solver(param, engine=engine)
        solver.step(2)
        graphs = dict(torch._dynamo.utils.counters["stats"])
        solver.step(4)
        assert solver.train_engine_for(6).name == engine
        # nothing recompiles: BatchNorm's in-place statistics once bumped a blob version dynamo guarded on
        assert dict(torch._dynamo.utils.counters["stats"]) == graphs
        runs[engine] = [b.data.copy() for b in solver.net.learnable_params + solver.net.params["bn"]]
    for a, b in zip(runs["eager"], runs["compiled"], strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert not np.allclose(runs["eager"][-3], 0)  # the running mean moved


# ---------------------------------------------------------------------------------------------- precision
def _precision_run(folder: Path, name: str, precision: str, iters: int = 30) -> caffe.Solver:
    solver_file = write_solver(
        folder, name, folder / "lenet_train_test.prototxt", max_iter=iters, display=1, snapshot=0, test_interval=1000
    )
    caffe.set_random_seed(7)
    solver = caffe.get_solver(str(solver_file), precision=precision)
    solver.step(iters)
    return solver


@pytest.fixture(scope="module")
def fp32_lenet(mnist: Path) -> caffe.Solver:  # noqa: F811
    """The float32 run the reduced-precision ones are compared with (trained once)."""
    return _precision_run(mnist, "fp32", "fp32")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_trains_lenet_close_to_fp32(
    mnist: Path,  # noqa: F811
    fp32_lenet: caffe.Solver,
    precision: str,
    caplog: pytest.LogCaptureFixture,
):
    """bf16/fp16 (beyond Caffe, opt-in): the compiled step under autocast learns as float32 does; blobs,
    diffs and weights stay float32 NumPy arrays (snapshots are Caffe files)."""
    reference = fp32_lenet
    with caplog.at_level(logging.INFO, logger="caffe"):
        reduced = _precision_run(mnist, precision, precision)
    assert f"{precision} autocast" in caplog.text
    engine = reduced.train_engine_for(1)
    assert engine.name == "compiled" and engine.precision == precision
    assert (engine.scaler is not None) == (precision == "fp16")
    assert reduced.smoothed_loss < 0.6 * 2.3  # it learns (chance: ln 10)
    assert abs(reduced.smoothed_loss - reference.smoothed_loss) < 0.1 * reference.smoothed_loss + 0.02
    for name, blob in reduced.net.blobs.items():
        assert blob.data.dtype == np.float32 and blob.data.flags.c_contiguous, name
    for blob in reduced.net.learnable_params:
        assert blob.data.dtype == np.float32 and blob.diff.dtype == np.float32
    conv = reduced.net.params["conv1"][0].data
    apart = np.abs(conv - reference.net.params["conv1"][0].data).max() / np.abs(conv).max()
    assert 0 < apart < 0.2  # computed in the reduced type (not float32's numbers), yet the same training


def test_fp16_overflow_skips_the_update_and_halves_the_loss_scale(mnist: Path):  # noqa: F811
    solver = _precision_run(mnist, "fp16_over", "fp16", iters=3)
    scaler = solver.train_engine_for(1).scaler
    before = [b.data.copy() for b in solver.net.learnable_params]
    history = [h.data.copy() for h in solver.history]
    scaler.scale = 1e38  # the scaled loss's gradients overflow float16 (and float32)
    solver.step(1)
    assert scaler.scale == 5e37 and solver.iter == 4
    for a, b in zip(before, solver.net.learnable_params, strict=True):
        np.testing.assert_array_equal(a, b.data)  # weights untouched
    for a, b in zip(history, solver.history, strict=True):
        np.testing.assert_array_equal(a, b.data)  # momentum untouched
    scaler.scale = 2.0**10
    solver.step(2)  # and training goes on at a workable scale
    assert any(not np.array_equal(a, b.data) for a, b in zip(before, solver.net.learnable_params, strict=True))


def test_fp16_loss_scale_is_kept_in_the_snapshot(mnist: Path):  # noqa: F811
    """A resumed fp16 run goes on with the loss scale it had (beside the state, in ``<state>.rng``), not 2^16."""
    solver = _precision_run(mnist, "fp16_snap", "fp16", iters=2)
    assert solver.loss_scaler is solver.train_engine_for(1).scaler  # the solver's, lent to the compiled step
    solver.loss_scaler.load_state(2.0**9, 17)
    _, state = solver.snapshot()
    assert Path(f"{state}.rng").is_file()  # LeNet draws no random numbers: written for the loss scale
    resumed = caffe.get_solver(solver.source, precision="fp16")
    assert resumed.loss_scaler.state() == (2.0**16, 0)
    resumed.restore(state)
    assert resumed.loss_scaler.state() == (2.0**9, 17) and resumed.iter == 2
    resumed.step(1)
    assert resumed.train_engine_for(1).scaler.state() == (2.0**9, 18)  # the restored scale trains on
    fp32 = caffe.get_solver(solver.source)
    fp32.restore(state)  # an fp32 run ignores it
    assert fp32.loss_scaler is None


def test_reduced_precision_refuses_what_it_cannot_do(mnist: Path):  # noqa: F811
    solver_file = write_solver(mnist, "refuse", mnist / "lenet_train_test.prototxt", max_iter=1, snapshot=0)
    with pytest.raises(caffe.CaffeError, match="precision bf16 needs the compiled training engine"):
        caffe.get_solver(str(solver_file), engine="eager", precision="bf16")
    with pytest.raises(caffe.CaffeError, match="unknown training precision 'fp8'"):
        caffe.get_solver(str(solver_file), precision="fp8")
    caffe.set_dtype("double")
    try:
        with pytest.raises(caffe.CaffeError, match="precision fp16 is for float nets"):
            caffe.get_solver(str(solver_file), precision="fp16")
    finally:
        caffe.set_dtype("float")


def test_caffe_train_precision_flag(mnist: Path, capsys: pytest.CaptureFixture[str]):  # noqa: F811
    from caffe.tools.cli import main

    solver = write_solver(mnist, "flag", mnist / "lenet_train_test.prototxt", max_iter=2, snapshot=0)
    assert main(["train", f"--solver={solver}", "--engine=eager", "--precision=bf16"]) == 1
    err = capsys.readouterr().err
    assert "precision bf16 needs the compiled training engine" in err and "Traceback" not in err
    assert main(["train", f"--solver={solver}", "--precision=bf16"]) == 0
