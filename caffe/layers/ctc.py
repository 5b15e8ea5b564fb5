"""Connectionist temporal classification for text recognition: senlinuc/caffe_ocr's WarpCTCLoss and
CTCGreedyDecoder, BVLC pull request 4681's CTCLoss, jolibrain/caffe's (DeepDetect's) CtcLoss and
LabelsequenceAccuracy.

Both read a time-major (T, N, C) blob of unnormalised class scores (a fourth axis of 1 is allowed), class
``blank_index`` (0 by default) being CTC's blank.

**WarpCTCLoss** (the fork's wrapper of Baidu's warp-ctc, after BVLC pull request 4681) takes the softmax over C
itself. Its bottoms, after the scores:

* 2 bottoms: the labels, (N, L, ...) with L labels per item; entries equal to the blank are padding and are
  skipped wherever they stand; every item uses all T steps.
* 3 bottoms: sequence indicators (T, N), 0 where a sequence starts (item n's length is the first t >= 1 whose
  indicator rounds to 0, else T), and target sequences (T, N) ending at the first negative entry, rounded; with
  blank 0 every target is shifted up by one. An item without targets must have length <= 1 and is skipped.
* 4 bottoms: the lengths (N), the label lengths (N) and the targets (L, N).

The loss is the mean over the items of -log p(labels | scores). The gradient is the fork's: it is written
during forward as the gradient of the *sum* over the items (N times that of the mean shown), times the top's
diff (the loss weight; the fork ignores it, the same at the only weight its nets use, 1). An item whose labels
cannot be aligned in its steps (more labels and repeats than steps) costs 0 and gets no gradient, as in
warp-ctc. ``ctc_loss_param`` fields other than ``blank_index`` are not read by the fork and not here.

**CTCGreedyDecoder** takes each step's best class (the first on ties), merges repeats
(``ctc_decoder_param.ctc_merge_repeated``) and drops blanks; ``blank_index`` < 0 means the last class. With one
bottom its top is the decoded classes, (N, T, 1, 1), -1 after each item's end. With the labels as a second bottom
(N, L, ...; read up to a negative entry, blanks skipped) its top is (1, 2, 1, 1): 1 minus the mean over the items
of edit distance / longer length, and the fraction of items decoded exactly (an item with neither labels nor
decoded classes has distance 0 but, as in the fork, is not counted exact). It has no backward.

**CtcLoss** (DeepDetect's, also over warp-ctc) is WarpCTCLoss's two-bottom case with ``ctc_loss_param``'s
``blank_label`` as the blank: every item reads the first ``time_step`` steps (at most T), ``alphabet_size`` must
be C, and a batch whose labels are all blank is refused; value and gradient as WarpCTCLoss's.

**CTCLoss** (BVLC pull request 4681, its own CTC recursion) reads WarpCTCLoss's three-bottom layout without the
shift: targets are the classes themselves; the blank is ``blank_index`` when set, else (the pull request's
default, -1) the last class. A target at or past C, or equal to the blank, ends the item's targets (a later valid
one is refused); ``preprocess_collapse_repeated`` merges equal neighbouring targets first. Value the mean cost,
gradient that of the summed costs (times the loss weight, which the pull request ignores too). An item whose
targets cannot be aligned in its steps costs infinity (so does the mean) and its gradient is its softmax, as
there. ``output_delay`` and ``ctc_merge_repeated: false`` are refused; ``loss_calculation_t`` changes nothing
(the path sum is the same at every step).

**LabelsequenceAccuracy** reads batch-major (N, T, C) scores and (N, L) labels: the fraction of items whose
best path (repeats merged, ``labelsequence_accuracy_param.blank_label`` dropped) is their labels without blanks.
Its top is a scalar; it has no backward.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from caffe.blob import Shape
from caffe.layer import Layer, register


def _sequence_dims(layer: Layer, shape: Shape) -> tuple[int, int, int]:
    """(T, N, C) of a (T, N, C) or (T, N, C, 1) score blob; ShapeError naming the layer otherwise."""
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] != 1):
        raise layer.shape_error(f"bottom 0 must be (T, N, C) or (T, N, C, 1) scores, got shape {tuple(shape)}")
    return int(shape[0]), int(shape[1]), int(shape[2])


def _label_rows(layer: Layer, shape: Shape, items: int) -> int:
    """L of an (N, L, 1, ...) label blob for ``items`` items."""
    if not shape or shape[0] != items or math.prod(shape[2:]) != 1:
        raise layer.shape_error(f"bottom 1 must be (N, L) labels with N = {items}, got shape {tuple(shape)}")
    return int(shape[1]) if len(shape) > 1 else 1


def greedy_decode(scores: torch.Tensor, blank: int, merge_repeated: bool) -> list[list[int]]:
    """Best-path decoding of (T, N, C) scores: each item's classes, repeats merged if asked, blanks dropped."""
    best = scores.argmax(dim=2).T.tolist()  # (N, T); argmax keeps the first of equal scores, as the fork
    out = []
    for path in best:
        seq, prev = [], -1
        for c in path:
            if c != blank and not (merge_repeated and c == prev):
                seq.append(c)
            prev = c
        out.append(seq)
    return out


