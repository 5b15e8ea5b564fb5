"""GPU mode: Caffe's synced-memory rule and CPU/GPU agreement, in inference and in training (skipped on
machines without CUDA)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import asset, requires_gpu
from test_cli_train import mnist, write_solver  # noqa: F401  (fixture)

import caffe

pytestmark = requires_gpu
LENET = "models/lenet_mnist_newformat"


def lenet() -> caffe.Net:
    return caffe.Net(
        str(asset(f"{LENET}/lenet.prototxt")), caffe.TEST, weights=str(asset(f"{LENET}/lenet_iter_10000.caffemodel"))
    )


@pytest.fixture
def gpu():
    caffe.set_mode_gpu()
    caffe.set_device(0)
    yield
    caffe.set_mode_cpu()


def test_numpy_writes_reach_the_device_and_results_come_back(gpu):
    x = np.random.default_rng(0).random((64, 1, 28, 28), dtype=np.float32)
    net = lenet()
    assert net.device.type == "cuda"
    net.blobs["data"].data[...] = x
    out = net.forward()["prob"].copy()
    assert net.blobs["prob"].tensor.device.type == "cuda"
    caffe.set_mode_cpu()
    ref = lenet().forward(data=x)["prob"]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_param_surgery_through_numpy_after_a_gpu_forward(gpu):
    net = lenet()
    x = np.random.default_rng(1).random((64, 1, 28, 28), dtype=np.float32)
    net.forward(data=x)
    net.params["ip2"][1].data[...] = 100.0  # host write after the device has the head
    net.params["ip2"][1].data[3] = 200.0
    out = net.forward(data=x)["prob"]
    assert (out.argmax(1) == 3).all()


def test_mode_switch_moves_an_existing_net(gpu):
    caffe.set_mode_cpu()
    net = lenet()
    x = np.random.default_rng(2).random((64, 1, 28, 28), dtype=np.float32)
    cpu_out = net.forward(data=x)["prob"].copy()
    caffe.set_mode_gpu()
    gpu_out = net.forward(data=x)["prob"]
    assert net.device.type == "cuda"
    np.testing.assert_allclose(gpu_out, cpu_out, rtol=1e-4, atol=1e-5)


def test_backward_on_gpu_matches_cpu(gpu):
    text = asset("caffe-ref/examples/mnist/lenet_train_test.prototxt").read_text()
    from google.protobuf import text_format

    from caffe.proto import caffe_pb2 as pb

    param = text_format.Parse(text, pb.NetParameter())
    for layer in param.layer:
        if layer.type == "Data":
            layer.type = "Input"
            layer.ClearField("data_param")
            layer.ClearField("transform_param")
            layer.input_param.shape.add().dim.extend([8, 1, 28, 28])
            layer.input_param.shape.add().dim.extend([8])
    x = np.random.default_rng(3).random((8, 1, 28, 28), dtype=np.float32)
    y = np.arange(8, dtype=np.float32)
    grads = []
    for mode in (caffe.set_mode_cpu, caffe.set_mode_gpu):
        mode()
        caffe.set_random_seed(0)
        net = caffe.Net(param, caffe.TRAIN)
        net.blobs["data"].data[...] = x
        net.blobs["label"].data[...] = y
        net.forward()
        net.backward()
        grads.append([b.diff.copy() for b in net.learnable_params])
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_fused_engine_on_gpu_matches_eager(gpu):
    d = "models/open_nsfw_resnet50_1by2"
    net = caffe.Net(
        str(asset(f"{d}/deploy.prototxt")), caffe.TEST, weights=str(asset(f"{d}/resnet_50_1by2_nsfw.caffemodel"))
    )
    x = np.random.default_rng(4).standard_normal((2, 3, 224, 224)).astype(np.float32) * 50
    net.blobs["data"].reshape(*x.shape)
    net.reshape()
    outs = {}
    for engine in ("eager", "fused"):
        caffe.set_inference_engine(engine)
        outs[engine] = net.forward(data=x)["prob"].copy()
    caffe.set_inference_engine("fused")
    np.testing.assert_allclose(outs["fused"], outs["eager"], rtol=1e-3, atol=1e-5)
    torch.cuda.synchronize()


# ---------------------------------------------------------------------------- training: CPU and GPU agree
LENET_ITERS = 100
_cpu_runs: dict[tuple[str, str], list[np.ndarray]] = {}  # CPU weights by (dtype, pooling), shared by the cases


def _train_lenet(
    folder: Path, data: Path, mode: str, dtype: str, pool: str, engine: str = "eager", precision: str = "fp32"
) -> list[np.ndarray]:
    """LeNet (the tutorial's net on the ``mnist`` fixture's LMDB, its pooling ``pool``) trained ``LENET_ITERS``
    iterations in this process on the CPU or GPU 0 from the same seed; its learnable weights."""
    folder.mkdir()
    net = (data / "lenet_train_test.prototxt").read_text().replace("pool: MAX", f"pool: {pool}")
    (folder / "net.prototxt").write_text(net)
    fields = {"max_iter": LENET_ITERS, "snapshot": 0, "test_interval": 10 * LENET_ITERS, "display": 0}
    solver = write_solver(folder, "lenet", folder / "net.prototxt", random_seed=3, **fields)
    caffe.set_dtype(dtype)
    try:
        if mode == "gpu":
            caffe.set_device(0)
            caffe.set_mode_gpu()
        else:
            caffe.set_mode_cpu()
        s = caffe.get_solver(str(solver), engine=engine, precision=precision)
        assert s.net.device.type == ("cuda" if mode == "gpu" else "cpu")
        assert s.net.layers[0].prefetcher.pool.pinned == (mode == "gpu")  # page-locked batches on the GPU
        s.step(LENET_ITERS)
        assert s.train_engine_for(1).name == engine
        return [np.array(b.data, dtype=np.float64) for b in s.net.learnable_params]
    finally:
        caffe.set_mode_cpu()
        caffe.set_dtype("float")


@pytest.mark.parametrize(("dtype", "pool"), [("double", "MAX"), ("float", "AVE")], ids=["double-max", "float-ave"])
def test_lenet_trained_100_iterations_on_cpu_and_gpu_agree(mnist: Path, dtype: str, pool: str):  # noqa: F811
    """The same seed and data give the same LeNet after 100 iterations on the CPU and on the GPU:
    max |Δw| / max |w| over all parameters ≤ 1e-4.

    The tutorial's net (MAX pooling) is compared in double: in float32 a pooling window whose two largest
    inputs lie within summation-order noise sends its gradient elsewhere on the other device, and momentum
    carries that on (measured on the CPU: float32 and double runs of this net part by 2.5e-2 after 100
    iterations; see ``test_torchrun_lenet_matches_one_process_of_double_batch_and_logs_once``). Float32 is
    compared with AVE pooling, which has no such ties (GPU mode turns TF32 off: true float32 as Caffe)."""
    key = (dtype, pool)
    if key not in _cpu_runs:
        _cpu_runs[key] = _train_lenet(mnist / f"gpu_agree_cpu_{dtype}_{pool}", mnist, "cpu", dtype, pool)
    gpu = _train_lenet(mnist / f"gpu_agree_gpu_{dtype}_{pool}", mnist, "gpu", dtype, pool)
    cpu = _cpu_runs[key]
    worst = max(float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(cpu, gpu, strict=True))
    print(f"LeNet {LENET_ITERS} iterations, {dtype} {pool} pooling: CPU vs GPU {worst:.3e}")
    assert worst <= 1e-4, f"CPU and GPU weights differ by {worst:.3e} (relative) after {LENET_ITERS} iterations"


def test_gpu_mode_computes_in_true_float32_and_sets_the_current_device(gpu):
    """Caffe's float32, not PyTorch's TF32 convolutions (10-bit mantissa); set_device is cudaSetDevice."""
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert torch.cuda.current_device() == 0


def test_device_copies_never_refill_a_pinned_buffer_mid_copy():
    """Pooled page-locked buffers copied without waiting: each batch arrives as it was when copied."""
    from caffe.data.prefetch import BufferPool, DeviceCopies

    pool, copies = BufferPool(keep=4, pinned=True), DeviceCopies(limit=2)
    device = torch.device("cuda")
    results = []
    for i in range(12):  # the pool lends a buffer again as soon as it is free: refilled at once
        host = torch.from_numpy(pool.take((256, 1024)))
        assert host.is_pinned()
        host.fill_(float(i))
        results.append(copies.copy([host], device, torch.float32)[0])
        del host
    torch.cuda.synchronize()
    assert [float(r.mean()) for r in results] == [float(i) for i in range(12)]


_gpu_compiled: dict[str, list[np.ndarray]] = {}


def _gpu_compiled_fp32(mnist: Path) -> list[np.ndarray]:  # noqa: F811
    """LeNet trained on the GPU by the compiled engine in fp32 (once per session: it compiles)."""
    if "fp32" not in _gpu_compiled:
        _gpu_compiled["fp32"] = _train_lenet(mnist / "gpu_engine_compiled", mnist, "gpu", "float", "AVE", "compiled")
    return _gpu_compiled["fp32"]


def test_compiled_training_step_on_gpu_trains_as_the_eager_one(mnist: Path):  # noqa: F811
    """The compiled engine on CUDA: the same LeNet weights as the eager engine after LENET_ITERS iterations."""
    eager = _train_lenet(mnist / "gpu_engine_eager", mnist, "gpu", "float", "AVE")
    compiled = _gpu_compiled_fp32(mnist)
    worst = max(float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(eager, compiled, strict=True))
    print(f"LeNet {LENET_ITERS} iterations on the GPU, compiled vs eager {worst:.3e}")
    assert worst <= 1e-4


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_on_gpu_trains_close_to_fp32(mnist: Path, precision: str):  # noqa: F811
    """--precision on CUDA (tensor cores): LeNet's weights after LENET_ITERS iterations near the fp32 run's."""
    reference = _gpu_compiled_fp32(mnist)
    reduced = _train_lenet(
        mnist / f"gpu_prec_{precision}", mnist, "gpu", "float", "AVE", engine="compiled", precision=precision
    )
    worst = max(float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(reference, reduced, strict=True))
    print(f"LeNet {LENET_ITERS} iterations on the GPU, {precision} vs fp32 {worst:.3e}")
    assert 0 < worst < 0.2


def test_compiled_training_step_under_cuda_graphs_trains_as_without(mnist: Path, caplog: pytest.LogCaptureFixture):  # noqa: F811
    """CAFFE_CUDA_GRAPHS=on: the compiled step replayed as CUDA graphs gives the compiled fp32 run's LeNet weights."""
    from caffe.train_step import CUDA_GRAPHS

    reference = _gpu_compiled_fp32(mnist)
    CUDA_GRAPHS.set("on")
    try:
        with caplog.at_level(logging.INFO, logger="caffe"):
            graphed = _train_lenet(mnist / "gpu_cuda_graphs", mnist, "gpu", "float", "AVE", engine="compiled")
    finally:
        CUDA_GRAPHS.set("off")
    assert "CUDA graphs" in caplog.text and "training eagerly" not in caplog.text
    worst = max(float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(reference, graphed, strict=True))
    print(f"LeNet {LENET_ITERS} iterations on the GPU, CUDA graphs vs without {worst:.3e}")
    assert worst <= 1e-5


