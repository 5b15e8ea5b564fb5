"""Training engines: how a Solver runs one forward + backward pass of its train net.

* ``eager``: the Net's own ``forward_backward`` (layer by layer, every blob's data and diff kept).
* ``compiled``: the layers after the data layers captured by ``torch.compile`` as one function of
  the data blobs (per input shape), its backward compiled with it; the parameter diffs are
  accumulated as the eager path does, every top blob keeps its data (intermediate blobs' diffs are
  not written: read them after ``net.backward()``, which recomputes them from the blobs). The first
  iteration compiles (seconds, logged); later ones run the compiled code.
* ``auto`` (default): ``compiled`` for a run long enough to repay the compile time of a net where the
  compiled step was measured faster (no large convolutions, or BatchNorm layers), ``eager`` otherwise.
  Long enough: ``AUTO_MIN_ITERATIONS`` iterations to go, or ``AUTO_CACHED_MIN_ITERATIONS`` when this
  machine has compiled the same step before (its code is in inductor's on-disk cache: about a second
  to load instead of 15-25 s to compile).

A reduced precision (``caffe.precision``: bf16, fp16) runs the compiled step under autocast; its tops
read as float32 (converted on first read) and its diffs are float32 (fp16: unscaled).

On a GPU, ``CAFFE_CUDA_GRAPHS=on`` (or ``CUDA_GRAPHS.set("on")`` before the solver's first step) replays
the compiled step as CUDA graphs (inductor's cudagraph trees: one launch per forward and per backward);
opt-in until checked on a GPU (tests/test_gpu.py).

A net that cannot be captured trains eagerly whatever the choice, and says why once: a layer with its
own backward (Python layers), ``debug_info``, or a compile that fails. Random layers (Dropout) draw
the eager path's numbers (inductor's ``fallback_random``), so both engines train the same net to
float rounding.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any

import torch

from caffe.errors import CaffeError
from caffe.precision import LossScaler, autocast_dtype
from caffe.proto import caffe_pb2 as pb
from caffe.util.choice import Choice
from caffe.util.inductor import NO_CPP_COMPILER, compiled, compiled_before, cpp_compiler_found, remember_compiled

if TYPE_CHECKING:
    from caffe.blob import Blob
    from caffe.layer import Layer
    from caffe.net import Net

log = logging.getLogger("caffe")

TRAIN_ENGINES = ("auto", "eager", "compiled")
AUTO_MIN_ITERATIONS = 5000
# A step whose code is in inductor's cache costs ~3.2 s at the start of a process (imports ~2 s, the
# warm compile ~1.2 s); LeNet's compiled iteration saves ~3 ms: even at ~1,100 iterations (measured: 1,000
# iterations of the MNIST tutorial 18.1 s either way), ahead from 2,000.
AUTO_CACHED_MIN_ITERATIONS = 2000
AUTO_MAX_CONV_CHANNELS = 64  # auto leaves nets with a convolution over this many channels eager
RECOMPILE_LIMIT = 256  # nets compiled in one process (each solver's, each input shape)


TRAIN_ENGINE = Choice("training engine", TRAIN_ENGINES, "CAFFE_TRAIN_ENGINE", "auto")
# CUDA graphs for the compiled step of a GPU net (inductor's cudagraph trees): replays the whole forward +
# backward as one graph launch. Opt-in until the GPU checks (tests/test_gpu.py) have run on a lent GPU.
CUDA_GRAPHS = Choice("CUDA graphs setting", ("off", "on"), "CAFFE_CUDA_GRAPHS", "off")


def check_train_engine(name: str) -> str:
    return TRAIN_ENGINE.check(name)


def set_train_engine(name: str) -> None:
    """Choose how solvers built from now on run forward + backward: 'auto' (default), 'eager', 'compiled'."""
    TRAIN_ENGINE.set(name)


def train_engine() -> str:
    return TRAIN_ENGINE.value


def resolve_engine(name: str, iterations_to_go: int, net: Net | None = None, precision: str = "fp32") -> str:
    """The engine ``name`` means for a run with ``iterations_to_go`` iterations left on ``net``.

    A reduced ``precision`` (``caffe.precision``) is the compiled step's: ``auto`` compiles, ``eager``
    is refused.

    ``auto`` compiles long runs (shorter ones when this machine compiled the step before) of the nets
    where compiling was measured to pay (docs/benchmarks.md, Training): nets without large convolutions
    (LeNet 1.3x the eager step) and nets with BatchNorm layers (ResNet-50 1by2 1.2x: the compiled step
    fuses BatchNorm, Scale and ReLU passes). Nets dominated by large convolutions alone (CaffeNet,
    GoogLeNet) trained at least as fast eagerly, so they stay eager unless asked."""
    check_engine_precision(name, precision)
    if precision != "fp32":
        return "compiled"
    if name != "auto":
        return name
    if net is not None and has_large_convolutions(net) and not has_batch_norm(net):
        return "eager"
    if iterations_to_go >= AUTO_MIN_ITERATIONS:
        return "compiled"
    if net is not None and iterations_to_go >= AUTO_CACHED_MIN_ITERATIONS and compiled_before(step_identity(net)):
        return "compiled"
    return "eager"


def check_engine_precision(name: str, precision: str) -> None:
    """A reduced precision is the compiled step's: the eager engine is refused (at once, not mid-run)."""
    if precision != "fp32" and name == "eager":
        raise CaffeError(f"training precision {precision} needs the compiled training engine, not eager")


