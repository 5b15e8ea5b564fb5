"""Shared pieces of the benchmarks: where the models are, building them, FLOPs, GEMM peak, machine, timing."""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from caffe.protoio import atomic_write
from caffe.util import machine

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "benchmarks.md"


def assets_dir() -> Path:
    return Path(os.environ.get("CAFFE_TEST_ASSETS", REPO.parent / "shared" / "assets")).resolve()


# ---------------------------------------------------------------------------- the models
@dataclass(frozen=True)
class ModelSpec:
    key: str
    title: str
    prototxt: str
    weights: str | None  # None: random weights from the fillers
    size: int  # input is 3 x size x size
    input_scale: float  # inputs are uniform in [-scale, scale] (image minus mean for real weights)
    image: str | None = None  # a real image instead (resized to size x size, BGR minus ``mean``)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    detector: bool = False  # output rows [image, label, score, box]: compared without cv2's zero padding

    @property
    def prototxt_path(self) -> Path:
        return assets_dir() / self.prototxt

    @property
    def weights_path(self) -> Path | None:
        return assets_dir() / self.weights if self.weights else None


MODELS: dict[str, ModelSpec] = {
    m.key: m
    for m in (
        ModelSpec(
            "resnet50",
            "ResNet-50 1by2 (open_nsfw)",
            "models/open_nsfw_resnet50_1by2/deploy.prototxt",
            "models/open_nsfw_resnet50_1by2/resnet_50_1by2_nsfw.caffemodel",
            224,
            120.0,
        ),
        ModelSpec(
            "squeezenet",
            "SqueezeNet v1.0",
            "models/squeezenet_v1.0_deepcompression/SqueezeNet_deploy.prototxt",
            "models/squeezenet_v1.0_deepcompression/squeezenet_v1.0_deepcompression_decoded.caffemodel",
            227,
            120.0,
        ),
        ModelSpec(
            "res10_ssd",
            "res10 SSD face detector",
            "models/res10_ssd_face_prototxt_only/deploy.prototxt",
            "models/res10_ssd_face/res10_300x300_ssd_iter_140000.caffemodel",
            300,
            120.0,
            image="models/mtcnn_face_caffe/test1.jpg",
            mean=(104.0, 177.0, 123.0),
            detector=True,
        ),
        ModelSpec("alexnet", "AlexNet", "caffe-ref/models/bvlc_alexnet/deploy.prototxt", None, 227, 1.0),
        ModelSpec("googlenet", "GoogLeNet", "caffe-ref/models/bvlc_googlenet/deploy.prototxt", None, 224, 1.0),
    )
}


def fill_unfilled_params(net, seed: int = 0) -> list[str]:
    """Give random values to Convolution/InnerProduct weights a filler-less deploy prototxt left at 0.

    bvlc_alexnet's deploy.prototxt has no ``weight_filler``, so Caffe's default (constant 0) makes
    every weight 0: the timing would not change (dense kernels do not look at values) but the
    output checks would compare zeros. Such weights get N(0, 2/fan_in) from a seeded generator.
    """
    gen = torch.Generator().manual_seed(seed)
    changed = []
    for name, blobs in net.params.items():
        w = blobs[0].data
        if w.ndim < 2 or np.any(w):
            continue
        fan_in = int(np.prod(w.shape[1:]))
        w[...] = (torch.randn(w.shape, generator=gen) * math.sqrt(2.0 / fan_in)).numpy()
        changed.append(name)
    return changed


def build_net(spec: ModelSpec, weights: Path | None = None):
    """The neocaffe net of ``spec`` (its caffemodel, ``weights``, or random fillers with seed 0)."""
    import caffe

    caffe.set_mode_cpu()
    w = weights or spec.weights_path
    if w is None:
        caffe.set_random_seed(0)
    net = caffe.Net(str(spec.prototxt_path), caffe.TEST, weights=str(w) if w else None)
    if w is None:
        fill_unfilled_params(net)
    return net


def reshape_input(net, batch: int, size: int) -> str:
    name = net.inputs[0]
    net.blobs[name].reshape(batch, 3, size, size)
    net.reshape()
    return name


def make_input(spec: ModelSpec, batch: int, seed: int = 0) -> np.ndarray:
    """The benchmark input: ``spec.image`` as cv2.dnn.blobFromImage makes it (every image of the batch), else noise."""
    if spec.image:
        import cv2

        image = cv2.imread(str(assets_dir() / spec.image), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"cannot read {assets_dir() / spec.image}")
        chw = (cv2.resize(image, (spec.size, spec.size)).astype(np.float32) - np.float32(spec.mean)).transpose(2, 0, 1)
        return np.ascontiguousarray(np.broadcast_to(chw, (batch, *chw.shape)))
    rng = np.random.default_rng(seed)
    x = rng.uniform(-spec.input_scale, spec.input_scale, size=(batch, 3, spec.size, spec.size))
    return x.astype(np.float32)


