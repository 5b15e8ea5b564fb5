"""Loss layers and Accuracy, with Caffe master's semantics.

Every loss shares :class:`LossLayer`: a scalar top (shape ``()``) whose loss weight is 1 unless the
prototxt says otherwise, an automatic top when none is named, and the check that the data and label
bottoms have the same first dimension. Label-like bottoms are detached and refuse ``force_backward``.

Normalisation (``loss_param.normalization``) follows Caffe's ``get_normalizer``: FULL divides by
every label position, VALID by the positions whose label is not ``ignore_label``, BATCH_SIZE by the
outer count, NONE by 1; the divisor is never below 1.

Where Caffe's hand-written gradient differs from the gradient of its forward expression (the
``log(max(p, threshold))`` clamps, ContrastiveLoss's ``1e-4`` in the distance derivative), the forward
keeps Caffe's value and the gradient follows Caffe by adding a detached correction term.

Labels that are neither in range nor ``ignore_label`` raise a :class:`~caffe.errors.LayerError` when
the layer runs eagerly on the CPU (the check costs no device synchronisation there). On other
devices, and while tracing or compiling, no check is made (it would synchronise); the affected
positions make the loss (or accuracy) NaN instead, where Caffe reads out of bounds.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from caffe.blob import Shape, blob_proto_to_array
from caffe.layer import Layer, register
from caffe.proto import caffe_pb2 as pb

# Caffe's kLOG_THRESHOLD (MultinomialLogistic, Infogain) and FLT_MIN (SoftmaxWithLoss) clamps.
LOG_THRESHOLD = 1e-20
FLT_MIN = 1.1754943508222875e-38

# Plain ints (protobuf enum wrappers cannot be read inside torch.compile).
FULL, VALID, BATCH_SIZE, NONE, PRE_FIXED = (
    int(pb.LossParameter.FULL),
    int(pb.LossParameter.VALID),
    int(pb.LossParameter.BATCH_SIZE),
    int(pb.LossParameter.NONE),
    int(pb.LossParameter.PRE_FIXED),
)
BVLC_MODES = (FULL, VALID, BATCH_SIZE, NONE)


def _count(shape: Shape, start: int = 0, end: int | None = None) -> int:
    return math.prod(shape[start:end])


def _legacy_dims(shape: Shape) -> tuple[int, int, int, int] | None:
    """Caffe's (num, channels, height, width) of a blob of at most 4 axes; None for more axes."""
    if len(shape) > 4:
        return None
    padded = tuple(shape) + (1,) * (4 - len(shape))
    return padded  # type: ignore[return-value]


def _eager_cpu(t: torch.Tensor) -> bool:
    """Whether a value check is free here: eager execution on the CPU (no sync, no trace)."""
    if t.device.type != "cpu" or torch.jit.is_tracing():
        return False
    return not torch.compiler.is_compiling()


def _straight_through(value: torch.Tensor, clamped: torch.Tensor) -> torch.Tensor:
    """``clamped``'s value with ``value``'s gradient (Caffe's backward ignores its forward clamps)."""
    return value + (clamped - value).detach()