def has_large_convolutions(net: Net) -> bool:
    """Whether a convolution of the net reads ``AUTO_MAX_CONV_CHANNELS`` or more channels."""
    return any(
        layer.type in ("Convolution", "Deconvolution") and getattr(layer, "channels", 0) >= AUTO_MAX_CONV_CHANNELS
        for layer in net.host_layers
    )


def has_batch_norm(net: Net) -> bool:
    """Whether the net normalizes with batch statistics somewhere (a BatchNorm layer)."""
    return any(layer.type == "BatchNorm" for layer in net.host_layers)


def has_own_backward(layer: Layer) -> bool:
    """Whether ``layer`` computes its bottoms' diffs itself (a Python layer's ``backward``), which autograd
    through a compiled forward cannot capture."""
    from caffe.net import BlobBackward

    return isinstance(layer, BlobBackward)


def capture_obstacle(net: Net) -> str | None:
    """Why ``net`` cannot be captured (None: it can)."""
    if net.debug_info:
        return "debug_info prints every layer's blobs"
    if net.has_layer_callbacks:
        return "layer callbacks are registered"
    for layer in net.host_layers:
        if has_own_backward(layer):
            return f"layer '{layer.name}' ({layer.type}) has its own backward"
    start = _data_prefix(net)
    if start == net.num_layers:
        return "the net has no layer after its data layers"
    for layer in net.host_layers[start:]:
        if not layer.traceable:  # e.g. MultiBoxLoss, whose label blob also changes shape from batch to batch
            return f"layer '{layer.name}' ({layer.type}) cannot be traced (it decides on values or keeps state)"
    if net.device.type == "cpu" and not cpp_compiler_found():
        return NO_CPP_COMPILER
    return None


def step_identity(net: Net, precision: str = "fp32") -> list[Any]:
    """What the compiled step of ``net`` depends on, as JSON values (``caffe.util.inductor``'s record of
    the steps this machine compiled): the device, the precision, CUDA graphs, the net's layers (weights
    left out) and the shapes of the blobs the step reads."""
    structure = pb.NetParameter()
    structure.CopyFrom(net.net_param)
    for layer in structure.layer:
        del layer.blobs[:]
    for layer in structure.layers:  # V1 nets
        del layer.blobs[:]
    digest = hashlib.sha256(structure.SerializeToString(deterministic=True)).hexdigest()
    cuda_graphs = net.device.type == "cuda" and CUDA_GRAPHS.value == "on"
    shapes = [list(net.blob_list[b].shape) for b in _step_inputs(net, _data_prefix(net))]
    return [net.device.type, precision, cuda_graphs, digest, shapes]


def _step_inputs(net: Net, start: int) -> list[int]:
    """The ids of the blobs that the layers from ``start`` read and do not make, in first-read order."""
    made: set[int] = set()
    needed: list[int] = []
    for i in range(start, net.num_layers):
        for bid in net.bottom_ids(i):
            if bid not in made and bid not in needed:
                needed.append(bid)
        made.update(net.top_ids(i))
    return needed


def _data_prefix(net: Net) -> int:
    """The number of leading layers without bottoms (data layers: they run eagerly)."""
    k = 0
    while k < net.num_layers and not net.bottom_ids(k):
        k += 1
    return k


