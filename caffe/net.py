"""Net: a DAG of layers built from a NetParameter, with Caffe's rules and pycaffe's interface.

Building follows Caffe's ``Net::Init``: include/exclude filtering by phase, level and stages;
automatic Split layers for blobs read by several layers; in-place layers; shape inference; loss
weights; which layers and blobs need backward; output blobs; parameter sharing by name.

Forward runs the layers' torch computations and records the tensors each layer read and wrote.
Backward works from the blobs' current contents, as Caffe's: layers whose recorded graph is still
valid (recorded by the last forward that ran them, bottoms and parameters unchanged since, judged by
the blobs' versions) are differentiated together by one autograd call per run of such layers, whose
roots are the run's top tensors not consumed inside it (seeded with the blobs' diffs, e.g. loss
weights) and whose requested inputs are its bottoms and parameters. A layer with no valid graph (no
forward ran, or weights or bottoms changed in place) is recomputed alone under autograd from its
current bottoms, without touching its tops. A layer with a backward of its own (a Python layer) is
called with the blobs. Bottom diffs are overwritten and parameter diffs accumulate, exactly as
Caffe's per-layer backward does.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from caffe import common, net_debug
from caffe.blob import Blob, Shape
from caffe.engine import CompiledPlan
from caffe.errors import CaffeError, LayerError, NetError, ShapeError, UnknownLayerTypeError
from caffe.layer import Layer, create_layer, layer_class, short_name
from caffe.limits import LimitError, check_blob
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import read_net_param
from caffe.pycaffe import PycaffeNet

log = logging.getLogger("caffe")

TRAIN, TEST = common.TRAIN, common.TEST


# ---------------------------------------------------------------------------- net filtering
def state_meets_rule(state: pb.NetState, rule: pb.NetStateRule, layer_name: str = "") -> bool:
    """Caffe's StateMeetsRule: phase, min/max level, required stages and excluded stages."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def filter_net(param: pb.NetParameter) -> pb.NetParameter:
    """The layers of ``param`` that its ``state`` includes."""
    out = pb.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    for layer in param.layer:
        if len(layer.include) and len(layer.exclude):
            raise NetError(f"layer '{layer.name}': specify either include rules or exclude rules, not both")
        if len(layer.include):
            included = any(state_meets_rule(param.state, r, layer.name) for r in layer.include)
        else:
            included = not any(state_meets_rule(param.state, r, layer.name) for r in layer.exclude)
        if included:
            out.layer.append(layer)
    return out


def split_layer_name(layer_name: str, blob_name: str, blob_idx: int) -> str:
    return f"{blob_name}_{layer_name}_{blob_idx}_split"


def split_blob_name(layer_name: str, blob_name: str, blob_idx: int, split_idx: int) -> str:
    return f"{blob_name}_{layer_name}_{blob_idx}_split_{split_idx}"


def insert_splits(param: pb.NetParameter) -> pb.NetParameter:
    """Caffe's InsertSplits: a Split layer after every top read by more than one consumer.

    A top with a nonzero loss weight counts as one extra consumer; the Split's first output then
    carries the loss weight.
    """
    last_top: dict[str, tuple[int, int]] = {}
    source_of: dict[tuple[int, int], tuple[int, int]] = {}
    consumers: dict[tuple[int, int], int] = {}
    loss_weight: dict[tuple[int, int], float] = {}
    for i, layer in enumerate(param.layer):
        for j, name in enumerate(layer.bottom):
            if name not in last_top:
                raise NetError(f"unknown bottom blob '{name}' (layer '{layer.name}', bottom index {j})")
            src = last_top[name]
            source_of[(i, j)] = src
            consumers[src] = consumers.get(src, 0) + 1
        for j, name in enumerate(layer.top):
            last_top[name] = (i, j)
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            src = last_top[layer.top[j]]
            loss_weight[src] = layer.loss_weight[j]
            if loss_weight[src]:
                consumers[src] = consumers.get(src, 0) + 1

    out = pb.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    next_split: dict[tuple[int, int], int] = {}
    for i, layer in enumerate(param.layer):
        lp = out.layer.add()
        lp.CopyFrom(layer)
        for j, name in enumerate(lp.bottom):
            src = source_of[(i, j)]
            if consumers.get(src, 0) > 1:
                k = next_split.get(src, 0)
                lp.bottom[j] = split_blob_name(param.layer[src[0]].name, name, src[1], k)
                next_split[src] = k + 1
        for j, name in enumerate(lp.top):
            count = consumers.get((i, j), 0)
            if count <= 1:
                continue
            weight = loss_weight.get((i, j), 0.0)
            split = out.layer.add()
            split.name = split_layer_name(layer.name, name, j)
            split.type = "Split"
            split.bottom.append(name)
            for k in range(count):
                split.top.append(split_blob_name(layer.name, name, j, k))
                if weight:
                    split.loss_weight.append(weight if k == 0 else 0.0)
            if weight:
                del lp.loss_weight[:]
                next_split[(i, j)] = next_split.get((i, j), 0) + 1
    return out


@runtime_checkable
class BlobBackward(Protocol):
    """A layer with a backward of its own, called with the blobs as Caffe's ``Backward`` (a Python layer):
    top diffs are in its top blobs; it writes the diffs of the bottoms ``propagate_down`` selects."""

    def backward_blobs(self, propagate_down: list[bool]) -> None: ...


