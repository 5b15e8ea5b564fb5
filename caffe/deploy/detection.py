"""``DetectionModel``: a deployable detector (a net whose output comes from SSD's ``DetectionOutput`` or the
YOLO ports' ``Yolov3DetectionOutput`` and ``YoloDetectionOutput``, which write the same rows, or from DIGITS'
DetectNet clustering, ``ClusterDetections``, whose rows are turned into those).

It is a :class:`~caffe.deploy.model.DeployModel` (the same files, labels, mean and
:class:`~caffe.deploy.preprocess.Preprocessing`) whose output is SSD's 1 x 1 x K x 7 rows ``[image, label,
confidence, xmin, ymin, xmax, ymax]`` with coordinates relative to the input (rows of label -1: no
detection). :meth:`DetectionModel.detect` turns them into :class:`Detection` boxes in pixels of each
ORIGINAL image (the input is the image squashed to the net's size, so x scales by the image's width and y
by its height), clipped to the image; a detection is kept when its confidence is above the threshold.

Defaults: images are squashed to the input with OpenCV's bilinear interpolation, as SSD's ``ssd_detect``
and ``cv2.dnn.blobFromImage`` do (``Settings.interpolation`` overrides); labels (``labels.txt``, or an SSD
``labelmap*.prototxt`` beside the net: :func:`caffe.deploy.find_model`) name the ``num_classes`` classes of
``DetectionOutput``. A YOLOv3 port's labels are its classes plus one (no background class): a labels file
of ``num_classes`` names (darknet's ``coco.names``) names labels 1 to ``num_classes``.
DetectNet (a DIGITS model) writes one top per class, (N, 50, 5) rows ``[x1, y1, x2, y2, log(votes)]`` in pixels
of the input, zero rows unused (:func:`detectnet_rows`); label ``k`` is its class ``k`` (the ``k``-th top, the
``k``-th name), its confidence the log of the number of grid cells that voted for the box (0 for a single
cell), compared with the threshold like any other.
:func:`open_model` builds a model's net once and returns the model of its kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from caffe.deploy.errors import ModelFilesError, PathLike
from caffe.deploy.files import ModelFiles
from caffe.deploy.model import DeployModel, Settings, output_producer
from caffe.errors import CaffeError

#: The detection output types and the LayerParameter field holding their ``num_classes``.
DETECTION_LAYERS = {
    "DetectionOutput": "detection_output_param",
    "Yolov3DetectionOutput": "yolov3_detection_output_param",
    "YoloDetectionOutput": "yolo_detection_output_param",
    "ClusterDetections": "",  # DIGITS' DetectNet: a class per top
}


class Detection(NamedTuple):
    """One detected object: class number, confidence, box ``(xmin, ymin, xmax, ymax)`` in image pixels."""

    label: int
    confidence: float
    box: tuple[float, float, float, float]


def is_detector(net: Any, output: str | None = None) -> bool:
    """Whether the net's ``output`` (default: its last) comes from a detection layer (``DETECTION_LAYERS``)."""
    return output_producer(net, output or net.outputs[-1]) in DETECTION_LAYERS


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float in [0, 1]; a CaffeError otherwise."""
    value = float(threshold)
    if not 0.0 <= value <= 1.0:
        raise CaffeError(f"threshold {threshold}: expected a confidence between 0 and 1")
    return value


def to_detections(rows: np.ndarray, height: int, width: int, threshold: float) -> list[Detection]:
    """SSD output rows of one image (K x 7, relative coordinates) -> its detections above ``threshold``, in
    pixels of a ``height`` x ``width`` image, clipped to it, in the net's order."""
    out = []
    scale = np.array([width, height, width, height], dtype=np.float64)
    limit = np.array([width, height, width, height], dtype=np.float64)
    for row in np.asarray(rows, dtype=np.float64).reshape(-1, 7):
        if row[1] < 0 or not row[2] > threshold:
            continue
        box = np.clip(row[3:7] * scale, 0.0, limit)
        out.append(Detection(int(row[1]), float(row[2]), (float(box[0]), float(box[1]), float(box[2]), float(box[3]))))
    return out


def split_rows(out: np.ndarray, n: int) -> list[np.ndarray]:
    """The rows of a ``DetectionOutput`` blob (1 x 1 x K x 7) per image of a batch of ``n``, each K_i x 7."""
    rows = np.asarray(out, dtype=np.float64).reshape(-1, 7)
    return [rows[rows[:, 0] == i] for i in range(n)]


def detectnet_rows(per_class: Sequence[np.ndarray], image: int, width: int, height: int) -> np.ndarray:
    """One image's DetectNet rows (one (50, 5) array per class, pixels of a ``width`` x ``height`` input) as SSD
    rows ``[image, class, confidence, xmin, ymin, xmax, ymax]`` relative to the input; unused rows left out."""
    out = []
    scale = np.array([width, height, width, height], dtype=np.float64)
    for k, rows in enumerate(per_class):
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, 5)
        for row in rows[np.any(rows[:, :4] != 0, axis=1)]:
            out.append([image, k, row[4], *(row[:4] / scale)])
    return np.array(out, dtype=np.float64).reshape(-1, 7)


