"""SSD's training loss, MultiBoxLoss (weiliu89/caffe, branch ``ssd``), with the fork's semantics.

Bottoms: the location predictions (N, P*L*4; L = 1 with ``share_location``, else one set per class), the
confidences (N, P*C), the priors (1, 2, P*4: corners, then variances, as PriorBox writes them) and the
ground truth (1, 1, G, 8 rows ``[image, label, instance, xmin, ymin, xmax, ymax, difficult]``, as the
AnnotatedData layer writes them; rows whose image is -1 are padding). One scalar top.

Per image, priors are matched to ground-truth boxes by Jaccard overlap: first bipartite (repeatedly the
best remaining prior/box pair, ties to the lower prior then the lower box), then, with PER_PREDICTION,
every other prior to its best box overlapping it by ``overlap_threshold`` or more. With MAX_NEGATIVE
mining, the unmatched priors overlapping no box by ``neg_overlap`` are ranked by their background
confidence loss and the worst ``neg_pos_ratio`` times the positives kept (ties to the lower prior; the
fork's sort leaves them unspecified); with HARD_EXAMPLE, every prior is ranked by its confidence plus
location loss, ``sample_size`` kept, and the positives not kept are dropped. ``nms_param`` (a threshold > 0)
puts the ranking through the fork's NMS, on the priors (``use_prior_for_nms``) or the decoded predictions.
The loss is ``loc_weight * Lloc / n + Lconf / n``: ``Lloc`` the Smooth L1 (or half squared L2) sum over the
matched priors' encoded offsets, ``Lconf`` the softmax (or logistic) cross-entropy sum over the positives and
the mined negatives (all priors without mining), ``n`` the ``loss_param.normalization`` divisor (VALID: the
number of matches; at least 1). A term whose bottom has ``propagate_down: false`` is left out, as in the fork.

The matching and mining are selections made on the CPU from the values (no gradient); the loss is then
ordinary tensor code, whose gradient is the fork's backward. Where the fork's backward ignores its
forward (``encode_variance_in_target`` divides the predictions by the variances but passes the gradient
through undivided; ``log(max(p, FLT_MIN))``), the gradient follows the fork.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from caffe.blob import Shape
from caffe.data.bbox import box_areas, jaccard_matrix
from caffe.layer import register
from caffe.layers.detection import CENTER_SIZE, CORNER, CORNER_SIZE, decode_boxes
from caffe.layers.loss import FLT_MIN, VALID, LossLayer, _straight_through, smooth_l1
from caffe.proto import caffe_pb2 as pb

P = pb.MultiBoxLossParameter
_F32 = np.float32
log = logging.getLogger("caffe")


def _rows(matches: list[dict[int, tuple[np.ndarray, np.ndarray]]]) -> list[tuple[int, int, int, int]]:
    """(image, loc class key, prior, box) of every match, in the fork's order (image, class, prior)."""
    return [
        (i, c, int(j), int(m[j]))
        for i, per_class in enumerate(matches)
        for c, (m, _) in sorted(per_class.items())
        for j in np.flatnonzero(m > -1)
    ]


