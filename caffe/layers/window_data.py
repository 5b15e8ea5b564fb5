"""WindowData: R-CNN fine-tuning batches, windows cropped out of images (Caffe's WindowDataLayer).

The window file (``window_data_param.source``) repeats, for every image::

    # image_index
    image_path            (root_folder is prepended)
    channels
    height
    width
    num_windows
    class_index overlap x1 y1 x2 y2      (num_windows lines; pixel corners, inclusive)

A window with ``overlap >= fg_threshold`` is foreground (its class index must be positive); one with
``overlap < bg_threshold`` is background (label 0); the others are never used. Every batch holds
``batch_size - int(batch_size * fg_fraction)`` background windows followed by the foreground ones,
each drawn at random (with replacement) from its set. A window is enlarged so that, once warped to
``crop_size`` x ``crop_size``, ``context_pad`` pixels of context surround it (``crop_mode: "square"``
first makes it the tightest square around the window); the part outside the image is left as zero
padding. The crop is warped with bilinear interpolation, mirrored at random (TRAIN, ``mirror``), then
``(pixel - mean) * scale``; the padding stays exactly 0, as in Caffe.

Parameters are read where Caffe master reads them: ``crop_size``, ``mirror``, ``mean_file`` and
``mean_value`` from ``transform_param``; ``scale`` from ``window_data_param`` (falling back to
``transform_param.scale`` when only that one is set, which Caffe would ignore). The mean file is
cropped at its centre (offset ``(mean_width - crop_size) / 2`` on both axes, Caffe's choice) and is
never mirrored. The top is always 3 channels (images are read in colour, as Caffe does).

Differences from Caffe, none of which changes a batch Caffe produces correctly: windows belong to
the image block they are listed under (Caffe looks the image up by the ``# image_index`` number,
which only agrees when the blocks are numbered 0, 1, 2, ...); mirroring happens in TRAIN only (this
project's rule, see ``caffe.data.transform``); an unreadable image, a window outside its image and
a malformed window file are errors naming the file (and line) instead of a crash or a silently
incomplete batch; the foreground (background) set may be empty when no foreground (background)
window is ever drawn.

When N processes train together, each TRAIN rank draws the windows one process with batch N x
``batch_size`` draws and keeps those of its own positions (rank r's j-th window is window j·N + r of that
batch, mirror coin included, from the seed every rank shares): the ranks' batches of an iteration together
are that one process's batch, so a rank's batch holds the foreground windows of its positions rather than
``int(batch_size * fg_fraction)`` of them (see ``caffe.data.shard``).

Batches are prepared by the shared :class:`~caffe.data.prefetch.Prefetcher`: the feeder thread
draws the windows and mirror flags in order (so a seeded run repeats exactly), the decode workers
read, crop, warp and normalise each window. The item handed to the prefetcher is the finished
float (C, H, W) window, not a uint8 image for the DataTransformer to normalise, because Caffe's
padding must stay 0 rather than become ``-mean * scale``, and its mean-file offsets follow the
padding rather than a crop position; the prefetcher's transformer is therefore the identity.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np

from caffe.blob import Shape
from caffe.common import TRAIN
from caffe.data.datum import decode_image_bytes, read_image
from caffe.data.prefetch import Decoded, Record
from caffe.data.shard import Shard
from caffe.data.transform import CHW, DataTransformer, load_mean
from caffe.errors import DataError
from caffe.layer import register
from caffe.layers.data import _PrefetchingDataLayer
from caffe.limits import read_file, read_text
from caffe.proto import caffe_pb2 as pb

log = logging.getLogger("caffe")

_f32 = np.float32
CHANNELS = 3  # images are always read in colour


@dataclass(frozen=True)
class Window:
    image: int  # position of the image in the window file
    label: int
    overlap: float
    x1: int
    y1: int
    x2: int
    y2: int
    line: int  # line of the window file, for messages


@dataclass(frozen=True)
class WindowImage:
    path: str
    line: int


def read_window_file(path: str, root_folder: str = "") -> tuple[list[WindowImage], list[Window]]:
    """Parse an R-CNN window file into its images and windows (every window, before thresholds)."""
    try:
        text = read_text(path, "window file")
    except DataError as e:
        raise DataError(f"cannot read window file ({e})") from None
    tokens = [(tok, n) for n, line in enumerate(text.splitlines(), start=1) for tok in line.split()]
    if not tokens:
        raise DataError(f"window file {path} is empty")
    pos = 0
    last_line = tokens[-1][1]

    def take(what: str, kind: type = str):
        nonlocal pos
        if pos == len(tokens):
            raise DataError(f"{path}:{last_line}: the window file ends early: expected {what}")
        tok, n = tokens[pos]
        pos += 1
        if kind is str:
            return tok, n
        try:
            return kind(tok), n
        except ValueError:
            raise DataError(f"{path}:{n}: expected {what} ({kind.__name__}), got {tok!r}") from None

    images: list[WindowImage] = []
    windows: list[Window] = []
    renumbered = False
    while pos < len(tokens):
        tok, n = take("'#'")
        if tok != "#":
            raise DataError(f"{path}:{n}: expected '# image_index' to start an image, got {tok!r}")
        index, n = take("the image index after '#'", int)
        if index != len(images):
            renumbered = True
        image_path, n = take("the image path")
        for what in ("channels", "height", "width"):
            value, n = take(f"the image {what}", int)
            if value <= 0:
                raise DataError(f"{path}:{n}: the image {what} must be positive, got {value}")
        count, n = take("the number of windows", int)
        if count < 0:
            raise DataError(f"{path}:{n}: the number of windows must not be negative, got {count}")
        images.append(WindowImage(root_folder + image_path, n))
        for _ in range(count):
            label, n = take("a window's class_index", int)
            overlap, _ = take("a window's overlap", float)
            x1, _ = take("a window's x1", int)
            y1, _ = take("a window's y1", int)
            x2, _ = take("a window's x2", int)
            y2, n2 = take("a window's y2", int)
            if n2 != n:
                raise DataError(
                    f"{path}:{n}: a window line is 'class_index overlap x1 y1 x2 y2' (6 numbers on one line)"
                )
            if x2 < x1 or y2 < y1:
                raise DataError(f"{path}:{n}: window ({x1}, {y1}, {x2}, {y2}) has x2 < x1 or y2 < y1")
            windows.append(Window(len(images) - 1, label, overlap, x1, y1, x2, y2, n))
    if renumbered:
        log.warning(
            "%s: image blocks are not numbered 0, 1, 2, ...; each window uses the image it is listed under", path
        )
    return images, windows


def _round(v: float) -> int:
    """C's round(): halves away from zero."""
    v = float(v)
    return int(np.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)


