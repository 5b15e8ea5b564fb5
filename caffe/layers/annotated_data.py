"""SSD's ``AnnotatedData`` layer (weiliu89/caffe ``ssd``): images with their boxes, augmented for detection training.

Records are ``AnnotatedDatum`` messages in an LMDB or LevelDB (``data_param``: source, backend, batch_size,
rand_skip), each an image Datum (raw or encoded) and its boxes grouped by class. Reading, prefetching, seeding
and sharding are the Data layer's (:mod:`caffe.layers.data`); this module adds the fork's transformations, in
its order, to each item:

1. TRAIN: photometric distortion (``transform_param.distort_param``): brightness, then either contrast,
   saturation, hue or saturation, hue, contrast (a coin decides), each applied with its probability, then a
   random channel order with ``random_order_prob`` (OpenCV's 8-bit HSV for saturation and hue);
2. TRAIN: expansion (``expand_param``): with probability ``prob``, the image is placed at a random spot of a
   canvas up to ``max_expand_ratio`` times larger, filled with the mean values (0 without);
3. TRAIN: batch samplers (``annotated_data_param.batch_sampler``): each draws up to ``max_trials`` crops,
   keeping at most ``max_sample`` that meet its ``sample_constraint``; one of all the crops kept is chosen
   uniformly and cut out (none kept: the whole image); without samplers, eric612/MobileNet-YOLO's jittered crop
   when ``yolo_data_jitter`` is set or ``yolo_data_type`` is 1 (see :func:`jitter_window`);
4. resize (``resize_param``: WARP or FIT_LARGE_SIZE_AND_PAD; one of ``interp_mode`` drawn per item in TRAIN,
   the first listed in TEST, LINEAR when none). MobileNet-YOLO's multi-scale training lists several: each run
   of 10 batches takes one, drawn by their ``prob`` (which must sum to 1), so the data top changes size;
5. Caffe's transformation (:class:`~caffe.data.transform.DataTransformer`): crop (``crop_size``, or the fork's
   ``crop_h`` x ``crop_w``; at random in TRAIN, centred in TEST), mirror (TRAIN), mean, scale.

Boxes follow the image through each step; after a crop (steps 3 and 5) only those that still overlap it and
meet ``emit_constraint`` (centre inside, or ``emit_overlap`` of their area covered) are kept, clipped and
re-normalized; mirroring flips their x. The label top is the fork's: (1, 1, boxes in the batch, 8), rows
``[item, class, instance, xmin, ymin, xmax, ymax, difficult]``, one row of -1 when the batch has no box; with
``yolo_data_type: 1``, MobileNet-YOLO's (N, 1, 300, 5), rows ``[class - 1, x centre, y centre, width, height]``
then zeros (difficult boxes left out with ``train_diffcult: false``); without an annotation type (neither the
records' ``type`` nor ``anno_type``) it is the datums' labels (N,).

Refused at set-up with an error naming the layer and the option: ``noise_param`` with ``prob`` > 0, resize mode
FIT_SMALL_SIZE (its size changes from image to image), ``crop_h`` without ``crop_w`` or the reverse, an expansion
with a mean file, out-of-range sampler, expansion or distortion values, an ``anno_type`` other than BBOX,
and a ``yolo_data_type`` other than 0 or 1 (MobileNet-YOLO's ``difficult_label_warmup`` leaves difficult boxes out
of the YOLO labels until the solver is 5% into its run). A record
that cannot be read is an error naming the database and key. Differences from the fork (none moves a box):
random numbers come from the layer's seeded generator (one seed per item, drawn in order, so
seeded runs and resumed runs repeat); intermediate images stay decoded (the fork re-encodes them as JPEG after
each step, losing detail); distortion also applies to raw datums (the fork skips it for them); the image size a
FIT_LARGE_SIZE_AND_PAD policy sees is the decoded image's (the fork reads the datum's height and width fields); a
mean file is mirrored with the image, as Caffe's transformer does (the fork does not); a sampled crop is at least
one pixel wide and high; MobileNet-YOLO's jitter applies in TRAIN only (the port's test nets avoid it with an empty
``batch_sampler``), and a file with neither of its YOLO fields is never jittered (the port's default 0.3 would
jitter SSD files without samplers).
``label_map_file`` is accepted and not read (as in the fork).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from caffe.blob import Shape
from caffe.data import bbox
from caffe.data.prefetch import Decoded, Record
from caffe.data.shard import ALONE, Shard
from caffe.data.transform import CHW, HWC, DataTransformer
from caffe.errors import DataError
from caffe.layer import register
from caffe.layers.data import DataLayer, DatumSource
from caffe.limits import check_blob
from caffe.proto import caffe_pb2 as pb

log = logging.getLogger("caffe")

RP = pb.ResizeParameter
_INTERP = {
    RP.LINEAR: cv2.INTER_LINEAR,
    RP.AREA: cv2.INTER_AREA,
    RP.NEAREST: cv2.INTER_NEAREST,
    RP.CUBIC: cv2.INTER_CUBIC,
    RP.LANCZOS4: cv2.INTER_LANCZOS4,
}
_PAD = {RP.CONSTANT: cv2.BORDER_CONSTANT, RP.MIRRORED: cv2.BORDER_REFLECT_101, RP.REPEAT_NEAREST: cv2.BORDER_REPLICATE}


@dataclass
class Annotations:
    """A record's boxes as an annotation table (:data:`caffe.data.bbox.ROW` columns) and its Datum's label."""

    table: np.ndarray
    label: float
    typed: bool  # the record sets its annotation type


def annotation_table(anno: pb.AnnotatedDatum) -> np.ndarray:
    """An AnnotatedDatum's boxes, group by group: rows ``[class, instance, xmin, ymin, xmax, ymax, difficult]``."""
    rows = [
        (g.group_label, a.instance_id, a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax, float(a.bbox.difficult))
        for g in anno.annotation_group
        for a in g.annotation
    ]
    return np.array(rows, dtype=np.float64).reshape(len(rows), bbox.ROW)


