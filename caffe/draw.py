"""Draw a net (a ``caffe_pb2.NetParameter``) as a graph with Graphviz, as pycaffe's ``caffe.draw`` does.

Layers are boxes labelled ``name``, ``(Type)`` and, for Convolution/Deconvolution/Pooling, kernel
size, stride and pad; blobs are grey octagons (a blob whose final value nothing consumes, such as
the loss, stays a plain ellipse, as in pycaffe's drawings). Box colours: Convolution and
Deconvolution red, Pooling orange, InnerProduct purple, in-place layers green, others blue. Edges
out of Data, Convolution, Deconvolution and InnerProduct layers carry the batch size or the number
of outputs.

Needs pydot and Graphviz's ``dot`` program.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import pydot

from caffe.net import state_meets_rule
from caffe.proto import caffe_pb2
from caffe.protoio import atomic_write

LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}

_LEARNING_TYPES = ("Convolution", "Deconvolution", "InnerProduct")
_SPATIAL_TYPES = ("Convolution", "Deconvolution", "Pooling")


def get_pooling_types_dict() -> dict[int, str]:
    """``{enum value: name}`` of PoolingParameter.PoolMethod: ``{0: 'MAX', 1: 'AVE', 2: 'STOCHASTIC'}``."""
    return {v.number: v.name for v in caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR.values}


def get_edge_label(layer: caffe_pb2.LayerParameter) -> str:
    """The label of the edges out of ``layer``: ``Batch <batch size>`` for Data layers, the number of
    outputs for Convolution/Deconvolution/InnerProduct, else the empty label ``'""'``."""
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return '""'


def get_layer_lr_mult(layer: caffe_pb2.LayerParameter) -> tuple[float, float]:
    """The (weights, bias) learning-rate multipliers of a Convolution/Deconvolution/InnerProduct layer
    (1.0 where its ``param`` specs do not say); ValueError for other types or more than two specs."""
    if layer.type not in _LEARNING_TYPES:
        raise ValueError(f"{layer.type} layers do not have a learning rate multiplier")
    specs = list(layer.param)
    if len(specs) > 2:
        raise ValueError("Could not parse the learning rate multiplier")
    mults = [spec.lr_mult for spec in specs] + [1.0] * (2 - len(specs))
    return mults[0], mults[1]


def get_layer_label(layer: caffe_pb2.LayerParameter, rankdir: str, display_lrm: bool = False) -> str:
    """The node label of ``layer``, in double quotes: name, ``(Type)`` (``(Pooling MAX)`` for pooling)
    and, for spatial layers, ``kernel size: K``, ``stride: S``, ``pad: P`` (first values), joined by
    ``\\n`` (a Graphviz line break) for left-right graphs and by spaces for ``TB``/``BT`` graphs;
    ``display_lrm`` adds ``lr mult: W, B`` to learning layers whose multipliers are not both zero."""
    separator = " " if rankdir in ("TB", "BT") else r"\n"
    if layer.type == "Pooling":
        kind = f"({layer.type} {get_pooling_types_dict()[layer.pooling_param.pool]})"
    else:
        kind = f"({layer.type})"
    parts = [layer.name.replace("\\", "\\\\").replace('"', '\\"'), kind]
    if layer.type in _SPATIAL_TYPES:
        if layer.type == "Pooling":
            p = layer.pooling_param
            kernel, stride, pad = p.kernel_size, p.stride, p.pad
        else:
            c = layer.convolution_param
            kernel = c.kernel_size[0] if len(c.kernel_size) else 1
            stride = c.stride[0] if len(c.stride) else 1
            pad = c.pad[0] if len(c.pad) else 0
        parts.append(separator.join([f"kernel size: {kernel:d}", f"stride: {stride:d}", f"pad: {pad:d}"]))
    if display_lrm and layer.type in _LEARNING_TYPES:
        weights, bias = get_layer_lr_mult(layer)
        if weights or bias:
            parts.append(f"lr mult: {weights:.1f}, {bias:.1f}")
    return '"' + separator.join(parts) + '"'


def choose_color_by_layertype(layertype: str) -> str:
    """The fill colour of a layer box: Convolution/Deconvolution ``#FF5050``, Pooling ``#FF9900``,
    InnerProduct ``#CC33FF``, others ``#6495ED``."""
    if layertype in ("Convolution", "Deconvolution"):
        return "#FF5050"
    if layertype == "Pooling":
        return "#FF9900"
    if layertype == "InnerProduct":
        return "#CC33FF"
    return "#6495ED"