def match_priors(
    boxes: np.ndarray,
    gt: np.ndarray,
    match_type: int,
    threshold: float,
    ignore_cross_boundary: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The fork's MatchBBox: for each of ``boxes`` (priors or decoded predictions) the index of its ground-truth
    box (-1: none; -2: ignored as crossing the image's boundary) and its best overlap with any box."""
    n = len(boxes)
    match = np.full(n, -1, dtype=np.int64)
    best = np.zeros(n, dtype=_F32)
    if len(gt) == 0:
        return match, best
    if ignore_cross_boundary:
        crossing = ((boxes < 0) | (boxes > 1)).any(axis=1)
        match[crossing] = -2
    overlaps = jaccard_matrix(boxes.astype(_F32), gt.astype(_F32)).astype(_F32)
    overlaps[match == -2] = 0
    present = overlaps > 1e-6
    best = np.where(present, overlaps, _F32(0)).max(axis=1)
    free_gt = np.ones(len(gt), dtype=bool)
    candidates = np.where(present, overlaps, -np.inf)
    while free_gt.any():  # bipartite: the best remaining pair, first in (prior, box) order on ties
        pool = np.where((match == -1)[:, None] & free_gt[None, :], candidates, -np.inf)
        flat = int(np.argmax(pool))
        i, j = divmod(flat, len(gt))
        if pool[i, j] == -np.inf:
            break
        match[i], best[i] = j, overlaps[i, j]
        free_gt[j] = False
    if match_type == P.PER_PREDICTION:
        rest = np.flatnonzero(match == -1)
        good = np.where(present[rest] & (overlaps[rest] >= _F32(threshold)), overlaps[rest], -np.inf)
        j = np.argmax(good, axis=1) if len(rest) else np.zeros(0, dtype=np.int64)
        found = good[np.arange(len(rest)), j] > -np.inf if len(rest) else np.zeros(0, dtype=bool)
        match[rest[found]] = j[found]
        best[rest[found]] = overlaps[rest[found], j[found]]
    return match, best


def encode_boxes(
    gt: np.ndarray, priors: np.ndarray, variances: np.ndarray, code_type: int, variance_in_target: bool
) -> np.ndarray:
    """The fork's EncodeBBox of (M, 4) ground-truth corners against their (M, 4) priors, in float32 (with
    ``variance_in_target`` the variances are left out here: the loss divides both sides by them)."""
    gt, priors = gt.astype(_F32), priors.astype(_F32)
    var = np.ones_like(variances, dtype=_F32) if variance_in_target else variances.astype(_F32)
    if code_type == CORNER:
        return ((gt - priors) / var).astype(_F32)
    pw, ph = priors[:, 2] - priors[:, 0], priors[:, 3] - priors[:, 1]
    if code_type == CORNER_SIZE:
        size = np.stack([pw, ph, pw, ph], axis=1)
        return ((gt - priors) / size / var).astype(_F32)
    pcx, pcy = (priors[:, 0] + priors[:, 2]) / _F32(2), (priors[:, 1] + priors[:, 3]) / _F32(2)
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    gcx, gcy = (gt[:, 0] + gt[:, 2]) / _F32(2), (gt[:, 1] + gt[:, 3]) / _F32(2)
    out = np.stack(
        [
            (gcx - pcx) / pw / var[:, 0],
            (gcy - pcy) / ph / var[:, 1],
            np.log((gw / pw).astype(np.float64)).astype(_F32) / var[:, 2],
            np.log((gh / ph).astype(np.float64)).astype(_F32) / var[:, 3],
        ],
        axis=1,
    )
    return out.astype(_F32)


def prior_conf_losses(conf: torch.Tensor, labels: np.ndarray, logistic: bool) -> np.ndarray:
    """(N, P) float32 confidence loss of each prior (conf (N, P, C), computed where it lies, in float32) against its
    label (N, P), as the fork's ComputeConfLoss: softmax ``-log(max(p, FLT_MIN))``; logistic the cross-entropy summed
    over the classes. Only this (N, P) table leaves the device."""
    x = conf.detach().float()
    index = torch.from_numpy(labels).to(x.device)
    if logistic:
        target = torch.nn.functional.one_hot(index, x.shape[-1]).to(x.dtype)
        losses = F.binary_cross_entropy_with_logits(x, target, reduction="none").sum(dim=-1)
    else:
        losses = -torch.log_softmax(x, dim=-1).gather(-1, index[..., None])[..., 0].clamp(min=math.log(FLT_MIN))
    return losses.to("cpu").numpy()


def loc_terms(d: torch.Tensor, loss_type: int) -> torch.Tensor:
    """Each coordinate's location loss for the differences ``d``: Smooth L1, or half the square (L2)."""
    if loss_type == P.L2:
        return 0.5 * d * d
    return smooth_l1(d)


def nms_by_loss(boxes: np.ndarray, scores: np.ndarray, threshold: float, top_k: int) -> list[int]:
    """The fork's ApplyNMS: indices by descending score (stable; the first ``top_k`` when > -1), each kept unless
    it overlaps a kept one by more than ``threshold``; boxes under 1e-5 in area are dropped; at most ``top_k``."""
    order = np.argsort(-scores, kind="stable")
    alive = order[:top_k] if top_k > -1 else order
    areas = box_areas(boxes)
    keep: list[int] = []
    while len(alive):
        best, alive = int(alive[0]), alive[1:]
        if areas[best] < 1e-5:
            continue
        keep.append(best)
        if -1 < top_k <= len(keep):
            break
        overlap = jaccard_matrix(boxes[best][None], boxes[alive])[0]
        alive = alive[(areas[alive] >= 1e-5) & ~(overlap > threshold)]
    return keep


@register("MultiBoxLoss")
class MultiBoxLossLayer(LossLayer):
    """SSD's MultiBoxLoss: matching, hard negative mining, Smooth L1 + softmax losses; see the module docstring."""

    exact_num_bottom = 4
    no_grad_bottoms = (2, 3)
    traceable = False  # the matching reads the values on the CPU

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.multibox_loss_param
        self.require(p.HasField("num_classes"), "multibox_loss_param: must specify num_classes")
        self.require(p.num_classes >= 1, f"num_classes must be at least 1, got {p.num_classes}")
        self.classes = int(p.num_classes)
        self.loc_classes = 1 if p.share_location else self.classes
        self.background = int(p.background_label_id)
        self.mining = int(p.mining_type)
        if p.HasField("do_neg_mining"):
            self.require(
                p.do_neg_mining == (self.mining != P.NONE),
                "do_neg_mining (deprecated) contradicts mining_type; set mining_type only",
            )
        self.require(
            self.mining != P.HARD_EXAMPLE or p.sample_size > 0, f"sample_size must be positive, got {p.sample_size}"
        )
        self.require(self.mining == P.NONE or p.share_location, "negative mining needs share_location: true")
        self.logistic = p.conf_loss_type == P.LOGISTIC
        if not self.logistic:
            self.require(
                0 <= self.background < self.classes,
                f"background_label_id {self.background} must be within [0, num_classes) for the softmax loss",
            )
        if p.map_object_to_agnostic:
            self.require(
                self.classes == (2 if self.background >= 0 else 1),
                "map_object_to_agnostic needs num_classes 2 (1 without a background class)",
            )
        self.require(p.code_type in (CORNER, CENTER_SIZE, CORNER_SIZE), f"unknown code_type {p.code_type}")
        self.mode = self.read_normalization(unset=VALID)
        down = list(self.layer_param.propagate_down) or [True, True]
        self.use_loc, self.use_conf = bool(down[0]), bool(down[1]) if len(down) > 1 else True

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        loc, conf, prior, label = (self.legacy_shape(s) for s in bottom)
        if loc[0] != conf[0]:
            raise self.shape_error(f"location and confidence bottoms differ in num: {bottom[0]} vs {bottom[1]}")
        self.num, self.priors = loc[0], prior[2] // 4
        if self.priors * self.loc_classes * 4 != loc[1] * loc[2] * loc[3]:
            raise self.shape_error(
                f"location bottom {bottom[0]} needs {self.priors * self.loc_classes * 4} values per image "
                f"for {self.priors} priors"
            )
        if self.priors * self.classes != conf[1] * conf[2] * conf[3]:
            raise self.shape_error(
                f"confidence bottom {bottom[1]} needs {self.priors * self.classes} values per image "
                f"for {self.priors} priors and {self.classes} classes"
            )
        if prior[1] != 2 or prior[2] % 4:
            raise self.shape_error(f"prior bottom {bottom[2]} must be 1 x 2 x (priors * 4), as PriorBox writes")
        if label[3] != 8:
            raise self.shape_error(f"label bottom {bottom[3]} must hold rows of 8 values (1 x 1 x boxes x 8)")
        return [()]

    # ------------------------------------------------------------------ forward
    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        p = self.layer_param.multibox_loss_param
        n, k = self.num, self.priors
        loc = bottom[0].reshape(n, k, self.loc_classes, 4)
        conf = bottom[1].reshape(n, k, self.classes)
        prior = bottom[2].detach().reshape(-1)[: 2 * k * 4].to("cpu", torch.float32).numpy().reshape(2, k, 4)
        gts = self._ground_truth(bottom[3])
        loc_np = None
        if not p.use_prior_for_matching or p.bp_inside or self.mining == P.HARD_EXAMPLE or self._nms_on_predictions:
            loc_np = loc.detach().to("cpu", torch.float32).numpy()
        matches = [self._match(gts.get(i), prior, None if loc_np is None else loc_np[i]) for i in range(n)]
        negatives = self._mine(conf, matches, gts, loc, prior, loc_np)
        rows = _rows(matches)
        num_matches = len(rows)
        # Caffe's normalizer with the matches as the valid count
        normalizer = (
            float(max(1, num_matches)) if self.mode == VALID else self.normalizer(self.mode, n, k, None, loc.dtype)
        )
        total = loc.new_zeros(())
        if self.use_loc:
            pred, target = self._loc_pairs(loc, rows, gts, prior, loc_np)
            total = total + float(p.loc_weight) * loc_terms(pred - target, p.loc_loss_type).sum() / normalizer
        if self.use_conf:
            total = total + self._conf_loss(conf, rows, negatives, gts) / normalizer
        return [total]

    def _ground_truth(self, label: torch.Tensor) -> dict[int, np.ndarray]:
        """Image -> (G, 5) float32 rows [xmin, ymin, xmax, ymax, label] of its ground truth (the fork's
        GetGroundTruth: padding rows skipped, difficult boxes dropped unless use_difficult_gt)."""
        p = self.layer_param.multibox_loss_param
        rows = label.detach().reshape(-1, 8).to("cpu", torch.float32).numpy()
        bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
        if len(bad):
            raise self.error(f"label bottom row {int(bad[0])} holds a non-finite value: {rows[bad[0]].tolist()}")
        out: dict[int, list[np.ndarray]] = {}
        for r in rows:
            item = int(r[0])
            if item == -1:
                continue
            if int(r[1]) == self.background:
                raise self.error(f"ground truth box of image {item} has the background label {self.background}")
            if not 0 <= int(r[1]) < self.classes:
                raise self.error(f"ground truth box of image {item} has label {int(r[1])}, not in [0, {self.classes})")
            if r[7] != 0 and not p.use_difficult_gt:
                continue
            out.setdefault(item, []).append(np.array([r[3], r[4], r[5], r[6], int(r[1])], dtype=_F32))
        return {i: np.stack(v) for i, v in out.items()}

    def _match(
        self, gt: np.ndarray | None, prior: np.ndarray, loc: np.ndarray | None
    ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """One image's matches: loc class (-1 when shared) -> (prior -> box index, best overlaps)."""
        if gt is None:
            return {}
        p = self.layer_param.multibox_loss_param
        if p.use_prior_for_matching:
            match, best = match_priors(
                prior[0], gt[:, :4], p.match_type, p.overlap_threshold, p.ignore_cross_boundary_bbox
            )
            if p.share_location:
                return {-1: (match, best)}
            labels = gt[:, 4].astype(np.int64)
            out = {}
            for c in range(self.loc_classes):
                if c != self.background:
                    own = np.where((match > -1) & (labels[np.maximum(match, 0)] == c), match, -1)
                    out[c] = (own, best)
            return out
        assert loc is not None
        out = {}
        for c in range(self.loc_classes):
            label = -1 if p.share_location else c
            if not p.share_location and c == self.background:
                continue
            boxes = decode_boxes(loc[None, :, c, :], prior[0], prior[1], p.code_type, p.encode_variance_in_target)[
                0
            ].astype(_F32)
            own = gt if label == -1 else gt[gt[:, 4] == label]
            index = np.flatnonzero(gt[:, 4] == label) if label != -1 else np.arange(len(gt))
            match, best = match_priors(
                boxes, own[:, :4], p.match_type, p.overlap_threshold, p.ignore_cross_boundary_bbox
            )
            out[label] = (np.where(match > -1, index[np.maximum(match, 0)], match), best)
        return out

    @property
    def _nms_threshold(self) -> float:
        p = self.layer_param.multibox_loss_param
        return float(p.nms_param.nms_threshold) if p.HasField("nms_param") else 0.0

    @property
    def _nms_on_predictions(self) -> bool:
        """Whether mining's NMS runs on the decoded predictions (it reads the location values)."""
        p = self.layer_param.multibox_loss_param
        return self.mining != P.NONE and self._nms_threshold > 0 and not p.use_prior_for_nms

    def _mine(
        self,
        conf: torch.Tensor,
        matches: list[dict[int, tuple[np.ndarray, np.ndarray]]],
        gts: dict[int, np.ndarray],
        loc: torch.Tensor,
        prior: np.ndarray,
        loc_np: np.ndarray | None,
    ) -> list[np.ndarray]:
        """The fork's MineHardExamples: each image's mined negative priors, ascending (none without mining).

        MAX_NEGATIVE ranks the unmatched priors overlapping no box by ``neg_overlap`` by their confidence loss and
        keeps ``neg_pos_ratio`` times the positives; HARD_EXAMPLE ranks every prior by its confidence plus location
        loss, keeps ``sample_size``, and unmatches the positives it did not keep (``matches`` changes). With
        ``nms_param.nms_threshold`` > 0 the ranking goes through the fork's NMS (on the priors with
        ``use_prior_for_nms``, else on the decoded predictions), ``top_k`` of it included.
        """
        if self.mining == P.NONE:
            return [np.zeros(0, dtype=np.int64) for _ in matches]
        p = self.layer_param.multibox_loss_param
        n, k = len(matches), self.priors
        labels = np.full((n, k), self.background, dtype=np.int64)
        rows = _rows(matches)
        for i, _, j, box in rows:
            labels[i, j] = int(gts[i][box, 4])
        losses = prior_conf_losses(conf, labels, self.logistic)
        if self.mining == P.HARD_EXAMPLE and rows:  # plus each matched prior's location loss
            pred, target = self._loc_pairs(loc, rows, gts, prior, loc_np)
            per_row = loc_terms(pred.detach() - target, p.loc_loss_type).sum(dim=1)
            where = np.array([(r[0], r[2]) for r in rows])
            losses[where[:, 0], where[:, 1]] += per_row.to("cpu", torch.float32).numpy()
        out = []
        for i, per_class in enumerate(matches):
            chosen: set[int] = set()
            for c, (match, best) in sorted(per_class.items()):
                if self.mining == P.MAX_NEGATIVE:
                    eligible = np.flatnonzero((match == -1) & (best < _F32(p.neg_overlap)))
                    wanted = min(int(np.float32(int((match > -1).sum())) * np.float32(p.neg_pos_ratio)), len(eligible))
                else:
                    eligible, wanted = np.arange(k), min(int(p.sample_size), k)
                picked = self._pick(losses[i, eligible], eligible, wanted, prior, loc_np, i, c)
                negative = picked[match[picked] == -1]  # unmatched before: a matched prior dropped is not one
                if self.mining == P.HARD_EXAMPLE:  # the positives not picked are no longer matched
                    kept = np.zeros(k, dtype=bool)
                    kept[picked] = True
                    match[(match > -1) & ~kept] = -1
                chosen.update(int(j) for j in negative)
            out.append(np.array(sorted(chosen), dtype=np.int64))
        return out

    def _pick(
        self,
        losses: np.ndarray,
        eligible: np.ndarray,
        wanted: int,
        prior: np.ndarray,
        loc_np: np.ndarray | None,
        image: int,
        loc_class: int,
    ) -> np.ndarray:
        """The ``wanted`` eligible priors of highest loss (stable on ties), through NMS when it is set."""
        p = self.layer_param.multibox_loss_param
        if self._nms_threshold <= 0:
            return eligible[np.argsort(-losses, kind="stable")[:wanted]]
        if p.use_prior_for_nms:
            boxes = prior[0][eligible]
        else:
            assert loc_np is not None
            own = loc_np[image, eligible, max(loc_class, 0)]
            boxes = decode_boxes(
                own[None], prior[0][eligible], prior[1][eligible], p.code_type, p.encode_variance_in_target
            )[0]
        kept = nms_by_loss(boxes.astype(_F32), losses, self._nms_threshold, int(p.nms_param.top_k))
        if len(kept) < wanted:
            log.info("not enough sample after nms: %d", len(kept))
        return eligible[np.array(kept[:wanted], dtype=np.int64)]

    def _loc_pairs(
        self,
        loc: torch.Tensor,
        rows: list[tuple[int, int, int, int]],
        gts: dict[int, np.ndarray],
        prior: np.ndarray,
        loc_np: np.ndarray | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The matched priors' predictions (M, 4; with their gradient) and encoded boxes, as the fork's
        EncodeLocPrediction pairs them (bp_inside, encode_variance_in_target)."""
        p = self.layer_param.multibox_loss_param
        image = torch.tensor([r[0] for r in rows], dtype=torch.long, device=loc.device)
        cls = torch.tensor([max(r[1], 0) for r in rows], dtype=torch.long, device=loc.device)
        where = torch.tensor([r[2] for r in rows], dtype=torch.long, device=loc.device)
        pred = loc[image, where, cls]  # (M, 4); empty when nothing matched (zero gradient)
        j = np.array([r[2] for r in rows], dtype=np.int64)
        gt_boxes = np.stack([gts[r[0]][r[3], :4] for r in rows]) if rows else np.zeros((0, 4), _F32)
        self._check_sizes(gt_boxes, prior[0][j], rows)
        target_np = encode_boxes(gt_boxes, prior[0][j], prior[1][j], p.code_type, p.encode_variance_in_target)
        target = torch.from_numpy(target_np).to(device=loc.device, dtype=loc.dtype)
        if p.bp_inside:  # coordinates of the matched box outside the image: no gradient (the target itself)
            boxes = prior[0][j]
            if not p.use_prior_for_matching and loc_np is not None:
                boxes = decode_boxes(
                    loc_np[[r[0] for r in rows], j, [max(r[1], 0) for r in rows]][None],
                    prior[0][j],
                    prior[1][j],
                    p.code_type,
                    p.encode_variance_in_target,
                )[0]
            outside = torch.from_numpy((boxes < 0) | (boxes > 1)).to(loc.device)
            pred = torch.where(outside, target, pred)
        if p.encode_variance_in_target:  # both sides divided; the gradient passes undivided, as in the fork
            var = torch.from_numpy(prior[1][j]).to(device=loc.device, dtype=loc.dtype)
            pred = _straight_through(pred, pred / var)
            target = target / var
        return pred, target

    def _check_sizes(self, gt: np.ndarray, priors: np.ndarray, rows: list[tuple[int, int, int, int]]) -> None:
        """The fork aborts on a degenerate box it must encode: say which one instead."""
        p = self.layer_param.multibox_loss_param
        if p.code_type == CORNER or not len(gt):
            return
        for what, boxes in (("prior", priors), ("ground truth box", gt)):
            bad = np.flatnonzero((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
            if (what == "prior" or p.code_type == CENTER_SIZE) and len(bad):
                r = rows[int(bad[0])]
                raise self.error(f"image {r[0]}: {what} {boxes[bad[0]].tolist()} has no width or height to encode")

    def _conf_loss(
        self,
        conf: torch.Tensor,
        rows: list[tuple[int, int, int, int]],
        negatives: list[np.ndarray],
        gts: dict[int, np.ndarray],
    ) -> torch.Tensor:
        """Cross-entropy sum over each image's positives then its mined negatives (every prior without mining)."""
        p = self.layer_param.multibox_loss_param
        n, k, c = conf.shape
        labels = [self.background + 1 if p.map_object_to_agnostic else int(gts[r[0]][r[3], 4]) for r in rows]
        if self.mining == P.NONE:  # every prior, background unless matched
            target = np.full((n, k), self.background, dtype=np.int64)
            positive = np.zeros((n, k), dtype=bool)
            for r, label in zip(rows, labels, strict=True):
                target[r[0], r[2]], positive[r[0], r[2]] = label, True
            scores, target, positive = conf.reshape(n * k, c), target.reshape(-1), positive.reshape(-1)
        else:  # per image: its positives (in prior order), then its negatives
            positives: list[list[tuple[int, int, int, bool]]] = [[] for _ in range(n)]
            for r, label in zip(rows, labels, strict=True):  # rows come image by image
                positives[r[0]].append((r[0], r[2], label, True))
            picked: list[tuple[int, int, int, bool]] = []
            for i in range(n):
                picked += positives[i] + [(i, int(j), self.background, False) for j in negatives[i]]
            image = torch.tensor([q[0] for q in picked], dtype=torch.long, device=conf.device)
            where = torch.tensor([q[1] for q in picked], dtype=torch.long, device=conf.device)
            scores = conf[image, where]  # (K, C); empty when nothing was picked (zero gradient)
            target = np.array([q[2] for q in picked], dtype=np.int64)
            positive = np.array([q[3] for q in picked], dtype=bool)
        if self.logistic:
            # The fork fills every target with the background id, then sets 1 at each positive's class and,
            # when mining, at each negative's background class.
            onehot = np.full((len(target), c), self.background, dtype=np.float32)
            hot = positive | ((self.mining != P.NONE) & (0 <= self.background < c))
            onehot[np.flatnonzero(hot), target[hot]] = 1
            t = torch.from_numpy(onehot).to(device=conf.device, dtype=conf.dtype)
            return F.binary_cross_entropy_with_logits(scores, t, reduction="sum")
        index = torch.from_numpy(target).to(conf.device)
        logp = torch.log_softmax(scores, dim=-1).gather(1, index[:, None])[:, 0]
        logp = _straight_through(logp, logp.clamp(min=math.log(FLT_MIN)))
        return -logp.sum()