@dataclass(frozen=True)
class Geometry:
    """Where a window's warped crop lands: source box (inclusive), warped size, offsets in the output."""

    x1: int
    y1: int
    x2: int
    y2: int
    width: int
    height: int
    pad_w: int
    pad_h: int


def window_geometry(
    x1: int, y1: int, x2: int, y2: int, rows: int, cols: int, crop: int, context_pad: int, square: bool, mirror: bool
) -> Geometry:
    """Caffe's arithmetic (in float, as its ``Dtype``) for the region cropped and where it is placed."""
    pad_w = pad_h = 0
    width = height = crop
    if context_pad > 0 or square:
        context_scale = _f32(crop) / _f32(crop - 2 * context_pad)
        half_h = _f32(y2 - y1 + 1) / _f32(2)
        half_w = _f32(x2 - x1 + 1) / _f32(2)
        cx, cy = _f32(x1) + half_w, _f32(y1) + half_h
        if square:
            half_h = half_w = max(half_h, half_w)
        x1 = _round(cx - half_w * context_scale)
        x2 = _round(cx + half_w * context_scale)
        y1 = _round(cy - half_h * context_scale)
        y2 = _round(cy + half_h * context_scale)
        unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
        pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
        pad_x2, pad_y2 = max(0, x2 - cols + 1), max(0, y2 - rows + 1)
        x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
        scale_x = _f32(crop) / _f32(unclipped_w)
        scale_y = _f32(crop) / _f32(unclipped_h)
        width = _round(_f32(x2 - x1 + 1) * scale_x)
        height = _round(_f32(y2 - y1 + 1) * scale_y)
        pad_x1 = _round(_f32(pad_x1) * scale_x)
        pad_x2 = _round(_f32(pad_x2) * scale_x)
        pad_y1 = _round(_f32(pad_y1) * scale_y)
        pad_h = pad_y1
        pad_w = pad_x2 if mirror else pad_x1  # the padding is mirrored with the crop
        height = min(height, crop - pad_h)  # rounding may overflow the crop
        width = min(width, crop - pad_w)
    return Geometry(x1, y1, x2, y2, width, height, pad_w, pad_h)


