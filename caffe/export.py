"""Export a deploy (TEST-phase) net to ONNX or TorchScript: ``caffe export`` and its library form.

``to_onnx(net, "model.onnx")`` and ``to_torchscript(net, "model.pt")`` trace the same ``nn.Module``
the ``compiled`` inference engine compiles (:class:`caffe.engine.PlanModule`): one call of each
layer's torch ``forward`` in net order, parameters frozen as module parameters. With ``fold=True``
the module is built over the fused plan, so BatchNorm/Scale/Bias chains after a convolution are
folded into its weights and the activation is applied to the convolution's output (a small
graph); without it every layer is exported as it runs in the eager engine.

The files need nothing from neocaffe to run:

* ONNX: inputs and outputs are named after the net's input and output blobs (or the blobs given as
  ``outputs``); ``dynamic_batch=True`` makes axis 0 of each a symbolic ``batch``. The file is checked
  with ``onnx.checker`` (full check, with shape inference) and carries ``caffe_net``, ``caffe_inputs``
  and ``caffe_outputs`` metadata.
* TorchScript: ``torch.jit.trace`` then ``torch.jit.freeze``, saved by ``torch.jit.save``. Load it with
  plain ``torch.jit.load(path)``; calling it with the input tensors (in ``caffe_io.json`` order)
  returns a tuple of output tensors. The blob names are stored in the archive::

      extra = {"caffe_io.json": ""}
      model = torch.jit.load("model.pt", map_location="cpu", _extra_files=extra)
      names = json.loads(extra["caffe_io.json"])  # {"inputs": [...], "outputs": [...], "shapes": {...}}
      outputs = dict(zip(names["outputs"], model(x)))

  The module is traced on the net's device (the CPU unless ``caffe.set_mode_gpu()``); the spatial
  input shape is fixed; the batch is free where ``dynamic_batch`` was asked for.

Each layer that needs one gives its export form (:meth:`caffe.layer.Layer.export_forward`): the same
values in exportable ops, and whether it runs for any batch size. Caffe semantics that ONNX runtimes
differ on are written out explicitly in the ONNX graph:
Caffe's AVE pooling divisor (the window clipped to the padded input, counted with the padding) is
exported as Pad + AveragePool (+ a constant per-window rescale where windows overhang), never as
an ``AveragePool`` with ``ceil_mode``; ceil-mode MAX pooling is ``MaxPool(ceil_mode=1)`` where
Caffe's and ONNX's output sizes agree, else an explicit -inf Pad + MaxPool. Dropout is the identity
in TEST and disappears from the graph.

Layers that cannot be traced (``Python``, data layers other than ``Input``, BVLC's recurrent layers,
Filter ...) raise :class:`ExportError` naming every such layer; a layer whose export form can be traced although
its forward cannot (``export_traceable``: caffe_ocr's ``Lstm``, exported as one LSTM operator) is exported as that
form.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from caffe import common
from caffe.engine import ConvStep, InferencePlan, PlanModule
from caffe.errors import CaffeError
from caffe.layer import BatchSizeFixed, ExportForward, Layer

log = logging.getLogger("caffe")

FORMATS = ("onnx", "torchscript")
DEFAULT_OPSET = 17
MIN_OPSET = 13  # Softmax over one axis, Split/Squeeze with tensor inputs: the semantics the graphs rely on


class ExportError(CaffeError):
    """A net that cannot be exported as asked (untraceable layers, a fixed batch, a failed export)."""


@dataclass
class ExportResult:
    """What was written: the file, its format, and the blob names and (export-time) shapes of its I/O."""

    path: Path
    format: str
    inputs: dict[str, tuple[int, ...]]
    outputs: dict[str, tuple[int, ...]]
    dynamic_batch: bool
    folded: bool
    nodes: int | None = None  # ONNX graph nodes
    details: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- checks
def untraceable_layers(net: Any) -> list[str]:
    """``'name' (Type)`` of every layer whose forward cannot be traced (Input layers are the graph inputs)."""
    layers = net.host_layers
    return [
        f"'{layer.name}' ({layer.type})"
        for layer in layers
        if layer.type != "Input" and not (layer.traceable or layer.export_traceable)
    ]


def _exportable_type(cls: type[Layer]) -> bool:
    return cls.traceable or cls.export_traceable


def _untraceable_error(where: str, bad: list[str]) -> ExportError:
    return ExportError(
        f"cannot export {where}: layer{'s' if len(bad) > 1 else ''} {', '.join(bad)} cannot be traced "
        "to a graph (Python layers run NumPy code, data layers read files or keep per-call state); export a "
        "deploy net whose data comes from Input layers (or input:/input_shape fields)"
    )


def check_exportable(net: Any) -> None:
    """ExportError unless ``net`` is a TEST-phase net fed by Input blobs whose every layer can be traced."""
    bad = untraceable_layers(net)
    if bad:
        raise _untraceable_error(f"net '{net.name}'", bad)
    if net.phase != common.TEST:
        raise ExportError(
            f"cannot export net '{net.name}': it was built in the TRAIN phase; build it with caffe.TEST "
            "(Dropout, BatchNorm and other layers compute differently while training)"
        )
    if not net.input_ids:
        raise ExportError(f"cannot export net '{net.name}': it has no Input layer (no input blob to feed the graph)")


def load_net(
    model: str | os.PathLike, weights: str | os.PathLike | None = None, *, level: int = 0, stages: Sequence[str] = ()
) -> Any:
    """The TEST-phase net of deploy prototxt ``model`` with ``weights``, for export.

    Every layer the TEST net has is checked before any is set up, so that a train/val net fails with
    an ExportError naming its data layers rather than with its missing database."""
    from caffe.layer import layer_class
    from caffe.net import Net, filter_net
    from caffe.protoio import read_net_param

    if not Path(model).is_file():
        raise CaffeError(f"Could not open file {model}")
    param = read_net_param(model)
    param.state.phase = common.TEST
    param.state.level = level
    param.state.stage.extend(stages)
    bad = [
        f"'{layer.name}' ({layer.type})"
        for layer in filter_net(param).layer
        if layer.type != "Input" and not _exportable_type(layer_class(layer.type, layer.name))
    ]
    if bad:
        raise _untraceable_error(str(model), bad)
    net = Net(str(model), common.TEST, level=level, stages=list(stages))
    if weights is not None:
        net.copy_from(weights)
    return net


def _normalize_shapes(
    net: Any, input_shapes: Mapping[str, Sequence[int]] | Sequence[Sequence[int]] | Sequence[int] | None
) -> dict[str, tuple[int, ...]]:
    if input_shapes is None:
        return {}
    names = net.inputs
    if isinstance(input_shapes, Mapping):
        unknown = [n for n in input_shapes if n not in names]
        if unknown:
            raise ExportError(
                f"input shape given for {', '.join(map(repr, unknown))}, not an input of net '{net.name}' "
                f"(inputs: {', '.join(names)})"
            )
        return {n: tuple(int(d) for d in s) for n, s in input_shapes.items()}
    seq = list(input_shapes)
    if seq and all(isinstance(d, int) for d in seq):
        seq = [seq]
    if len(seq) > len(names):
        raise ExportError(f"{len(seq)} input shapes given for net '{net.name}', which has {len(names)} input(s)")
    return {n: tuple(int(d) for d in s) for n, s in zip(names, seq)}  # type: ignore[union-attr]


@contextlib.contextmanager
def _shaped(
    net: Any, batch: int | None, input_shapes: Mapping[str, Sequence[int]] | Sequence[Any] | None
) -> Iterator[dict[str, tuple[int, ...]]]:
    """Reshape the net's inputs to the export shapes for the block; the original shapes come back after."""
    original = {n: net.blobs[n].shape for n in net.inputs}
    shapes = dict(original)
    shapes.update(_normalize_shapes(net, input_shapes))
    if batch is not None:
        if batch < 1:
            raise ExportError(f"batch must be positive, got {batch}")
        shapes = {n: (batch, *s[1:]) if s else s for n, s in shapes.items()}
    for name, shape in shapes.items():
        if not shape or any(d < 1 for d in shape):
            raise ExportError(
                f"input '{name}' of net '{net.name}' has shape {list(shape)}; give its shape (input_shape)"
            )
    try:
        for name, shape in shapes.items():
            net.blobs[name].reshape(*shape)
        net.reshape()
        yield shapes
    finally:
        with contextlib.suppress(CaffeError):
            for name, shape in original.items():
                net.blobs[name].reshape(*shape)
            if all(s and all(d > 0 for d in s) for s in original.values()):
                net.reshape()


