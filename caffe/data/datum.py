"""Datum <-> images and arrays, with Caffe's rules (``io.cpp``, ``convert_imageset``, pycaffe's ``caffe.io``).

A ``Datum`` holds one item in one of three layouts:

* raw bytes: ``data`` = ``channels*height*width`` uint8 values, planes channel-major (C, H, W);
  a colour image's channels are B, G, R (OpenCV order);
* floats: ``float_data`` = ``channels*height*width`` float32 values, (C, H, W);
* encoded: ``encoded: true`` and ``data`` = an image file's bytes (JPEG, PNG, ...); ``channels``,
  ``height`` and ``width`` are left unset, as Caffe leaves them.

A Datum of the OCR fork caffe_ocr holds a sequence of labels: its ``label`` field 5 is ``repeated``, so
the wire holds field 5 several times, of which ``pb.Datum`` (``optional int32 label``) keeps the last.
:func:`datum_labels` reads them all from the serialized bytes and :func:`serialize_datum` writes them.

OpenCV (``cv2``) reads and decodes the images, as in Caffe, with one deliberate choice: EXIF
orientation is ignored in every mode (Caffe's reference OpenCV 2.4 never applied it, and the native
decode of a stored file cannot apply it), so an image gives the same pixels whether it was stored as
its file bytes, re-encoded, or raw. Baseline and progressive JPEGs (gray or YCbCr) are decoded by
libjpeg-turbo's TurboJPEG API (``simplejpeg``) instead: the same library OpenCV uses, with the same
settings, so the same pixels (tested), about a fifth faster. Anything else, or any JPEG it declines,
goes to OpenCV.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import simplejpeg

from caffe.errors import DataError
from caffe.limits import check_blob, read_file
from caffe.proto import caffe_pb2 as pb

PathLike = str | os.PathLike

_COLOR = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
_GRAY = cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION
_DECODE_FLAGS = {"native": cv2.IMREAD_UNCHANGED, "color": _COLOR, "gray": _GRAY}


# ---------------------------------------------------------------------------------------------
# images


def read_image(path: PathLike, height: int = 0, width: int = 0, is_color: bool = True) -> np.ndarray:
    """An image file as OpenCV reads it (Caffe's ``ReadImageToCVMat``).

    Returns HxWx3 uint8 BGR when ``is_color`` (grayscale files are expanded), else HxW uint8 gray.
    The image is resized to ``height`` x ``width`` with bilinear interpolation only when both are
    positive; otherwise it keeps its size. An unreadable file is a DataError naming ``path``.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: no such image file" if not p.exists() else f"{path}: not an image file")
    data = read_file(p, "image")
    img = _decode_jpeg(data, "color" if is_color else "gray", str(path))
    if img is None:
        if data[:8] == _PNG_SIGNATURE:
            _check_png_chunks(data, str(path))
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _COLOR if is_color else _GRAY) if data else None
    if img is None:
        raise DataError(f"{path}: could not decode the image (corrupt, truncated or not an image format OpenCV reads)")
    if height > 0 and width > 0:
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
    return img


def decode_image_bytes(data: bytes, mode: str = "native", name: str = "<bytes>") -> np.ndarray:
    """Decode an image file's bytes with OpenCV.

    ``mode``: ``"native"`` keeps the file's channels and depth (Caffe's ``DecodeDatumToCVMatNative``,
    ``IMREAD_UNCHANGED``: a gray JPEG gives HxW, a PNG with alpha HxWx4, a 16-bit PNG uint16);
    ``"color"`` gives HxWx3 uint8 BGR and ``"gray"`` HxW uint8 (``DecodeDatumToCVMat``).
    A failure is a DataError naming ``name``.
    """
    flag = _DECODE_FLAGS.get(mode)
    if flag is None:
        raise DataError(f"{name}: unknown decode mode {mode!r} (use 'native', 'color' or 'gray')")
    if len(data) == 0:
        raise DataError(f"{name}: cannot decode an image from 0 bytes")
    img = _decode_jpeg(data, mode, name)
    if img is not None:
        return img
    if data[:8] == _PNG_SIGNATURE:
        _check_png_chunks(data, name)
    try:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    except cv2.error as e:
        raise DataError(f"{name}: could not decode the image: {str(e).strip().splitlines()[-1]}") from None
    if img is None:
        raise DataError(f"{name}: could not decode the image ({len(data)} bytes: corrupt, truncated or unknown format)")
    return img


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