def edit_distance(a: list[int], b: list[int]) -> int:
    """Levenshtein distance (insertions, deletions and substitutions cost 1)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        diag, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            diag, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diag + (x != y))
    return row[-1]


@register("WarpCTCLoss")
class WarpCTCLossLayer(Layer):
    """CTC loss over (T, N, C) scores; labels in one of the fork's three layouts (see the module)."""

    is_loss = True
    min_bottom, max_bottom = 2, 4
    exact_num_top = 1
    auto_top_blobs = True
    traceable = False  # label lengths are read as numbers

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def layer_setup(self, bottom: list[Shape]) -> None:
        self._blank = int(self.layer_param.ctc_loss_param.blank_index)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        steps, items, classes = _sequence_dims(self, bottom[0])
        if not 0 <= self._blank < classes:
            raise self.error(f"ctc_loss_param.blank_index {self._blank} is not one of the {classes} classes")
        if len(bottom) == 2:
            _label_rows(self, bottom[1], items)
        elif len(bottom) == 3:
            for i, name in ((1, "sequence indicators"), (2, "target sequences")):
                if tuple(bottom[i][:2]) != (steps, items) or math.prod(bottom[i]) != steps * items:
                    raise self.shape_error(f"bottom {i} ({name}) must be ({steps}, {items}), got {tuple(bottom[i])}")
        else:
            for i, name in ((1, "sequence lengths"), (2, "label lengths")):
                if math.prod(bottom[i]) != items:
                    raise self.shape_error(f"bottom {i} ({name}) must hold {items} values, got {tuple(bottom[i])}")
            if len(bottom[3]) < 2 or bottom[3][1] != items or math.prod(bottom[3][2:]) != 1:
                raise self.shape_error(f"bottom 3 (targets) must be (L, {items}), got {tuple(bottom[3])}")
        return [()]

    def _targets(self, bottom: list[torch.Tensor], steps: int) -> tuple[list[list[int]], list[int]]:
        """Each item's target classes and its number of steps, from the fork's label layouts."""
        items = bottom[0].shape[1]
        if len(bottom) == 2:
            rows = bottom[1].detach().reshape(items, -1).to(torch.float64).trunc().long().tolist()
            return [[c for c in row if c != self._blank] for row in rows], [steps] * items
        if len(bottom) == 3:
            offset = 1 if self._blank == 0 else 0
            indicated = self._indicated(bottom, steps)
            return [[int(v + 0.5) + offset for v in values] for values, _ in indicated], [n for _, n in indicated]
        seq_len = bottom[1].detach().reshape(-1).to(torch.float64).trunc().long().tolist()
        lab_len = bottom[2].detach().reshape(-1).to(torch.float64).trunc().long().tolist()
        table = bottom[3].detach().reshape(bottom[3].shape[0], items).to(torch.float64).trunc().long()
        targets = []
        for n in range(items):
            if not 0 <= seq_len[n] <= steps:
                raise self.error(f"item {n} has sequence length {seq_len[n]}, outside [0, {steps}]")
            if not 0 <= lab_len[n] <= table.shape[0]:
                raise self.error(f"item {n} has label length {lab_len[n]}, outside [0, {table.shape[0]}]")
            targets.append(table[: lab_len[n], n].tolist())
        return targets, seq_len

    def _indicated(self, bottom: list[torch.Tensor], steps: int) -> list[tuple[list[float], int]]:
        """The sequence-indicator layout's items: each one's target values (up to the first negative) and its
        number of steps (up to the next indicator that rounds to 0; 0 for an item without targets)."""
        items = bottom[0].shape[1]
        indicator = bottom[1].detach().reshape(steps, items).to(torch.float64)
        target = bottom[2].detach().reshape(steps, items).to(torch.float64)
        out = []
        for n in range(items):
            starts = ((indicator[1:, n] + 0.5).trunc() == 0).nonzero()
            length = int(starts[0, 0]) + 1 if len(starts) else steps
            ends = (target[:, n] < 0).nonzero()
            values = target[: int(ends[0, 0]) if len(ends) else steps, n].tolist()
            if not values:
                if length > 1:
                    raise self.error(f"item {n} has no targets but a sequence of {length} steps")
                length = 0
            if len(values) > length:
                raise self.error(f"item {n} has {len(values)} targets for a sequence of {length} steps")
            out.append((values, length))
        return out

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self._loss(bottom[0], *self._targets(bottom, bottom[0].shape[0]))]

    def _loss(self, scores: torch.Tensor, targets: list[list[int]], lengths: list[int]) -> torch.Tensor:
        """The top: the mean cost of the items' ``targets`` in their first ``lengths`` steps, with the gradient of
        the summed costs."""
        steps, items, classes = scores.shape[0], scores.shape[1], scores.shape[2]
        for n, seq in enumerate(targets):
            bad = [c for c in seq if not 0 <= c < classes or c == self._blank]
            if bad:
                raise self.error(
                    f"item {n} has label {bad[0]}: the blank ({self._blank}) or not one of the {classes} classes"
                )
        keep = [n for n in range(items) if lengths[n] > 0]  # a skipped item (no steps) costs 0
        total = scores.new_zeros(())
        if keep:
            log_probs = F.log_softmax(scores.reshape(steps, items, classes), dim=2)[:, keep]
            flat = [c for n in keep for c in targets[n]]
            if log_probs.dtype not in (torch.float32, torch.float64):
                log_probs = log_probs.float()  # reduced precision: the recursion in float32
            device = scores.device
            costs = F.ctc_loss(
                log_probs,
                torch.tensor(flat, dtype=torch.long, device=device),
                torch.tensor([lengths[n] for n in keep], dtype=torch.long, device=device),
                torch.tensor([len(targets[n]) for n in keep], dtype=torch.long, device=device),
                blank=self._blank,
                reduction="none",
                zero_infinity=True,  # warp-ctc: an impossible alignment costs 0 and gets no gradient
            )
            total = costs.sum().to(scores.dtype)
        # value: the mean over the items; gradient: that of the sum (the fork's)
        return total + (total / items - total).detach()