# ---------------------------------------------------------------------------------------------- the module
class _LayerPlan(InferencePlan):
    """The plan with every layer as its own step: nothing folded."""

    def _conv_chain(self, i: int) -> ConvStep | None:
        return None


def _plan(net: Any, fold: bool) -> InferencePlan:
    plan = InferencePlan(net) if fold else _LayerPlan(net)
    for step in plan.steps:
        if isinstance(step, ConvStep):
            plan.fold(step)
    return plan


def _output_ids(net: Any, outputs: Sequence[str] | None) -> list[int]:
    names = list(outputs) if outputs else net.outputs
    missing = [n for n in names if n not in net.blob_index]
    if missing:
        raise ExportError(f"no blob named {', '.join(map(repr, missing))} in net '{net.name}'")
    if not names:
        raise ExportError(f"net '{net.name}' has no output blob to export")
    return [net.blob_index[n] for n in names]


def _batch_error(net: Any, layer: Layer, why: str) -> ExportError:
    return ExportError(
        f"cannot export net '{net.name}' with a dynamic batch: layer '{layer.name}' ({layer.type}) fixes the batch "
        f"size ({why}); export with a fixed batch instead"
    )


def _export_forms(net: Any, dynamic_batch: bool, for_onnx: bool) -> dict[int, ExportForward]:
    """Layer index -> the export form its layer gives (:meth:`caffe.layer.Layer.export_forward`) for this
    export; the Input layers, which feed the graph's inputs, run none."""
    inputs = set(net.input_ids)
    forms: dict[int, ExportForward] = {}
    for i, layer in enumerate(net.host_layers):
        if not net.bottom_ids(i) and set(net.top_ids(i)) <= inputs:
            continue
        try:
            form = layer.export_forward(onnx=for_onnx, dynamic_batch=dynamic_batch)
        except BatchSizeFixed as e:
            raise _batch_error(net, layer, str(e)) from None
        if form is not None:
            forms[i] = form
    return forms