#: OpenCV refuses to decode images of more pixels than this (its CV_IO_MAX_IMAGE_PIXELS default); the
#: TurboJPEG path keeps the same rule.
MAX_DECODE_PIXELS = 1 << 30
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # by IHDR colour type: gray, RGB, palette, gray+alpha, RGBA


def _check_decoded_size(width: int, height: int, channels: int, itemsize: int, name: str) -> None:
    """Refuse, before decoding, an image whose pixels would exceed OpenCV's cap or the blob budget."""
    if width * height > MAX_DECODE_PIXELS:
        raise DataError(f"{name}: a {width} x {height} image, more than the {MAX_DECODE_PIXELS} pixels decoded")
    check_blob((height, width, channels), itemsize, f"{name}: the decoded {width} x {height} image")


def _check_png_chunks(data: bytes, name: str) -> None:
    """DataError for a PNG whose chunk lengths run past its end (OpenCV's reader allocates what a chunk
    declares: 2 GiB for an 88-byte file, before it finds the data missing), or whose declared size is over
    the caps of :func:`_check_decoded_size`."""
    pos, end = len(_PNG_SIGNATURE), len(data)
    while pos + 8 <= end:
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        if length > end - pos - 12:
            raise DataError(
                f"{name}: truncated or corrupt PNG: chunk {kind.decode('latin-1')!r} declares "
                f"{length} bytes, {max(0, end - pos - 12)} remain"
            )
        if kind == b"IHDR" and length >= 10:
            width, height, depth, colour = struct.unpack_from(">IIBB", data, pos + 8)
            _check_decoded_size(width, height, _PNG_CHANNELS.get(colour, 4), 2 if depth == 16 else 1, name)
        if kind == b"IEND":
            return
        pos += 12 + length


# JPEG colour spaces the TurboJPEG path takes, and what each mode asks it for (others: OpenCV)
_JPEG_OUTPUT = {
    ("native", "Gray"): "GRAY",
    ("native", "YCbCr"): "BGR",
    ("color", "Gray"): "BGR",
    ("color", "YCbCr"): "BGR",
    ("gray", "Gray"): "GRAY",
    ("gray", "YCbCr"): "GRAY",
}


def _decode_jpeg(data: bytes, mode: str, name: str = "<bytes>") -> np.ndarray | None:
    """A gray or YCbCr JPEG decoded by libjpeg-turbo's TurboJPEG API as OpenCV would decode it, or None.

    None for anything else (not a JPEG, CMYK/YCCK/RGB colour spaces, any error or recoverable warning),
    which the caller then gives to OpenCV, so corrupt or unusual files behave exactly as OpenCV has them.
    Gray results are HxW, colour HxWx3 BGR; the GIL is released while decoding.
    """
    if data[:2] != b"\xff\xd8":
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        output = _JPEG_OUTPUT.get((mode, colorspace))
        if output is None:
            return None
        _check_decoded_size(width, height, 1 if output == "GRAY" else 3, 1, name)
        img = simplejpeg.decode_jpeg(data, output)
    except ValueError:
        return None
    return img[:, :, 0] if output == "GRAY" else img


def encode_image(img: np.ndarray, encoding: str, name: str) -> bytes:
    """An OpenCV image's file bytes in ``encoding`` (``"jpg"``, ``"png"``...); DataError naming ``name``."""
    ext = "." + encoding
    try:
        ok, buf = cv2.imencode(ext, img)
    except cv2.error as e:
        raise DataError(f"{name}: cannot encode the image as {ext}: {str(e).strip().splitlines()[-1]}") from None
    if not ok:
        raise DataError(f"{name}: cannot encode the image as {ext}")
    return buf.tobytes()


def _extension_matches(filename: str, encoding: str) -> bool:
    """Caffe's test of whether a file already is in ``encoding``: the text after the last '.' of the
    whole path (all of it without a '.'), compared ignoring case; ``jpg`` also accepts ``jpeg``."""
    dot = filename.rfind(".")
    ext = (filename[dot + 1 :] if dot >= 0 else filename).lower()
    enc = encoding.lower()
    return ext == enc or (enc == "jpg" and ext == "jpeg")


# ---------------------------------------------------------------------------------------------
# Datum from images


