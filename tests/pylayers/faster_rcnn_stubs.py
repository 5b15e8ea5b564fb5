"""Stand-ins for py-faster-rcnn's four training Python layers (``lib/roi_data_layer``, ``lib/rpn``).

neocaffe's own code, written for tests/test_rcnn_training.py: each layer keeps the interface its
py-faster-rcnn namesake shows the Net (the tops, their shapes, ``param_str_`` read as YAML, tops reshaped
in ``forward``, ``set_roidb`` on the data layer) but makes its values simply and deterministically
instead of py-faster-rcnn's anchor matching and sampling. The test packages them as the modules the
fork's train.prototxt names.
"""

from __future__ import annotations

import numpy as np
import yaml

import caffe

NUM_ANCHORS = 9  # py-faster-rcnn's 3 scales x 3 ratios


def _params(layer: caffe.Layer) -> dict:
    return yaml.safe_load(layer.param_str_)  # py-faster-rcnn's layers read the pre-2015 pycaffe name


class _TargetLayer(caffe.Layer):
    """Like py-faster-rcnn's layers: tops shaped in ``forward``, no gradient to the bottoms."""

    def backward(self, top, propagate_down, bottom):
        pass

    def reshape(self, bottom, top):
        pass


class RoIDataLayer(_TargetLayer):
    """Tops data (1, 3, H, W), im_info (1, 3) = (H, W, scale) and gt_boxes (G, 5) = (x1, y1, x2, y2, class),
    one image of the roidb per forward: a grey image with each box painted bright."""

    def setup(self, bottom, top):
        self.num_classes = int(_params(self)["num_classes"])
        self.roidb: list[dict] = []
        self.cursor = 0
        top[0].reshape(1, 3, 224, 224)
        top[1].reshape(1, 3)
        top[2].reshape(1, 5)

    def set_roidb(self, roidb):
        """py-faster-rcnn's SolverWrapper hands the data layer its roidb through ``net.layers[0]``."""
        self.roidb = roidb

    def forward(self, bottom, top):
        entry = self.roidb[self.cursor % len(self.roidb)]
        self.cursor += 1
        height, width = entry["height"], entry["width"]
        image = np.full((1, 3, height, width), -20.0, np.float32)
        gt = np.hstack([entry["boxes"], entry["gt_classes"][:, None]]).astype(np.float32)
        for x1, y1, x2, y2, _ in gt.astype(int):
            image[0, :, y1 : y2 + 1, x1 : x2 + 1] = 100.0
        blobs = (image, np.array([[height, width, 1.0]], np.float32), gt)
        for blob, value in zip(top, blobs, strict=True):
            blob.reshape(*value.shape)
            blob.data[...] = value


class AnchorTargetLayer(_TargetLayer):
    """From rpn_cls_score (1, 2A, h, w): labels (1, 1, A*h, w) in {-1, 0, 1}, box targets and inside/outside
    weights (1, 4A, h, w); inside weights 1 at positive anchors, outside weights 1/(labelled anchors)."""

    def setup(self, bottom, top):
        self.feat_stride = int(_params(self)["feat_stride"])
        self.rng = np.random.default_rng(7)
        height, width = bottom[0].data.shape[-2:]
        top[0].reshape(1, 1, NUM_ANCHORS * height, width)
        for blob in top[1:]:
            blob.reshape(1, NUM_ANCHORS * 4, height, width)

    def forward(self, bottom, top):
        height, width = bottom[0].data.shape[-2:]
        labels = self.rng.choice([-1.0, 0.0, 1.0], size=(NUM_ANCHORS, height, width), p=[0.7, 0.2, 0.1])
        targets = self.rng.normal(0, 0.5, size=(NUM_ANCHORS, 4, height, width))
        inside = np.repeat((labels == 1)[:, None], 4, axis=1).astype(np.float64)
        outside = np.repeat((labels >= 0)[:, None], 4, axis=1) / max(1, int((labels >= 0).sum()))
        values = (
            labels.reshape(1, 1, NUM_ANCHORS * height, width),
            targets.reshape(1, NUM_ANCHORS * 4, height, width),
            inside.reshape(1, NUM_ANCHORS * 4, height, width),
            outside.reshape(1, NUM_ANCHORS * 4, height, width),
        )
        for blob, value in zip(top, values, strict=True):
            blob.reshape(*value.shape)
            blob.data[...] = value


class ProposalLayer(_TargetLayer):
    """rpn_rois (R, 5): a fixed grid of 32x32 boxes over the image (batch index 0), ``STEP`` pixels apart."""

    STEP = 24

    def setup(self, bottom, top):
        self.feat_stride = int(_params(self)["feat_stride"])
        top[0].reshape(1, 5)

    def forward(self, bottom, top):
        height, width = bottom[2].data[0, :2]
        xs, ys = np.meshgrid(np.arange(0, width - 32, self.STEP), np.arange(0, height - 32, self.STEP))
        boxes = np.stack([np.zeros(xs.size), xs.ravel(), ys.ravel(), xs.ravel() + 31, ys.ravel() + 31], axis=1)
        top[0].reshape(*boxes.shape)
        top[0].data[...] = boxes


class ProposalTargetLayer(_TargetLayer):
    """From rpn_rois and gt_boxes: ``COUNT`` ROIs (the ground truth first), their labels (the class for a
    ground-truth box, else 0), box targets (R, 4K) in the label's four columns (K = 2: py-R-FCN's
    class-agnostic targets, columns 4-7 for any object), inside weights 1 there and outside weights
    ``inside > 0``, as py-faster-rcnn lays them out."""

    COUNT = 16
    FOUR_AXES = False  # py-R-FCN's layer gives every top as (R, C, 1, 1)

    def setup(self, bottom, top):
        self.num_classes = int(_params(self)["num_classes"])
        self.rng = np.random.default_rng(11)
        tail = (1, 1) if self.FOUR_AXES else ()
        top[0].reshape(1, 5, *tail)
        top[1].reshape(1, *(1, *tail) if self.FOUR_AXES else ())
        for blob in top[2:]:
            blob.reshape(1, self.num_classes * 4, *tail)

    def forward(self, bottom, top):
        gt = bottom[1].data
        gt_rois = np.hstack([np.zeros((len(gt), 1)), gt[:, :4]])
        rois = np.vstack([gt_rois, bottom[0].data.reshape(-1, 5)])[: self.COUNT]
        labels = np.zeros(len(rois))
        labels[: len(gt)] = gt[:, 4]
        targets = np.zeros((len(rois), self.num_classes * 4))
        inside = np.zeros_like(targets)
        for i, cls in enumerate(labels.astype(int)):
            if cls > 0:
                column = 4 * min(cls, self.num_classes - 1)
                targets[i, column : column + 4] = self.rng.normal(0, 1, 4)
                inside[i, column : column + 4] = 1.0
        for blob, value in zip(top, (rois, labels, targets, inside, (inside > 0).astype(np.float64)), strict=True):
            if self.FOUR_AXES:
                value = value.reshape(len(value), -1, 1, 1)
            blob.reshape(*value.shape)
            blob.data[...] = value


class RfcnProposalLayer(ProposalLayer):
    """py-R-FCN's proposals: enough of them for its hard example mining to choose from."""

    STEP = 12


class RfcnProposalTargetLayer(ProposalTargetLayer):
    """py-R-FCN's proposal targets: 4-axis tops and more ROIs than its OHEM keeps."""

    COUNT = 160
    FOUR_AXES = True