class AnnotatedDatumSource(DatumSource):
    """DatumSource over AnnotatedDatum records: the image decoded as a Datum's (always H x W x C uint8), its
    boxes as the label."""

    def decode(self, record: Record) -> Decoded:
        anno = parse_annotated(record)
        item = self.decode_datum(anno.datum, record.name)
        if item.array.dtype != np.uint8:
            raise DataError(f"{record.name}: AnnotatedData needs 8-bit images, the Datum holds floats")
        image = np.ascontiguousarray(item.array.transpose(1, 2, 0)) if item.layout == CHW else item.array
        return Decoded(image, HWC, Annotations(annotation_table(anno), item.label, anno.HasField("type")))

    def decode_batch(self, records: list[Record]) -> None:
        return None  # items are transformed one by one, with their boxes


def parse_annotated(record: Record) -> pb.AnnotatedDatum:
    try:
        anno = pb.AnnotatedDatum.FromString(record.payload)
    except Exception:
        raise DataError(f"{record.name}: not a valid AnnotatedDatum (corrupt record)") from None
    if not anno.HasField("datum"):
        raise DataError(f"{record.name}: the AnnotatedDatum holds no image (no datum)")
    return anno


# ---------------------------------------------------------------------------- image operations
def _saturate(x: np.ndarray) -> np.ndarray:
    """OpenCV's conversion to 8 bits: rounded to nearest (half to even), clipped to [0, 255]."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _hsv_channel(image: np.ndarray, channel: int, scale: float, shift: float) -> np.ndarray:
    """``image`` with one channel of its 8-bit HSV form replaced by ``saturate(value * scale + shift)``."""
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    hsv[:, :, channel] = _saturate(hsv[:, :, channel].astype(np.float32) * np.float32(scale) + np.float32(shift))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def _brightness(image: np.ndarray, p: pb.DistortionParameter, rng: np.random.Generator) -> np.ndarray:
    if rng.random() >= p.brightness_prob:
        return image
    delta = rng.uniform(-p.brightness_delta, p.brightness_delta)
    return _saturate(image.astype(np.float32) + np.float32(delta)) if delta else image


def _contrast(image: np.ndarray, p: pb.DistortionParameter, rng: np.random.Generator) -> np.ndarray:
    if rng.random() >= p.contrast_prob:
        return image
    factor = rng.uniform(p.contrast_lower, p.contrast_upper)
    return _saturate(image.astype(np.float32) * np.float32(factor)) if abs(factor - 1.0) > 1e-3 else image


def _saturation(image: np.ndarray, p: pb.DistortionParameter, rng: np.random.Generator) -> np.ndarray:
    if rng.random() >= p.saturation_prob:
        return image
    return _hsv_channel(image, 1, rng.uniform(p.saturation_lower, p.saturation_upper), 0.0)


def _hue(image: np.ndarray, p: pb.DistortionParameter, rng: np.random.Generator) -> np.ndarray:
    if rng.random() >= p.hue_prob:
        return image
    delta = rng.uniform(-p.hue_delta, p.hue_delta)
    return _hsv_channel(image, 0, 1.0, delta) if delta else image


def distort(image: np.ndarray, p: pb.DistortionParameter, rng: np.random.Generator) -> np.ndarray:
    """The fork's photometric distortion of a BGR image (see the module docstring)."""
    steps = (
        (_brightness, _contrast, _saturation, _hue)
        if rng.random() > 0.5
        else (_brightness, _saturation, _hue, _contrast)
    )
    for step in steps:
        image = step(image, p, rng)
    if rng.random() < p.random_order_prob:
        image = np.ascontiguousarray(image[:, :, rng.permutation(3)])
    return image