def image_to_datum(
    path: PathLike, label: int, height: int = 0, width: int = 0, is_color: bool = True, encoding: str = ""
) -> pb.Datum:
    """One image file as a Datum, exactly as Caffe's ``ReadImageToDatum`` (``convert_imageset``) makes it.

    Without ``encoding``: a raw datum, the image read as :func:`read_image` does, stored (C, H, W).
    With ``encoding`` (``"jpg"``, ``"png"``, ...): an encoded datum. It holds the file's own bytes when
    ``height`` and ``width`` are both 0 and the file name's extension matches ``encoding``
    (``.jpeg`` counts as ``jpg``) - even for a gray file read with ``is_color``, whose stored
    bytes then stay gray; otherwise the read (and possibly resized) image re-encoded with OpenCV.
    Note that a single nonzero ``height`` or ``width`` resizes nothing but still forces re-encoding.
    """
    img = read_image(path, height, width, is_color)
    datum = pb.Datum()
    if encoding:
        filename = os.fspath(path)
        channels = 1 if img.ndim == 2 else img.shape[2]
        if (channels == 3) == is_color and not height and not width and _extension_matches(filename, encoding):
            try:
                datum.data = Path(path).read_bytes()
            except OSError as e:
                raise DataError(f"{path}: cannot read the image file: {e.strerror}") from None
        else:
            datum.data = encode_image(img, encoding, str(path))
        datum.label = label
        datum.encoded = True
        return datum
    _fill_raw(datum, img, str(path))
    datum.label = label
    return datum


def image_to_raw_datum(img: np.ndarray, label: int | None = None, name: str = "<image>") -> pb.Datum:
    """A raw Datum from an HxW or HxWxC uint8 OpenCV image (Caffe's ``CVMatToDatum``)."""
    datum = pb.Datum()
    _fill_raw(datum, img, name)
    if label is not None:
        datum.label = label
    return datum


def _fill_raw(datum: pb.Datum, img: np.ndarray, name: str) -> None:
    if img.dtype != np.uint8:
        raise DataError(f"{name}: image data type must be uint8 for a Datum, got {img.dtype}")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        raise DataError(f"{name}: an image must be HxW or HxWxC, got shape {img.shape}")
    h, w, c = img.shape
    datum.channels, datum.height, datum.width = c, h, w
    datum.ClearField("float_data")
    datum.data = np.ascontiguousarray(img.transpose(2, 0, 1)).tobytes()
    datum.encoded = False  # set explicitly, as CVMatToDatum does: it is serialized


# ---------------------------------------------------------------------------------------------
# Datum <-> arrays


def check_datum(datum: pb.Datum, name: str = "datum") -> None:
    """DataError unless a raw or float datum's payload has channels*height*width values."""
    if datum.encoded:
        return
    c, h, w = datum.channels, datum.height, datum.width
    if min(c, h, w) < 0:
        raise DataError(f"{name}: datum has a negative dimension: channels*height*width = {c}*{h}*{w}")
    size = c * h * w
    if datum.data:
        if len(datum.data) != size:
            raise DataError(
                f"{name}: datum data has {len(datum.data)} bytes but channels*height*width = {c}*{h}*{w} = {size}"
            )
    elif len(datum.float_data) != size:
        raise DataError(
            f"{name}: datum float_data has {len(datum.float_data)} values but channels*height*width = "
            f"{c}*{h}*{w} = {size}"
        )


def datum_to_array(datum: pb.Datum, name: str = "datum") -> np.ndarray:
    """A Datum's contents as a (C, H, W) array (pycaffe's ``caffe.io.datum_to_array``).

    uint8 from ``data``, float32 from ``float_data`` (pycaffe returned float64 of the same values);
    an encoded datum is decoded natively and returned as (C, H, W) uint8 as a convenience. The label
    is not returned: read ``datum.label``, or every label of a multi-label record with :func:`datum_labels`.
    """
    if datum.encoded:
        img = decode_image_bytes(datum.data, "native", name)
        if img.dtype != np.uint8:
            raise DataError(f"{name}: encoded image decodes to {img.dtype}, Caffe needs 8-bit images")
        if img.ndim == 2:
            return img[None, :, :]
        return np.ascontiguousarray(img.transpose(2, 0, 1))
    check_datum(datum, name)
    shape = (datum.channels, datum.height, datum.width)
    if datum.data:  # a writable copy, as pycaffe's was
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape).copy()
    return np.array(datum.float_data, dtype=np.float32).reshape(shape)