@contextlib.contextmanager
def exportable_module(
    net: Any,
    *,
    batch: int | None = None,
    input_shapes: Mapping[str, Sequence[int]] | Sequence[Any] | None = None,
    outputs: Sequence[str] | None = None,
    fold: bool = False,
    dynamic_batch: bool = False,
    for_onnx: bool = False,
    seed: int = 0,
) -> Iterator[tuple[torch.nn.Module, tuple[torch.Tensor, ...], list[str], list[str]]]:
    """The net as an ``nn.Module`` ready to trace: yields (module, example inputs, input names, output names).

    Inside the block the net is reshaped to the export shapes (undone when the block ends); the module
    traces each layer's export form where the layer gives one (:meth:`caffe.layer.Layer.export_forward`).
    """
    check_exportable(net)
    net.sync_device()
    out_ids = _output_ids(net, outputs)
    with _shaped(net, batch, input_shapes) as shapes:
        forms = _export_forms(net, dynamic_batch, for_onnx)
        module = PlanModule(_plan(net, fold), net.input_ids, out_ids, forms).eval()
        gen = torch.Generator().manual_seed(seed)
        example = tuple(
            torch.rand(shapes[n], generator=gen, dtype=net.blobs[n].dtype).to(net.device) for n in net.inputs
        )
        yield module, example, list(net.inputs), [net.blob_names[b] for b in out_ids]


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx.*")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        yield