def expand(
    image: np.ndarray, ratio: float, fill: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``image`` pasted at a random spot of a ``ratio`` times larger canvas of ``fill``; and where the canvas
    lies in the image's normalized coordinates."""
    h, w, c = image.shape
    big_h, big_w = int(h * ratio), int(w * ratio)
    check_blob((big_h, big_w, c), 1, f"expansion canvas ({ratio:.3g} x {h}x{w})")
    top, left = math.floor(rng.uniform(0, big_h - h)), math.floor(rng.uniform(0, big_w - w))
    if c <= 4:  # OpenCV pads with a scalar of up to 4 channels (vectorized: 10-20x the NumPy fill)
        border = (top, big_h - h - top, left, big_w - w - left)
        canvas = cv2.copyMakeBorder(image, *border, cv2.BORDER_CONSTANT, value=[float(v) for v in fill])
        canvas = canvas.reshape(big_h, big_w, c)
    else:
        canvas = np.empty((big_h, big_w, c), dtype=np.uint8)
        canvas[...] = fill
        canvas[top : top + h, left : left + w] = image
    return canvas, np.array([-left / w, -top / h, (big_w - left) / w, (big_h - top) / h])


def crop_pixels(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """The pixels of a normalized ``window`` (clipped to the image), offsets and sizes truncated, at least one
    pixel each way."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = np.clip(window, 0.0, 1.0) * (w, h, w, h)
    left, top = min(int(x0), w - 1), min(int(y0), h - 1)
    return image[top : top + max(1, int(y1 - y0)), left : left + max(1, int(x1 - x0))]


def resize_image(image: np.ndarray, param: pb.ResizeParameter, interp: int) -> np.ndarray:
    """``image`` resized by ``param``: WARP to height x width, or FIT_LARGE_SIZE_AND_PAD (aspect kept, the
    larger side fitted, the rest padded by ``pad_mode`` / ``pad_value``)."""
    c = image.shape[2]
    new_h, new_w = int(param.height), int(param.width)
    if param.resize_mode == RP.WARP:
        return cv2.resize(image, (new_w, new_h), interpolation=interp).reshape(new_h, new_w, c)
    aspect = np.float32(image.shape[1]) / np.float32(image.shape[0])
    if aspect > np.float32(new_w) / np.float32(new_h):
        size = (new_w, math.floor(np.float32(new_w) / aspect))
    else:
        size = (math.floor(aspect * np.float32(new_h)), new_h)
    resized = cv2.resize(image, size, interpolation=interp).reshape(size[1], size[0], c)
    top, left = (new_h - size[1]) // 2, (new_w - size[0]) // 2
    values = list(param.pad_value) or [0.0]
    pad = [float(v) for v in (values * c if len(values) == 1 else values)][:4]
    out = cv2.copyMakeBorder(
        resized, top, new_h - size[1] - top, left, new_w - size[0] - left, _PAD[param.pad_mode], value=pad
    )
    return out.reshape(new_h, new_w, c)


# ---------------------------------------------------------------------------- the transformer
class AnnotatedTransformer(DataTransformer):
    """Caffe's transformation plus the fork's distortion, expansion, sampled crops and resize, applied to an
    image and its boxes together (one random seed per item, drawn by the prefetcher's feeder in order)."""

    places_batches = False  # each item with its boxes
    resizes_items = True  # items of any size: checked after the transformation (place_item)

    def __init__(
        self,
        param: pb.TransformationParameter,
        anno: pb.AnnotatedDataParameter,
        phase: int,
        where: str,
        shard: Shard = ALONE,
    ) -> None:
        super().__init__(param, phase, where, shard)
        check_transformation(param, anno, where)
        self.param, self.samplers = param, list(anno.batch_sampler)
        self.policies = list(param.resize_param)  # several: MobileNet-YOLO's multi-scale training
        self.chances = np.cumsum([r.prob for r in self.policies]) if len(self.policies) > 1 else None
        self.jitter = yolo_jitter(anno)
        self.yolo = anno.yolo_data_type == 1
        self.difficult = bool(anno.train_diffcult)
        self.warmup = bool(anno.difficult_label_warmup)
        self.progress = (0, 0)  # the training's (iteration, stop), set by the layer before each batch is taken
        self.emit = param.emit_constraint if param.HasField("emit_constraint") else None
        self.forced_type = anno.HasField("anno_type")
        # the final crop (height, width): crop_size, else the fork's crop_h x crop_w
        self.window = (self.crop, self.crop) if self.crop else (int(param.crop_h), int(param.crop_w))
        self.boxes = True  # the label top is the box table (False: the datums' labels), set by the layer

    # ------------------------------------------------------------------ shapes
    def resize(self, policy: int) -> pb.ResizeParameter | None:
        """Resize policy ``policy`` (None without ``resize_param``)."""
        return self.policies[policy] if self.policies else None

    def resized(self, height: int, width: int, policy: int = 0) -> tuple[int, int]:
        resize = self.resize(policy)
        return (int(resize.height), int(resize.width)) if resize is not None else (height, width)

    def cropped(self, channels: int, height: int, width: int) -> tuple[int, int, int]:
        return (channels, *self.window) if self.window[0] else (channels, height, width)

    def output_shape(self, channels: int, height: int, width: int, policy: int = 0) -> tuple[int, int, int]:
        return self.cropped(channels, *self.resized(height, width, policy))

    def batch_shape(self, channels: int, height: int, width: int, draws: list[tuple]) -> tuple[int, int, int]:
        return self.output_shape(channels, height, width, draws[0][4] if draws else 0)

    def offsets(self, height: int, width: int, draw: tuple[float, float, bool]) -> tuple[int, int]:
        """The final crop's (top, left): uniform in TRAIN, centred in TEST (crop_size, or crop_h x crop_w)."""
        (ch, cw), train = self.window, self.train
        if not ch:
            return 0, 0
        if train:
            return int(draw[0] * (height - ch + 1)), int(draw[1] * (width - cw + 1))
        return (height - ch) // 2, (width - cw) // 2

    def check_item(self, channels: int, height: int, width: int, name: str = "") -> None:
        for policy in range(max(1, len(self.policies))):
            size = self.resized(height, width, policy)
            super().check_item(channels, *size, name)
            self._check_size((*size, channels), self.output_shape(channels, height, width, policy), name)
        for resize in self.policies:
            if len(resize.pad_value) not in (0, 1, channels):
                raise DataError(
                    f"{self.where}: resize_param: specify either 1 pad_value or as many as channels ({channels}), "
                    f"got {len(resize.pad_value)}"
                )

    # ------------------------------------------------------------------ draws
    @property
    def draws_per_item(self) -> int:
        """TRAIN: the crop's two fractions, the mirror coin and the item's seed; TEST: nothing random."""
        return 4 if self.train else 0

    def draw(self, rng: np.random.Generator) -> tuple[float, float, bool, int, int]:
        """The crop's fractions, the mirror coin, the item's seed; then the batch's resize policy (0 here, set by
        :meth:`batch_draws`)."""
        if not self.train:
            return 0.0, 0.0, False, 0, 0
        u_h, u_w, u_flip, u_seed = self.shard.draws(rng, 1, 4)[0]
        return float(u_h), float(u_w), self.mirror and bool(u_flip < 0.5), int(u_seed * 2**53), 0

    def batch_draws(self, draws: list[tuple], seed: int, number: int) -> list[tuple]:
        """MobileNet-YOLO's multi-scale training: each run of 10 batches (from the first) takes one resize policy,
        drawn with the policies' ``prob`` (a generator seeded by the layer's seed and the run's number, so a
        resumed or sharded run draws the same)."""
        if self.chances is None:
            return draws
        u = np.random.default_rng((seed, number // 10)).uniform(0.0, float(self.chances[-1]))
        policy = min(int(np.searchsorted(self.chances, u, side="right")), len(self.policies) - 1)
        return [(*d[:4], policy) for d in draws]

    # ------------------------------------------------------------------ one item
    def place_item(self, item: Decoded, out: np.ndarray, draw: tuple, name: str) -> Any:
        """Transform the image into ``out`` (H, W, C) and return its boxes' table (or its label)."""
        image = item.array  # H x W x C uint8 (AnnotatedDatumSource)
        notes: Annotations = item.label
        if self.boxes and not notes.typed and not self.forced_type:
            raise DataError(f"{self.where}: {name}: the AnnotatedDatum has no annotation type (BBOX) and the layer "
                            "sets no annotated_data_param.anno_type")  # fmt: skip
        table = notes.table
        resize = self.resize(draw[4])
        rng = np.random.default_rng(draw[3]) if self.train else None
        if rng is not None:
            image, table = self._augment(image, table, rng, resize, name)
        height, width = image.shape[:2]
        if resize is not None:
            image = resize_image(image, resize, self._interp(resize, rng))
        self._check_size(image.shape, (out.shape[2], *out.shape[:2]), name)
        top, left = self.place(image, HWC, out, draw[:3])
        if not self.boxes:
            return notes.label
        return self._final_boxes(table, resize, (width, height), image.shape[:2], (top, left), out.shape[:2], draw[2])

    def _check_size(self, shape: tuple[int, ...], slot: tuple[int, ...], name: str) -> None:
        """DataError unless an image of ``shape`` (H, W, C), once cropped, fills the batch's ``slot`` (C, H, W)."""
        h, w, c = shape
        if h < self.window[0] or w < self.window[1]:
            raise DataError(
                f"{self.where}: {name}: crop {self.window[0]}x{self.window[1]} is larger than the image ({h}x{w})"
            )
        if self.cropped(c, h, w) == tuple(slot):
            return
        raise DataError(
            f"{self.where}: {name}: an image of {h}x{w}x{c} (height x width x channels) does not fit the batch's "
            f"{'x'.join(map(str, slot))}; set transform_param.resize_param (expansion and sampled crops change the "
            "size) or use images of one size and channel count"
        )

    def _augment(
        self,
        image: np.ndarray,
        table: np.ndarray,
        rng: np.random.Generator,
        resize: pb.ResizeParameter | None,
        name: str,
    ) -> tuple[np.ndarray, np.ndarray]:
        """TRAIN's distortion, expansion and sampled (or MobileNet-YOLO's jittered) crop."""
        p = self.param
        if p.HasField("distort_param"):
            if image.shape[2] != 3:
                raise DataError(
                    f"{self.where}: {name}: distort_param needs 3-channel (BGR) images, got {image.shape[2]}"
                )
            image = distort(image, p.distort_param, rng)
        if p.HasField("expand_param") and rng.random() <= p.expand_param.prob:
            ratio = rng.uniform(1.0, p.expand_param.max_expand_ratio)
            image, window = expand(image, ratio, self._fill(image.shape[2]), rng)
            table = bbox.crop_table(table, window, self.emit)
        windows: list[np.ndarray] = []
        if self.samplers:
            windows = bbox.sample_windows(self.samplers, table[:, bbox.COORDS], rng)
        elif self.jitter:
            keep_aspect = resize is not None and resize.resize_mode == RP.FIT_LARGE_SIZE_AND_PAD
            windows = [jitter_window(self.jitter, keep_aspect, rng)]
        if windows:
            window = np.clip(windows[int(rng.integers(len(windows)))], 0.0, 1.0)
            image = crop_pixels(image, window)
            table = bbox.crop_table(table, window, self.emit)
        return image, table

    def _fill(self, channels: int) -> np.ndarray:
        """The expansion canvas's pixel: the mean values (8-bit), else 0."""
        if self.mean_values is None:
            return np.zeros(channels, dtype=np.uint8)
        return _saturate(np.broadcast_to(self.mean_values, (channels,)))

    @staticmethod
    def _interp(resize: pb.ResizeParameter, rng: np.random.Generator | None) -> int:
        modes = list(resize.interp_mode)
        if not modes:
            return cv2.INTER_LINEAR
        return _INTERP[modes[int(rng.integers(len(modes)))] if rng is not None else modes[0]]

    def _final_boxes(
        self,
        table: np.ndarray,
        resize: pb.ResizeParameter | None,
        before: tuple[int, int],
        size: tuple[int, int],
        offsets: tuple[int, int],
        crop: tuple[int, int],
        flip: bool,
    ) -> np.ndarray:
        """The boxes after the resize (image ``before`` = (width, height)), the crop of ``crop`` = (h, w) at
        ``offsets`` = (top, left) of the ``size`` = (h, w) image, and the mirror."""
        table = table.copy()
        if resize is not None:
            table[:, bbox.COORDS] = bbox.resize_boxes(table[:, bbox.COORDS], resize, *before)
        (h, w), (top, left) = size, offsets
        window = np.array([left / w, top / h, (left + crop[1]) / w, (top + crop[0]) / h])
        table = bbox.crop_table(table, window, self.emit)
        return bbox.mirror_table(table) if flip else table

    # ------------------------------------------------------------------ the batch's labels
    def new_labels(self, n: int) -> Any:
        return [None] * n

    def labels_tensor(self, labels: Any) -> torch.Tensor:
        """The fork's label top: (1, 1, boxes, 8) rows ``[item, class, instance, x0, y0, x1, y1, difficult]``, or
        MobileNet-YOLO's (N, 1, 300, 5) (``yolo_data_type: 1``)."""
        if not self.boxes:
            return torch.tensor(labels, dtype=torch.float32)
        if self.yolo:
            iteration, stop = self.progress  # the port's warm-up: no difficult box in the first 5% of the run
            difficult = self.difficult and (not self.warmup or iteration > stop // 20)
            return torch.from_numpy(yolo_label_rows(labels, difficult, self.where))
        return torch.from_numpy(label_rows(labels))


def label_rows(tables: list[np.ndarray]) -> np.ndarray:
    """A batch's annotation tables as the fork's (1, 1, K, 8) label blob; one row of -1 when K is 0."""
    rows = [np.column_stack([np.full(len(t), i, dtype=np.float64), t]) for i, t in enumerate(tables)]
    out = np.concatenate(rows) if rows else np.zeros((0, 8))
    if not len(out):
        out = np.full((1, 8), -1.0)
    return out.astype(np.float32).reshape(1, 1, len(out), 8)


YOLO_BOXES = 300  # MobileNet-YOLO's label rows per image


def yolo_label_rows(tables: list[np.ndarray], difficult: bool, where: str) -> np.ndarray:
    """A batch's annotation tables as MobileNet-YOLO's (N, 1, 300, 5) label blob: per image, rows ``[class - 1,
    x centre, y centre, width, height]`` then zeros (``difficult``: keep difficult boxes). The port writes past
    its 300 rows; here the first 300 are kept, with a warning."""
    out = np.zeros((len(tables), 1, YOLO_BOXES, 5), dtype=np.float32)
    for i, table in enumerate(tables):
        if not difficult:
            table = table[table[:, 6] == 0]
        if len(table) > YOLO_BOXES:
            log.warning("%s: an image has %d boxes, the YOLO labels keep the first %d", where, len(table), YOLO_BOXES)
            table = table[:YOLO_BOXES]
        x0, y0, x1, y1 = (table[:, k] for k in range(2, 6))
        rows = np.column_stack([table[:, 0] - 1, (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])
        out[i, 0, : len(rows)] = rows
    return out


def yolo_jitter(anno: pb.AnnotatedDataParameter) -> float:
    """MobileNet-YOLO's random crop fraction, used when there is no batch_sampler: its ``yolo_data_jitter`` (the
    port's default 0.3 applies to YOLO layers, ``yolo_data_type: 1``; an SSD file without the field has none)."""
    return float(anno.yolo_data_jitter) if anno.HasField("yolo_data_jitter") or anno.yolo_data_type == 1 else 0.0


def jitter_window(jitter: float, keep_aspect: bool, rng: np.random.Generator) -> np.ndarray:
    """The port's jittered crop: none (the whole image) one time in five, else a window whose sides are uniform
    in [1 - j, 1) of the image's (j = ``jitter`` / 2 one time in five, ``jitter`` otherwise; one draw for both
    sides with ``keep_aspect``), at a uniform position."""
    change = int(np.searchsorted([0.2, 0.4, 1.0], rng.uniform(0.0, 1.0), side="right"))
    if change == 0:
        return np.array([0.0, 0.0, 1.0, 1.0])
    j = jitter / 2 if change == 1 else jitter
    w = rng.uniform(1.0 - j, 1.0)
    h = w if keep_aspect else rng.uniform(1.0 - j, 1.0)
    x, y = rng.uniform(0.0, 1.0 - w), rng.uniform(0.0, 1.0 - h)
    return np.array([x, y, x + w, y + h])


def check_transformation(param: pb.TransformationParameter, anno: pb.AnnotatedDataParameter, where: str) -> None:
    """DataError naming the option for what the layer does not do or the fork refuses."""
    problem = _transformation_problem(param) or _sampler_problem(anno, where) or _yolo_problem(anno)
    if problem:
        raise DataError(f"{where}: {problem}")


def _transformation_problem(p: pb.TransformationParameter) -> str | None:
    if p.HasField("noise_param") and p.noise_param.prob > 0:
        return "transform_param.noise_param (prob > 0) is not supported: remove it or set prob: 0"
    if not p.crop_size and bool(p.crop_h) != bool(p.crop_w):
        return "transform_param: set crop_h and crop_w together (or crop_size)"
    for r in p.resize_param:
        if r.resize_mode == RP.FIT_SMALL_SIZE:
            return "resize_param.resize_mode FIT_SMALL_SIZE is not supported (use WARP or FIT_LARGE_SIZE_AND_PAD)"
        if r.height <= 0 or r.width <= 0:
            return f"resize_param.height and width must be positive, got {r.height} x {r.width}"
    if len(p.resize_param) > 1:  # MobileNet-YOLO's rule for several policies
        chances = [r.prob for r in p.resize_param]
        if not all(0.0 <= c <= 1.0 for c in chances) or abs(sum(chances) - 1.0) > 0.01:
            found = ", ".join(f"{c:g}" for c in chances)
            return f"resize_param: several policies need each prob in [0, 1], summing to 1; got {found}"
    if p.HasField("expand_param"):
        if p.expand_param.max_expand_ratio <= 1.0:
            return f"expand_param.max_expand_ratio must be > 1, got {p.expand_param.max_expand_ratio}"
        if p.mean_file:
            return "expand_param with a mean_file is not supported (the canvas is filled with mean_value)"
    if p.HasField("distort_param"):
        d = p.distort_param
        if min(d.brightness_delta, d.hue_delta, d.contrast_lower, d.saturation_lower) < 0:
            return "distort_param: brightness_delta, hue_delta, contrast_lower and saturation_lower must be >= 0"
        if d.contrast_upper < d.contrast_lower or d.saturation_upper < d.saturation_lower:
            return "distort_param: contrast_upper / saturation_upper must be >= their lower bounds"
    return None


def _yolo_problem(anno: pb.AnnotatedDataParameter) -> str | None:
    if anno.yolo_data_type not in (0, 1):
        found = anno.yolo_data_type
        return f"annotated_data_param.yolo_data_type must be 0 (SSD labels) or 1 (YOLO labels), got {found}"
    if not 0.0 <= yolo_jitter(anno) < 1.0:
        return f"annotated_data_param.yolo_data_jitter must be in [0, 1), got {anno.yolo_data_jitter}"
    return None


def _sampler_problem(anno: pb.AnnotatedDataParameter, where: str) -> str | None:
    if anno.HasField("anno_type") and anno.anno_type != pb.AnnotatedDatum.BBOX:
        return f"annotated_data_param.anno_type {anno.anno_type} is not supported (only BBOX)"
    for i, sampler in enumerate(anno.batch_sampler):
        problem = bbox.check_sampler(sampler, f"annotated_data_param.batch_sampler[{i}]")
        if problem:
            return problem
    return None


# ---------------------------------------------------------------------------- the layer
@register("AnnotatedData")
class AnnotatedDataLayer(DataLayer):
    """SSD's annotated data (``data_param``, ``annotated_data_param``, ``transform_param``); see the module
    docstring. Tops: data (N, C, H, W) and, if asked for, the box table (1, 1, K, 8)."""

    type = "AnnotatedData"  # (register keeps an inherited type name)
    source_class = AnnotatedDatumSource

    def make_transformer(self, where: str) -> DataTransformer:
        return AnnotatedTransformer(
            self.layer_param.transform_param, self.layer_param.annotated_data_param, self.phase, where, self.shard
        )

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.annotated_data_param
        if p.label_map_file:
            log.info("layer '%s': label_map_file %s is not read (as in the fork)", self.name, p.label_map_file)
        super().layer_setup(bottom)  # the prefetcher's threads start with the first batch: set up the labels now
        first = parse_annotated(self.source.peek())
        assert isinstance(self.transformer, AnnotatedTransformer)
        self.transformer.boxes = first.HasField("type") or p.HasField("anno_type")
        self._label_shape = (1, 1, max(len(annotation_table(first)), 1), 8) if self.transformer.boxes else None
        if self.transformer.boxes and self.transformer.yolo:
            self._label_shape = (self._data_shape[0], 1, YOLO_BOXES, 5)
        n, c = self._data_shape[:2]
        for policy in range(1, len(self.transformer.policies)):  # the first is checked with the data top
            shape = (n, *self.transformer.output_shape(c, 1, 1, policy))
            check_blob(shape, 4, f"layer '{self.name}' (AnnotatedData) resize_param[{policy}]")

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        assert isinstance(self.transformer, AnnotatedTransformer)
        self.transformer.progress = self.progress  # read when this batch's labels are made, in this thread
        return super().forward(bottom)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        labels = self._label_shape or (self._data_shape[0],)
        return [self._data_shape, labels][: len(self.tops)]