def at_labels(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[n, index[n, i], i]`` of (N, C, I) ``values``: a gather, or, when compiled, a sum over the
    classes masked to the label's, whose gradient inductor fuses into its kernels (a gather's is ATen's
    scatter-add, 0.3 ms a call on LeNet's (64, 10) scores on this project's CPU)."""
    if not torch.compiler.is_compiling():
        return values.gather(1, index.unsqueeze(1)).squeeze(1)
    classes = torch.arange(values.shape[1], device=values.device).view(1, -1, 1)
    return torch.where(classes == index.unsqueeze(1), values, torch.zeros_like(values)).sum(1)


def _shape_str(shape: Shape) -> str:
    return str(tuple(int(d) for d in shape))


class _LabelledLayer(Layer):
    """Helpers shared by the losses and Accuracy: ignore_label, label geometry and label checks."""

    has_ignore_label = False
    ignore_label = 0

    def read_ignore_label(self, param: pb.LossParameter | pb.AccuracyParameter) -> None:
        self.has_ignore_label = param.HasField("ignore_label")
        self.ignore_label = int(param.ignore_label)

    def label_geometry(self, bottom: list[Shape], axis_param: int, axis_name: str) -> None:
        """Class axis, outer and inner counts; the label blob must hold ``outer * inner`` labels."""
        self.axis = self.check_axis(axis_param, len(bottom[0]), axis_name)
        self.outer = _count(bottom[0], 0, self.axis)
        self.num_classes = bottom[0][self.axis]
        self.inner = _count(bottom[0], self.axis + 1)
        if self.outer * self.inner != _count(bottom[1]):
            raise self.shape_error(
                f"Number of labels must match number of predictions: prediction shape {_shape_str(bottom[0])} "
                f"with {axis_name} {self.axis} needs {self.outer}*{self.inner} = {self.outer * self.inner} labels, "
                f"but the label blob has shape {_shape_str(bottom[1])} ({_count(bottom[1])} labels)"
            )

    def split(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` as (outer, C, inner) and the detached labels as (outer, inner)."""
        return x.reshape(self.outer, self.num_classes, self.inner), label.detach().reshape(self.outer, self.inner)

    def class_labels(
        self, label: torch.Tensor, num_classes: int, what: str
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Integer labels as Caffe reads them (truncated toward zero).

        Returns ``(index, valid, bad)``: ``index`` clamped into ``[0, num_classes)`` (safe to gather
        with), ``valid`` the non-ignored mask (None without ``ignore_label``), ``bad`` the positions
        whose label is out of range and not ignored.
        """
        lab = label.detach().to(torch.long)
        valid = lab != self.ignore_label if self.has_ignore_label else None
        bad = (lab < 0) | (lab >= num_classes)
        if valid is not None:
            bad = bad & valid
        if _eager_cpu(lab) and bool(bad.any()):
            pos = int(bad.reshape(-1).nonzero()[0, 0])
            value = label.detach().reshape(-1)[pos].item()
            ignore = f" and is not the ignore_label {self.ignore_label}" if valid is not None else ""
            raise self.error(
                f"label value {value:g} (label #{pos} in memory order) is outside [0, {num_classes}) "
                f"({num_classes} classes {what}){ignore}"
            )
        return lab.clamp(0, max(num_classes - 1, 0)), valid, bad

    @staticmethod
    def poison(values: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
        """NaN where the label was out of range (only reachable when the eager check is skipped)."""
        return torch.where(bad, torch.full_like(values, float("nan")), values)


class LossLayer(_LabelledLayer):
    """Caffe's LossLayer: two bottoms (data, label), one scalar top with loss weight 1 by default."""

    is_loss = True
    exact_num_bottom = 2
    exact_num_top = 1
    auto_top_blobs = True
    # Bottoms that take no gradient (labels): force_backward skips them and forward detaches them.
    no_grad_bottoms: tuple[int, ...] = (1,)

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index not in self.no_grad_bottoms

    def check_first_dim(self, bottom: list[Shape]) -> None:
        a, b = bottom[0], bottom[1]
        if not a or not b or a[0] != b[0]:
            raise self.shape_error(
                "The data and label should have the same first dimension: bottom[0] has shape "
                f"{_shape_str(a)}, bottom[1] has shape {_shape_str(b)}"
            )

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        self.check_first_dim(bottom)
        return [()]

    def softmax_loss_tops(
        self, per_pos: torch.Tensor, valid: torch.Tensor | None, scores: torch.Tensor
    ) -> list[torch.Tensor]:
        """Tops of a softmax-based loss from per-position losses: the normalized loss (ignored
        positions contribute 0) and, when asked for, the softmax ``prob`` and each position's loss
        (detached, as Caffe ignores their diffs; the third top is R-FCN's, shaped as the labels)."""
        if valid is not None:
            per_pos = torch.where(valid, per_pos, torch.zeros_like(per_pos))
        loss = per_pos.sum() / self.normalizer(self.mode, self.outer, self.inner, valid, scores.dtype)
        if len(self.tops) == 1:
            return [loss]
        tops = [loss, torch.softmax(scores.detach(), dim=self.axis)]
        return [*tops, per_pos.detach()] if len(self.tops) >= 3 else tops

    def reshape_one_label_per_item(self, bottom: list[Shape]) -> list[Shape]:
        """For losses over N x D scores with one class label per item: sets ``num`` and ``dim``."""
        self.check_first_dim(bottom)
        if _count(bottom[1]) != bottom[0][0]:
            raise self.shape_error(
                f"the label blob must hold one label per item: data shape {_shape_str(bottom[0])}, "
                f"label shape {_shape_str(bottom[1])}"
            )
        self.num = bottom[0][0]
        self.dim = _count(bottom[0], 1)
        return [()]

    def read_normalization(self, unset: int = VALID, allowed: tuple[int, ...] = BVLC_MODES) -> int:
        """``loss_param.normalization``; else the legacy ``normalize`` (true: VALID, false: BATCH_SIZE);
        else ``unset`` (VALID, or BATCH_SIZE for SigmoidCrossEntropyLoss). A mode not in ``allowed`` (R-FCN's
        PRE_FIXED, which only its SmoothL1Loss reads) is an error naming the layer."""
        p = self.layer_param.loss_param
        if p.HasField("normalization"):
            mode = int(p.normalization)
            if mode not in allowed:
                name = pb.LossParameter.NormalizationMode.Name(mode)
                raise self.error(f"loss_param.normalization {name} is not read by {self.type} layers")
            return mode
        if p.HasField("normalize"):
            return VALID if p.normalize else BATCH_SIZE
        return unset

    @staticmethod
    def normalizer(
        mode: int, outer: int, inner: int, valid: torch.Tensor | None, dtype: torch.dtype, fixed: float = 1.0
    ) -> float | torch.Tensor:
        """Caffe's get_normalizer: the loss divisor, at least 1 (``valid``: non-ignored mask or None; ``fixed``:
        R-FCN's ``pre_fixed_normalizer`` for PRE_FIXED)."""
        if mode == PRE_FIXED:
            return max(1.0, fixed)
        if mode == FULL:
            return float(max(1, outer * inner))
        if mode == VALID:
            if valid is None:
                return float(max(1, outer * inner))
            return valid.sum().clamp(min=1).to(dtype)
        if mode == BATCH_SIZE:
            return float(max(1, outer))
        if mode == NONE:
            return 1.0
        raise ValueError(f"unknown normalization mode {mode}")


@register("SoftmaxWithLoss", "SoftmaxWithLossOHEM")
class SoftmaxWithLossLayer(LossLayer):
    """Softmax along ``softmax_param.axis`` then the mean negative log-likelihood of the label.

    Optional second top ``prob``: the softmax, detached (Caffe's backward ignores its diff). Optional
    third top (R-FCN's Caffe, where Microsoft/caffe names the layer ``SoftmaxWithLossOHEM``): each
    position's unnormalized loss, 0 where the label is ignored, shaped as the labels, detached.
    """

    exact_num_top = None
    min_top, max_top = 1, 3

    def layer_setup(self, bottom: list[Shape]) -> None:
        self.read_ignore_label(self.layer_param.loss_param)
        self.mode = self.read_normalization()

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        self.check_first_dim(bottom)
        self.label_geometry(bottom, self.layer_param.softmax_param.axis, "softmax axis")
        return [(), bottom[0], bottom[1]][: len(self.tops)]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x, label = self.split(bottom[0], bottom[1])
        index, valid, bad = self.class_labels(label, self.num_classes, f"along softmax axis {self.axis}")
        logp = at_labels(torch.log_softmax(x, dim=1), index)
        logp = _straight_through(logp, logp.clamp(min=math.log(FLT_MIN)))
        tops = self.softmax_loss_tops(self.poison(-logp, bad), valid, bottom[0])
        if len(tops) >= 3:
            tops[2] = tops[2].reshape(bottom[1].shape)
        return tops


@register("MultinomialLogisticLoss")
class MultinomialLogisticLossLayer(LossLayer):
    """``-sum_n log(max(p[n, label_n], 1e-20)) / N`` for probabilities ``p`` flattened to (N, dim)."""

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        return self.reshape_one_label_per_item(bottom)

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        p = bottom[0].reshape(self.num, self.dim)
        index, _, bad = self.class_labels(bottom[1].reshape(self.num), self.dim, "(bottom[0].count / N)")
        prob = p.gather(1, index.unsqueeze(1)).squeeze(1)
        prob = _straight_through(prob, prob.clamp(min=LOG_THRESHOLD))
        return [self.poison(-torch.log(prob), bad).sum() / max(self.num, 1)]


@register("InfogainLoss")
class InfogainLossLayer(LossLayer):
    """Softmax along ``infogain_loss_param.axis``, then ``-sum_l H[label, l] log(max(p_l, 1e-20))``.

    ``H`` (C x C) comes from ``infogain_loss_param.source`` (a binary BlobProto) or a third bottom
    (not differentiated). Optional second top: the softmax, detached.
    """

    exact_num_bottom = None
    min_bottom, max_bottom = 2, 3
    exact_num_top = None
    min_top, max_top = 1, 2
    no_grad_bottoms = (1, 2)

    def layer_setup(self, bottom: list[Shape]) -> None:
        lp = self.layer_param.loss_param
        self.read_ignore_label(lp)
        if lp.HasField("normalize"):
            raise self.error('loss_param.normalize is deprecated for InfogainLoss; use "normalization"')
        self.mode = int(lp.normalization)
        self._h: torch.Tensor | None = None
        self._h_cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        if len(bottom) < 3:
            p = self.layer_param.infogain_loss_param
            if not p.HasField("source"):
                raise self.error("Infogain matrix source must be specified (infogain_loss_param.source)")
            from caffe.protoio import read_binary  # late: keep layer imports light

            proto = read_binary(p.source, pb.BlobProto(), "infogain matrix BlobProto")
            self._h = torch.from_numpy(blob_proto_to_array(proto).astype("float64"))

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        self.check_first_dim(bottom)
        self.label_geometry(bottom, self.layer_param.infogain_loss_param.axis, "infogain axis")
        c = self.num_classes
        if len(bottom) < 3:
            assert self._h is not None  # loaded by layer_setup
            h_shape: Shape = tuple(self._h.shape)
        else:
            h_shape = bottom[2]
        if _count(h_shape) != c * c:
            where = f"source '{self.layer_param.infogain_loss_param.source}'" if len(bottom) < 3 else "bottom[2]"
            raise self.shape_error(
                f"H must be {c}x{c} ({c * c} values) for {c} classes along axis {self.axis} of bottom shape "
                f"{_shape_str(bottom[0])}, but the infogain matrix from {where} has shape {_shape_str(h_shape)}"
            )
        return [(), bottom[0]] if len(self.tops) >= 2 else [()]

    def _matrix(self, bottom: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        c = self.num_classes
        if len(bottom) >= 3:
            return bottom[2].detach().reshape(c, c).to(like.dtype)
        key = (like.device, like.dtype)
        h = self._h_cache.get(key)
        if h is None:
            assert self._h is not None
            h = self._h.reshape(c, c).to(device=like.device, dtype=like.dtype)
            self._h_cache = {key: h}
        return h

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x, label = self.split(bottom[0], bottom[1])
        h = self._matrix(bottom, x)
        index, valid, bad = self.class_labels(label, self.num_classes, f"along infogain axis {self.axis}")
        logp = torch.log_softmax(x, dim=1)
        logp = _straight_through(logp, logp.clamp(min=math.log(LOG_THRESHOLD)))
        rows = h[index].movedim(-1, 1)  # (outer, C, inner): H[label, l] at class l
        return self.softmax_loss_tops(self.poison(-(rows * logp).sum(1), bad), valid, bottom[0])


@register("EuclideanLoss")
class EuclideanLossLayer(LossLayer):
    """``sum((a - b)^2) / (2N)``, with gradients to both bottoms."""

    no_grad_bottoms = ()

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        self.check_first_dim(bottom)
        if _count(bottom[0], 1) != _count(bottom[1], 1):
            raise self.shape_error(
                f"Inputs must have the same dimension: bottom[0] has shape {_shape_str(bottom[0])}, "
                f"bottom[1] has shape {_shape_str(bottom[1])}"
            )
        return [()]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        a = bottom[0]
        diff = a - bottom[1].reshape(a.shape)
        return [(diff * diff).sum() / max(a.shape[0], 1) / 2]


@register("HingeLoss")
class HingeLossLayer(LossLayer):
    """One-vs-all hinge: ``sum_nk max(0, 1 - t_nk x_nk)^p / N``, t = +1 at the label and -1 elsewhere."""

    def layer_setup(self, bottom: list[Shape]) -> None:
        norm = int(self.layer_param.hinge_loss_param.norm)
        if norm not in (pb.HingeLossParameter.L1, pb.HingeLossParameter.L2):
            raise self.error(f"hinge_loss_param.norm must be L1 or L2, got {norm}")
        self.squared = norm == pb.HingeLossParameter.L2

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        return self.reshape_one_label_per_item(bottom)

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0].reshape(self.num, self.dim)
        index, _, bad = self.class_labels(bottom[1].reshape(self.num), self.dim, "(bottom[0].count / N)")
        sign = torch.full_like(x, -1.0).scatter(1, index.unsqueeze(1), 1.0)
        margin = torch.relu(1 - sign * x)
        if self.squared:
            margin = margin * margin
        per_item = self.poison(margin.sum(1), bad)
        return [per_item.sum() / max(self.num, 1)]


def smooth_l1(x: torch.Tensor, sigma2: float = 1.0) -> torch.Tensor:
    """Elementwise Smooth L1 of the R-CNN forks: ``0.5 * sigma2 * x^2`` where ``|x| < 1 / sigma2``, else
    ``|x| - 0.5 / sigma2`` (sigma2 = 0: all zero, as the forks' ``1 / 0`` threshold gives)."""
    a = x.abs()
    if sigma2 == 0:
        return x * 0
    return torch.where(a < 1.0 / sigma2, 0.5 * sigma2 * x * x, a - 0.5 / sigma2)


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLossLayer(LossLayer):
    """Cross-entropy of ``sigmoid(x)`` against targets of the same count, computed stably.

    Normalisation defaults to BATCH_SIZE (Caffe's historical default) when neither
    ``normalization`` nor ``normalize`` is given.
    """

    def layer_setup(self, bottom: list[Shape]) -> None:
        self.read_ignore_label(self.layer_param.loss_param)
        self.mode = self.read_normalization(unset=BATCH_SIZE)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        self.check_first_dim(bottom)
        if _count(bottom[0]) != _count(bottom[1]):
            raise self.shape_error(
                "SIGMOID_CROSS_ENTROPY_LOSS layer inputs must have the same count: bottom[0] has shape "
                f"{_shape_str(bottom[0])}, bottom[1] has shape {_shape_str(bottom[1])}"
            )
        self.outer = bottom[0][0]
        self.inner = _count(bottom[0], 1)
        return [()]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0]
        target = bottom[1].detach().reshape(x.shape).to(x.dtype)
        # Autograd of this op is exactly Caffe's (sigmoid(x) - t); its value is the stable formula.
        per_elem = F.binary_cross_entropy_with_logits(x, target, reduction="none")
        valid = None
        if self.has_ignore_label:
            valid = target.to(torch.long) != self.ignore_label
            per_elem = torch.where(valid, per_elem, torch.zeros_like(per_elem))
        return [per_elem.sum() / self.normalizer(self.mode, self.outer, self.inner, valid, x.dtype)]