@dataclass
class WindowSettings:
    """What the background threads need (not the layer itself, so that a dropped net is collected)."""

    where: str
    source_file: str
    crop: int
    context_pad: int
    square: bool
    mirror: bool
    fg_fraction: float
    scale: float
    mean: np.ndarray | None  # (3, H, W) mean file
    mean_off: int
    mean_values: np.ndarray | None  # (3,)
    fg: list[Window]
    bg: list[Window]
    cache_images: bool
    shard: Shard  # this rank's windows (and mirror coins) out of those one process of batch N x batch draws


class WindowSource:
    """Draws each batch's windows (feeder thread); decodes one window into its normalised crop (workers)."""

    def __init__(self, settings: WindowSettings, images: list[WindowImage], rng: np.random.Generator) -> None:
        self.settings, self.images, self.rng = settings, images, rng
        self.cache: dict[int, bytes] = {}  # image index -> the file's bytes (cache_images)
        if settings.cache_images:
            for i, image in enumerate(images):
                try:
                    self.cache[i] = read_file(image.path, "image")
                except DataError as e:
                    raise DataError(f"{settings.where}: cannot read image ({e})") from None

    def _record(self, window: Window, flip: bool) -> Record:
        name = (
            f"{self.images[window.image].path} window ({window.x1}, {window.y1}, {window.x2}, {window.y2}) "
            f"at {self.settings.source_file}:{window.line}"
        )
        return Record((window, flip), name, float(window.label))

    def peek(self) -> Record:
        cfg = self.settings
        return self._record((cfg.fg or cfg.bg)[0], False)

    @property
    def draws_per_window(self) -> int:
        """Uniforms drawn per window: which window of its set, and the mirror coin (``u < 0.5``) if mirroring."""
        return 2 if self.settings.mirror else 1

    def next_records(self, n: int) -> list[Record]:
        """This rank's ``n`` windows: those at its positions of the batch of ``n·N`` one process draws (the
        background windows first, then ``int(n·N·fg_fraction)`` foreground ones)."""
        cfg, shard = self.settings, self.settings.shard
        total = n * shard.size
        num_bg = total - int(_f32(total) * _f32(cfg.fg_fraction))
        u = shard.draws(self.rng, n, self.draws_per_window)
        out = []
        for i in range(n):
            pool = cfg.bg if shard.global_offset(i) < num_bg else cfg.fg
            flip = bool(cfg.mirror and u[i, 1] < 0.5)
            out.append(self._record(pool[int(u[i, 0] * len(pool))], flip))
        return out

    def skip(self, n: int) -> None:
        """Move on as ``next_records`` would for ``n`` windows: one jump of the generator."""
        self.settings.shard.skip_draws(self.rng, n, self.draws_per_window)

    def restarted(self, rng: np.random.Generator) -> WindowSource:
        """This source from its start with ``rng`` (the image cache is shared, not read again)."""
        source = copy.copy(self)
        source.rng = rng
        return source

    def _image(self, index: int) -> np.ndarray:
        """The image as BGR HxWx3, decoded from the cached bytes or read from its file (as ImageData reads)."""
        path = self.images[index].path
        try:
            if index in self.cache:
                return decode_image_bytes(self.cache[index], "color", path)
            return read_image(path, 0, 0, True)
        except DataError as e:
            raise DataError(f"{self.settings.where}: {e}") from None

    def decode(self, record: Record) -> Decoded:
        window, flip = record.payload
        cfg = self.settings
        image = self._image(window.image)
        rows, cols = image.shape[:2]
        g = window_geometry(
            window.x1, window.y1, window.x2, window.y2, rows, cols, cfg.crop, cfg.context_pad, cfg.square, flip
        )
        if not (0 <= g.x1 <= g.x2 < cols and 0 <= g.y1 <= g.y2 < rows):
            raise DataError(
                f"{cfg.where}: {record.name}: the region ({g.x1}, {g.y1}, {g.x2}, {g.y2}) to crop is not inside "
                f"the {cols}x{rows} image"
            )
        if g.width <= 0 or g.height <= 0:
            raise DataError(f"{cfg.where}: {record.name}: the window warps to an empty {g.width}x{g.height} patch")
        patch = cv2.resize(image[g.y1 : g.y2 + 1, g.x1 : g.x2 + 1], (g.width, g.height), interpolation=cv2.INTER_LINEAR)
        if flip:
            patch = patch[:, ::-1]
        values = patch.transpose(2, 0, 1).astype(np.float32)
        if cfg.mean is not None:
            top, left = cfg.mean_off + g.pad_h, cfg.mean_off + g.pad_w
            values -= cfg.mean[:, top : top + g.height, left : left + g.width]
        elif cfg.mean_values is not None:
            values -= cfg.mean_values[:, None, None]
        if cfg.scale != 1.0:
            values *= cfg.scale
        out = np.zeros((CHANNELS, cfg.crop, cfg.crop), dtype=np.float32)
        out[:, g.pad_h : g.pad_h + g.height, g.pad_w : g.pad_w + g.width] = values
        return Decoded(out, CHW, record.label)