def _store_as_caffe(blob: Blob, value: torch.Tensor) -> None:
    """Caffe's form of a top the compiled step left in its own layout or precision: contiguous, the blob's dtype."""
    blob.tensor = value.to(blob.dtype).contiguous()


class CompiledStep:
    """``forward_backward`` of a net's layers after its data layers, as one compiled function."""

    def __init__(self, net: Net, precision: str = "fp32", scaler: LossScaler | None = None) -> None:
        """``scaler``: fp16's loss scale (the solver's, kept in its snapshots); a new one if not given."""
        self.net = net
        self.precision = precision
        self.autocast = autocast_dtype(precision)  # None: float32 throughout
        self.scaler = (scaler or LossScaler()) if precision == "fp16" else None
        if precision == "fp16" and net.device.type == "cpu":
            log.warning("fp16 on the CPU runs without float16 arithmetic (measured 8x slower than fp32): use bf16")
        self.start = _data_prefix(net)
        n = net.num_layers
        self.inputs = _step_inputs(net, self.start)  # blob ids the captured layers read and do not make
        self.outputs = sorted({t for i in range(self.start, n) for t in net.top_ids(i)})  # blob ids they write
        self.layers = [(i, net.host_layers[i], net.bottom_ids(i), net.top_ids(i)) for i in range(self.start, n)]
        self.losses = [
            (tid, layer.loss(j)) for _, layer, _, tops in self.layers for j, tid in enumerate(tops) if layer.loss(j)
        ]
        needs = net.layer_need_backward
        wanted: dict[int, Any] = {}
        for i, layer, _, _ in self.layers:
            if needs[i]:
                for k, blob in enumerate(layer.blobs):
                    if layer.param_propagate_down[k]:
                        wanted[id(blob)] = blob
        self.params = [b for b in net.learnable_params if id(b) in wanted and b.tensor.requires_grad]
        self.layer_blobs = [b for _, layer, _, _ in self.layers for b in layer.blobs]
        self.shapes: list[tuple[int, ...]] | None = None
        # Every CompiledStep compiles the same code object (``_forward``) for its own net: dynamo counts
        # them as recompiles of one frame, and past its limit (8) would run the rest uncompiled.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        # Inductor's options for this compile only (no config patch around each call): Dropout draws torch's
        # numbers as the eager path does; the tops leave in the layout inductor chose (channels-last around
        # its convolutions) instead of a copy back to NCHW per blob and iteration, see _store_as_caffe.
        self.cuda_graphs = net.device.type == "cuda" and CUDA_GRAPHS.value == "on"
        graphs = {"triton.cudagraphs": True} if self.cuda_graphs else {}
        self.function = compiled(self._forward, fallback_random=True, keep_output_stride=False, **graphs)
        self.compile_seconds: float | None = None

    def _forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        values = dict(zip(self.inputs, inputs, strict=True))
        reduced = torch.autocast(self.net.device.type, self.autocast) if self.autocast is not None else None
        with reduced or contextlib.nullcontext():
            for _, layer, bottoms, tops in self.layers:
                outputs = layer.forward([values[b] for b in bottoms])
                values.update(zip(tops, outputs, strict=True))
        total = sum(weight * values[tid].float().sum() for tid, weight in self.losses)
        # The tops leave detached: outputs that required grad would each get a tangent in the compiled
        # backward (a tensor of zeros made and added per blob and iteration); only ``total`` carries the grad.
        return total, [values[t].detach() for t in self.outputs]

    def ready_for(self, shapes: list[tuple[int, ...]]) -> bool:
        """Whether the layers are set up for these input shapes (they are reshaped eagerly otherwise)."""
        if self.shapes is None:  # the shapes the net was built (or last reshaped) with
            given = dict(zip(self.inputs, shapes, strict=True))
            self.shapes = shapes
            for _, layer, bottoms, _ in self.layers:
                set_up = layer.bottom_shapes or []
                for j, b in enumerate(bottoms):
                    if b in given and (j >= len(set_up) or tuple(set_up[j]) != given[b]):
                        self.shapes = None
        return shapes == self.shapes

    def run(self) -> float:
        """Forward + backward of the captured layers from the data blobs; returns the weighted loss."""
        blobs = self.net.blob_list
        inputs = [blobs[b].tensor.detach() for b in self.inputs]
        identity = step_identity(self.net, self.precision) if self.compile_seconds is None else None
        if identity is not None:  # the first call compiles: say why this iteration waits
            log.info(
                "Compiling the training step (%d layers after the data layers; %s)",
                len(self.layers),
                "compiled on this machine before: seconds"
                if compiled_before(identity)
                else "the first time on this machine: up to minutes",
            )
        started = time.perf_counter() if identity is not None else 0.0
        if self.cuda_graphs:  # a new iteration: the graphs' previous outputs (last iteration's tops) may be reused
            torch.compiler.cudagraph_mark_step_begin()
        total, outputs = self.function(*inputs)
        if isinstance(total, torch.Tensor) and total.requires_grad and self.params:
            scale = self.scaler.scale if self.scaler is not None else 1.0
            grads = torch.autograd.grad(total * scale, [b.tensor for b in self.params], allow_unused=True)
            got = [(blob.mutable_grad, g) for blob, g in zip(self.params, grads, strict=True) if g is not None]
            if got:  # diffs accumulate (iter_size), as the eager path's; fp16: unscaled (inf stays inf)
                torch._foreach_add_([d for d, _ in got], [g for _, g in got], alpha=1.0 / scale)
        for bid, value in zip(self.outputs, outputs, strict=True):
            blob = blobs[bid]
            blob.tensor = value
            # inductor's layout (channels-last convolutions) or autocast's dtype: Caffe's on first read
            if not value.is_contiguous() or value.dtype != blob.dtype:
                blob.mark_stale(functools.partial(_store_as_caffe, blob, value))
        for blob in self.layer_blobs:  # e.g. BatchNorm's statistics, updated in place by the compiled forward
            blob.mark_modified()
        if identity is not None:
            self.compile_seconds = time.perf_counter() - started
            remember_compiled(identity, self.compile_seconds)
            log.info(
                "Compiled the training step (%d layers after the data layers, inputs %s%s) in %.1f s",
                len(self.layers),
                ", ".join(f"{list(blobs[b].shape)}" for b in self.inputs),
                ("" if self.autocast is None else f"; {self.precision} autocast")
                + ("; CUDA graphs" if self.cuda_graphs else ""),
                self.compile_seconds,
            )
        return float(total.detach()) if isinstance(total, torch.Tensor) else float(total)