# ---------------------------------------------------------------------------- the Net
class Net(PycaffeNet):
    """A network: ``Net(network_file, phase, level=0, stages=None, weights=None)``.

    Also accepts a ``NetParameter`` instead of a file, a Caffe2 model folder (``init_net.pb`` +
    ``predict_net.pb`` + ``value_info.json``: TEST phase unless given, with its weights), and the deprecated
    pycaffe form ``Net(network_file, pretrained_file, phase)``.
    """

    def __init__(
        self,
        network: str | os.PathLike | pb.NetParameter,
        phase: int | str | None = None,
        level: int | str | None = None,
        stages: Sequence[str] | None = None,
        weights: str | os.PathLike | None = None,
        *,
        dtype: torch.dtype | None = None,
    ) -> None:
        if isinstance(phase, (str, os.PathLike)) and not isinstance(level, (str, os.PathLike)):
            # deprecated pycaffe form: Net(file, pretrained_file, phase)
            log.warning(
                "DEPRECATION WARNING - deprecated use of Python interface; use Net('%s', %s, weights='%s')",
                network,
                level,
                phase,
            )
            weights, phase, level = phase, level, 0
        trained: pb.NetParameter | None = None
        if isinstance(network, (str, os.PathLike)) and Path(network).is_dir():  # a Caffe2 model folder
            from caffe.caffe2.model import convert_caffe2, find_caffe2_files

            network, trained = convert_caffe2(find_caffe2_files(network))
            phase = TEST if phase is None else phase
        if isinstance(network, pb.NetParameter):
            param = pb.NetParameter()
            param.CopyFrom(network)
            from caffe.upgrade import upgrade_net_as_needed

            upgrade_net_as_needed(param, "NetParameter")
            self._source = "NetParameter"
        else:
            if not Path(network).is_file():
                raise CaffeError(f"Could not open file {network}")
            param = read_net_param(network)
            self._source = str(network)
        if phase is not None:
            if phase not in (TRAIN, TEST):
                raise NetError(f"phase must be caffe.TRAIN (0) or caffe.TEST (1), got {phase!r}")
            param.state.phase = int(phase)
        elif not param.state.HasField("phase") and not isinstance(network, pb.NetParameter):
            raise NetError("Net(network_file, phase, ...): the phase (caffe.TRAIN or caffe.TEST) is required")
        if stages is not None:
            param.state.stage.extend(stages)
        if level is not None or not isinstance(network, pb.NetParameter):
            param.state.level = int(level or 0)
        common.tune_allocator()
        self._dtype = common.dtype() if dtype is None else dtype
        self._device = common.device()
        self._callbacks: dict[str, list[Callable[[int], Any]]] = {
            k: [] for k in ("before_forward", "after_forward", "before_backward", "after_backward")
        }
        self._init(param)
        if weights is not None:
            if not Path(weights).is_file():
                raise CaffeError(f"Could not open file {weights}")
            self.copy_from(weights)
        elif trained is not None:  # a Caffe2 folder's own weights (its init net)
            self.copy_from(trained)

    # ------------------------------------------------------------------ construction
    def _init(self, in_param: pb.NetParameter) -> None:
        self.phase: int = in_param.state.phase
        filtered = filter_net(in_param)
        self._check_layer_types(filtered)
        param = insert_splits(filtered)
        self._param = param
        self.name: str = param.name
        self.force_backward: bool = param.force_backward
        self.debug_info: bool = param.debug_info

        self._layers: list[Layer] = []
        self._layer_names: list[str] = []
        self._blobs: list[Blob] = []
        self._blob_names: list[str] = []
        self._blob_index: dict[str, int] = {}
        self._bottom_ids: list[list[int]] = []
        self._top_ids: list[list[int]] = []
        self._bottom_need_backward: list[list[bool]] = []
        self._layer_need_backward: list[bool] = []
        self._blob_need_backward: list[bool] = []
        self._blob_loss_weights: list[float] = []
        self._input_ids: list[int] = []
        self._params: list[Blob] = []  # every layer's param blobs, shared ones repeated
        self._param_owners: list[int] = []
        self._param_layer_indices: list[tuple[int, int]] = []
        self._param_id_vecs: list[list[int]] = []
        self._param_display_names: list[str] = []
        self._param_names_index: dict[str, int] = {}
        self._learnable_params: list[Blob] = []
        self._learnable_param_ids: list[int] = []
        self.params_lr: list[float] = []
        self.params_weight_decay: list[float] = []
        self._has_params_lr: list[bool] = []
        self._has_params_decay: list[bool] = []

        available: dict[str, None] = {}
        for layer_id, lp in enumerate(param.layer):
            if not lp.HasField("phase"):
                lp.phase = self.phase
            if len(lp.propagate_down) and len(lp.propagate_down) != len(lp.bottom):
                raise NetError(
                    f"layer '{lp.name}': propagate_down must be given either 0 or bottom_size "
                    f"({len(lp.bottom)}) times, got {len(lp.propagate_down)}"
                )
            layer = create_layer(lp)
            self._layers.append(layer)
            self._layer_names.append(lp.name)
            need_backward = False
            bottom_ids, need_bottoms = [], []
            for j, name in enumerate(lp.bottom):
                if name not in available:
                    raise NetError(f"unknown bottom blob '{name}' (layer '{lp.name}', bottom index {j})")
                blob_id = self._blob_index[name]
                del available[name]
                need = self._blob_need_backward[blob_id]
                if len(lp.propagate_down):
                    need = bool(lp.propagate_down[j])
                bottom_ids.append(blob_id)
                need_bottoms.append(need)
                need_backward |= self._blob_need_backward[blob_id]
            self._bottom_ids.append(bottom_ids)
            self._bottom_need_backward.append(need_bottoms)

            top_ids = []
            num_top = len(lp.top)
            if layer.auto_top_blobs:
                num_top = max(num_top, layer.min_top or 0, layer.exact_num_top or 0)
            for j in range(num_top):
                name = lp.top[j] if j < len(lp.top) else "(automatic)"
                if j < len(lp.bottom) and name == lp.bottom[j]:
                    top_ids.append(self._blob_index[name])  # in-place
                elif name in self._blob_index and j < len(lp.top):
                    raise NetError(f"top blob '{name}' produced by multiple sources (layer '{lp.name}')")
                else:
                    blob_id = len(self._blobs)
                    self._blobs.append(Blob((), dtype=self._dtype, device=self._device))
                    self._blob_names.append(name)
                    self._blob_need_backward.append(False)
                    self._blob_loss_weights.append(0.0)
                    if j < len(lp.top):
                        self._blob_index[name] = blob_id
                    top_ids.append(blob_id)
                    if lp.type == "Input":
                        self._input_ids.append(blob_id)
                if j < len(lp.top):  # automatic tops are never net outputs
                    available[name] = None
            self._top_ids.append(top_ids)

            layer.bottoms = [self._blobs[b] for b in bottom_ids]
            layer.tops = [self._blobs[t] for t in top_ids]
            top_shapes = self._guard(layer, "setup", layer.setup, [b.shape for b in layer.bottoms], num_top)
            self._move_layer_params(layer)
            for tid, shape in zip(top_ids, top_shapes, strict=True):
                self._reshape_top(layer, tid, shape)
            for j, tid in enumerate(top_ids):
                self._blob_loss_weights[tid] = layer.loss(j)
            log.info("Setting up %s", lp.name)
            for j, tid in enumerate(top_ids):
                log.info("Top shape: %s", self._blobs[tid].shape_string())
                if layer.loss(j):
                    log.info("    with loss weight %g", layer.loss(j))

            num_params = len(layer.blobs)
            if len(lp.param) > num_params:
                raise NetError(
                    f"too many params specified for layer '{lp.name}': {len(lp.param)} param "
                    f"specs for {num_params} learnable blob(s)"
                )
            for k in range(num_params):
                spec = lp.param[k] if k < len(lp.param) else pb.ParamSpec()
                need = spec.lr_mult != 0
                need_backward |= need
                layer.param_propagate_down[k] = need
            self._param_id_vecs.append([])
            for k in range(num_params):
                self._append_param(layer_id, k)
            self._layer_need_backward.append(need_backward)
            if need_backward:
                for tid in top_ids:
                    self._blob_need_backward[tid] = True

        self._compute_backward_needs(param)
        self._output_ids = [self._blob_index[name] for name in sorted(available)]
        for name in sorted(available):
            log.info("This network produces output %s", name)
        self._share_weights()
        self._set_loss_diffs()
        self._forget_graphs()
        self._own_backward = [isinstance(layer, BlobBackward) for layer in self._layers]
        self._layer_by_name = {}
        for i, name in enumerate(self._layer_names):
            self._layer_by_name.setdefault(name, i)
        self._any_need_backward = any(self._layer_need_backward)
        log.info("Network initialization done.")

    def _check_layer_types(self, param: pb.NetParameter) -> None:
        unknown: dict[str, str] = {}
        for lp in param.layer:
            try:
                layer_class(lp.type, lp.name)
            except UnknownLayerTypeError as e:
                unknown.setdefault(lp.type, str(e))
        if len(unknown) == 1:
            raise UnknownLayerTypeError(f"{self._source}: {next(iter(unknown.values()))}")
        if unknown:
            raise UnknownLayerTypeError(
                f"{self._source}: unknown layer types {', '.join(sorted(map(short_name, unknown))[:20])}"
                f"{f' and {len(unknown) - 20} more' if len(unknown) > 20 else ''} "
                f"({'; '.join(list(unknown.values())[:20])})"
            )

    def _guard(self, layer: Layer, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn``; turn a low-level failure into a one-line error naming the layer."""
        try:
            return fn(*args)
        except LimitError as e:
            context = f"layer '{layer.name}' ({layer.type})"
            raise (e if str(e).startswith(context) else LimitError(f"{context} {what}: {e}")) from None
        except CaffeError:
            raise
        except (RuntimeError, ValueError, IndexError, TypeError, ArithmeticError) as e:  # e.g. int(inf) overflows
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise LayerError(f"layer '{layer.name}' ({layer.type}) {what} failed: {msg}") from e

    def _reshape_top(self, layer: Layer, blob_id: int, shape: Shape) -> None:
        """Give top blob ``blob_id`` the shape ``layer`` declared, refused before allocation when over the budget."""
        blob = self._blobs[blob_id]
        if tuple(shape) != blob.shape and min(shape, default=0) >= 0:  # negative: Blob.reshape's ShapeError
            what = f"layer '{layer.name}' ({layer.type}) top '{self._blob_names[blob_id]}'"
            check_blob(shape, blob.dtype.itemsize, what)
        blob.reshape(shape)

    def _move_layer_params(self, layer: Layer) -> None:
        for blob in layer.blobs:
            if blob.device != self._device or blob.dtype != self._dtype:
                blob.to(self._device, self._dtype)

    def _append_param(self, layer_id: int, param_id: int) -> None:
        layer = self._layers[layer_id]
        lp = layer.layer_param
        spec = lp.param[param_id] if param_id < len(lp.param) else pb.ParamSpec()
        name = spec.name
        self._param_display_names.append(name or str(param_id))
        net_param_id = len(self._params)
        self._params.append(layer.blobs[param_id])
        self._param_id_vecs[layer_id].append(net_param_id)
        self._param_layer_indices.append((layer_id, param_id))
        if not name or name not in self._param_names_index:
            self._param_owners.append(-1)
            if name:
                self._param_names_index[name] = net_param_id
            self._learnable_param_ids.append(len(self._learnable_params))
            self._learnable_params.append(layer.blobs[param_id])
            self._has_params_lr.append(spec.HasField("lr_mult"))
            self._has_params_decay.append(spec.HasField("decay_mult"))
            self.params_lr.append(spec.lr_mult)
            self.params_weight_decay.append(spec.decay_mult)
            return
        owner_id = self._param_names_index[name]
        self._param_owners.append(owner_id)
        owner_layer, owner_param = self._param_layer_indices[owner_id]
        this = layer.blobs[param_id]
        owner = self._layers[owner_layer].blobs[owner_param]
        if spec.share_mode == pb.ParamSpec.PERMISSIVE:
            if this.count != owner.count:
                raise NetError(
                    f"cannot share param '{name}' owned by layer '{self._layer_names[owner_layer]}' with layer "
                    f"'{lp.name}': count mismatch, owner shape {owner.shape_string()} vs {this.shape_string()}"
                )
        elif this.shape != owner.shape:
            raise NetError(
                f"cannot share param '{name}' owned by layer '{self._layer_names[owner_layer]}' with layer "
                f"'{lp.name}': shape mismatch, owner shape {owner.shape_string()} vs {this.shape_string()} "
                "(use share_mode: PERMISSIVE to share blobs of equal count)"
            )
        learnable_id = self._learnable_param_ids[owner_id]
        self._learnable_param_ids.append(learnable_id)
        for has, values, field in (
            (self._has_params_lr, self.params_lr, "lr_mult"),
            (self._has_params_decay, self.params_weight_decay, "decay_mult"),
        ):
            if spec.HasField(field):
                if has[learnable_id] and values[learnable_id] != getattr(spec, field):
                    raise NetError(
                        f"shared param '{name}' has mismatched {field} in layer '{lp.name}' "
                        f"({getattr(spec, field)} vs {values[learnable_id]})"
                    )
                has[learnable_id] = True
                values[learnable_id] = getattr(spec, field)

    def _share_weights(self) -> None:
        """Make sharing layers use their owner's storage (the same Blob, or a reshaped view)."""
        for net_id, owner_id in enumerate(self._param_owners):
            if owner_id < 0:
                continue
            layer_id, param_id = self._param_layer_indices[net_id]
            owner = self._params[owner_id]
            layer = self._layers[layer_id]
            mine = layer.blobs[param_id]
            shared = owner if mine.shape == owner.shape else _ParamView(owner, mine.shape)
            layer.blobs[param_id] = shared
            self._params[net_id] = shared

    def _compute_backward_needs(self, param: pb.NetParameter) -> None:
        """Caffe's pass over the layers from the top: only layers under a loss need backward."""
        under_loss: set[str] = set()
        skip_backprop: set[str] = set()
        for i in range(len(self._layers) - 1, -1, -1):
            layer = self._layers[i]
            contributes = False
            skip = True
            for j, tid in enumerate(self._top_ids[i]):
                name = self._blob_names[tid]
                if layer.loss(j) or name in under_loss:
                    contributes = True
                if name not in skip_backprop:
                    skip = False
                if contributes and not skip:
                    break
            if self._layer_need_backward[i] and skip:
                self._layer_need_backward[i] = False
                self._bottom_need_backward[i] = [False] * len(self._bottom_ids[i])
            if not contributes:
                self._layer_need_backward[i] = False
            for j, bid in enumerate(self._bottom_ids[i]):
                name = self._blob_names[bid]
                if contributes:
                    under_loss.add(name)
                else:
                    self._bottom_need_backward[i][j] = False
                if not self._bottom_need_backward[i][j]:
                    skip_backprop.add(name)
        if param.force_backward:
            for i, layer in enumerate(self._layers):
                self._layer_need_backward[i] = True
                for j, bid in enumerate(self._bottom_ids[i]):
                    need = self._bottom_need_backward[i][j] or layer.allow_force_backward(j)
                    self._bottom_need_backward[i][j] = need
                    self._blob_need_backward[bid] = self._blob_need_backward[bid] or need
                layer.param_propagate_down = [True] * len(layer.blobs)
        for i, layer in enumerate(self._layers):
            log.info(
                "%s %s backward computation.",
                self._layer_names[i],
                "needs" if self._layer_need_backward[i] else "does not need",
            )
            for k, blob in enumerate(layer.blobs):
                if isinstance(blob, _ParamView):
                    continue
                t = blob.tensor
                if t.requires_grad != layer.param_propagate_down[k]:
                    t.requires_grad_(layer.param_propagate_down[k])

    def _set_loss_diffs(self) -> None:
        """Caffe seeds each loss top's diff with its loss weight."""
        for blob, weight in zip(self._blobs, self._blob_loss_weights, strict=True):
            if weight:
                blob.grad = torch.full(blob.shape, weight, dtype=blob.dtype, device=blob.device)

    # ------------------------------------------------------------------ device
    def _sync_device(self) -> None:
        want = common.device()
        if want != self._device:
            self.to_device(want)

    def to_device(self, device: torch.device) -> None:
        """Move every blob and parameter to ``device`` (done automatically when the mode changes)."""
        seen: set[int] = set()
        for blob in [*self._blobs, *self._learnable_params]:
            if id(blob) not in seen:
                seen.add(id(blob))
                blob.to(device)
        for layer in self._layers:
            for k, blob in enumerate(layer.blobs):
                if not isinstance(blob, _ParamView) and id(blob) not in seen:
                    seen.add(id(blob))
                    blob.to(device)
                if not isinstance(blob, _ParamView):
                    blob.tensor.requires_grad_(layer.param_propagate_down[k])
        self._device = device
        self._runner_key = None
        self._forget_graphs()

    def _forget_graphs(self) -> None:
        """Drop every recorded forward graph (a later backward recomputes what it needs)."""
        n = len(self._layers)
        self._fwd_inputs: list[list[torch.Tensor] | None] = [None] * n
        self._fwd_outputs: list[list[torch.Tensor] | None] = [None] * n
        self._fwd_gen: list[int] = [0] * n  # which recording each layer's graph belongs to
        self._param_seen: list[tuple[int, ...]] = [()] * n  # its parameters' versions when recorded
        self._blob_seen: list[int] = [-1] * len(self._blobs)  # each blob's version when the net last ran
        self._generation = 0

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        """The precision the net computes in (``torch.float32``, or ``torch.float64`` for a double net)."""
        return self._dtype

    # ------------------------------------------------------------------ forward / backward
    def _layer_index(self, name: str | int | None, default: int) -> int:
        if name is None:
            return default
        if isinstance(name, int):
            return name
        if name not in self._layer_by_name:
            raise NetError(f"no layer named '{name}' in net '{self.name}'")
        return self._layer_by_name[name]

    def _forward(self, start: int, end: int, wanted: Iterable[str] | None = None) -> float:
        """Caffe's ForwardFromTo(start, end), both inclusive; returns the weighted loss.

        ``wanted`` names blobs the caller will read (besides the outputs): an inference engine that
        does not store every blob eagerly makes sure these are stored.
        """
        if not (start >= 0 and end < len(self._layers)):
            raise NetError(f"forward range {start}..{end} is outside the net's {len(self._layers)} layers")
        self._sync_device()
        grad_mode = torch.is_grad_enabled() and self._any_need_backward
        if not grad_mode and start == 0 and end == len(self._layers) - 1 and not self.debug_info:
            runner = self._inference_runner()
            if runner is not None:
                with torch.no_grad():
                    if isinstance(runner, CompiledPlan):
                        loss = runner.run({self._blob_index[b] for b in wanted or () if b in self._blob_index})
                    else:
                        loss = runner.run()
                self._note_versions(start, end)
                return loss
        loss = 0.0
        self._generation += 1
        with torch.set_grad_enabled(grad_mode):
            for i in range(start, end + 1):
                for cb in self._callbacks["before_forward"]:
                    cb(i)
                loss += self._forward_layer(i, grad_mode)
                if self.debug_info:
                    net_debug.forward_info(self, i)
                for cb in self._callbacks["after_forward"]:
                    cb(i)
        self._note_versions(start, end)
        return loss

    def _note_versions(self, start: int, end: int) -> None:
        """Remember the versions of the blobs layers ``start..end`` read and wrote: a later change to one
        (a NumPy write, an in-place update) makes the graphs recorded from it stale."""
        seen, blobs = self._blob_seen, self._blobs
        for i in range(start, end + 1):
            for bid in self._bottom_ids[i]:
                seen[bid] = blobs[bid].version
            for bid in self._top_ids[i]:
                seen[bid] = blobs[bid].version

    def _inference_runner(self) -> Any:
        """The engine-specific runner of a gradient-free full forward (None: run layer by layer)."""
        from caffe.engine import CompiledPlan, InferencePlan, inference_engine

        engine = inference_engine()
        if engine == "eager" or self._callbacks["before_forward"] or self._callbacks["after_forward"]:
            return None
        key = (engine, self._device)
        if getattr(self, "_runner_key", None) != key:
            plan = InferencePlan(self)
            if engine == "compiled" and CompiledPlan.supported(self):
                self._runner = CompiledPlan(plan)
            else:
                self._runner = plan
            self._runner_key = key
        return self._runner

    def _forward_layer(self, i: int, grad_mode: bool) -> float:
        layer = self._layers[i]
        inputs = []
        for j, bid in enumerate(self._bottom_ids[i]):
            t = self._blobs[bid].tensor
            if grad_mode:
                if self._bottom_need_backward[i][j] and self._layer_need_backward[i]:
                    if not t.requires_grad:
                        t = t.detach().requires_grad_()
                elif t.requires_grad:
                    t = t.detach()
            inputs.append(t)
        shapes = [tuple(t.shape) for t in inputs]
        if shapes != layer.bottom_shapes:
            self._guard(layer, "reshape", layer.checked_reshape, shapes)
        outputs = self._guard(layer, "forward", layer.forward, inputs)
        if len(outputs) != len(self._top_ids[i]):
            raise LayerError(
                f"layer '{layer.name}' ({layer.type}) produced {len(outputs)} top(s), expected {len(self._top_ids[i])}"
            )
        loss = 0.0
        if grad_mode:
            ids = {id(t) for t in inputs}
            outputs = [o.view_as(o) if id(o) in ids else o for o in outputs]
            self._fwd_inputs[i] = inputs
            self._fwd_outputs[i] = outputs
            self._fwd_gen[i] = self._generation
            self._param_seen[i] = tuple(b.version for b in layer.blobs)
        else:
            self._fwd_inputs[i] = self._fwd_outputs[i] = None
        for j, (tid, out) in enumerate(zip(self._top_ids[i], outputs, strict=True)):
            blob = self._blobs[tid]
            blob.tensor = out
            weight = layer.loss(j)
            if weight:
                loss += weight * float(out.detach().sum())
                if blob.shape != tuple(blob.grad.shape) or not blob.has_diff():
                    blob.grad = torch.full(blob.shape, weight, dtype=blob.dtype, device=blob.device)
        return loss

    def _backward(self, start: int, end: int) -> None:
        """Caffe's BackwardFromTo(start, end): layers start down to end, inclusive."""
        if not (end >= 0 and start < len(self._layers)):
            raise NetError(f"backward range {start}..{end} is outside the net's {len(self._layers)} layers")
        self._sync_device()
        if self._callbacks["before_backward"] or self._callbacks["after_backward"] or self.debug_info:
            for i in range(start, end - 1, -1):
                for cb in self._callbacks["before_backward"]:
                    cb(i)
                self._backward_range(i, i)
                if self.debug_info and self._layer_need_backward[i]:
                    net_debug.backward_info(self, i)
                for cb in self._callbacks["after_backward"]:
                    cb(i)
        else:
            self._backward_range(start, end)
        if self.debug_info and start == len(self._layers) - 1 and end == 0:
            net_debug.norms_info(self)

    def _backward_range(self, start: int, end: int) -> None:
        """Backward through layers ``start`` down to ``end``: runs of layers with a valid recorded graph
        together, stale layers recomputed one by one, layers with their own backward called with the blobs."""
        run: list[int] = []
        for i in range(start, end - 1, -1):
            if not self._layer_need_backward[i]:
                continue
            if self._own_backward[i]:
                self._autograd_backward(run)
                run = []
                self._blob_backward(i)
            elif self._graph_is_stale(i):
                self._autograd_backward(run)
                run = []
                self._record_layer(i)
                self._autograd_backward([i])
            else:
                if run and self._fwd_gen[run[-1]] != self._fwd_gen[i]:  # recorded apart: not connected
                    self._autograd_backward(run)
                    run = []
                run.append(i)
        self._autograd_backward(run)

    def _graph_is_stale(self, i: int) -> bool:
        """Whether layer ``i`` has no recorded graph, or its bottoms or parameters changed since it was recorded."""
        if self._fwd_outputs[i] is None:
            return True
        blobs, seen = self._blobs, self._blob_seen
        if any(blobs[bid].version != seen[bid] for bid in self._bottom_ids[i]):
            return True
        return self._param_seen[i] != tuple(b.version for b in self._layers[i].blobs)

    def _record_layer(self, i: int) -> None:
        """Recompute layer ``i``'s forward under autograd from its current bottoms and parameters, leaving its
        tops as they are (Caffe's backward reads the blobs, it does not rerun the net). An in-place bottom
        unchanged since the last forward is read as that forward's input (the blob holds the output)."""
        layer = self._layers[i]
        previous = self._fwd_inputs[i]
        inputs = []
        for j, bid in enumerate(self._bottom_ids[i]):
            blob = self._blobs[bid]
            in_place = bid in self._top_ids[i] and blob.version == self._blob_seen[bid]
            t = previous[j].detach() if previous is not None and in_place else blob.tensor.detach()
            inputs.append(t.requires_grad_() if self._bottom_need_backward[i][j] else t)
        shapes = [tuple(t.shape) for t in inputs]
        if shapes != layer.bottom_shapes:
            self._guard(layer, "reshape", layer.checked_reshape, shapes)
        with torch.enable_grad():
            outputs = self._guard(layer, "forward", layer.forward, inputs)
        ids = {id(t) for t in inputs}
        self._fwd_inputs[i] = inputs
        self._fwd_outputs[i] = [o.view_as(o) if id(o) in ids else o for o in outputs]
        self._generation += 1
        self._fwd_gen[i] = self._generation
        self._param_seen[i] = tuple(b.version for b in layer.blobs)

    def _blob_backward(self, i: int) -> None:
        """Call layer ``i``'s own backward with the blobs (a Python layer), as Caffe's ``Layer::Backward``."""
        layer = self._layers[i]
        ids = {*self._bottom_ids[i], *self._top_ids[i]}
        unchanged = [bid for bid in ids if self._blobs[bid].version == self._blob_seen[bid]]
        self._guard(layer, "backward", layer.backward_blobs, list(self._bottom_need_backward[i]))  # type: ignore[attr-defined]
        for bid in unchanged:  # its own reads of .data are not changes
            self._blob_seen[bid] = self._blobs[bid].version

    def _autograd_backward(self, layers: list[int]) -> None:
        """One autograd call through the recorded graphs of ``layers`` (connected, highest first)."""
        if not layers:
            return
        layers = sorted(layers)
        consumed: set[int] = set()
        for i in layers:
            for j, t in enumerate(self._fwd_inputs[i]):  # type: ignore[arg-type]
                if self._bottom_need_backward[i][j]:
                    consumed.add(id(t))
        roots: list[torch.Tensor] = []
        seeds: list[torch.Tensor] = []
        for i in layers:
            for j, t in enumerate(self._fwd_outputs[i]):  # type: ignore[arg-type]
                if t.requires_grad and id(t) not in consumed:
                    roots.append(t)
                    seeds.append(self._blobs[self._top_ids[i][j]].grad.reshape(t.shape).to(t.dtype))
        wanted: list[torch.Tensor] = []
        targets: list[tuple[str, Blob]] = []
        for i in reversed(layers):
            for j, t in enumerate(self._fwd_inputs[i]):  # type: ignore[arg-type]
                if self._bottom_need_backward[i][j] and t.requires_grad:
                    wanted.append(t)
                    targets.append(("bottom", self._blobs[self._bottom_ids[i][j]]))
        seen_params: set[int] = set()
        for i in layers:
            layer = self._layers[i]
            for k, blob in enumerate(layer.blobs):
                owner = blob.owner if isinstance(blob, _ParamView) else blob
                if layer.param_propagate_down[k] and id(owner) not in seen_params:
                    t = owner.tensor
                    if t.requires_grad:
                        seen_params.add(id(owner))
                        wanted.append(t)
                        targets.append(("param", owner))
        if not wanted:
            return
        if roots:
            grads = torch.autograd.grad(roots, wanted, seeds, retain_graph=True, allow_unused=True)
        else:  # nothing above depends on these inputs: Caffe's backward writes zero diffs
            grads = (None,) * len(wanted)
        for (kind, blob), g, t in zip(targets, grads, wanted, strict=True):
            if kind == "bottom":
                blob.grad = g if g is not None else torch.zeros_like(t)
            elif g is not None:
                blob.accumulate_grad(g)

    def forward(
        self,
        blobs: Iterable[str] | None = None,
        start: str | None = None,
        end: str | None = None,
        **kwargs: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """pycaffe's forward: optional inputs as keyword arrays; returns {blob name: data}."""
        blobs = list(blobs or [])
        start_ind = self._layer_index(start, 0)
        if end is not None:
            end_ind = self._layer_index(end, len(self._layers) - 1)
            outputs = set(self.top_names[self._layer_names[end_ind]] + blobs)
        else:
            end_ind = len(self._layers) - 1
            outputs = set(self.outputs + blobs)
        if kwargs:
            if set(kwargs) != set(self.inputs):
                raise NetError(
                    f"input blob arguments {sorted(kwargs)} do not match the net's inputs {sorted(self.inputs)}"
                )
            for name, arr in kwargs.items():
                arr = np.asarray(arr)
                if arr.shape[0] != self.blobs[name].shape[0]:
                    raise ShapeError(
                        f"input '{name}' is not batch sized: got {arr.shape[0]} items, "
                        f"the blob holds {self.blobs[name].shape[0]} (reshape the blob first)"
                    )
                self.blobs[name].data[...] = arr
        missing = [b for b in outputs if b not in self._blob_index]
        if missing:
            raise NetError(f"no blob named {', '.join(repr(m) for m in missing)} in net '{self.name}'")
        self._forward(start_ind, end_ind, outputs)
        return {out: self._read_data(out) for out in outputs}

    def _read_data(self, name: str) -> np.ndarray:
        """Blob ``name``'s data for the caller; handing it out is not counted as a change of the blob."""
        bid = self._blob_index[name]
        blob = self._blobs[bid]
        unchanged = blob.version == self._blob_seen[bid]
        data = blob.data
        if unchanged:
            self._blob_seen[bid] = blob.version
        return data

    def backward(
        self,
        diffs: Iterable[str] | None = None,
        start: str | None = None,
        end: str | None = None,
        **kwargs: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """pycaffe's backward: optional top diffs as keyword arrays; returns {blob name: diff}."""
        diffs = list(diffs or [])
        start_ind = self._layer_index(start, len(self._layers) - 1)
        if end is not None:
            end_ind = self._layer_index(end, 0)
            outputs = set(self.bottom_names[self._layer_names[end_ind]] + diffs)
        else:
            end_ind = 0
            outputs = set(self.inputs + diffs)
        if kwargs:
            if set(kwargs) != set(self.outputs):
                raise NetError(
                    f"top diff arguments {sorted(kwargs)} do not match the net's outputs {sorted(self.outputs)}"
                )
            for name, arr in kwargs.items():
                arr = np.asarray(arr)
                if arr.shape[0] != self.blobs[name].shape[0]:
                    raise ShapeError(
                        f"diff for '{name}' is not batch sized: {arr.shape[0]} vs {self.blobs[name].shape[0]}"
                    )
                self.blobs[name].diff[...] = arr
        self._backward(start_ind, end_ind)
        return {out: self.blobs[out].diff for out in outputs}

    def forward_backward(self) -> float:
        """One forward and one full backward; returns the loss (used by solvers)."""
        loss = self._forward(0, len(self._layers) - 1)
        self._backward(len(self._layers) - 1, 0)
        return loss

    @contextlib.contextmanager
    def every_layer_backward(self) -> Iterator[int]:
        """Within this block, backward runs every layer with learnable parameters, as ``caffe time``
        measures it: such a layer computes its parameter diffs even with no loss above it (a deploy
        net); bottoms' diffs stay as the net decided. Yields how many layers this adds."""
        extra = [
            i
            for i, layer in enumerate(self._layers)
            if not self._layer_need_backward[i] and any(layer.param_propagate_down)
        ]
        saved = self._any_need_backward
        try:
            for i in extra:
                self._layer_need_backward[i] = True
            self._any_need_backward = saved or bool(extra)
            yield len(extra)
        finally:
            for i in extra:
                self._layer_need_backward[i] = False
            self._any_need_backward = saved

    def reshape(self) -> None:
        """Propagate input-blob shape changes through every layer (Caffe's Net::Reshape)."""
        for i, layer in enumerate(self._layers):
            shapes = [self._blobs[b].shape for b in self._bottom_ids[i]]
            tops = self._guard(layer, "reshape", layer.checked_reshape, shapes)
            for tid, shape in zip(self._top_ids[i], tops, strict=True):
                self._reshape_top(layer, tid, shape)
        self._set_loss_diffs()

    # ------------------------------------------------------------------ parameters
    def set_progress(self, iteration: int, stop: int) -> None:
        """Tell every layer where the training is: ``iteration`` of a run ending at ``stop`` (the forks' set_iter,
        read by MobileNet-YOLO's AssistedExcitation and its difficult-box warm-up)."""
        for layer in self._layers:
            layer.progress = (int(iteration), int(stop))

    def clear_param_diffs(self) -> None:
        for blob in self._learnable_params:
            blob.zero_grad()

    def update(self) -> None:
        """Caffe's Net::Update: data -= diff for every learnable parameter."""
        if self.debug_info:
            net_debug.update_info(self)
        params = self._learnable_params
        if params:
            with torch.no_grad():
                torch._foreach_sub_([b.mutable_tensor for b in params], [b.grad for b in params])

    def set_param_data(self, blob: Blob, value: torch.Tensor) -> None:
        """Overwrite a parameter's values in place (identity kept, so sharing and solvers see it)."""
        with torch.no_grad():
            blob.mutable_tensor.copy_(value.reshape(blob.shape).to(blob.dtype))

    def param_is_shared(self, layer: Layer, param_index: int) -> bool:
        layer_id = self._layers.index(layer)
        return self._param_owners[self._param_id_vecs[layer_id][param_index]] >= 0

    def layer_by_name(self, name: str) -> Layer | None:
        i = self._layer_by_name.get(name)
        return None if i is None else self._layers[i]

    @property
    def learnable_params(self) -> list[Blob]:
        return self._learnable_params

    @property
    def has_params_lr(self) -> list[bool]:
        return self._has_params_lr

    @property
    def has_params_decay(self) -> list[bool]:
        return self._has_params_decay

    @property
    def param_display_names(self) -> list[str]:
        return self._param_display_names

    @property
    def param_owners(self) -> list[int]:
        return self._param_owners

    def copy_from(self, weights: str | os.PathLike | pb.NetParameter) -> list[str]:
        """Copy trained layers from a ``.caffemodel``, an HDF5 weights file, or a NetParameter."""
        from caffe.weights import copy_trained_layers

        return copy_trained_layers(self, weights)

    copy_trained_layers_from = copy_from

    def share_with(self, other: Net) -> None:
        """Caffe's ShareTrainedLayersWith: use ``other``'s parameter storage for same-named layers."""
        for src_name, src in zip(other._layer_names, other._layers, strict=True):
            i = self._layer_by_name.get(src_name)
            if i is None:
                log.info("Ignoring source layer %s", src_name)
                continue
            target = self._layers[i]
            if len(target.blobs) != len(src.blobs):
                raise NetError(
                    f"incompatible number of blobs for layer '{src_name}': {len(src.blobs)} vs {len(target.blobs)}"
                )
            for k, (mine, theirs) in enumerate(zip(target.blobs, src.blobs, strict=True)):
                if mine.shape != theirs.shape:
                    raise NetError(
                        f"cannot share param {k} of layer '{src_name}': shape {theirs.shape_string()} "
                        f"vs {mine.shape_string()}"
                    )
                target.blobs[k] = theirs
                for pid, p in enumerate(self._params):
                    if p is mine:
                        self._params[pid] = theirs
                for lid, p in enumerate(self._learnable_params):
                    if p is mine:
                        self._learnable_params[lid] = theirs

    def to_proto(self, write_diff: bool = False) -> pb.NetParameter:
        from caffe.weights import net_to_proto

        return net_to_proto(self, write_diff)

    def save(self, filename: str | os.PathLike, write_diff: bool = False) -> None:
        """Write the weights as a binary ``.caffemodel`` (atomic)."""
        from caffe.weights import save_caffemodel

        save_caffemodel(self, filename, write_diff)

    def save_hdf5(self, filename: str | os.PathLike, write_diff: bool = False) -> None:
        from caffe.weights import save_hdf5

        save_hdf5(self, filename, write_diff)

    def load_hdf5(self, filename: str | os.PathLike) -> list[str]:
        from caffe.weights import copy_trained_layers_hdf5

        return copy_trained_layers_hdf5(self, filename)

    def set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        """Feed a MemoryData first layer (float32, C-contiguous, 4-d, N a multiple of the batch)."""
        labels = np.asarray(labels)
        if labels.ndim == 1:
            labels = np.ascontiguousarray(labels[:, None, None, None])
        layer = self._layers[0] if self._layers else None
        if layer is None or layer.type != "MemoryData":
            raise NetError("set_input_arrays may only be called if the first layer is a MemoryDataLayer")
        layer.reset(data, labels)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ callbacks
    def before_forward(self, callback: Callable[[int], Any]) -> None:
        self._callbacks["before_forward"].append(callback)

    def after_forward(self, callback: Callable[[int], Any]) -> None:
        self._callbacks["after_forward"].append(callback)

    def before_backward(self, callback: Callable[[int], Any]) -> None:
        self._callbacks["before_backward"].append(callback)

    def after_backward(self, callback: Callable[[int], Any]) -> None:
        self._callbacks["after_backward"].append(callback)

    @property
    def has_layer_callbacks(self) -> bool:
        """Whether per-layer callbacks are registered (before/after each layer's forward or backward)."""
        return any(self._callbacks.values())

    # ------------------------------------------------------------------ graph API (what other modules use)
    @property
    def host_layers(self) -> list[Layer]:
        """The Layer objects the net runs, by index (a Python layer's host: ``layers`` shows the user's
        object, as pycaffe does). The net's own list: read it, do not change it."""
        return self._layers

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    @property
    def layer_names(self) -> list[str]:
        return list(self._layer_names)

    @property
    def blob_list(self) -> list[Blob]:
        """The blobs by id (the net's own list: read it, do not change it)."""
        return self._blobs

    @property
    def blob_names(self) -> list[str]:
        return list(self._blob_names)

    @property
    def blob_index(self) -> Mapping[str, int]:
        """Blob name -> blob id."""
        return MappingProxyType(self._blob_index)

    def bottom_ids(self, i: int) -> list[int]:
        """The ids of the blobs layer ``i`` reads."""
        return list(self._bottom_ids[i])

    def top_ids(self, i: int) -> list[int]:
        """The ids of the blobs layer ``i`` writes (an in-place top has its bottom's id)."""
        return list(self._top_ids[i])

    @property
    def input_ids(self) -> list[int]:
        return list(self._input_ids)

    @property
    def output_ids(self) -> list[int]:
        return list(self._output_ids)

    def param_ids(self, i: int) -> list[int]:
        """The net parameter ids of layer ``i``'s parameter blobs (indices into ``param_blobs``)."""
        return list(self._param_id_vecs[i])

    @property
    def param_blobs(self) -> list[Blob]:
        """Every layer's parameter blobs by net parameter id, shared ones repeated (Caffe's ``Net::params``)."""
        return list(self._params)

    @property
    def param_layer_indices(self) -> list[tuple[int, int]]:
        """(layer id, index among the layer's blobs) of each net parameter id."""
        return list(self._param_layer_indices)

    def forward_from_to(self, start: int, end: int, wanted: Iterable[str] | None = None) -> float:
        """Caffe's ForwardFromTo: layers ``start`` to ``end`` inclusive; returns the weighted loss."""
        return self._forward(start, end, wanted)

    def backward_from_to(self, start: int, end: int) -> None:
        """Caffe's BackwardFromTo: layers ``start`` down to ``end`` inclusive."""
        self._backward(start, end)

    def forward_layer(self, i: int) -> float:
        """Layer ``i``'s forward without gradients (an inference engine's unfused step); its weighted loss."""
        return self._forward_layer(i, grad_mode=False)

    def reshape_layer(self, i: int, shapes: list[Shape]) -> None:
        """Reshape layer ``i`` for these bottom shapes if they changed since its last reshape."""
        layer = self._layers[i]
        if shapes != layer.bottom_shapes:
            self._guard(layer, "reshape", layer.checked_reshape, shapes)

    def run_guarded(self, i: int, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` with a low-level failure turned into a one-line error naming layer ``i``."""
        return self._guard(self._layers[i], what, fn, *args)

    def sync_device(self) -> None:
        """Move the net to the current Caffe mode's device if it is elsewhere."""
        self._sync_device()

    # ------------------------------------------------------------------ pycaffe properties
    @property
    def draws_random(self) -> bool:
        """Whether a forward draws torch random numbers (Dropout, DummyData, any Python layer)."""
        return any(layer.draws_random for layer in self._layers)

    @property
    def blob_loss_weights(self) -> OrderedDict[str, float]:
        return OrderedDict(zip(self._blob_names, self._blob_loss_weights, strict=True))

    @property
    def layer_need_backward(self) -> list[bool]:
        return list(self._layer_need_backward)

    @property
    def bottom_need_backward(self) -> list[list[bool]]:
        return [list(v) for v in self._bottom_need_backward]

    @property
    def blob_need_backward(self) -> list[bool]:
        return list(self._blob_need_backward)

    @property
    def net_param(self) -> pb.NetParameter:
        """The NetParameter the net was built from (filtered, splits inserted)."""
        return self._param

    def __repr__(self) -> str:
        phase = "TRAIN" if self.phase == TRAIN else "TEST"
        return f"<caffe.Net '{self.name}' {phase}: {len(self._layers)} layers, {len(self._blobs)} blobs>"


class _ParamView(Blob):
    """A parameter blob that shares an owner's storage under another shape (PERMISSIVE sharing)."""

    def __init__(self, owner: Blob, shape: Shape) -> None:
        self.owner = owner
        self._view_shape = tuple(shape)

    @property
    def shape(self) -> Shape:  # type: ignore[override]
        return self._view_shape

    @property
    def _shape(self) -> Shape:  # type: ignore[override]
        return self._view_shape

    @property
    def _device(self) -> torch.device:  # type: ignore[override]
        return self.owner.device

    @property
    def _dtype(self) -> torch.dtype:  # type: ignore[override]
        return self.owner.dtype

    @property
    def version(self) -> int:  # type: ignore[override]
        return self.owner.version

    @property
    def tensor(self) -> torch.Tensor:  # type: ignore[override]
        return self.owner.tensor.view(self._view_shape)

    @property
    def mutable_tensor(self) -> torch.Tensor:  # type: ignore[override]
        return self.owner.mutable_tensor.view(self._view_shape)

    @property
    def grad(self) -> torch.Tensor:  # type: ignore[override]
        return self.owner.grad.view(self._view_shape)

    @property
    def mutable_grad(self) -> torch.Tensor:  # type: ignore[override]
        return self.owner.mutable_grad.view(self._view_shape)

    @property
    def data(self) -> np.ndarray:  # type: ignore[override]
        return self.owner.data.reshape(self._view_shape)

    @property
    def diff(self) -> np.ndarray:  # type: ignore[override]
        return self.owner.diff.reshape(self._view_shape)

    def has_diff(self) -> bool:
        return self.owner.has_diff()

    def to(self, device: torch.device, dtype: torch.dtype | None = None) -> None:
        """The owner moves; a view follows it."""