@register("WindowData")
class WindowDataLayer(_PrefetchingDataLayer):
    """R-CNN windows (``window_data_param``, crop/mirror/mean in ``transform_param``); tops data and label."""

    min_top = max_top = None
    exact_num_top = 2

    def batch_size(self) -> int:
        return int(self.layer_param.window_data_param.batch_size)

    def layer_setup(self, bottom: list[Shape]) -> None:
        p, t = self.layer_param.window_data_param, self.layer_param.transform_param
        self.where = where = f"layer '{self.name}' (WindowData)"
        self.batch = self.batch_size()
        if self.batch <= 0:
            raise self.error(f"window_data_param.batch_size must be positive, got {self.batch}")
        if not p.source:
            raise self.error("window_data_param.source is not set")
        self.source_file = p.source
        self.crop = int(t.crop_size)
        if self.crop <= 0:
            hint = " (window_data_param.crop_size is deprecated and not read: move it)" if p.crop_size else ""
            raise self.error(f"transform_param.crop_size must be positive{hint}")
        for field in ("mirror", "mean_file"):
            if p.HasField(field):
                log.warning(
                    "%s: window_data_param.%s is deprecated and ignored (as in Caffe); set transform_param",
                    where,
                    field,
                )
        if p.crop_mode not in ("warp", "square"):
            raise self.error(f'window_data_param.crop_mode must be "warp" or "square", got {p.crop_mode!r}')
        self.square = p.crop_mode == "square"
        self.context_pad = int(p.context_pad)
        if 2 * self.context_pad >= self.crop:
            raise self.error(f"window_data_param.context_pad {self.context_pad} leaves nothing of a {self.crop} crop")
        self.fg_fraction = float(p.fg_fraction)
        if not 0.0 <= self.fg_fraction <= 1.0:
            raise self.error(f"window_data_param.fg_fraction must be in [0, 1], got {self.fg_fraction}")
        self.shard = Shard.current(self.phase)  # this process's windows when several train together
        total = self.batch * self.shard.size  # the batch the ranks draw together
        self.num_fg = int(_f32(total) * _f32(self.fg_fraction))
        if p.HasField("scale") or not t.HasField("scale"):
            self.scale = float(_f32(p.scale))
            if t.HasField("scale") and t.scale != p.scale:
                log.warning(
                    "%s: using window_data_param.scale %g; transform_param.scale %g is ignored", where, p.scale, t.scale
                )
        else:
            self.scale = float(_f32(t.scale))
        self.mirror = bool(t.mirror) and self.phase == TRAIN
        self.cache_images = bool(p.cache_images)
        self._read_mean(t)

        log.info(
            "Window data layer: foreground (object) overlap threshold: %g, background (non-object) overlap "
            "threshold: %g, foreground sampling fraction: %g, cache_images: %s, root_folder: %s",
            p.fg_threshold,
            p.bg_threshold,
            p.fg_fraction,
            self.cache_images,
            p.root_folder,
        )
        images, windows = read_window_file(p.source, p.root_folder)
        self.fg: list[Window] = []
        self.bg: list[Window] = []
        fg_threshold, bg_threshold = _f32(p.fg_threshold), _f32(p.bg_threshold)
        for w in windows:
            overlap = _f32(w.overlap)
            if overlap >= fg_threshold:
                if w.label <= 0:
                    raise DataError(
                        f"{where}: {p.source}:{w.line}: foreground window (overlap {w.overlap:g}) has class_index "
                        f"{w.label}; foreground classes must be positive (0 is background)"
                    )
                self.fg.append(w)
            elif overlap < bg_threshold:
                self.bg.append(Window(w.image, 0, 0.0, w.x1, w.y1, w.x2, w.y2, w.line))
        log.info("Number of images: %d", len(images))
        counts = Counter([0] * len(self.bg) + [w.label for w in self.fg])
        for label in sorted(counts):
            log.info("class %d has %d samples", label, counts[label])
        log.info("Amount of context padding: %d", self.context_pad)
        log.info("Crop mode: %s", p.crop_mode)
        if self.num_fg and not self.fg:
            raise DataError(f"{where}: {p.source} has no foreground window (overlap >= {p.fg_threshold:g})")
        if total - self.num_fg and not self.bg:
            raise DataError(f"{where}: {p.source} has no background window (overlap < {p.bg_threshold:g})")

        # The items are finished windows: the prefetcher's transformer only copies them.
        self.transformer = DataTransformer(pb.TransformationParameter(), self.phase, where)
        self.draw_seed()
        settings = WindowSettings(
            where=where,
            source_file=self.source_file,
            crop=self.crop,
            context_pad=self.context_pad,
            square=self.square,
            mirror=self.mirror,
            fg_fraction=self.fg_fraction,
            scale=self.scale,
            mean=self.mean,
            mean_off=self.mean_off,
            mean_values=self.mean_values,
            fg=self.fg,
            bg=self.bg,
            cache_images=self.cache_images,
            shard=self.shard,
        )
        self.source = WindowSource(settings, images, np.random.default_rng(self._seed))
        self._data_shape = (self.batch, CHANNELS, self.crop, self.crop)
        log.info("output data size: %s", ",".join(map(str, self._data_shape)))
        self._start_prefetching(0)  # threads are also joined at exit (caffe.data.prefetch)

    def make_source(self, rng: np.random.Generator) -> WindowSource:
        return self.source.restarted(rng)

    def _read_mean(self, t: pb.TransformationParameter) -> None:
        self.mean: np.ndarray | None = None
        self.mean_values: np.ndarray | None = None
        self.mean_off = 0
        if t.mean_file and len(t.mean_value):
            raise self.error("cannot specify mean_file and mean_value at the same time")
        if t.mean_file:
            log.info("Loading mean file from: %s", t.mean_file)
            self.mean = load_mean(t.mean_file, self.where)
            c, h, w = self.mean.shape
            self.mean_off = (w - self.crop) // 2
            if c != CHANNELS or self.mean_off < 0 or self.mean_off + self.crop > h:
                raise DataError(
                    f"{self.where}: the mean file {t.mean_file} is {c}x{h}x{w}; it must be {CHANNELS} channels and "
                    f"hold a centred {self.crop}x{self.crop} crop (offset (width - crop_size) / 2 on both axes)"
                )
        elif len(t.mean_value):
            if len(t.mean_value) not in (1, CHANNELS):
                raise self.error(
                    f"specify either 1 mean_value or as many as channels ({CHANNELS}), got {len(t.mean_value)}"
                )
            self.mean_values = np.broadcast_to(np.array(t.mean_value, dtype=np.float32), (CHANNELS,)).copy()