def test_ssd_training_layers_on_the_gpu_match_the_cpu(gpu, tmp_path: Path):
    """A small SSD (PriorBox, Permute, MultiBoxLoss) trains on CUDA with the CPU's losses: the matching and mining
    read the values back to the host, the loss and its gradient stay on the device."""
    from test_multibox_loss import _TINY_SSD

    (tmp_path / "net.prototxt").write_text(_TINY_SSD)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "net.prototxt"}" base_lr: 0.01 lr_policy: "fixed" momentum: 0.9 max_iter: 10 '
        "display: 0 random_seed: 1"
    )
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16))
    label = [[[[0, 1, 0, 0.1, 0.1, 0.5, 0.6, 0], [1, 2, 0, 0.4, 0.3, 0.9, 0.8, 0]]]]
    losses = {}
    for mode in ("gpu", "cpu"):
        getattr(caffe, f"set_mode_{mode}")()
        s = caffe.get_solver(str(tmp_path / "solver.prototxt"))
        assert s.net.device.type == ("cuda" if mode == "gpu" else "cpu")
        losses[mode] = []
        for _ in range(4):
            s.net.blobs["data"].data[...] = x
            s.net.blobs["label"].data[...] = label
            s.step(1)
            losses[mode].append(float(s.net.blobs["loss"].data))
    np.testing.assert_allclose(losses["gpu"], losses["cpu"], rtol=1e-3)