def array_to_datum(arr: np.ndarray, label: int | None = None) -> pb.Datum:
    """A (C, H, W) array as a Datum (pycaffe's ``caffe.io.array_to_datum``).

    uint8 arrays go to ``data`` as bytes; any other dtype to ``float_data`` as float32. ``label`` is
    set when given.
    """
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise DataError(f"array_to_datum needs a 3-d (channels, height, width) array, got shape {arr.shape}")
    datum = pb.Datum()
    datum.channels, datum.height, datum.width = arr.shape
    if arr.dtype == np.uint8:
        datum.data = np.ascontiguousarray(arr).tobytes()
    else:
        datum.float_data.extend(np.asarray(arr, dtype=np.float32).ravel().tolist())
    if label is not None:
        datum.label = label
    return datum


def parse_datum(value: bytes, name: str = "datum") -> pb.Datum:
    """A Datum from its serialized bytes (a database value); DataError naming ``name`` if corrupt."""
    from google.protobuf.message import DecodeError

    datum = pb.Datum()
    try:
        datum.ParseFromString(value)
    except DecodeError as e:
        raise DataError(f"{name}: not a valid serialized Datum ({len(value)} bytes): {e}") from None
    return datum


# ---------------------------------------------------------------------------------------------
# labels on the wire: caffe_ocr's ``repeated int32 label = 5``

_LABEL_TAG = b"\x28"  # field 5, wire type 0 (varint)
_DISCARD_UNKNOWN, _BYTE_SIZE = pb.Datum.DiscardUnknownFields, pb.Datum.ByteSize
_INT32 = (-(2**31), 2**31)


def datum_labels(value: bytes | pb.Datum, name: str = "datum") -> list[int]:
    """Every label of a Datum, in order: ``[]`` when it has none, several for a caffe_ocr multi-label record.

    ``value`` is the serialized Datum (a database value): all the field-5 values on its wire, packed ones
    too. A parsed ``pb.Datum`` has kept only the last of them, so it gives ``[datum.label]`` (``[]`` when
    unset). A corrupt record is a DataError naming ``name``.
    """
    if isinstance(value, pb.Datum):
        return [value.label] if value.HasField("label") else []
    payload = bytes(value)
    datum = parse_datum(payload, name)
    labels = wire_labels(payload, datum, name=name)
    if labels is not None:
        return labels
    return [datum.label] if datum.HasField("label") else []


def wire_labels(payload: bytes, datum: pb.Datum, data_size: int | None = None, name: str = "datum") -> list[int] | None:
    """The labels on ``payload``'s wire when it may hold more than ``datum`` (parsed from it) kept, else None.

    None means the payload is exactly as long as ``datum`` re-serialized without unknown fields (which are
    discarded from ``datum``: packed labels are kept as one), so it holds at most one label, ``datum.label``.
    The check re-serializes the small fields only when ``data_size`` is given: ``datum``'s ``data`` field, of
    that many bytes, was cleared after parsing (the caller holds the bytes). Otherwise every field-5 value of
    the wire is returned, walked in Python (a few microseconds for a raw or encoded Datum): repeated labels
    make the wire longer; so do rarer encodings (duplicated or unknown fields), whose single label then
    comes back as a one-item list.
    """
    datum.DiscardUnknownFields()
    size = datum.ByteSize()
    if data_size is not None:
        size += 1 + _varint_size(data_size) + data_size
    if size == len(payload):
        return None
    return _field5_values(payload, name)


def one_label_each(payloads: Sequence[bytes], datums: Sequence[pb.Datum], data_size: int) -> bool:
    """Whether no payload may hold more labels than its parsed datum kept (the batched form of
    :func:`wire_labels`' check, about half a microsecond a record): each is exactly as long as its datum
    re-serialized, whose ``data`` field of ``data_size`` bytes was cleared (unknown fields are discarded)."""
    deque(map(_DISCARD_UNKNOWN, datums), 0)
    extra = 1 + _varint_size(data_size) + data_size
    return [size + extra for size in map(_BYTE_SIZE, datums)] == list(map(len, payloads))