@register("CtcLoss")
class CtcLossLayer(WarpCTCLossLayer):
    """DeepDetect's CTC loss: (T, N, C) scores and (N, L) labels padded with the blank (see the module)."""

    min_bottom = max_bottom = 2

    def layer_setup(self, bottom: list[Shape]) -> None:
        param = self.layer_param.ctc_loss_param
        self._blank, self._steps = int(param.blank_label), int(param.time_step)
        classes = _sequence_dims(self, bottom[0])[2]
        if int(param.alphabet_size) != classes:
            raise self.error(f"ctc_loss_param.alphabet_size {param.alphabet_size} must be the {classes} classes C")
        if self._steps <= 0:
            raise self.error("ctc_loss_param.time_step must be set (> 0)")

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        steps = _sequence_dims(self, bottom[0])[0]
        if self._steps > steps:
            raise self.shape_error(f"ctc_loss_param.time_step {self._steps} is more than the bottom's {steps} steps")
        return super().reshape(bottom)

    def _targets(self, bottom: list[torch.Tensor], steps: int) -> tuple[list[list[int]], list[int]]:
        targets, _ = super()._targets(bottom, steps)
        if not any(targets):
            raise self.error(f"every label is the blank ({self._blank}): no item has a target")
        return targets, [self._steps] * len(targets)


@register("CTCLoss")
class CTCLossLayer(WarpCTCLossLayer):
    """BVLC pull request 4681's CTC loss: scores, sequence indicators and targets, each (T, N) (see the module)."""

    min_bottom = max_bottom = 3

    def layer_setup(self, bottom: list[Shape]) -> None:
        param = self.layer_param.ctc_loss_param
        classes = _sequence_dims(self, bottom[0])[2]
        # the pull request's default blank is the last class (caffe_ocr's, for WarpCTCLoss, is 0)
        blank = int(param.blank_index) if param.HasField("blank_index") else -1
        self._blank = classes - 1 if blank < 0 else blank
        if param.output_delay:
            raise self.error("ctc_loss_param.output_delay is not supported (the pull request marks it untested)")
        if not param.ctc_merge_repeated:
            raise self.error("ctc_loss_param.ctc_merge_repeated: false (repeats kept apart) is not supported")

    def _targets(self, bottom: list[torch.Tensor], steps: int) -> tuple[list[list[int]], list[int]]:
        classes = bottom[0].shape[2]
        collapse = self.layer_param.ctc_loss_param.preprocess_collapse_repeated
        targets, lengths = [], []
        for n, (values, length) in enumerate(self._indicated(bottom, steps)):
            labels: list[int] = []
            ended = False
            for i, value in enumerate(values):
                if i and collapse and value == values[i - 1]:
                    continue
                label = int(value + 0.5)
                if label >= classes or label == self._blank:
                    ended = True  # the pull request: a warning, and the sequence ends here
                elif ended:
                    raise self.error(f"item {n} has label {label} after an ending label (the blank or >= {classes})")
                else:
                    labels.append(label)
            targets.append(labels)
            lengths.append(length)
        return targets, lengths

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        scores = bottom[0]
        steps, items, classes = scores.shape[0], scores.shape[1], scores.shape[2]
        targets, lengths = self._targets(bottom, steps)
        loss = self._loss(scores, targets, lengths)
        impossible = [n for n in range(items) if lengths[n] and not _alignable(targets[n], lengths[n])]
        if not impossible:
            return [loss]
        # the pull request: such an item costs infinity and its gradient is its softmax (no path to remove)
        probs = F.softmax(scores.reshape(steps, items, classes), dim=2).detach()
        mask = torch.zeros(steps, items, 1, dtype=scores.dtype, device=scores.device)
        for n in impossible:
            mask[: lengths[n], n] = 1
        surrogate = (probs * mask * scores.reshape(steps, items, classes)).sum()
        return [loss + surrogate + (torch.full_like(loss, math.inf) - surrogate).detach()]