@register("ContrastiveLoss")
class ContrastiveLossLayer(LossLayer):
    """Hadsell et al.'s contrastive loss on pairs (a, b) with similarity y (bottom 2, not differentiated).

    ``1/(2N) sum_n [y d^2 + (1-y) max(margin - d, 0)^2]`` with ``d = ||a - b||``; ``legacy_version``
    uses ``max(margin - d^2, 0)`` for dissimilar pairs. A pair is similar when ``int(y) != 0``.
    """

    exact_num_bottom = 3
    no_grad_bottoms = (2,)

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.contrastive_loss_param
        self.margin = float(p.margin)
        self.legacy = bool(p.legacy_version)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        self.check_first_dim(bottom)
        a, b, y = (_legacy_dims(s) for s in bottom)
        ok = (
            a is not None
            and b is not None
            and y is not None
            and a[2:] == (1, 1)
            and b[2:] == (1, 1)
            and a[1] == b[1]
            and y[1:] == (1, 1, 1)
            and y[0] == a[0]
        )
        if not ok:
            raise self.shape_error(
                "ContrastiveLoss needs bottoms of shapes N x C (x 1 x 1), N x C (x 1 x 1) and N (x 1 x 1 x 1), "
                f"got {', '.join(_shape_str(s) for s in bottom)}"
            )
        self.num, self.channels = bottom[0][0], _count(bottom[0], 1)
        return [()]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        margin = self.margin
        a = bottom[0].reshape(self.num, self.channels)
        b = bottom[1].reshape(self.num, self.channels)
        similar = bottom[2].detach().reshape(self.num).to(torch.long) != 0
        diff = a - b
        dist_sq = (diff * diff).sum(1)
        if self.legacy:
            dissimilar = torch.relu(margin - dist_sq)
        else:
            # Caffe differentiates d = sqrt(dist_sq) as diff / (d + 1e-4); keep d's value, take that slope.
            d = torch.sqrt(dist_sq.detach())
            d = d + (dist_sq - dist_sq.detach()) / (2 * (d + 1e-4))
            dissimilar = torch.relu(margin - d) ** 2
        per_pair = torch.where(similar, dist_sq, dissimilar)
        return [per_pair.sum() / max(self.num, 1) / 2]