def _shapes_of(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {n: tuple(t.shape) for n, t in zip(names, tensors)}


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@contextlib.contextmanager
def _export_file(path: Path, what: str, net_name: str) -> Iterator[Path]:
    """A temporary file next to ``path`` that replaces it when the block succeeds (removed otherwise);
    any error but a CaffeError becomes an ExportError naming ``what`` (the format) and the net."""
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except CaffeError:
        raise
    except Exception as e:  # the exporters and checkers raise many kinds of errors
        raise ExportError(f"{what} export of net '{net_name}' failed: {_one_line(e)}") from e
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _log_exported(net: Any, path: Path, what: str, dynamic_batch: bool, fold: bool) -> None:
    log.info(
        "Exported net '%s' to %s (%s%s%s)",
        net.name,
        path,
        what,
        ", dynamic batch" if dynamic_batch else "",
        ", BatchNorm/Scale folded" if fold else "",
    )


# ---------------------------------------------------------------------------------------------- ONNX
def to_onnx(
    net: Any,
    path: str | os.PathLike,
    *,
    batch: int | None = None,
    input_shapes: Mapping[str, Sequence[int]] | Sequence[Any] | None = None,
    outputs: Sequence[str] | None = None,
    dynamic_batch: bool = False,
    opset: int = DEFAULT_OPSET,
    fold: bool = False,
    check: bool = True,
) -> ExportResult:
    """Write ``net`` (TEST phase) as an ONNX model at ``path``; see the module docstring."""
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - onnx is a test dependency
        raise ExportError("ONNX export needs the 'onnx' package (pip install onnx)") from e
    if int(opset) < MIN_OPSET:
        raise ExportError(f"ONNX opset {opset} is too old; use opset {MIN_OPSET} or newer (default {DEFAULT_OPSET})")
    path = Path(path)
    with exportable_module(
        net,
        batch=batch,
        input_shapes=input_shapes,
        outputs=outputs,
        fold=fold,
        dynamic_batch=dynamic_batch,
        for_onnx=True,
    ) as (module, example, in_names, out_names):
        dup = {n for n in out_names if out_names.count(n) > 1} | (set(in_names) & set(out_names))
        if dup:
            raise ExportError(f"blob(s) {', '.join(sorted(dup))} named twice among the graph's inputs and outputs")
        with torch.no_grad():
            out_values = module(*example)
        axes = {n: {0: "batch"} for n in [*in_names, *out_names]} if dynamic_batch else None
        with _export_file(path, "ONNX", net.name) as tmp:
            with torch.no_grad(), _quiet_tracing():
                torch.onnx.export(
                    module,
                    example,
                    str(tmp),
                    dynamo=False,
                    input_names=in_names,
                    output_names=out_names,
                    opset_version=int(opset),
                    dynamic_axes=axes,
                    do_constant_folding=True,
                )
            model = onnx.load(str(tmp))
            meta = {
                "caffe_net": net.name,
                "caffe_inputs": json.dumps(in_names),
                "caffe_outputs": json.dumps(out_names),
                "caffe_folded": str(bool(fold)).lower(),
            }
            for key, value in meta.items():
                prop = model.metadata_props.add()
                prop.key, prop.value = key, value
            model.producer_name = "neocaffe"
            model.doc_string = f"Caffe net '{net.name}' exported by neocaffe"
            onnx.save(model, str(tmp))
            if check:
                onnx.checker.check_model(str(tmp), full_check=True)
        result = ExportResult(
            path=path,
            format="onnx",
            inputs=_shapes_of(in_names, example),
            outputs=_shapes_of(out_names, out_values),
            dynamic_batch=dynamic_batch,
            folded=fold,
            nodes=len(model.graph.node),
            details={"opset": int(opset), "ops": sorted({n.op_type for n in model.graph.node})},
        )
    _log_exported(net, path, f"ONNX opset {int(opset)}, {result.nodes} nodes", dynamic_batch, fold)
    return result


# ---------------------------------------------------------------------------------------------- TorchScript
def to_torchscript(
    net: Any,
    path: str | os.PathLike,
    *,
    batch: int | None = None,
    input_shapes: Mapping[str, Sequence[int]] | Sequence[Any] | None = None,
    outputs: Sequence[str] | None = None,
    dynamic_batch: bool = False,
    fold: bool = False,
) -> ExportResult:
    """Write ``net`` (TEST phase) as a frozen TorchScript module at ``path``; see the module docstring."""
    path = Path(path)
    with exportable_module(
        net, batch=batch, input_shapes=input_shapes, outputs=outputs, fold=fold, dynamic_batch=dynamic_batch
    ) as (module, example, in_names, out_names):
        with _export_file(path, "TorchScript", net.name) as tmp, torch.no_grad(), _quiet_tracing():
            traced = torch.jit.trace(module, example, check_trace=False)
            frozen = torch.jit.freeze(traced.eval())
            io = {
                "net": net.name,
                "inputs": in_names,
                "outputs": out_names,
                "shapes": {n: list(t.shape) for n, t in zip(in_names, example)},
                "dynamic_batch": dynamic_batch,
            }
            torch.jit.save(frozen, str(tmp), _extra_files={"caffe_io.json": json.dumps(io)})
        result = ExportResult(
            path=path,
            format="torchscript",
            inputs=_shapes_of(in_names, example),
            outputs={n: tuple(net.blobs[n].shape) for n in out_names},  # the net is at the export shapes here
            dynamic_batch=dynamic_batch,
            folded=fold,
        )
    _log_exported(net, path, "TorchScript", dynamic_batch, fold)
    return result


def export(net: Any, path: str | os.PathLike, format: str | None = None, **kwargs: Any) -> ExportResult:
    """``to_onnx`` or ``to_torchscript`` by ``format`` (default: from the extension, ``.onnx`` or else TorchScript)."""
    fmt = format or format_for_path(path)
    if fmt == "onnx":
        return to_onnx(net, path, **kwargs)
    if fmt == "torchscript":
        kwargs.pop("opset", None)
        kwargs.pop("check", None)
        return to_torchscript(net, path, **kwargs)
    raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")


def format_for_path(path: str | os.PathLike) -> str:
    """The format an output file name implies: ``.onnx`` -> onnx; ``.pt``, ``.pth``, ``.ts``, ``.torchscript``."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".pt", ".pth", ".ts", ".torchscript", ".jit"):
        return "torchscript"
    raise ExportError(f"cannot tell the export format from the file name {str(path)!r}; give the format")


# ---------------------------------------------------------------------------------------------- checking
def verify(
    net: Any,
    result: ExportResult,
    *,
    batch_sizes: Sequence[int] | None = None,
    seed: int = 1,
) -> dict[int, float]:
    """Run the exported file and the net's eager forward on the same random inputs.

    Returns {batch size: max abs difference over all outputs}. Batch sizes default to the export
    batch, plus one more when the batch is dynamic. ONNX files run in onnxruntime (CPU); ExportError
    if it is not installed.
    """
    import numpy as np

    from caffe import engine

    first = next(iter(result.inputs.values()))
    sizes = list(batch_sizes) if batch_sizes else [first[0], first[0] + 1] if result.dynamic_batch else [first[0]]
    run = _runner(result)
    gen = torch.Generator().manual_seed(seed)
    original = {n: net.blobs[n].shape for n in net.inputs}
    saved_engine = engine.inference_engine()
    diffs: dict[int, float] = {}
    try:
        engine.set_inference_engine("eager")
        for n in sizes:
            feeds = {
                name: (torch.rand((n, *shape[1:]), generator=gen) * 2 - 1).numpy().astype(np.float32)
                for name, shape in result.inputs.items()
            }
            for name, x in feeds.items():
                net.blobs[name].reshape(*x.shape)
            net.reshape()
            with torch.no_grad():
                ref = net.forward(blobs=list(result.outputs), **feeds)
            got = run(feeds)
            worst = 0.0
            for name, value in zip(result.outputs, got):
                expect = np.asarray(ref[name])
                value = np.asarray(value).reshape(expect.shape)
                worst = max(worst, float(np.abs(value.astype(np.float64) - expect).max()) if value.size else 0.0)
            diffs[n] = worst
    finally:
        engine.set_inference_engine(saved_engine)
        for name, shape in original.items():
            net.blobs[name].reshape(*shape)
        with contextlib.suppress(CaffeError):
            net.reshape()
    return diffs


def _runner(result: ExportResult) -> Callable[[dict[str, Any]], list[Any]]:
    names = list(result.inputs)
    if result.format == "onnx":
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ExportError("checking an ONNX export needs onnxruntime (pip install onnxruntime)") from e
        session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
        return lambda feeds: session.run(list(result.outputs), feeds)
    with _quiet_tracing():
        module = torch.jit.load(str(result.path), map_location="cpu")

    def run(feeds: dict[str, Any]) -> list[Any]:
        with torch.no_grad():
            outs = module(*(torch.from_numpy(feeds[n]) for n in names))
        return [t.numpy() for t in outs]

    return run


def describe(result: ExportResult) -> str:
    """One line per input/output: ``name: 1x3x224x224``."""

    def dims(shape: tuple[int, ...]) -> str:
        text = "x".join(str(d) for d in shape)
        return f"Nx{'x'.join(str(d) for d in shape[1:])}" if result.dynamic_batch and shape else text

    lines = [f"input {n}: {dims(s)}" for n, s in result.inputs.items()]
    lines += [f"output {n}: {dims(s)}" for n, s in result.outputs.items()]
    return "\n".join(lines)


__all__ = [
    "DEFAULT_OPSET",
    "FORMATS",
    "MIN_OPSET",
    "ExportError",
    "ExportResult",
    "check_exportable",
    "export",
    "exportable_module",
    "format_for_path",
    "load_net",
    "to_onnx",
    "to_torchscript",
    "untraceable_layers",
    "verify",
]