def _phase_value(phase: Any) -> int | None:
    """None (every layer), or TRAIN=0 / TEST=1 from an int or the names 'TRAIN', 'TEST', 'ALL'."""
    if phase is None:
        return None
    if isinstance(phase, str):
        name = phase.upper()
        if name == "ALL":
            return None
        if name not in ("TRAIN", "TEST"):
            raise ValueError(f"Unknown phase: {phase}")
        return caffe_pb2.Phase.Value(name)
    if int(phase) not in (caffe_pb2.TRAIN, caffe_pb2.TEST):
        raise ValueError(f"Unknown phase: {phase} (use caffe.TRAIN or caffe.TEST)")
    return int(phase)


def _may_have(layer: caffe_pb2.LayerParameter, phase: int) -> bool:
    """Whether a net of ``phase`` may have ``layer`` at some level and stages (pycaffe's drawing filter, which
    reads only the rules' phases): an include rule of that phase or of none, and no exclude rule that is
    about that phase alone."""

    def phase_alone(rule: caffe_pb2.NetStateRule) -> bool:
        others = ("min_level", "max_level")
        return not any(rule.HasField(f) for f in others) and not len(rule.stage) and not len(rule.not_stage)

    if len(layer.include):
        return any(not r.HasField("phase") or r.phase == phase for r in layer.include)
    return not any(r.HasField("phase") and r.phase == phase and phase_alone(r) for r in layer.exclude)


def _drawn(layer: caffe_pb2.LayerParameter, states: list[caffe_pb2.NetState] | None, phase_only: bool) -> bool:
    """Whether ``layer`` is drawn: always when ``states`` is None; else when a net in one of ``states`` may have
    it, by :func:`_may_have` (``phase_only``) or by Caffe's rules for exactly that phase, level and stages."""
    if states is None:
        return True
    if len(layer.include) and len(layer.exclude):
        raise ValueError(f"layer {layer.name} has both include and exclude specified.")
    for state in states:
        if phase_only:
            if _may_have(layer, state.phase):
                return True
        elif len(layer.include):
            if any(state_meets_rule(state, r, layer.name) for r in layer.include):
                return True
        elif not any(state_meets_rule(state, r, layer.name) for r in layer.exclude):
            return True
    return False


def _draw_states(phase: int | None, level: int | None, stages: Any) -> list[caffe_pb2.NetState] | None:
    """The net states whose layers are drawn: None (all layers) unless a phase, level or stages is given;
    both phases when only a level or stages is."""
    if phase is None and level is None and stages is None:
        return None
    stage_list = [stages] if isinstance(stages, str) else list(stages or ())
    phases = [caffe_pb2.TRAIN, caffe_pb2.TEST] if phase is None else [phase]
    return [caffe_pb2.NetState(phase=p, level=level or 0, stage=stage_list) for p in phases]