class DetectionModel(DeployModel):
    """A detector with its preprocessing and labels (see the module); arguments as :class:`DeployModel`'s.
    A net whose output does not come from a detection layer (``DETECTION_LAYERS``) is a ModelFilesError."""

    interpolation = "opencv"
    label_offset = 0  # 1 for a YOLO port (labels 1..num_classes name classes 0..num_classes - 1)
    class_tops: tuple[str, ...] = ()  # DetectNet: its clustering layer's tops, one per class
    confidence_is_probability = True  # False for DetectNet: the log of a box's votes

    def show_confidence(self, confidence: float) -> str:
        """A detection's confidence as people read it: a percentage, or DetectNet's log votes as a number."""
        return f"{confidence * 100:.2f}%" if self.confidence_is_probability else f"{confidence:.2f}"

    def count_classes(self) -> int:
        """``num_classes`` of the detection layer producing the output (SSD: background included)."""
        producer = output_producer(self.net, self.output)
        if producer not in DETECTION_LAYERS:
            raise ModelFilesError(
                f"{self.files.deploy}: not a detector: its output '{self.output}' comes from a {producer} layer, "
                f"not {', '.join(DETECTION_LAYERS)}"
            )
        self.label_offset = 1 if producer in ("Yolov3DetectionOutput", "YoloDetectionOutput") else 0
        for name, tops in self.net.top_names.items():
            layer = self.net.layer_dict[name]
            if self.output in tops and layer.type == producer:
                if producer == "ClusterDetections":
                    self.class_tops, self.confidence_is_probability = tuple(tops), False
                    return len(tops)
                return int(getattr(layer.layer_param, DETECTION_LAYERS[producer]).num_classes)
        return 0

    def label(self, index: int) -> str:
        """The name of detection label ``index`` (a YOLO port's label ``k`` is its class ``k - 1``)."""
        i = index - self.label_offset
        return self.labels[i] if 0 <= i < len(self.labels) else str(index)

    def normalization(self) -> tuple[bool, str]:
        """No softmax: the output holds detections."""
        producer = output_producer(self.net, self.output)
        return False, f"output '{self.output}' comes from a {producer} layer: detections (label, confidence, box)"

    def detect_rows(self, batch: np.ndarray, rows: int | None = None) -> list[np.ndarray]:
        """One forward of N prepared inputs (padded to ``rows``): each image's output rows, K_i x 7."""
        if not self.class_tops:
            return split_rows(self.run(batch, rows), len(batch))
        per_class = self.run_blobs(batch, rows, self.class_tops)
        _, height, width = self.input_shape
        return [detectnet_rows([top[i] for top in per_class], i, width, height) for i in range(len(batch))]

    def detect(
        self, images: Sequence[np.ndarray], threshold: float = 0.5, batch_size: int = 16
    ) -> list[list[Detection]]:
        """The detections of H x W x C uint8 images (the decoder's pixels), ``batch_size`` per forward."""
        threshold = check_threshold(threshold)
        prep = self.preprocessing
        found: list[list[Detection]] = []
        for i in range(0, len(images), batch_size):
            chunk = images[i : i + batch_size]
            batch = np.stack([prep.to_input(prep.resize(im)) for im in chunk])
            for im, rows in zip(chunk, self.detect_rows(batch), strict=True):
                found.append(to_detections(rows, im.shape[0], im.shape[1], threshold))
        return found

    def describe(self) -> dict[str, Any]:
        """:meth:`DeployModel.describe` with ``kind`` and what its confidences are."""
        confidence = "probability" if self.confidence_is_probability else "log votes (DetectNet)"
        return {**super().describe(), "kind": "detection", "confidence": confidence}


def open_model(
    files: ModelFiles,
    settings: Settings | None = None,
    *,
    labels: Sequence[str] | PathLike | None = None,
    engine: str | None = None,
    warn: bool = True,
    segmentation: bool = False,
) -> DeployModel:
    """The model of ``files`` as its kind: a :class:`DetectionModel` when the net ends in a detection layer, a
    :class:`~caffe.deploy.text.TextRecognizer` when it ends in a CTCGreedyDecoder, with ``segmentation`` a
    :class:`~caffe.deploy.segmentation.SegmentationModel` when its output is N x C x H x W class scores
    (:func:`~caffe.deploy.segmentation.is_segmenter`), else a (classification) :class:`DeployModel`; the net is
    built once."""
    from caffe.deploy.segmentation import SegmentationModel, is_segmenter
    from caffe.deploy.text import TextRecognizer, is_text_recognizer

    net = DeployModel.build_net(files)
    kind: type[DeployModel] = DeployModel
    if is_detector(net):
        kind = DetectionModel
    elif is_text_recognizer(net):
        kind = TextRecognizer
    elif segmentation and is_segmenter(net):
        kind = SegmentationModel
    return kind(files, settings, labels=labels, net=net, engine=engine, warn=warn)