# ---------------------------------------------------------------------------- FLOPs
def forward_flops(net) -> tuple[int, dict[str, int]]:
    """Forward FLOPs per image of Convolution / Deconvolution / InnerProduct layers (2 per multiply-add).

    conv: 2 * Cout * Hout * Wout * (Cin/g) * kh * kw, read as 2 * (top count / N) * (weight count / Cout);
    fc: 2 * in * out. Pooling, LRN, ReLU, BatchNorm, Softmax ... are ignored (a few % at most).
    """
    per_type: dict[str, int] = {}
    total = 0
    for layer, name in zip(net.layers, net._layer_names):
        if layer.type not in ("Convolution", "Deconvolution", "InnerProduct"):
            continue
        # shapes only: reading ``.data`` of a parameter blob would mark it as written (engines re-fold)
        w = tuple(net.params[name][0].shape)
        if layer.type == "InnerProduct":
            flops = 2 * math.prod(w)
        else:
            top = tuple(net.blobs[net.top_names[name][0]].shape)
            bottom = tuple(net.blobs[net.bottom_names[name][0]].shape)
            per_out = math.prod(w[1:])  # (Cin/g) * kh * kw
            if layer.type == "Convolution":
                flops = 2 * math.prod(top[1:]) * per_out
            else:  # deconvolution: every input pixel scatters a (Cout/g) x kh x kw kernel
                flops = 2 * math.prod(bottom[1:]) * per_out
        per_type[layer.type] = per_type.get(layer.type, 0) + flops
        total += flops
    return total, per_type


# ---------------------------------------------------------------------------- machine
def gemm_peak(n: int = 2048, seconds: float = 3.0) -> float:
    """Best fp32 GFLOP/s of torch.mm(n x n, n x n) on the current torch threads."""
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    c = torch.empty(n, n)
    for _ in range(2):
        torch.mm(a, b, out=c)
    best = math.inf
    start = time.perf_counter()
    reps = 0
    while reps < 5 or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - t)
        reps += 1
    return 2.0 * n**3 / best / 1e9


class GemmProbe:
    """One fp32 torch.mm(n x n, n x n) per call, returning its GFLOP/s (to interleave with the timed engines)."""

    def __init__(self, n: int = 2048) -> None:
        self.n = n
        self.a, self.b, self.c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
        torch.mm(self.a, self.b, out=self.c)

    def __call__(self) -> float:
        t = time.perf_counter()
        torch.mm(self.a, self.b, out=self.c)
        return 2.0 * self.n**3 / (time.perf_counter() - t) / 1e9


def cpu_flags() -> list[str]:
    """The vector-instruction flags that matter for these benchmarks."""
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")
    return [f for f in machine.cpu_flags() if f in wanted]


def machine_info() -> dict[str, str]:
    try:
        import cv2

        cv = cv2.__version__
    except ImportError:
        cv = "not installed"
    try:
        import caffe

        neo = caffe.__version__
    except ImportError:
        neo = "?"
    return {
        "cpu": machine.cpu_description(),
        "cpu_flags": " ".join(cpu_flags()),
        "cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "opencv": cv,
        "neocaffe": neo,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
    }


# ---------------------------------------------------------------------------- timing
def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def median(xs: Iterable[float]) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else math.nan


class Progress:
    """tqdm when it is installed (on stderr), else one line per step."""

    def __init__(self, total: int, desc: str = "") -> None:
        self._bar = None
        self._n, self._total = 0, total
        try:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=True)
        except ImportError:
            pass

    def step(self, desc: str, n: int = 1) -> None:
        self._n += n
        if self._bar is not None:
            self._bar.set_description_str(desc, refresh=False)
            self._bar.update(n)
        else:
            print(f"[{self._n}/{self._total}] {desc}", file=sys.stderr, flush=True)

    def write(self, msg: str) -> None:
        if self._bar is not None:
            self._bar.write(msg, file=sys.stdout)
        else:
            print(msg, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def write_docs_section(title: str, section: str) -> None:
    """Replace the section headed ``title`` (a ``## `` line) in docs/benchmarks.md, or append it (atomically)."""
    text = DOCS.read_text() if DOCS.exists() else ""
    if not text.strip():
        text = "# Benchmarks\n\nMeasured by the scripts in `benchmarks/`; each section is rewritten by its script.\n\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.strip() == title), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        tail = "".join(lines[end:])
        new = "".join(lines[:start]) + section + ("\n" + tail if tail else "")
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(DOCS, (new.rstrip("\n") + "\n").encode())
    print(f"written: {DOCS.relative_to(DOCS.parent.parent)} ({title.lstrip('# ')})")
