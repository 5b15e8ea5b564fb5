"""Inference for the studio: classify one image or many with a model job's snapshot or a pretrained job.

A job's files are resolved into a :class:`ModelSource` (deploy net, weights, labels, mean, image size and
resize mode), loaded once into a :class:`LoadedModel` kept in a small LRU cache, and run on images:

* :func:`classify_one` - top-5 ``(label, percent)``; with ``visualize`` also per-layer activations and
  weights as tiled PNG data URIs with mean/std/histogram statistics, as DIGITS shows them;
* :func:`classify_many` - top-5 per image and, when ground truth is given, top-1/top-5 accuracy, the
  confusion matrix and per-class accuracy; :func:`top_n` - the N highest-scoring images of each class.

Each job becomes a :class:`caffe.deploy.DeployModel` (the owner of preprocessing, mean fitting and output
normalization, shared with ``caffe classify`` and ``caffe serve``): images are resized to the job's image
size with its resize mode (squash/crop/fill/half_crop), then centre-cropped to the net's input (squashed
when smaller); RGB -> BGR, 0..255, minus the mean fitted by the job's mean subtraction (image: a mean image
centre-cropped to the input; pixel: its per-channel values). A softmax is applied unless the net's output
comes from a Softmax layer.
"""

from __future__ import annotations

import base64
import json
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from caffe import deploy
from caffe.deploy import RESIZE_MODES
from caffe.deploy.segmentation import is_segmenter
from caffe.errors import CaffeError, DataError
from caffe.studio import layer_worker
from caffe.studio.datasets import SUPPORTED_EXTENSIONS

#: Nets kept loaded (the LRU cache of :func:`load_model`).
CACHE_SIZE = 4
TOP_K = 5


class InferenceError(CaffeError):
    """A request that cannot be served: unknown snapshot, missing files, bad image; ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------------------- model files
@dataclass(frozen=True)
class ModelSource:
    """Everything needed to run one job's network on images."""

    job_id: str
    deploy: Path
    weights: Path
    labels: tuple[str, ...] = ()
    mean_file: Path | None = None
    mean_values: tuple[float, ...] = ()
    channels: int = 3
    height: int = 256
    width: int = 256
    resize_mode: str = "squash"
    mean_mode: str = "image"
    input_scale: float = 1.0  # times the mean-subtracted pixels (an SSD trained with transform_param.scale)
    python_layer: Path | None = None
    epoch: float | None = None

    @property
    def key(self) -> tuple[Any, ...]:
        """Cache key: the files and their modification times (a re-upload or new snapshot reloads)."""
        stamps = tuple(p.stat().st_mtime_ns if p and p.exists() else 0 for p in (self.deploy, self.weights))
        return (self, stamps)


