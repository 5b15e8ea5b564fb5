"""``DeployModel``: a deployable classification model, ready to classify images.

It owns, once for every caller (``caffe classify``, ``caffe serve``, the studio, ``caffe.Classifier``'s
pieces): the files (:func:`caffe.deploy.find_model`), the labels, the mean fitted to the input, the
:class:`~caffe.deploy.preprocess.Preprocessing`, the batched forward, output normalization and top-k.

Defaults, written once (:func:`preprocessing_defaults`):

* a DIGITS model (its folder or archive has ``info.json``): images are resized to the dataset's
  ``image dimensions`` with its ``image resize mode``, then centre-cropped to the net's input, and a mean
  image is centre-cropped to the input (``mean subtraction``: ``image``, the default; ``pixel``: its
  per-channel mean; ``none``), as DIGITS and the studio do; its ``input scale`` (a studio detector trained with
  ``transform_param.scale``) multiplies the mean-subtracted pixels unless the caller sets another;
* any other model follows Caffe's C++ classification example: images are resized to the input, and a mean
  image gives its per-channel mean.

A missing mean is a warning saying how to give one. Outputs: the net's last output, flattened per image;
a softmax is applied unless the layer producing it is a ``Softmax`` (:attr:`DeployModel.softmax_reason`
says which), so what comes out are probabilities.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from caffe.deploy.errors import ModelFilesError, PathLike
from caffe.deploy.files import ModelFiles, find_model
from caffe.deploy.images import RESIZE_MODES
from caffe.deploy.preprocess import Preprocessing
from caffe.deploy.readers import MEAN_MODES, FittedMean, fit_mean, parse_mean, read_labels
from caffe.engine import inference_engine, set_inference_engine
from caffe.errors import CaffeError

log = logging.getLogger("caffe")

MEAN_HINT = "give one with --mean FILE (.binaryproto or .npy) or --mean VALUES (e.g. --mean 104,117,123)"


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax of N x K scores (float64)."""
    x = np.asarray(scores, dtype=np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def producing_layer(net: Any, blob: str) -> str | None:
    """The name of the last layer that writes ``blob`` (None when none does)."""
    found = None
    for name, tops in net.top_names.items():
        if blob in tops:
            found = name
    return found


def output_producer(net: Any, output: str) -> str:
    """The type of the last layer that writes the blob ``output`` ("?" when none does)."""
    layer = producing_layer(net, output)
    return net.layer_dict[layer].type if layer is not None else "?"


def needs_softmax(net: Any, output: str) -> tuple[bool, str]:
    """Whether the net's ``output`` holds scores (not probabilities), and why, in words."""
    producer = output_producer(net, output)
    if producer == "Softmax":
        return False, f"output '{output}' comes from a Softmax layer: probabilities as they are"
    return True, f"output '{output}' comes from a {producer} layer (scores): softmax applied"


def _info_size(info: dict[str, Any]) -> tuple[int, int] | None:
    dims = info.get("image dimensions")  # DIGITS: [height, width, channels]
    if isinstance(dims, list) and len(dims) >= 2 and all(isinstance(d, int) and d > 0 for d in dims[:2]):
        return int(dims[0]), int(dims[1])
    return None


@dataclass(frozen=True)
class Settings:
    """What a caller may set; None means the default of the model's kind (see the module)."""

    mean: PathLike | np.ndarray | None = None
    mean_mode: str | None = None
    image_size: tuple[int, int] | None = None
    resize_mode: str | None = None
    crop: str = "center"
    channel_swap: tuple[int, ...] | None = (2, 1, 0)
    raw_scale: float = 255.0
    input_scale: float = 1.0
    interpolation: str | None = None  # None: "pillow" (a detector's: "opencv", see caffe.deploy.detection)


def preprocessing_defaults(files: ModelFiles, settings: Settings) -> tuple[PathLike | np.ndarray | None, Settings]:
    """The mean to use and the settings with every None filled in from the model's kind (see the module)."""
    info = files.info
    digits = info is not None
    mean = settings.mean if settings.mean is not None else files.mean
    mode = settings.mean_mode or (str(info.get("mean subtraction", "image")) if digits else "pixel")
    if mode == "none" and settings.mean is not None and settings.mean_mode is None:
        mode = "image"  # a mean the caller gives is subtracted, whatever the training did
    if mode not in MEAN_MODES:
        raise ModelFilesError(f"mean subtraction {mode!r}: expected one of {', '.join(MEAN_MODES)}")
    size = settings.image_size or (_info_size(info) if digits else None)
    resize = settings.resize_mode or (str(info.get("image resize mode", "squash")) if digits else "squash")
    if resize not in RESIZE_MODES:
        resize = "squash"
    scale = settings.input_scale
    if digits and scale == 1.0 and info.get("input scale") not in (None, ""):
        try:
            scale = float(info["input scale"])
        except (TypeError, ValueError):
            raise ModelFilesError(f"info.json: input scale {info['input scale']!r} is not a number") from None
    filled = Settings(
        mean,
        mode,
        size,
        resize,
        settings.crop,
        settings.channel_swap,
        settings.raw_scale,
        scale,
        settings.interpolation or "pillow",
    )
    return mean, filled


def build_preprocessing(
    files: ModelFiles, settings: Settings, input_shape: tuple[int, int, int], *, warn: bool = True
) -> tuple[Preprocessing, FittedMean | None, Settings]:
    """The :class:`Preprocessing` of a model with ``input_shape`` (C, H, W), its fitted mean and the settings
    with the model kind's defaults filled in; a missing mean is a warning saying how to give one."""
    mean_spec, s = preprocessing_defaults(files, settings)
    mean: FittedMean | None = None
    if mean_spec is not None and s.mean_mode != "none":
        values = isinstance(mean_spec, np.ndarray)
        arr = np.asarray(mean_spec, dtype=np.float32) if values else parse_mean(mean_spec)
        if arr.ndim == 1:
            arr = arr[:, np.newaxis, np.newaxis]
        mean = fit_mean(arr, input_shape, s.mean_mode or "pixel", "values" if values else str(mean_spec))
    elif warn and s.mean_mode != "none":
        log.warning(
            "%s: no mean, so none is subtracted (the net may expect one); %s", files.folder or files.deploy, MEAN_HINT
        )
    swap = s.channel_swap if input_shape[0] == 3 else None
    prep = Preprocessing(
        input_shape,
        s.image_size,
        s.resize_mode or "squash",
        s.crop,
        swap,
        s.raw_scale,
        mean.array if mean is not None else None,
        s.input_scale,
        s.interpolation or "pillow",
    )
    return prep, mean, s


class DeployModel:
    """A classification net with its preprocessing, labels and output normalization (see the module).

    ``net`` may be given (already built, e.g. in a worker or with stages); else it is built in the TEST
    phase from ``files``. ``labels``: a list, or a file; default the model's own. The forward methods hold
    :attr:`lock` (nets are not thread-safe).
    """

    def __init__(
        self,
        files: ModelFiles,
        settings: Settings | None = None,
        *,
        labels: Sequence[str] | PathLike | None = None,
        net: Any = None,
        engine: str | None = None,
        warn: bool = True,
    ) -> None:
        self.files = files
        self.engine = engine
        self.net = net if net is not None else self.build_net(files)
        if not self.net.inputs:
            raise CaffeError(f"{files.deploy}: the deploy net has no input blob (an Input layer)")
        if not self.net.outputs:
            raise CaffeError(f"{files.deploy}: the deploy net has no output blob")
        self.input = self.net.inputs[0]
        shape = tuple(int(d) for d in self.net.blobs[self.input].shape)
        if len(shape) != 4 or shape[1] not in (1, 3):
            raise CaffeError(
                f"{files.deploy}: input '{self.input}' has shape {shape}; an image classifier needs N x 1|3 x H x W"
            )
        self.input_shape: tuple[int, int, int] = (shape[1], shape[2], shape[3])
        self.output = self.net.outputs[-1]
        self.classes = self.count_classes()
        self.softmax, self.softmax_reason = self.normalization()
        self.labels_file, self.labels = self._labels(labels)
        self.preprocessing, self.mean, self.settings = build_preprocessing(
            files, self._kind_settings(settings or Settings()), self.input_shape, warn=warn
        )
        self.lock = threading.RLock()

    #: The interpolation of images when Settings.interpolation is None (detectors, segmentation: "opencv").
    interpolation: ClassVar[str] = "pillow"

    def count_classes(self) -> int:
        """How many classes the output tells apart (a classifier: its values per image)."""
        return int(np.prod(self.net.blobs[self.output].shape[1:]))

    def normalization(self) -> tuple[bool, str]:
        """Whether a softmax turns the output into probabilities, and why, in words (:func:`needs_softmax`)."""
        return needs_softmax(self.net, self.output)

    def _kind_settings(self, settings: Settings) -> Settings:
        if settings.interpolation is None:
            return replace(settings, interpolation=self.interpolation)
        return settings

    @classmethod
    def load(
        cls,
        path: PathLike | None = None,
        *,
        deploy: PathLike | None = None,
        weights: PathLike | None = None,
        labels: PathLike | None = None,
        settings: Settings | None = None,
        engine: str | None = None,
    ) -> DeployModel:
        """The model of a folder, DIGITS archive, zoo entry or explicit files (:func:`find_model`)."""
        return cls(find_model(path, deploy=deploy, weights=weights, labels=labels), settings, engine=engine)

    @staticmethod
    def build_net(files: ModelFiles) -> Any:
        """The deploy net of ``files`` with its weights, in the TEST phase."""
        from caffe.common import TEST
        from caffe.net import Net

        return Net(str(files.deploy), TEST, weights=str(files.weights))

    def _labels(self, labels: Sequence[str] | PathLike | None) -> tuple[str | None, list[str]]:
        if labels is None:
            labels = self.files.labels
        if labels is None:
            return None, []
        if isinstance(labels, (list, tuple)):
            names = list(labels)
            where = None
        else:
            names, where = read_labels(labels), str(labels)
        if len(names) != self.classes:
            log.warning(
                "%s: %d labels for %d outputs; indexes stand for missing labels",
                where or "labels",
                len(names),
                self.classes,
            )
        return where, names

    # ------------------------------------------------------------------------------------------ running

    def label(self, index: int) -> str:
        return self.labels[index] if index < len(self.labels) else str(index)

    def prepare(self, data: bytes, source: str = "image") -> np.ndarray:
        """Image bytes -> the net's C x H x W input."""
        return self.preprocessing(data, source)

    def scores(self, batch: np.ndarray, rows: int | None = None) -> np.ndarray:
        """One forward of the N x C x H x W ``batch`` (padded with zeros to ``rows``): N x K raw outputs."""
        n = len(batch)
        out = self.run(batch, rows)
        return np.array(out[:n], dtype=np.float64).reshape(n, -1)

    def run(self, batch: np.ndarray, rows: int | None = None) -> np.ndarray:
        """One forward of the N x C x H x W ``batch`` (padded with zeros to ``rows``): a copy of the output blob."""
        return self.run_blobs(batch, rows, [self.output])[0]

    def run_blobs(self, batch: np.ndarray, rows: int | None, names: Sequence[str]) -> list[np.ndarray]:
        """:meth:`run`, returning a copy of each blob in ``names`` (net outputs or not)."""
        n = len(batch)
        rows = max(rows or n, n)
        blob = self.net.blobs[self.input]
        shape = (rows, *batch.shape[1:])  # the input's C x H x W, or a text line's own width
        with self.lock:
            if self.engine is not None and inference_engine() != self.engine:
                set_inference_engine(self.engine)
            if tuple(blob.shape) != shape:
                blob.reshape(*shape)
                self.net.reshape()
            data = blob.data
            data[:n] = batch
            if rows > n:
                data[n:] = 0
            outputs = self.net.forward()
            return [np.array(outputs[name] if name in outputs else self.net.blobs[name].data) for name in names]

    def normalize(self, scores: np.ndarray) -> np.ndarray:
        """Probabilities from the net's outputs (a softmax unless they already are: see the module)."""
        return softmax(scores) if self.softmax else np.asarray(scores, dtype=np.float64)

    def forward(self, batch: np.ndarray, rows: int | None = None) -> np.ndarray:
        """N x C x H x W inputs -> N x K probabilities."""
        return self.normalize(self.scores(batch, rows))

    def classify(self, inputs: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
        """Probabilities of prepared inputs, ``batch_size`` per forward."""
        rows = [self.forward(np.stack(inputs[i : i + batch_size])) for i in range(0, len(inputs), batch_size)]
        return np.concatenate(rows) if rows else np.zeros((0, self.classes))

    def top_k(self, probs: np.ndarray, k: int = 5) -> list[Prediction]:
        """The ``k`` most probable classes of one row, most probable first (ties: lower index first)."""
        return top_k(probs, k, self.label)

    def describe(self) -> dict[str, Any]:
        """Files, input, output, preprocessing, mean and normalization, for people and JSON."""
        return {
            "deploy": str(self.files.deploy),
            "weights": str(self.files.weights),
            "input": {"blob": self.input, "shape": list(self.input_shape)},
            "output": {"blob": self.output, "classes": self.classes},
            "labels": len(self.labels),
            "labels_file": self.labels_file,
            "mean": self.mean.describe() if self.mean is not None else None,
            "mean_subtraction": self.settings.mean_mode,
            "preprocessing": self.preprocessing.describe(),
            "softmax_applied": self.softmax,
            "softmax_reason": self.softmax_reason,
        }


@dataclass(frozen=True)
class Prediction:
    """One class of a top-k: its index, label and probability."""

    index: int
    label: str
    probability: float


def top_k(probs: np.ndarray, k: int, label: Any = str) -> list[Prediction]:
    """The ``k`` highest of one row of probabilities (stable: ties keep the lower index first)."""
    order = np.argsort(-np.asarray(probs), kind="stable")[: max(0, k)]
    return [Prediction(int(i), label(int(i)), float(probs[i])) for i in order]