def _current_format(caffe_net: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """``caffe_net`` itself, or an upgraded copy when it is written in the V0/V1 (``layers {}``) format."""
    if len(caffe_net.layer) or not len(caffe_net.layers):
        return caffe_net
    from caffe.upgrade import upgrade_net_as_needed

    net = caffe_pb2.NetParameter()
    net.CopyFrom(caffe_net)
    return upgrade_net_as_needed(net, caffe_net.name or "NetParameter")


def get_pydot_graph(
    caffe_net: caffe_pb2.NetParameter,
    rankdir: str,
    label_edges: bool = True,
    phase: Any = None,
    display_lrm: bool = False,
    level: int | None = None,
    stages: Any = None,
) -> pydot.Dot:
    """The graph of ``caffe_net`` (layers and blobs as nodes) laid out in direction ``rankdir``
    (``LR``, ``TB``, ``BT``, ``RL``).

    ``phase`` (``caffe.TRAIN``/``caffe.TEST`` or their names; None or ``'ALL'``: every layer) keeps, as
    pycaffe does, the layers whose include/exclude rules' phases allow that phase (their levels and stages
    are not read). Beyond pycaffe, giving ``level`` and/or ``stages`` applies Caffe's rules in full for that
    state (level default 0, no stages; either phase when ``phase`` is None). A net in the old V1 format is
    drawn after upgrading a copy of it.
    """
    states = _draw_states(_phase_value(phase), level, stages)
    phase_only = level is None and stages is None
    caffe_net = _current_format(caffe_net)

    graph = pydot.Dot(caffe_net.name or "Net", graph_type="digraph", rankdir=rankdir)
    nodes: dict[str, dict[str, Any]] = {}  # node id -> attributes, in order of first appearance
    blob_consumed: dict[str, bool] = {}  # blob -> is its latest value read by a later layer?
    edges: list[tuple[str, str, str]] = []
    for layer in caffe_net.layer:
        if not _drawn(layer, states, phase_only):
            continue
        layer_id = f"{layer.name}_{layer.type}"
        in_place = len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]
        if in_place:
            style = dict(NEURON_LAYER_STYLE)
        else:
            style = {**LAYER_STYLE_DEFAULT, "fillcolor": choose_color_by_layertype(layer.type)}
        nodes[layer_id] = {"label": get_layer_label(layer, rankdir, display_lrm=display_lrm), **style}
        for blob in layer.bottom:
            nodes.setdefault(f"{blob}_blob", {})
            blob_consumed[blob] = True
            edges.append((f"{blob}_blob", layer_id, '""'))
        edge_label = get_edge_label(layer) if label_edges else '""'
        for blob in layer.top:
            nodes.setdefault(f"{blob}_blob", {})
            blob_consumed[blob] = False
            edges.append((layer_id, f"{blob}_blob", edge_label))
    for blob, consumed in blob_consumed.items():
        nodes[f"{blob}_blob"] = {"label": _quoted(blob), **(BLOB_STYLE if consumed else {})}

    for node_id, attrs in nodes.items():
        graph.add_node(pydot.Node(_quoted(node_id), **attrs))
    for src, dst, label in edges:
        graph.add_edge(pydot.Edge(_quoted(src), _quoted(dst), label=label))
    return graph


def _quoted(text: str) -> str:
    """``text`` as a double-quoted DOT string (so that any blob or layer name is a valid node id)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def draw_net(
    caffe_net: caffe_pb2.NetParameter,
    rankdir: str,
    ext: str = "png",
    phase: Any = None,
    display_lrm: bool = False,
    **kwargs: Any,
) -> bytes:
    """The drawing of ``caffe_net`` in Graphviz format ``ext`` (``png``, ``svg``, ``pdf``, ``jpg``,
    ``dot`` ...; ``raw``: the DOT source before layout), as bytes."""
    graph = get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm, **kwargs)
    if ext == "raw":
        return graph.to_string().encode()
    return _graphviz(graph.to_string(), ext)


def _graphviz(source: str, ext: str) -> bytes:
    """Lay out DOT ``source`` with Graphviz's ``dot`` and render it in format ``ext``."""
    dot = shutil.which("dot")
    if dot is None:
        raise RuntimeError("Graphviz's 'dot' program is not installed (or not on PATH); it is needed to draw nets")
    result = subprocess.run([dot, f"-T{ext}"], input=source.encode(), capture_output=True, check=False)
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"Graphviz could not draw format '{ext}': {detail}")
    return result.stdout


def draw_net_to_file(
    caffe_net: caffe_pb2.NetParameter,
    filename: str | os.PathLike,
    rankdir: str = "LR",
    phase: Any = None,
    display_lrm: bool = False,
    **kwargs: Any,
) -> None:
    """Draw ``caffe_net`` into ``filename``, in the format its extension names (``.raw``: DOT source)."""
    filename = os.fspath(filename)
    ext = os.path.splitext(filename)[1][1:]
    if not ext:
        raise ValueError(f"{filename}: no extension to tell the image format (use .png, .svg, .pdf, .raw ...)")
    atomic_write(filename, draw_net(caffe_net, rankdir, ext, phase, display_lrm, **kwargs))