def read_info(job_dir: Path) -> dict[str, Any]:
    """A job's ``info.json`` ({} when absent or unreadable)."""
    try:
        data = json.loads((job_dir / "info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def job_labels(path: Path) -> tuple[str, ...]:
    """A job's labels file (empty when it has none): :func:`caffe.deploy.read_labels`."""
    if not path.is_file():
        return ()
    try:
        return tuple(deploy.read_labels(path))
    except deploy.ModelFilesError:  # empty or unreadable: the model's indexes stand for its classes
        return ()


def snapshot_epochs(job_dir: Path) -> list[float]:
    """The epochs of a model job's weight snapshots, oldest first (see :func:`caffe.studio.models.snapshots`)."""
    from caffe.studio import models

    return [s["epoch"] for s in models.snapshots(job_dir)]


def _image_settings(params: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """channels/height/width/resize_mode from a dataset's or pretrained job's params and info (DIGITS names too)."""

    def pick(*names: str, default: Any) -> Any:
        for holder in (info, params):
            for n in names:
                if holder.get(n) not in (None, ""):
                    return holder[n]
        return default

    dims = info.get("image dimensions")  # a model job's [height, width, channels]
    if isinstance(dims, list) and len(dims) == 3:
        info = {**info, "height": dims[0], "width": dims[1], "channels": dims[2]}
    channels = pick("channels", "resize_channels", "image_channels", default=3)
    if isinstance(channels, str):
        channels = 1 if channels.lower() in ("1", "grayscale", "gray") else 3
    mode = str(pick("resize_mode", default="squash"))
    return {
        "channels": int(channels),
        "height": int(pick("height", "resize_height", "image_height", default=256)),
        "width": int(pick("width", "resize_width", "image_width", default=256)),
        "resize_mode": mode if mode in RESIZE_MODES else "squash",
    }


def resolve(store: Any, job_id: str, epoch: float | str | None = None) -> ModelSource:
    """The :class:`ModelSource` of a model job (snapshot of ``epoch``, default the last) or a pretrained job."""
    try:
        job = store.get(job_id)
    except KeyError:
        raise InferenceError(f"no job {job_id!r}", 404) from None
    job_dir = Path(store.job_dir(job_id))
    info = read_info(job_dir)
    labels = job_labels(job_dir / "labels.txt")
    mean_file = job_dir / "mean.binaryproto"
    common: dict[str, Any] = {
        "job_id": job_id,
        "labels": labels,
        "mean_file": mean_file if mean_file.is_file() else None,
        "mean_values": tuple(float(v) for v in info.get("mean_values") or ()),
        "input_scale": float(info.get("input scale") or 1.0),
    }
    mode = str(info.get("mean subtraction", "image"))  # a model's training choice, kept by its promotion
    common["mean_mode"] = mode if mode in deploy.MEAN_MODES else "image"
    if job.kind == "pretrained":
        py = job_dir / "python_layer.py"
        return ModelSource(
            deploy=job_dir / "deploy.prototxt",
            weights=job_dir / "weights.caffemodel",
            python_layer=py if py.is_file() else None,
            **_image_settings(job.params or {}, info),
            **common,
        )
    if job.kind != "model":
        raise InferenceError(f"job {job_id} is a {job.kind} job; choose a model or a pretrained model")
    from caffe.studio import models

    found = models.snapshots(job_dir)
    if not found:
        raise InferenceError(f"model {job_id} has no snapshot yet; wait for the first one", 409)
    if epoch in (None, "", "-1", -1):
        chosen = found[-1]
    else:
        try:
            want = float(epoch)
        except (TypeError, ValueError):
            raise InferenceError(f"snapshot_epoch {epoch!r} is not a number") from None
        matches = [s for s in found if math.isclose(s["epoch"], want, abs_tol=1e-3)]
        if not matches:
            have = ", ".join(f"{s['epoch']:g}" for s in found)
            raise InferenceError(f"model {job_id} has no snapshot for epoch {want:g} (snapshots: {have})", 404)
        chosen = matches[0]
    dataset_params: dict[str, Any] = {}
    if job.parent:
        try:
            dataset_params = dict(store.get(job.parent).params or {})
        except KeyError:
            dataset_params = {}
    settings = _image_settings({**dataset_params, **(job.params or {})}, info)
    return ModelSource(
        deploy=job_dir / "deploy.prototxt",
        weights=job_dir / chosen["file"],
        epoch=chosen["epoch"],
        **settings,
        **common,
    )


# --------------------------------------------------------------------------------------- loaded nets
@dataclass
class LoadedModel:
    """A net ready for inference; ``lock`` serializes its use (nets are not thread-safe).

    ``deploy_model`` is the :class:`caffe.deploy.DeployModel` when the net runs here; a net with Python layers runs
    in a worker (``net`` is then its :class:`~caffe.studio.layer_worker.RemoteNet`)."""

    source: ModelSource
    net: Any
    input: str
    input_shape: tuple[int, int, int]
    output: str
    softmax: bool
    preprocessing: deploy.Preprocessing
    deploy_model: deploy.DeployModel | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def label(self, index: int) -> str:
        if self.detector:
            assert self.deploy_model is not None
            return self.deploy_model.label(index)
        labels = self.source.labels
        return labels[index] if index < len(labels) else str(index)

    @property
    def detector(self) -> bool:
        """Whether the net is a detector (its output comes from DetectionOutput or a YOLO port's head)."""
        return isinstance(self.deploy_model, deploy.DetectionModel)

    @property
    def segmenter(self) -> bool:
        """Whether the net segments (its output is N x C x H x W class scores: SegNet, FCN, ENet, PSPNet, ...)."""
        return isinstance(self.deploy_model, deploy.SegmentationModel)

    @property
    def remote(self) -> layer_worker.RemoteNet | None:
        """The worker's stand-in when the net runs in a worker process (it has Python layers)."""
        return self.net if isinstance(self.net, layer_worker.RemoteNet) else None

    @property
    def usable(self) -> bool:
        return self.remote is None or self.remote.worker.alive

    def close(self) -> None:
        """End the worker of a net that runs in one (once the calls in progress are done)."""
        if self.remote is not None:
            with self.lock:
                self.remote.close()


def build_net(deploy: Path, weights: Path | None, python_layer: Path | None = None) -> Any:
    """A TEST-phase Net of ``deploy`` (with the ``deploy`` stage) with ``weights`` copied in.

    A net with Python layers is built only in a worker process (:mod:`caffe.studio.layer_worker`), where
    ``python_layer`` (an uploaded file) is registered under its layers' module names."""
    from caffe.common import TEST
    from caffe.net import Net
    from caffe.protoio import read_net_param

    param = read_net_param(deploy)
    if layer_worker.python_layers(param):
        layer_worker.register_module(python_layer, param)
    net = Net(str(deploy), TEST, stages=["deploy"])
    if weights is not None:
        net.copy_from(str(weights))
    return net


def files_and_settings(source: ModelSource) -> tuple[deploy.ModelFiles, deploy.Settings]:
    """The job as a deployable model: its files and the preprocessing DIGITS gives it (see the module)."""
    files = deploy.ModelFiles(
        source.deploy, source.weights, mean=source.mean_file, folder=source.deploy.parent, name=source.job_id, info={}
    )
    mean: Any = source.mean_file
    if mean is None and source.mean_values:
        mean = np.asarray(source.mean_values, dtype=np.float32)
    settings = deploy.Settings(
        mean=mean,
        mean_mode=source.mean_mode,
        image_size=(source.height, source.width),
        resize_mode=source.resize_mode,
        input_scale=source.input_scale,
    )
    return files, settings


def preprocessing_of(source: ModelSource, input_shape: tuple[int, int, int]) -> deploy.Preprocessing:
    """The :class:`caffe.deploy.Preprocessing` of a job for a net input of ``input_shape``."""
    files, settings = files_and_settings(source)
    try:
        return deploy.build_preprocessing(files, settings, input_shape, warn=False)[0]
    except CaffeError as e:
        raise InferenceError(str(e)) from None


def require_consent(source: ModelSource, allowed: bool) -> bool:
    """Whether the job's net has Python layers; 403 when they are not allowed, 400 for an uploaded module
    named like a module the server can import."""
    from caffe.protoio import read_net_param

    param = read_net_param(source.deploy)
    layer_worker.require_consent(param, source.deploy.name, allowed)
    if source.python_layer is not None:
        layer_worker.check_module_names(param, source.deploy.name)
    return bool(layer_worker.python_layers(param))


def load(source: ModelSource, allow_python_layers: bool = False) -> LoadedModel:
    """Build a :class:`LoadedModel` from its files (no cache); a net with Python layers runs in a worker."""
    if require_consent(source, allow_python_layers):
        return load_remote(source)
    return load_here(source)


def load_remote(source: ModelSource) -> LoadedModel:
    """A :class:`LoadedModel` whose net (it has Python layers) is built and run by a worker process."""
    net = layer_worker.start_net(source.deploy, source.weights, source.python_layer)
    try:
        prep = preprocessing_of(source, net.input_shape)
        return LoadedModel(source, net, net.input, net.input_shape, net.output, net.softmax, prep)
    except BaseException:
        net.close()
        raise


def load_here(source: ModelSource) -> LoadedModel:
    """A :class:`LoadedModel` whose net is built in this process: a :class:`caffe.deploy.DetectionModel` when
    the net is a detector, a :class:`caffe.deploy.SegmentationModel` when it segments (images squashed to the
    input, as SSD and ``caffe segment`` do; the job's mean kept), else a :class:`caffe.deploy.DeployModel`."""
    files, settings = files_and_settings(source)
    net = build_net(source.deploy, source.weights, source.python_layer)
    kind: type[deploy.DeployModel] = deploy.DeployModel
    try:
        if deploy.is_detector(net) or is_segmenter(net):
            kind = deploy.DetectionModel if deploy.is_detector(net) else deploy.SegmentationModel
            settings = replace(settings, image_size=None, resize_mode=None)
        model = kind(files, settings, labels=list(source.labels), net=net, warn=False)
    except CaffeError as e:
        raise InferenceError(str(e)) from None
    return LoadedModel(
        source, net, model.input, model.input_shape, model.output, model.softmax, model.preprocessing, model
    )


class ModelCache:
    """A small LRU cache of loaded nets, keyed by their files (and modification times)."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[Any, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, source: ModelSource, allow_python_layers: bool = False) -> LoadedModel:
        """The loaded net of ``source`` (a net with Python layers only when they are allowed)."""
        key = source.key
        with self._lock:
            cached = self._items.get(key)
            if cached is not None and cached.usable and (allow_python_layers or cached.remote is None):
                self._items.move_to_end(key)
                return cached
        model = load(source, allow_python_layers)
        with self._lock:
            cached = self._items.get(key)
            if cached is not None and cached.usable:
                gone, model = [model], cached  # loaded meanwhile by another request: keep the one in use
            else:
                gone = [self._items.pop(key)] if cached is not None else []
                self._items[key] = model
            while len(self._items) > self.size:
                gone.append(self._items.popitem(last=False)[1])
        self._close(gone)
        return model

    @staticmethod
    def _close(models: list[LoadedModel]) -> None:
        for model in models:
            model.close()

    def clear(self) -> None:
        with self._lock:
            gone = list(self._items.values())
            self._items.clear()
        self._close(gone)

    def forget(self, job_dir: Path) -> None:
        """Drop the nets loaded from one job's folder (it was deleted or replaced)."""
        with self._lock:
            gone = [self._items.pop(k) for k, m in list(self._items.items()) if m.source.deploy.parent == job_dir]
        self._close(gone)

    def __len__(self) -> int:
        return len(self._items)


CACHE = ModelCache()


def load_model(
    store: Any, job_id: str, epoch: float | str | None = None, allow_python_layers: bool = False
) -> LoadedModel:
    """The loaded net of a job (see :func:`resolve`), from the LRU cache when it is there."""
    return CACHE.get(resolve(store, job_id, epoch), allow_python_layers)


# --------------------------------------------------------------------------------------- images
def decode_upload(data: bytes, channels: int, what: str = "image") -> np.ndarray:
    """Image bytes -> H x W x C uint8 (:func:`caffe.deploy.decode_image`); 415 for bytes that are no image."""
    if not data:
        raise InferenceError(f"{what}: empty file")
    try:
        return deploy.decode_image(data, channels, what)
    except deploy.ImageDecodeError as e:
        raise InferenceError(str(e), 415) from None


def load_input(model: LoadedModel, data: bytes, what: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """Image bytes -> (the net's input, the resized image shown to the user)."""
    prep = model.preprocessing
    shown = prep.resize(decode_upload(data, model.input_shape[0], what))
    return prep.to_input(shown), shown


# --------------------------------------------------------------------------------------- forward
def forward(model: LoadedModel, batch: np.ndarray) -> np.ndarray:
    """N x C x H x W inputs -> N x K class probabilities. The caller holds ``model.lock``."""
    if model.remote is not None:
        return model.remote.forward(batch)
    assert model.deploy_model is not None
    return model.deploy_model.forward(batch)


def top_k(model: LoadedModel, probs: np.ndarray, k: int = TOP_K) -> list[tuple[str, float]]:
    """The ``k`` best ``(label, percent)`` of one row, as DIGITS reports them (percent, 2 decimals)."""
    return [(p.label, round(p.probability * 100.0, 2)) for p in deploy.top_k(probs, k, model.label)]


def classify_arrays(model: LoadedModel, inputs: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
    """Probabilities for prepared inputs, in batches."""
    rows = []
    with model.lock:
        for i in range(0, len(inputs), batch_size):
            rows.append(forward(model, np.stack(inputs[i : i + batch_size])))
    return np.concatenate(rows) if rows else np.zeros((0, len(model.source.labels)))


# --------------------------------------------------------------------------------------- visualizations
def png_data_uri(img: np.ndarray) -> str:
    """H x W (gray) or H x W x 3 (RGB) uint8 -> ``data:image/png;base64,...``."""
    import cv2

    if img.ndim == 3:
        img = img[:, :, ::-1]  # cv2 writes BGR
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img))
    if not ok:
        raise InferenceError("cannot encode a PNG", 500)
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _normalize(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return np.zeros(a.shape, np.uint8) if hi <= lo else ((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def tile(maps: np.ndarray, pad: int = 1, max_side: int = 384) -> np.ndarray:
    """N x H x W (or N x H x W x 3) uint8 -> one mosaic of ceil(sqrt(N)) columns, at most ``max_side`` wide."""
    import cv2

    n, h, w = maps.shape[:3]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    shape = (rows * (h + pad) + pad, cols * (w + pad) + pad, *maps.shape[3:])
    mosaic = np.full(shape, 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        mosaic[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = maps[i]
    side = max(mosaic.shape[:2])
    if side > max_side:
        scale = max_side / side
        size = (max(1, round(mosaic.shape[1] * scale)), max(1, round(mosaic.shape[0] * scale)))
        mosaic = cv2.resize(mosaic, size, interpolation=cv2.INTER_AREA)
    elif side < 128:  # tiny maps (fc layers, 1x1 pools) are enlarged so that they can be seen
        f = 128 // side
        mosaic = cv2.resize(mosaic, (mosaic.shape[1] * f, mosaic.shape[0] * f), interpolation=cv2.INTER_NEAREST)
    return mosaic


def heatmap(gray: np.ndarray) -> np.ndarray:
    """uint8 H x W -> RGB with a perceptual colour map (as DIGITS' activation heat maps)."""
    import cv2

    return cv2.applyColorMap(gray, cv2.COLORMAP_VIRIDIS)[:, :, ::-1]


def stats(a: np.ndarray, bins: int = 20) -> dict[str, Any]:
    """mean, std and a ``bins``-bin histogram of ``a``."""
    flat = np.asarray(a, dtype=np.float64).ravel()
    if flat.size == 0:
        return {"mean": 0.0, "std": 0.0, "hist": {"counts": [], "edges": []}}
    counts, edges = np.histogram(flat, bins=bins)
    return {
        "mean": float(flat.mean()),
        "std": float(flat.std()),
        "hist": {"counts": counts.tolist(), "edges": [float(e) for e in edges]},
    }


def activation_image(data: np.ndarray, max_maps: int = 64) -> tuple[str, int]:
    """One item's blob (C x H x W, or a vector) -> (tiled heat map data URI, number of maps shown)."""
    a = np.asarray(data, dtype=np.float32)
    if a.ndim == 3:
        maps = a[:max_maps]
    else:  # a vector: one square map
        flat = a.ravel()
        side = math.ceil(math.sqrt(flat.size))
        padded = np.full(side * side, flat.min() if flat.size else 0.0, dtype=np.float32)
        padded[: flat.size] = flat
        maps = padded.reshape(1, side, side)
    mosaic = tile(_normalize(maps))
    return png_data_uri(heatmap(mosaic)), len(maps)


def weight_image(w: np.ndarray, max_filters: int = 96) -> str:
    """Convolution filters (O x I x kh x kw) tiled: colour when I == 3 (BGR weights shown as RGB), else channel 0."""
    w = np.asarray(w, dtype=np.float32)[:max_filters]
    maps = _normalize(w[:, ::-1].transpose(0, 2, 3, 1)) if w.shape[1] == 3 else heatmap_stack(_normalize(w[:, 0]))
    return png_data_uri(tile(maps))


def heatmap_stack(maps: np.ndarray) -> np.ndarray:
    return np.stack([heatmap(m) for m in maps])


@dataclass
class LayerView:
    """What the visualizations show of one layer after a forward: its top's first item and its first weights."""

    layer: str
    type: str
    blob: str | None
    shape: list[int]
    data: np.ndarray | None
    weights: np.ndarray | None
    params: int


def layer_views(net: Any) -> list[LayerView]:
    """The :class:`LayerView` of each shown layer (in-place, Input, Split and Silence layers are not)."""
    out = []
    for name, layer in net.layer_dict.items():
        tops = net.top_names.get(name) or []
        if layer.type in ("Input", "Split", "Silence") or set(tops) & set(net.bottom_names.get(name) or []):
            continue  # an in-place layer's result is shown as its producer's activation
        params = net.params.get(name) or []
        out.append(
            LayerView(
                name,
                layer.type,
                tops[0] if tops else None,
                list(net.blobs[tops[0]].shape) if tops else [],
                net.blobs[tops[0]].data[0] if tops else None,
                params[0].data if params else None,
                int(sum(p.count for p in params)),
            )
        )
    return out


def visualizations(model: LoadedModel) -> list[dict[str, Any]]:
    """Per layer (after a forward of one image): its top blob's activations and, for convolutions, its filters.

    Each entry: ``{"layer", "type", "blob", "shape", "activation": {image, maps, mean, std, hist},
    "weights": {image?, shape, params, mean, std, hist} | None}``. The caller holds ``model.lock``.
    """
    remote = model.remote
    views = [LayerView(**view) for view in remote.layer_views()] if remote is not None else layer_views(model.net)
    out = []
    for view in views:
        entry: dict[str, Any] = {
            "layer": view.layer,
            "type": view.type,
            "blob": None,
            "activation": None,
            "weights": None,
        }
        if view.blob is not None and view.data is not None:
            image, shown = activation_image(view.data)
            entry.update(blob=view.blob, shape=view.shape)
            entry["activation"] = {"image": image, "maps": shown, **stats(view.data)}
        w = view.weights
        if w is not None:
            info: dict[str, Any] = {"shape": list(w.shape), "params": view.params, **stats(w)}
            if view.type in ("Convolution", "Deconvolution") and w.ndim == 4:
                info["image"] = weight_image(w)
            entry["weights"] = info
        out.append(entry)
    return out


# --------------------------------------------------------------------------------------- classify
@dataclass
class OneResult:
    predictions: list[tuple[str, float]]
    image: str  # data URI of the resized image (a detector's: the image with its boxes drawn)
    layers: list[dict[str, Any]] | None = None
    detections: list[dict[str, Any]] | None = None  # a detector's boxes (see detection_dicts)
    segmentation: list[dict[str, Any]] | None = None  # a segmenter's classes by area (see segmentation_dicts)


#: A detector's default confidence threshold; the longest side of the annotated image a page shows.
DETECTION_THRESHOLD = 0.5
SHOWN_SIDE = 800


def parse_threshold(text: str | float | None) -> float:
    """A detection threshold (a number in [0, 1]; empty: DETECTION_THRESHOLD); a 400 otherwise."""
    if text in (None, ""):
        return DETECTION_THRESHOLD
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InferenceError(f"threshold: expected a confidence between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise InferenceError(f"threshold: expected a confidence between 0 and 1, got {text!r}")
    return value


def detection_dicts(model: LoadedModel, found: Sequence[Any]) -> list[dict[str, Any]]:
    """Detections as JSON: ``{label, label_id, confidence, shown, box: [xmin, ymin, xmax, ymax]}`` (image pixels;
    ``shown``: the confidence as the pages show it, a percentage or DetectNet's log votes)."""
    assert isinstance(model.deploy_model, deploy.DetectionModel)
    show = model.deploy_model.show_confidence
    return [
        {
            "label": model.label(d.label),
            "label_id": d.label,
            "confidence": round(d.confidence, 4),
            "shown": show(d.confidence),
            "box": [round(v, 1) for v in d.box],
        }
        for d in found
    ]


def detect_images(model: LoadedModel, images: Sequence[np.ndarray], threshold: float) -> list[list[Any]]:
    """A detector's :class:`caffe.deploy.Detection` lists of decoded images. The caller holds ``model.lock``."""
    assert isinstance(model.deploy_model, deploy.DetectionModel)
    return model.deploy_model.detect(images, threshold)


def shown_detections(model: LoadedModel, img: np.ndarray, found: Sequence[Any]) -> str:
    """The image with its boxes, labels and confidences drawn, at most SHOWN_SIDE pixels a side, as a data URI."""
    from caffe.deploy.drawing import draw_detections

    return png_data_uri(_at_most(draw_detections(img, found, model.label), SHOWN_SIDE))


def detect_one(
    model: LoadedModel,
    data: bytes,
    visualize: bool = False,
    what: str = "image",
    threshold: float = DETECTION_THRESHOLD,
) -> OneResult:
    """A detector's boxes on one image (predictions: each box's ``(label, percent)``, DetectNet's ``(label, log
    votes)``), drawn on it."""
    img = decode_upload(data, model.input_shape[0], what)
    with model.lock:
        found = detect_images(model, [img], threshold)[0]
        layers = visualizations(model) if visualize else None
    assert isinstance(model.deploy_model, deploy.DetectionModel)
    percent = 100.0 if model.deploy_model.confidence_is_probability else 1.0  # DetectNet's log votes as they are
    predictions = [(model.label(d.label), round(d.confidence * percent, 2)) for d in found]
    return OneResult(predictions, shown_detections(model, img, found), layers, detection_dicts(model, found))


def segmentation_dicts(model: LoadedModel, class_map: np.ndarray) -> list[dict[str, Any]]:
    """The classes of a class map, largest area first: ``{label, label_id, pixels, percent}``."""
    from caffe.deploy.segmentation import class_counts

    total = max(1, class_map.size)
    counted = sorted(class_counts(class_map), key=lambda c: (-c[1], c[0]))
    return [
        {"label": model.label(c), "label_id": c, "pixels": n, "percent": round(100.0 * n / total, 2)}
        for c, n in counted
    ]


def shown_segmentation(img: np.ndarray, class_map: np.ndarray) -> str:
    """The image with each pixel's class colour blended in (the PASCAL VOC palette, ``caffe segment``'s), at most
    SHOWN_SIDE pixels a side, as a data URI."""
    drawn = deploy.overlay(img if img.shape[2] == 3 else np.repeat(img, 3, axis=2), class_map)
    return png_data_uri(_at_most(drawn, SHOWN_SIDE))


def _at_most(img: np.ndarray, side: int) -> np.ndarray:
    """``img`` shrunk (area interpolation) so that its longest side is at most ``side`` pixels."""
    import cv2

    longest = max(img.shape[:2])
    if longest <= side:
        return img
    scale = side / longest
    size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def segment_one(model: LoadedModel, data: bytes, visualize: bool = False, what: str = "image") -> OneResult:
    """A segmenter's class map of one image: its classes by area (predictions: ``(label, percent of the
    pixels)``) and the image with the classes coloured in."""
    assert isinstance(model.deploy_model, deploy.SegmentationModel)
    img = decode_upload(data, model.input_shape[0], what)
    with model.lock:
        class_map = model.deploy_model.segment([img])[0]
        layers = visualizations(model) if visualize else None
    shares = segmentation_dicts(model, class_map)
    predictions = [(s["label"], s["percent"]) for s in shares]
    return OneResult(predictions, shown_segmentation(img, class_map), layers, segmentation=shares)


def classify_one(
    model: LoadedModel,
    data: bytes,
    visualize: bool = False,
    what: str = "image",
    threshold: float = DETECTION_THRESHOLD,
) -> OneResult:
    """Top-5 of one image (and, with ``visualize``, the per-layer visualizations); a detector's boxes
    above ``threshold`` (:func:`detect_one`); a segmenter's classes (:func:`segment_one`)."""
    if model.detector:
        return detect_one(model, data, visualize, what, threshold)
    if model.segmenter:
        return segment_one(model, data, visualize, what)
    x, shown = load_input(model, data, what)
    with model.lock:
        probs = forward(model, x[None])[0]
        layers = visualizations(model) if visualize else None
    image = png_data_uri(shown[:, :, 0] if shown.shape[2] == 1 else shown)
    return OneResult(top_k(model, probs), image, layers)


@dataclass
class ManyResult:
    """Per-image predictions and, when every image has a ground truth, the evaluation."""

    paths: list[str]
    probs: np.ndarray
    truth: list[int | None]
    labels: list[str]
    errors: dict[str, str] = field(default_factory=dict)
    detections: dict[str, list[dict[str, Any]]] | None = None  # a detector's boxes per image
    segmentations: dict[str, list[dict[str, Any]]] | None = None  # a segmenter's classes per image

    def top5(self, i: int, k: int = TOP_K) -> list[tuple[str, float]]:
        return [(p.label, round(p.probability * 100.0, 2)) for p in deploy.top_k(self.probs[i], k, self.label)]

    def label(self, j: int) -> str:
        """Class ``j``'s label (its index when the model has no label for it)."""
        return self.labels[j] if j < len(self.labels) else str(j)

    @property
    def has_truth(self) -> bool:
        return bool(self.truth) and all(t is not None for t in self.truth)

    def evaluation(self) -> dict[str, Any] | None:
        """top-1/top-5 accuracy (percent), confusion matrix (rows: truth, columns: top-1) and per-class accuracy."""
        if self.detections is not None or self.segmentations is not None or not self.has_truth or not len(self.probs):
            return None
        k = self.probs.shape[1]
        truth = np.asarray(self.truth, dtype=np.int64)
        if truth.max() >= k or truth.min() < 0:
            raise InferenceError(f"ground-truth label {int(truth.max())} outside the model's {k} classes")
        top1 = self.probs.argmax(axis=1)
        top5 = np.argsort(-self.probs, axis=1, kind="stable")[:, : min(TOP_K, k)]
        confusion = np.zeros((k, k), dtype=np.int64)
        np.add.at(confusion, (truth, top1), 1)
        per_class = {}
        for c in range(k):
            n = int(confusion[c].sum())
            if n:
                per_class[self.label(c)] = {
                    "correct": int(confusion[c, c]),
                    "total": n,
                    "accuracy": round(100.0 * confusion[c, c] / n, 2),
                }
        return {
            "top1_accuracy": round(100.0 * float((top1 == truth).mean()), 2),
            "top5_accuracy": round(100.0 * float((top5 == truth[:, None]).any(axis=1).mean()), 2),
            "confusion_matrix": confusion.tolist(),
            "labels": [self.label(c) for c in range(k)],
            "per_class_accuracy": per_class,
        }

    def classifications(self) -> dict[str, list[tuple[str, float]]]:
        return {p: self.top5(i) for i, p in enumerate(self.paths)}


def _each_image(
    model: LoadedModel, items: Sequence[tuple[Path, int | None]], describe: Callable[[np.ndarray], list[dict]]
) -> tuple[list[str], list[int | None], dict[str, str], dict[str, list[dict[str, Any]]]]:
    """``describe`` (run holding ``model.lock``) of each readable server-side image: the paths, their truth, the
    unreadable images' errors and the descriptions by path."""
    paths, truth, errors, described = [], [], {}, {}
    for path, label in items:
        try:
            img = decode_upload(read_image_file(path), model.input_shape[0], str(path))
        except (InferenceError, DataError) as e:
            errors[str(path)] = str(e)
            continue
        with model.lock:
            described[str(path)] = describe(img)
        paths.append(str(path))
        truth.append(label)
    return paths, truth, errors, described


def detect_many(
    model: LoadedModel, items: Sequence[tuple[Path, int | None]], threshold: float = DETECTION_THRESHOLD
) -> ManyResult:
    """A detector's boxes on server-side images (``detections``: path -> boxes); unreadable images are
    reported in ``errors`` and left out."""
    paths, truth, errors, found = _each_image(
        model, items, lambda img: detection_dicts(model, detect_images(model, [img], threshold)[0])
    )
    return ManyResult(paths, np.zeros((len(paths), 0)), truth, list(model.source.labels), errors, detections=found)


def segment_many(model: LoadedModel, items: Sequence[tuple[Path, int | None]]) -> ManyResult:
    """A segmenter's classes on server-side images (``segmentations``: path -> classes by area); unreadable
    images are reported in ``errors`` and left out."""
    segmenter = model.deploy_model
    assert isinstance(segmenter, deploy.SegmentationModel)
    paths, truth, errors, shares = _each_image(
        model, items, lambda img: segmentation_dicts(model, segmenter.segment([img])[0])
    )
    labels = list(model.source.labels)
    return ManyResult(paths, np.zeros((len(paths), 0)), truth, labels, errors, segmentations=shares)


def classify_many(
    model: LoadedModel,
    items: Sequence[tuple[Path, int | None]],
    batch_size: int = 16,
    threshold: float = DETECTION_THRESHOLD,
) -> ManyResult:
    """Classify server-side images (a detector: :func:`detect_many`); unreadable images are reported in
    ``errors`` and left out."""
    if model.detector:
        return detect_many(model, items, threshold)
    if model.segmenter:
        return segment_many(model, items)
    inputs, paths, truth, errors = [], [], [], {}
    for path, label in items:
        try:
            x, _ = load_input(model, read_image_file(path), str(path))
        except (InferenceError, DataError) as e:
            errors[str(path)] = str(e)
            continue
        inputs.append(x)
        paths.append(str(path))
        truth.append(label)
    probs = classify_arrays(model, inputs, batch_size)
    return ManyResult(paths, probs, truth, list(model.source.labels), errors)


def top_n(result: ManyResult, n: int = 9) -> list[dict[str, Any]]:
    """For each class, the ``n`` images with the highest probability: ``[{label, images: [(path, pct)]}]``."""
    out = []
    for c in range(result.probs.shape[1] if len(result.probs) else 0):
        order = np.argsort(-result.probs[:, c], kind="stable")[:n]
        images = [(result.paths[i], round(float(result.probs[i, c]) * 100.0, 2)) for i in order]
        out.append({"label": result.label(c), "images": images})
    return out


def thumbnail_uri(path: str | Path, size: int = 96) -> str:
    """A small PNG data URI of a server-side image (for the top-N and classify-many pages)."""
    img = decode_upload(read_image_file(Path(path)), 3, str(path))
    h, w = img.shape[:2]
    scale = size / max(h, w)
    return png_data_uri(deploy.resize_image(img, max(1, round(h * scale)), max(1, round(w * scale))))


# --------------------------------------------------------------------------------------- image lists
#: The largest image file a server path may name (DIGITS' images are a few MB; a camera RAW is ~50 MB).
MAX_IMAGE_FILE_BYTES = 64 << 20


def read_image_file(path: Path) -> bytes:
    """A server image's bytes: a regular file of at most MAX_IMAGE_FILE_BYTES, else a DataError naming it."""
    from caffe.limits import read_file

    return read_file(path, "image", max_bytes=MAX_IMAGE_FILE_BYTES, error=DataError)


def parse_image_list(
    text: str, resolve_path: Any, labels: Sequence[str] = (), source: str = "image list"
) -> list[tuple[Path, int | None]]:
    """Lines ``path [label]`` -> ``(path, label index or None)``.

    ``resolve_path(str) -> Path`` validates each path (allowed roots, no traversal) and raises for a bad one;
    its error is re-raised naming the line. A label is an integer index or one of ``labels``.
    """
    items: list[tuple[Path, int | None]] = []
    index = {name: i for i, name in enumerate(labels)}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        path_text, label = line, None
        parts = line.rsplit(None, 1)
        if len(parts) == 2 and (re.fullmatch(r"-?\d+", parts[1]) or parts[1] in index):
            path_text = parts[0]
            label = int(parts[1]) if parts[1] not in index else index[parts[1]]
            if label < 0:
                raise InferenceError(f"{source}:{lineno}: negative label {label}")
        try:
            path = resolve_path(path_text)
        except CaffeError as e:
            raise InferenceError(f"{source}:{lineno}: {e}", getattr(e, "status", 400)) from None
        items.append((Path(path), label))
    if not items:
        raise InferenceError(f"{source}: no image paths in it")
    return items


def scan_folder(folder: Path, labels: Sequence[str]) -> list[tuple[Path, int | None]]:
    """A folder of class sub-folders (named as the model's labels) -> ``(image, label index)``, sorted.

    A folder of images without sub-folders gives ``(image, None)``; a sub-folder named after no label is an error.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InferenceError(f"{folder}: not a folder", 404)
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))

    def images(d: Path) -> list[Path]:
        return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in SUPPORTED_EXTENSIONS)

    if not subdirs:
        found: list[tuple[Path, int | None]] = [(p, None) for p in images(folder)]
    else:
        index = {name: i for i, name in enumerate(labels)}
        unknown = [d.name for d in subdirs if d.name not in index]
        if unknown:
            raise InferenceError(
                f"{folder}: sub-folders {', '.join(unknown)} match no label of the model "
                f"({', '.join(labels) or 'none'})"
            )
        found = [(p, index[d.name]) for d in subdirs for p in images(d)]
    if not found:
        raise InferenceError(f"{folder}: no images ({', '.join(SUPPORTED_EXTENSIONS)}) in it")
    return found