def _fork_training_nets() -> dict[str, tuple[str, dict[str, tuple[int, ...]]]]:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import fuzz

    return fuzz.FORK_TRAINING_NETS


@pytest.mark.parametrize("name", sorted(_fork_training_nets()))
def test_fork_training_layers_on_the_gpu_match_the_cpu(gpu, tmp_path: Path, name: str):
    """The forks' training layers (R-CNN, R-FCN OHEM, face, the YOLO heads and losses) give the CPU's tops and
    gradients on CUDA."""
    import fuzz

    layer, inputs = fuzz.FORK_TRAINING_NETS[name]
    (tmp_path / "net.prototxt").write_text(fuzz.fork_training_net(layer, inputs))
    rng = np.random.default_rng(4)
    values = {
        k: (rng.integers(0, 3, s) if k == "label" else rng.normal(0, 1, s)).astype(np.float32)
        for k, s in inputs.items()
    }
    if "rois" in values:
        values["rois"][:, 0] = rng.integers(0, 2, values["rois"][:, 0].shape)  # batch indices
    results = {}
    for mode in ("gpu", "cpu"):
        getattr(caffe, f"set_mode_{mode}")()
        caffe.set_random_seed(3)
        net = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TRAIN)
        for k, v in values.items():
            net.blobs[k].data[...] = v
        tops = {k: v.copy() for k, v in net.forward().items()}
        net.backward()
        diffs = {k: net.blobs[k].diff.copy() for k in values if k not in ("label", "rois")}
        params = [b.diff.copy() for blobs in net.params.values() for b in blobs]
        results[mode] = (tops, diffs, params)
    for got, want in zip(results["gpu"], results["cpu"], strict=True):
        for a, b in zip(
            got.values() if isinstance(got, dict) else got,
            want.values() if isinstance(want, dict) else want,
            strict=True,
        ):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
