"""Inference engines: how a Net runs a forward pass that needs no gradient.

* ``eager``: every layer's own ``forward``, one after the other (the training path).
* ``fused`` (default): the same layers, with each convolution and the in-place chain that follows it
  (BatchNorm with global statistics, per-channel Scale/Bias, then one activation such as ReLU)
  folded into a single convolution; on the CPU it runs oneDNN's fused convolution on channels-last
  tensors with weights pre-packed for the input shape. A per-channel affine chain that follows no
  convolution (BatchNorm + Scale after an Eltwise, as in pre-activation ResNets, then an optional
  activation) runs as one ``x * a + b`` pass. No compile step.
* ``compiled``: the fused plan compiled by ``torch.compile`` (inductor, weights frozen as constants);
  the first forward for a new input shape or new weights compiles (seconds), later ones are fastest.

Every blob still holds its value after a forward (an in-place chain only ever exposed its final
value), so pycaffe code that reads intermediate blobs sees the same numbers. Folded weights are
recomputed when a parameter blob's version changes (a NumPy view handed out, a solver update).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from caffe.util.choice import Choice
from caffe.util.inductor import NO_CPP_COMPILER, compiled, cpp_compiler_found

if TYPE_CHECKING:
    from caffe.net import Net

log = logging.getLogger("caffe")

ENGINES = ("eager", "fused", "compiled")
INFERENCE_ENGINE = Choice("inference engine", ENGINES, "CAFFE_INFERENCE_ENGINE", "fused")


def set_inference_engine(name: str) -> None:
    """Choose how gradient-free forward passes run: 'eager', 'fused' (default) or 'compiled'."""
    INFERENCE_ENGINE.set(name)


def inference_engine() -> str:
    return INFERENCE_ENGINE.value


_ACTIVATIONS: dict[str, Callable[[torch.Tensor, list[float]], torch.Tensor]] = {
    "relu": lambda t, s: t.relu_(),
    "leaky_relu": lambda t, s: F.leaky_relu_(t, s[0]),
    "sigmoid": lambda t, s: t.sigmoid_(),
    "tanh": lambda t, s: t.tanh_(),
}


# Up to this many input positions (N * H * W) ATen's channels-last convolution beats oneDNN's fused
# one, whose per-call overhead dominates (measured on SSD heads at 5x5, 3x3 and 1x1: 6-27 us vs 31-42 us).
_TINY_POSITIONS = 25


def _onednn_ok() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


@dataclass
class _Fused:
    """A layer with the in-place chain after it folded in (``chain``: their indices)."""

    index: int
    chain: list[int]
    activation: tuple[str, list[float]] | None
    versions: tuple[int, ...] = ()  # of the parameter blobs when last folded


@dataclass
class ConvStep(_Fused):
    """A convolution with an in-place chain folded in: y = act(conv(x, W*a) + b*a + c)."""

    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    packed: dict[tuple[int, ...], torch.Tensor] = field(default_factory=dict)


@dataclass
class _AffineStep(_Fused):
    """A per-channel affine layer and the in-place chain after it as one pass: y = act(x * a + b)."""

    scale: torch.Tensor | None = None  # float64, shape (C,)
    shift: torch.Tensor | None = None
    cast: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, ...]] = field(default_factory=dict)


class InferencePlan:
    """The layers of a net as steps, with convolution chains fused (see the module docstring).

    ``steps`` (convolution chains and layer indices) is what the compiled engine and the exporters
    trace; ``schedule`` is what :meth:`run` executes: the steps with affine chains fused as well.
    """

    def __init__(self, net: Net) -> None:
        self.net = net
        self.steps: list[ConvStep | int] = []
        absorbed: set[int] = set()
        for i, layer in enumerate(net.host_layers):
            if i in absorbed:
                continue
            step = self._conv_chain(i) if layer.type == "Convolution" else None
            if step is None:
                self.steps.append(i)
            else:
                self.steps.append(step)
                absorbed.update(step.chain)
        self.absorbed = absorbed
        self.schedule: list[ConvStep | _AffineStep | int] = []
        folded: set[int] = set()
        for step in self.steps:
            if isinstance(step, int) and step in folded:
                continue
            affine = self._affine_chain(step) if isinstance(step, int) else None
            self.schedule.append(affine or step)
            if affine is not None:
                folded.update(affine.chain)

    # ---------------------------------------------------------------------------- building
    def _conv_chain(self, i: int) -> ConvStep | None:
        net, layer = self.net, self.net.host_layers[i]
        g = getattr(layer, "geometry", None)
        if g is None or g.num_spatial != 2 or g.axis != 1 or len(net.top_ids(i)) != 1 or any(layer.loss_weights):
            return None
        return ConvStep(i, *self._in_place_chain(i))

    def _in_place_chain(self, i: int) -> tuple[list[int], tuple[str, list[float]] | None]:
        """The layers after ``i`` that work in place on its one top: per-channel affines, then at most
        one activation (which ends the chain); stops at the first other reader of the top."""
        net = self.net
        top = net.top_ids(i)[0]
        chain: list[int] = []
        for j in range(i + 1, net.num_layers):
            if top not in net.bottom_ids(j):
                continue
            other = net.host_layers[j]
            if net.bottom_ids(j) != [top] or net.top_ids(j) != [top] or any(other.loss_weights):
                break
            act = other.pointwise_activation()
            if act is not None:
                chain.append(j)
                return chain, act
            if other.channel_affine() is None:
                break
            chain.append(j)
        return chain, None

    def _affine_chain(self, i: int) -> _AffineStep | None:
        """Layer ``i`` as the head of a fused affine chain: a per-channel affine with at least one
        in-place follower (a lone affine layer gains nothing from fusing)."""
        net, layer = self.net, self.net.host_layers[i]
        if len(net.bottom_ids(i)) != 1 or len(net.top_ids(i)) != 1 or any(layer.loss_weights):
            return None
        if layer.channel_affine() is None:
            return None
        chain, activation = self._in_place_chain(i)
        return _AffineStep(i, chain, activation) if chain else None

    # ---------------------------------------------------------------------------- folding
    def _param_versions(self, step: _Fused) -> tuple[int, ...]:
        layers = self.net.host_layers
        return tuple(b.version for k in (step.index, *step.chain) for b in layers[k].blobs)

    def fold(self, step: ConvStep) -> None:
        versions = self._param_versions(step)
        if versions == step.versions and step.weight is not None:
            return
        conv = self.net.host_layers[step.index]
        w = conv.param_tensor(0).detach()
        dtype = w.dtype
        scale = torch.ones(w.shape[0], dtype=torch.float64, device=w.device)
        shift = conv.param_tensor(1).detach().double() if conv.bias_term else torch.zeros_like(scale)
        for k in step.chain:
            affine = self.net.host_layers[k].channel_affine()
            if affine is None:
                continue
            a, b = (t.reshape(-1).to(scale.device) for t in affine)
            scale, shift = scale * a, shift * a + b
        step.weight = (w.double() * scale.view(-1, 1, 1, 1)).to(dtype).contiguous()
        step.bias = shift.to(dtype)
        step.packed.clear()
        step.versions = self._param_versions(step)

    def _fold_affine(self, step: _AffineStep) -> None:
        layers = self.net.host_layers
        versions = self._param_versions(step)
        if versions == step.versions and step.scale is not None:
            return
        scale = shift = None
        for k in (step.index, *step.chain):
            affine = layers[k].channel_affine()
            if affine is None:
                continue
            a, b = (t.reshape(-1).double() for t in affine)
            scale, shift = (a, b) if scale is None or shift is None else (scale * a, shift * a + b)
        step.scale, step.shift = scale, shift
        step.cast.clear()
        step.versions = self._param_versions(step)

    # ---------------------------------------------------------------------------- running
    def _run_affine(self, step: _AffineStep, x: torch.Tensor) -> torch.Tensor:
        self._fold_affine(step)
        assert step.scale is not None and step.shift is not None
        key = (x.dtype, x.device)
        if key not in step.cast:
            a, b = (t.to(device=x.device, dtype=x.dtype) for t in (step.scale, step.shift))
            step.cast[key] = (a, b, torch.zeros_like(a), torch.ones_like(a))
        a, b, zeros, ones = step.cast[key]
        if x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous():
            # batch_norm with mean 0, variance 1 and eps 0 is exactly x * a + b, and on the CPU fastest on NCHW
            y = F.batch_norm(x, zeros, ones, a, b, False, 0.0, 0.0)
        else:
            view = (1, -1) + (1,) * (x.dim() - 2)
            y = torch.addcmul(b.view(view), x, a.view(view))
        if step.activation is not None:
            y = _ACTIVATIONS[step.activation[0]](y, step.activation[1])
        return y

    def _run_conv(self, step: ConvStep, x: torch.Tensor) -> torch.Tensor:
        self.fold(step)
        conv = self.net.host_layers[step.index]
        g = conv.geometry
        pad, stride, dil, groups = list(g.pad), list(g.stride), list(g.dilation), conv.group
        assert step.weight is not None
        tail = getattr(conv, "tail_padding", ())  # Convolution and Deconvolution have it
        if any(tail):  # a kernel overhanging a tiny input (Caffe's truncating output size): zero rows
            x = F.pad(x, [0, tail[1], 0, tail[0]])
        if x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4 and _onednn_ok():
            if not x.is_contiguous(memory_format=torch.channels_last):
                x = x.contiguous(memory_format=torch.channels_last)
            shape = tuple(x.shape)
            packed = step.packed.get(shape)
            if shape[0] * shape[2] * shape[3] <= _TINY_POSITIONS:
                if packed is None:
                    packed = step.packed[shape] = step.weight.contiguous(memory_format=torch.channels_last)
                y = F.conv2d(x, packed, step.bias, stride, pad, dil, groups)
                return y if step.activation is None else _ACTIVATIONS[step.activation[0]](y, step.activation[1])
            if packed is None:
                try:
                    packed = torch.ops.mkldnn._reorder_convolution_weight(
                        step.weight, pad, stride, dil, groups, list(shape)
                    )
                except RuntimeError:
                    packed = step.weight.contiguous(memory_format=torch.channels_last)
                step.packed[shape] = packed
            name, scalars = step.activation or ("none", [])
            return torch.ops.mkldnn._convolution_pointwise(
                x, packed, step.bias, pad, stride, dil, groups, name, scalars, ""
            )
        y = F.conv2d(x, step.weight, step.bias, stride, pad, dil, groups)
        if step.activation is not None:
            y = _ACTIVATIONS[step.activation[0]](y, step.activation[1])
        return y

    def run(self) -> float:
        """One forward pass over the whole net; returns the weighted loss as ``Net._forward`` does."""
        net = self.net
        blobs = net.blob_list
        loss = 0.0
        for step in self.schedule:
            if isinstance(step, int):
                loss += net.forward_layer(step)
                continue
            i = step.index
            x = blobs[net.bottom_ids(i)[0]].tensor
            net.reshape_layer(i, [tuple(x.shape)])
            run = self._run_conv if isinstance(step, ConvStep) else self._run_affine
            blobs[net.top_ids(i)[0]].tensor = net.run_guarded(i, "forward", run, step, x)
        return loss


class CompiledPlan:
    """The fused plan compiled by ``torch.compile``, returning only the blobs that are wanted.

    Wanted blobs are the net's outputs, its loss tops and any named in ``forward(blobs=...)``.
    Returning every intermediate blob from a compiled graph would force inductor to materialize
    them all in the default layout (measured 2.5x slower on SqueezeNet); instead the other blobs are
    marked stale and one fused forward recomputes them all the first time any of them is read.
    """

    def __init__(self, plan: InferencePlan) -> None:
        self.plan = plan
        net = plan.net
        self._inputs = net.input_ids
        layers = net.host_layers
        produced = [t for i in range(net.num_layers) for t in net.top_ids(i) if layers[i].type != "Input"]
        self._produced = list(dict.fromkeys(produced))
        self._loss_weights = [
            (net.top_ids(i)[j], w) for i, layer in enumerate(layers) for j, w in enumerate(layer.loss_weights) if w
        ]
        self._loss_tops = [blob_id for blob_id, _ in self._loss_weights]
        self._compiled: dict[tuple[int, ...], Any] = {}
        self._versions: tuple[int, ...] = ()
        self._prints: list[int] = []
        self._shapes: list[tuple[int, ...]] = []

    @staticmethod
    def supported(net: Net) -> bool:
        """Whether the net can run compiled: Input blobs, traceable layers and, on the CPU, a C++ compiler
        (else the fused plan runs it)."""
        if net.device.type == "cpu" and not cpp_compiler_found():
            log.warning("The fused inference engine runs instead of the compiled one: %s", NO_CPP_COMPILER)
            return False
        return bool(net.input_ids) and all(layer.traceable for layer in net.host_layers)

    def _params(self) -> list[Any]:
        return [b for layer in self.plan.net.host_layers for b in layer.blobs]

    def _all_versions(self) -> tuple[int, ...]:
        return tuple(b.version for b in self._params())

    def _function(self, wanted: tuple[int, ...]) -> Any:
        versions = self._all_versions()
        if versions != self._versions:
            # A version also moves when a NumPy view was only read: recompile only on real changes.
            prints = [_fingerprint(b.tensor) for b in self._params()]
            if prints != self._prints:
                self._compiled.clear()
                for step in self.plan.steps:
                    if isinstance(step, ConvStep):
                        self.plan.fold(step)
                self._prints = prints
            self._versions = self._all_versions()
        fn = self._compiled.get(wanted)
        if fn is None:
            log.info("Compiling the inference graph of net '%s' (once per input shape)", self.plan.net.name)
            # freezing as this compile's option (no config patch around every call)
            fn = compiled(PlanModule(self.plan, self._inputs, list(wanted)), freezing=True)
            self._compiled[wanted] = fn
        return fn

    def run(self, wanted: set[int] | None = None) -> float:
        net = self.plan.net
        blobs = net.blob_list
        shapes = [blobs[b].shape for b in self._inputs]
        if shapes != self._shapes:
            net.reshape()  # validates the new shapes layer by layer, with clear errors
            self._shapes = shapes
        keep = set(wanted or ()) | set(self._loss_tops) | set(net.output_ids)
        want = tuple(b for b in self._produced if b in keep)
        fn = self._function(want)
        inputs = [blobs[b].tensor for b in self._inputs]
        outs = fn(*inputs)
        for blob_id, value in zip(want, outs, strict=True):
            blobs[blob_id].tensor = value
        stale = [blobs[b] for b in self._produced if b not in keep]
        refresh = _Refresh(self.plan, stale)
        for blob in stale:
            blob.mark_stale(refresh)
        self._versions = self._all_versions()
        loss = 0.0
        for blob_id, w in self._loss_weights:
            loss += w * float(blobs[blob_id].tensor.sum())
        return loss


def _fingerprint(t: torch.Tensor) -> int:
    """An exact checksum of a tensor's bits (any single changed element changes it)."""
    flat = t.detach().reshape(-1)
    ints = flat.view(torch.int64 if flat.element_size() == 8 else torch.int32)
    weights = torch.arange(1, ints.numel() + 1, device=ints.device, dtype=torch.int64) % 65521
    return int((ints.to(torch.int64) * weights).sum())