class TrainEngine:
    """What a Solver calls for each forward + backward: the compiled step when it can, else the Net's own."""

    def __init__(self, net: Net, name: str, precision: str = "fp32", scaler: LossScaler | None = None) -> None:
        self.net = net
        self.requested = self.name = name
        self.precision = precision
        self.step: CompiledStep | None = None
        if name == "compiled":
            obstacle = capture_obstacle(net)
            if obstacle is not None and precision != "fp32":
                raise CaffeError(f"training precision {precision} needs the compiled training step: {obstacle}")
            if obstacle is not None:
                log.info("Training eagerly: the net cannot be compiled (%s)", obstacle)
                self.name = "eager"
            else:
                self.step = CompiledStep(net, precision, scaler)

    @property
    def scaler(self) -> LossScaler | None:
        """fp16's loss scale (the solver skips an update whose diffs overflowed), else None."""
        return self.step.scaler if self.step is not None else None

    def forward_backward(self) -> float:
        net = self.net
        if self.step is None or net.debug_info:
            return net.forward_backward()
        step = self.step
        loss = net.forward_from_to(0, step.start - 1) if step.start else 0.0
        shapes = [tuple(net.blob_list[b].shape) for b in step.inputs]
        if not step.ready_for(shapes):  # first call or new data shapes: set the layers up eagerly once
            step.shapes = shapes
            return loss + self._eager_from(step.start)
        try:
            return loss + step.run()
        except Exception as exc:
            log.warning("The compiled training step failed (%s: %s); training eagerly", type(exc).__name__, exc)
            self.step, self.name = None, "eager"
            return loss + self._eager_from(step.start)

    def _eager_from(self, start: int) -> float:
        """Forward from layer ``start`` (the data layers have run) and the whole backward, eagerly."""
        loss = self.net.forward_from_to(start, self.net.num_layers - 1)
        self.net.backward_from_to(self.net.num_layers - 1, 0)
        return loss
