"""Deployable models (classifiers, SSD detectors, segmentation nets, text recognisers): one owner for finding,
preparing, running and packaging them.

A deployable model is a ``deploy.prototxt``, its weights, and optionally a mean and a labels file. It
comes as a folder, a DIGITS "Download Model" archive, a zoo entry or explicit files.

* :mod:`caffe.deploy.files` - :func:`find_model` -> :class:`ModelFiles`;
* :mod:`caffe.deploy.archive` - checked, size-capped, cached unpacking of archives;
* :mod:`caffe.deploy.readers` - the label reader and the mean reader/fitter;
* :mod:`caffe.deploy.images` - the image decoder and DIGITS' resize modes;
* :mod:`caffe.deploy.preprocess` - :class:`Preprocessing`;
* :mod:`caffe.deploy.model` - :class:`DeployModel`: defaults, batched forward, softmax, top-k;
* :mod:`caffe.deploy.detection` - :class:`DetectionModel` (SSD's ``DetectionOutput``: boxes in pixels) and
  :func:`open_model`, which gives a model of its kind;
* :mod:`caffe.deploy.segmentation` - :class:`SegmentationModel` (class maps, the colour overlay);
* :mod:`caffe.deploy.text` - :class:`TextRecognizer` (a CTC text recogniser's line of text), with
  :mod:`caffe.deploy.lexicon`'s :class:`Lexicon` (the nearby word the scores make likeliest);
* :mod:`caffe.deploy.package` - :func:`package_model`, the DIGITS archive writer.

``caffe classify``, ``caffe serve``, the studio's inference and ``caffe package`` are thin callers.
"""

from caffe.deploy.archive import (
    ARCHIVE_FLOOR_BYTES,
    ARCHIVE_MAX_BYTES,
    ARCHIVE_MAX_FILES,
    ARCHIVE_RATIO,
    ARCHIVE_SUFFIXES,
    ArchiveLimits,
    archive_limits,
    archive_stem,
    cache_root,
    check_archive,
    extract_archive,
    is_archive,
)
from caffe.deploy.detection import Detection, DetectionModel, is_detector, open_model
from caffe.deploy.errors import ImageDecodeError, ModelFilesError, PathLike
from caffe.deploy.files import LABEL_NAMES, WEIGHTS_SUFFIXES, ModelFiles, find_model, input_shape, read_info
from caffe.deploy.images import (
    INTERPOLATIONS,
    MAX_PIXELS,
    RESIZE_MODES,
    decode_image,
    image_array,
    open_image,
    resize_image,
)
from caffe.deploy.lexicon import Lexicon
from caffe.deploy.model import (
    MEAN_HINT,
    DeployModel,
    Prediction,
    Settings,
    build_preprocessing,
    needs_softmax,
    preprocessing_defaults,
    softmax,
    top_k,
)
from caffe.deploy.package import package_model
from caffe.deploy.preprocess import Preprocessing
from caffe.deploy.readers import (
    MAX_TEXT_BYTES,
    MEAN_MODES,
    FittedMean,
    channel_mean,
    fit_mean,
    is_mean_values,
    parse_labelmap,
    parse_labels,
    parse_mean,
    read_labels,
    read_mean,
)
from caffe.deploy.segmentation import SegmentationModel, overlay, palette
from caffe.deploy.text import Reading, TextRecognizer, is_text_recognizer

__all__ = [
    "ARCHIVE_FLOOR_BYTES",
    "ARCHIVE_MAX_BYTES",
    "ARCHIVE_MAX_FILES",
    "ARCHIVE_RATIO",
    "ARCHIVE_SUFFIXES",
    "INTERPOLATIONS",
    "LABEL_NAMES",
    "MAX_PIXELS",
    "MAX_TEXT_BYTES",
    "MEAN_HINT",
    "MEAN_MODES",
    "RESIZE_MODES",
    "WEIGHTS_SUFFIXES",
    "ArchiveLimits",
    "DeployModel",
    "Detection",
    "DetectionModel",
    "FittedMean",
    "ImageDecodeError",
    "Lexicon",
    "ModelFiles",
    "ModelFilesError",
    "PathLike",
    "Prediction",
    "Preprocessing",
    "Reading",
    "SegmentationModel",
    "Settings",
    "TextRecognizer",
    "archive_limits",
    "archive_stem",
    "build_preprocessing",
    "cache_root",
    "channel_mean",
    "check_archive",
    "decode_image",
    "extract_archive",
    "find_model",
    "fit_mean",
    "image_array",
    "input_shape",
    "is_archive",
    "is_detector",
    "is_mean_values",
    "is_text_recognizer",
    "needs_softmax",
    "open_image",
    "open_model",
    "overlay",
    "package_model",
    "palette",
    "parse_labelmap",
    "parse_labels",
    "parse_mean",
    "preprocessing_defaults",
    "read_info",
    "read_labels",
    "read_mean",
    "resize_image",
    "softmax",
    "top_k",
]