class _Refresh:
    """Recompute the stale blobs of a compiled forward with one fused forward (inputs unchanged)."""

    def __init__(self, plan: InferencePlan, stale: list[Any]) -> None:
        self.plan, self.stale = plan, stale

    def __call__(self) -> None:
        for blob in self.stale:
            blob.mark_fresh()
        with torch.no_grad():
            self.plan.run()


class PlanModule(torch.nn.Module):
    """nn.Module form of a plan, so that inductor can freeze the folded weights as constants."""

    def __init__(
        self,
        plan: InferencePlan,
        inputs: list[int],
        outputs: list[int],
        forms: dict[int, Callable[[list[torch.Tensor]], list[torch.Tensor]]] | None = None,
    ) -> None:
        """``forms``: layer index -> the function to run instead of the layer's ``forward`` (an export form)."""
        super().__init__()
        self.plan = plan
        self.forms = dict(forms or {})
        self.inputs, self.outputs = inputs, outputs
        for n, step in enumerate(plan.steps):
            if isinstance(step, ConvStep):
                self.register_parameter(f"w{n}", torch.nn.Parameter(step.weight.detach().clone(), requires_grad=False))
                self.register_parameter(f"b{n}", torch.nn.Parameter(step.bias.detach().clone(), requires_grad=False))
        layers = plan.net.host_layers
        self._params = {
            (i, k): torch.nn.Parameter(b.tensor.detach().clone(), requires_grad=False)
            for i in plan.steps
            if isinstance(i, int)
            for k, b in enumerate(layers[i].blobs)
        }
        for (i, k), p in self._params.items():
            self.register_parameter(f"p{i}_{k}", p)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        net = self.plan.net
        on_cpu = all(x.device.type == "cpu" for x in inputs)
        if on_cpu:  # oneDNN convolutions are fastest on NHWC; inductor propagates the layout
            inputs = tuple(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in inputs)
        values: dict[int, torch.Tensor] = dict(zip(self.inputs, inputs, strict=True))
        for n, step in enumerate(self.plan.steps):
            if isinstance(step, ConvStep):
                conv = net.host_layers[step.index]
                g = conv.geometry
                x = values[net.bottom_ids(step.index)[0]]
                y = F.conv2d(x, getattr(self, f"w{n}"), getattr(self, f"b{n}"), g.stride, g.pad, g.dilation, conv.group)
                if step.activation is not None:
                    name, scalars = step.activation
                    y = F.leaky_relu(y, scalars[0]) if name == "leaky_relu" else getattr(torch, name)(y)
                values[net.top_ids(step.index)[0]] = y
                continue
            layer = net.host_layers[step]
            if layer.type == "Input":
                continue
            run = self.forms.get(step, layer.forward)
            with _frozen_params(layer, self._params, step):
                outs = run([values[b] for b in net.bottom_ids(step)])
            for t, o in zip(net.top_ids(step), outs, strict=True):
                values[t] = o
        return tuple(values[b] for b in self.outputs)


class _frozen_params:
    """Let a layer's ``param_tensor`` read the module's frozen copies while it is traced."""

    def __init__(self, layer: Any, params: dict[tuple[int, int], torch.Tensor], index: int) -> None:
        self.layer, self.params, self.index = layer, params, index

    def __enter__(self) -> None:
        params, index = self.params, self.index
        self.layer.param_tensor = lambda k: params[(index, k)]

    def __exit__(self, *exc: object) -> None:
        del self.layer.param_tensor
