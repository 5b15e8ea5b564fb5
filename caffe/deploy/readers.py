"""The one label reader and the one mean reader/fitter of deployable models.

Labels: one a line (``labels.txt``, ``synset_words.txt``), stripped, trailing blank lines dropped; or an
SSD label map (``labelmap_voc.prototxt``: ``item { name: ... label: N display_name: ... }``, protobuf text),
whose item of label N names class N by its ``display_name`` (else its ``name``); classes between the
items' labels are named by their number.

Means come as a ``.binaryproto`` (a BlobProto), a ``.npy`` array or values ``"104,117,123"``, and are fitted
to the net's C x H x W input by :func:`fit_mean` in one of two ways:

* ``"image"`` (DIGITS' mean image subtraction): a mean image at least the input's size is centre-cropped
  to it (as the validation images were cropped in training); a smaller one gives its per-channel mean;
* ``"pixel"`` (Caffe's C++ classification example, DIGITS' "pixel" subtraction): the per-channel mean.

Values are always per channel; one value stands for every channel.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from caffe.deploy.errors import ModelFilesError, PathLike
from caffe.limits import read_file

#: The largest info.json and labels file read.
MAX_TEXT_BYTES = 64 << 20
MEAN_MODES = ("image", "pixel", "none")


_LABELMAP_ITEM = re.compile(r"^\s*item\s*\{", re.MULTILINE)
_LABELMAP_TOKEN = re.compile(r'\s+|#[^\n]*|"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|[{}:]|[^\s{}:#"\']+')
_MAX_LABEL = 1 << 20


def is_labelmap(text: str) -> bool:
    """Whether ``text`` is an SSD label map (protobuf text of ``item { ... }`` blocks) rather than lines."""
    return bool(_LABELMAP_ITEM.search(text)) and text.lstrip().startswith(("item", "#"))


def _unquote(token: str) -> str:
    body = token[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def _labelmap_items(text: str) -> list[dict[str, str]]:
    """The ``item`` blocks of a label map as {field: value} (ValueError describing what is wrong)."""
    tokens = [t for t in _LABELMAP_TOKEN.findall(text) if t.strip() and not t.startswith("#")]
    items: list[dict[str, str]] = []
    i = 0
    while i < len(tokens):
        if tokens[i] != "item" or tokens[i + 1 : i + 2] != ["{"]:
            raise ValueError(f"expected 'item {{', got {tokens[i]!r}")
        i += 2
        item: dict[str, str] = {}
        while i < len(tokens) and tokens[i] != "}":
            if tokens[i + 1 : i + 2] != [":"] or i + 2 >= len(tokens):
                raise ValueError(f"expected 'field: value' in an item, got {tokens[i]!r}")
            key, value = tokens[i], tokens[i + 2]
            item[key] = _unquote(value) if value[:1] in "\"'" else value
            i += 3
        if i >= len(tokens):
            raise ValueError("an item is not closed with '}'")
        items.append(item)
        i += 1
    return items


def parse_labelmap(text: str) -> list[str]:
    """Class names indexed by label from an SSD label map (see the module); ValueError when malformed."""
    names: dict[int, str] = {}
    for item in _labelmap_items(text):
        raw = item.get("label")
        if raw is None or not re.fullmatch(r"\d+", raw) or int(raw) >= _MAX_LABEL:
            raise ValueError(f"item {item.get('name', '?')!r}: label {raw!r} is not a class number")
        label = int(raw)
        if label in names:
            raise ValueError(f"label {label} appears twice")
        names[label] = item.get("display_name") or item.get("name") or str(label)
    if not names:
        raise ValueError("no items")
    return [names.get(i, str(i)) for i in range(max(names) + 1)]


def parse_labels(text: str) -> list[str]:
    """Labels from text: an SSD label map (:func:`parse_labelmap`), else one a line (each stripped,
    trailing blank lines dropped)."""
    if is_labelmap(text):
        return parse_labelmap(text)
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def read_labels(path: PathLike) -> list[str]:
    """A labels file (see :func:`parse_labels`); missing, unreadable or empty is a ModelFilesError naming it."""
    if not os.path.lexists(path):
        raise ModelFilesError(f"labels file {path}: not found")
    data = read_file(path, "labels file", max_bytes=MAX_TEXT_BYTES, error=ModelFilesError)
    try:
        lines = parse_labels(data.decode("utf-8-sig", errors="replace"))
    except ValueError as e:
        raise ModelFilesError(f"labels file {path}: not a valid label map ({e})") from None
    if not lines:
        raise ModelFilesError(f"labels file {path}: empty")
    return lines


def read_mean_values(path: Path) -> np.ndarray:
    """A text file of one channel mean a line (senlinuc/caffe_ocr's ``mean_values.txt``: 1 or 3 values) as C x 1 x 1."""
    from caffe.limits import read_text

    values = []
    for number, line in enumerate(
        read_text(path, "mean values", max_bytes=1 << 16, error=ModelFilesError).splitlines(), 1
    ):
        if line.strip():
            try:
                values.append(float(line))
            except ValueError:
                raise ModelFilesError(f"{path}:{number}: {line.strip()[:40]!r} is not a number") from None
    if len(values) not in (1, 3):
        raise ModelFilesError(f"{path}: {len(values)} mean values; expected 1 or 3, one a line")
    return np.array(values, dtype=np.float32)[:, np.newaxis, np.newaxis]


def read_mean(path: PathLike) -> np.ndarray:
    """A mean file (``.binaryproto`` BlobProto, ``.npy``, or ``.txt`` values one a line) as a float32 C x H x W
    array (C values: C x 1 x 1)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFilesError(f"mean file {path}: not found")
    if path.suffix == ".txt":
        return read_mean_values(path)
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ModelFilesError(f"mean file {path}: not a NumPy array file ({e})") from None
    else:
        from caffe.errors import WeightsError
        from caffe.proto import caffe_pb2
        from caffe.protoio import read_binary
        from caffe.weights import blob_proto_to_array

        try:
            arr = blob_proto_to_array(read_binary(path, caffe_pb2.BlobProto(), "mean binaryproto"))
        except WeightsError as e:
            raise ModelFilesError(f"mean file {path}: {e}") from None
    arr = np.asarray(arr, dtype=np.float32)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 1:
        arr = arr[:, np.newaxis, np.newaxis]
    elif arr.ndim == 2:
        arr = arr[np.newaxis]
    if arr.ndim != 3 or arr.size == 0:
        raise ModelFilesError(f"mean file {path}: expected C x H x W values, got shape {arr.shape}")
    return arr


def is_mean_values(spec: PathLike) -> bool:
    """Whether ``spec`` is comma-separated numbers (``"104,117,123"``) rather than a file."""
    text = os.fspath(spec)
    return bool(re.fullmatch(r"\s*[-+0-9.eE]+(\s*,\s*[-+0-9.eE]+)*\s*", str(text))) and not Path(text).exists()


def parse_mean(spec: PathLike) -> np.ndarray:
    """A mean given as a file (see :func:`read_mean`) or as values ``"104,117,123"`` (C x 1 x 1)."""
    text = os.fspath(spec)
    if is_mean_values(text):
        try:
            return np.array([float(v) for v in str(text).split(",")], dtype=np.float32)[:, np.newaxis, np.newaxis]
        except ValueError:
            raise ModelFilesError(f"mean {text!r}: expected a file or comma-separated numbers") from None
    return read_mean(text)


def channel_mean(mean: np.ndarray) -> np.ndarray:
    """The per-channel mean (C values) of a C x H x W mean, as Caffe's classification example and DIGITS use it."""
    return np.asarray(mean, dtype=np.float32).reshape(mean.shape[0], -1).mean(axis=1)


@dataclass
class FittedMean:
    """A mean in the input's layout (C x H x W image or C x 1 x 1 values) and what it is, for people."""

    array: np.ndarray
    source: str
    kind: str  # "image" or "values"
    note: str = ""

    def describe(self) -> dict[str, Any]:
        """``{"type", "source", "values" | "shape", "note"?}``."""
        out: dict[str, Any] = {"type": self.kind, "source": self.source}
        if self.kind == "values":
            out["values"] = [round(float(v), 4) for v in self.array.ravel()]
        else:
            out["shape"] = list(self.array.shape)
        if self.note:
            out["note"] = self.note
        return out


def fit_mean(mean: np.ndarray, shape: tuple[int, int, int], mode: str = "image", source: str = "mean") -> FittedMean:
    """``mean`` (C x H x W, or C x 1 x 1 values) fitted to an input of ``shape`` = (C, H, W) (see the module)."""
    if mode not in ("image", "pixel"):
        raise ModelFilesError(f"mean subtraction {mode!r}: expected image or pixel")
    c, h, w = shape
    arr = np.asarray(mean, dtype=np.float32)
    values = arr.shape[1:] == (1, 1)
    if arr.shape[0] == 1 and c > 1:
        arr = np.repeat(arr, c, axis=0)
    if arr.shape[0] != c:
        if values:
            raise ModelFilesError(f"mean {source}: {arr.shape[0]} mean values for a {c}-channel input")
        raise ModelFilesError(f"mean {source}: the mean has {arr.shape[0]} channels, the net's input {c}")
    if values:
        return FittedMean(np.ascontiguousarray(arr), source, "values")
    if mode == "image" and arr.shape[1] >= h and arr.shape[2] >= w:
        top, left = (arr.shape[1] - h) // 2, (arr.shape[2] - w) // 2
        return FittedMean(np.ascontiguousarray(arr[:, top : top + h, left : left + w]), source, "image")
    note = f"per-channel mean of a {arr.shape[1]} x {arr.shape[2]} mean image"
    return FittedMean(channel_mean(arr).reshape(c, 1, 1), source, "values", note)