@register("Accuracy")
class AccuracyLayer(_LabelledLayer):
    """Top-k accuracy; optional second top: per-class accuracy (shape (C,), 0 for absent classes).

    A position counts as correct when fewer than ``top_k`` other classes score at least as high as the
    true class (Caffe master's rule: ties count against the true class). No backward.
    """

    exact_num_bottom = 2
    min_top, max_top = 1, 2

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.accuracy_param
        self.top_k = int(p.top_k)
        self.read_ignore_label(p)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        label_count = _count(bottom[1])
        if label_count == 0:
            raise self.shape_error(f"no labels: predictions {_shape_str(bottom[0])}, labels {_shape_str(bottom[1])}")
        classes = _count(bottom[0]) // label_count
        if self.top_k > classes and not getattr(self, "_warned_top_k", False):
            # BVLC Caffe refuses this; DIGITS' Caffe accepted it, and the beginners' guide relies on it
            # (GoogLeNet's top-5 accuracy layers fine-tuned to 2 classes). Every prediction is then correct.
            logging.getLogger("caffe").warning(
                "%s: top_k %d is larger than the number of classes (%d); its accuracy is always 1",
                self.name,
                self.top_k,
                classes,
            )
            self._warned_top_k = True
        self.label_geometry(bottom, self.layer_param.accuracy_param.axis, "axis")
        return [(), (self.num_classes,)] if len(self.tops) >= 2 else [()]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        c = self.num_classes
        x, label = self.split(bottom[0].detach(), bottom[1])
        index, valid, bad = self.class_labels(label, c, f"along axis {self.axis}")
        true_score = x.gather(1, index.unsqueeze(1))
        at_least = (x >= true_score).sum(1)  # includes the true class itself
        correct = (at_least <= self.top_k).to(x.dtype)
        counted = torch.ones_like(correct) if valid is None else valid.to(x.dtype)
        hits = correct * counted
        total = counted.sum()
        accuracy = self.poison(hits.sum() / total.clamp(min=1), bad.any())
        if len(self.tops) < 2:
            return [accuracy]
        flat = index.reshape(-1)
        ok = (~bad).reshape(-1).to(x.dtype)
        per_count = torch.zeros(c, dtype=x.dtype, device=x.device).index_add(0, flat, counted.reshape(-1) * ok)
        per_hits = torch.zeros(c, dtype=x.dtype, device=x.device).index_add(0, flat, hits.reshape(-1) * ok)
        per_class = torch.where(per_count > 0, per_hits / per_count.clamp(min=1), torch.zeros_like(per_hits))
        return [accuracy, per_class]