def _alignable(labels: list[int], steps: int) -> bool:
    """Whether CTC can emit ``labels`` in ``steps`` steps (a blank between each pair of equal neighbours)."""
    return len(labels) + sum(a == b for a, b in itertools.pairwise(labels)) <= steps


@register("LabelsequenceAccuracy")
class LabelsequenceAccuracyLayer(Layer):
    """DeepDetect's whole-sequence accuracy: (N, T, C) scores decoded best-path against (N, L) labels."""

    exact_num_bottom, exact_num_top = 2, 1
    traceable = False

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        if len(bottom[0]) != 3:
            raise self.shape_error(f"bottom 0 must be (N, T, C) scores, got shape {tuple(bottom[0])}")
        items, _, classes = bottom[0]
        self._blank = int(self.layer_param.labelsequence_accuracy_param.blank_label)
        if not 0 <= self._blank < classes:
            raise self.error(
                f"labelsequence_accuracy_param.blank_label {self._blank} is not one of the {classes} classes"
            )
        _label_rows(self, bottom[1], items)
        return [()]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        scores = bottom[0].detach()
        items = scores.shape[0]
        decoded = greedy_decode(scores.transpose(0, 1), self._blank, merge_repeated=True)
        rows = bottom[1].detach().reshape(items, -1).to(torch.float64).trunc().long().tolist()
        exact = sum(seq == [c for c in row if c != self._blank] for seq, row in zip(decoded, rows, strict=True))
        return [torch.tensor(exact / items, dtype=scores.dtype, device=scores.device)]


@register("CTCGreedyDecoder")
class CTCGreedyDecoderLayer(Layer):
    """Best-path decoding: the classes (one bottom) or the edit and whole-sequence accuracies (with labels)."""

    min_bottom, max_bottom = 1, 2
    exact_num_top = 1
    traceable = False

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        steps, items, classes = _sequence_dims(self, bottom[0])
        blank = int(self.layer_param.ctc_decoder_param.blank_index)
        self._blank = classes - 1 if blank < 0 else blank
        if len(bottom) == 1:
            return [(items, steps, 1, 1)]
        _label_rows(self, bottom[1], items)
        return [(1, 2, 1, 1)]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        scores = bottom[0].detach()
        steps, items = scores.shape[0], scores.shape[1]
        decoded = greedy_decode(
            scores.reshape(steps, items, -1), self._blank, self.layer_param.ctc_decoder_param.ctc_merge_repeated
        )
        if len(bottom) == 1:
            out = torch.full((items, steps), -1.0, dtype=scores.dtype)
            for n, seq in enumerate(decoded):
                out[n, : len(seq)] = torch.tensor(seq, dtype=scores.dtype)
            return [out.reshape(items, steps, 1, 1).to(scores.device)]
        rows = bottom[1].detach().reshape(items, -1).to(torch.float64).tolist()
        distance, exact = 0.0, 0
        for row, seq in zip(rows, decoded, strict=True):
            target = []
            for value in row:
                if value < 0:
                    break
                label = int(value + 0.5)  # the fork's rounding (toward zero after adding 0.5)
                if label != self._blank:
                    target.append(label)
            longer = max(len(target), len(seq))
            if longer == 0:  # the fork: no distance, yet not counted as exact
                continue
            d = edit_distance(target, seq)
            distance += d / longer
            exact += d == 0
        out = torch.tensor([1.0 - distance / items, exact / items], dtype=scores.dtype)
        return [out.reshape(1, 2, 1, 1).to(scores.device)]