def serialize_datum(datum: pb.Datum, labels: Sequence[int]) -> bytes:
    """``datum``'s bytes with ``labels`` as caffe_ocr's ``repeated int32 label = 5`` (``datum.label`` is ignored).

    The fields come in number order, as protobuf writes the fork's Datum: channels, height, width, data, one
    field 5 per label (a negative label as a 10-byte varint, as int32 is), float_data, encoded. One label
    gives the same bytes as setting ``datum.label``. A label outside int32 is a DataError.
    """
    head, tail = pb.Datum(), pb.Datum()
    head.CopyFrom(datum)
    head.ClearField("label")
    if len(datum.float_data):
        tail.float_data.extend(datum.float_data)
        head.ClearField("float_data")
    if datum.HasField("encoded"):
        tail.encoded = datum.encoded
        head.ClearField("encoded")
    parts = [head.SerializeToString()]
    for label in labels:
        label = int(label)
        if not _INT32[0] <= label < _INT32[1]:
            raise DataError(f"label {label} does not fit a Datum's int32 label")
        parts += (_LABEL_TAG, _varint_bytes(label & 0xFFFFFFFFFFFFFFFF))
    parts.append(tail.SerializeToString())
    return b"".join(parts)


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(buf: bytes, pos: int, end: int, name: str) -> tuple[int, int]:
    """The varint at ``pos`` (not past ``end``) and the position after it; DataError if it is cut or too long."""
    value = shift = 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            break
    raise DataError(f"{name}: not a valid serialized Datum (a varint is cut short or longer than 10 bytes)")


def _int32(value: int) -> int:
    """A varint's value read as protobuf reads an int32: its low 32 bits, signed."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _field5_values(buf: bytes, name: str) -> list[int]:
    """Every top-level field-5 value of a serialized message, varint or packed, in wire order."""
    labels: list[int] = []
    pos, end, depth = 0, len(buf), 0  # depth: inside unknown groups (wire types 3/4), whose fields are not ours
    while pos < end:
        key, pos = _read_varint(buf, pos, end, name)
        field, kind = key >> 3, key & 7
        if kind == 0:
            value, pos = _read_varint(buf, pos, end, name)
            if field == 5 and not depth:
                labels.append(_int32(value))
        elif kind == 2:
            size, pos = _read_varint(buf, pos, end, name)
            stop = pos + size
            if stop > end:
                raise DataError(f"{name}: not a valid serialized Datum (field {field} runs past its end)")
            while field == 5 and not depth and pos < stop:  # packed labels
                value, pos = _read_varint(buf, pos, stop, name)
                labels.append(_int32(value))
            pos = stop
        elif kind in (1, 5):
            pos += 8 if kind == 1 else 4
        elif kind in (3, 4):
            depth += 1 if kind == 3 else -1
        else:
            raise DataError(f"{name}: not a valid serialized Datum (wire type {kind} of field {field})")
    if pos > end or depth:
        raise DataError(f"{name}: not a valid serialized Datum (truncated)")
    return labels


# ---------------------------------------------------------------------------------------------
# data layers' decode


def datum_image_hwc(
    datum: pb.Datum, force_color: bool = False, force_gray: bool = False, name: str = "datum"
) -> np.ndarray:
    """Decode an encoded datum to HxWxC uint8 by Caffe's data-transformer rules.

    ``force_color`` decodes as 3-channel BGR, ``force_gray`` as 1 channel, neither keeps the file's
    own channels (a gray JPEG stays gray, a PNG with alpha has 4); both is a DataError. A 1-channel
    result keeps its channel axis (HxWx1).

    Only encoded datums are decoded here: a raw datum already holds its pixels as (C, H, W) bytes
    that callers use directly (``datum_to_array``), so passing one is a DataError (Caffe ignores
    ``force_color``/``force_gray`` for raw datums).
    """
    if force_color and force_gray:
        raise DataError(f"{name}: cannot set both force_color and force_gray")
    if not datum.encoded:
        raise DataError(f"{name}: datum_image_hwc decodes encoded datums only; use the raw (C, H, W) data directly")
    mode = "color" if force_color else "gray" if force_gray else "native"
    img = decode_image_bytes(datum.data, mode, name)
    if img.dtype != np.uint8:
        raise DataError(f"{name}: encoded image decodes to {img.dtype}, Caffe needs 8-bit images")
    if img.ndim == 2:
        img = img[:, :, None]
    return img
