"""Datum <-> images and arrays with Caffe's rules (ReadImageToDatum, CVMatToDatum, pycaffe's caffe.io)."""

from __future__ import annotations

import io
import shutil
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import asset

from caffe.data.datum import (
    _DECODE_FLAGS,
    _decode_jpeg,
    array_to_datum,
    check_datum,
    datum_image_hwc,
    datum_to_array,
    decode_image_bytes,
    image_to_datum,
    image_to_raw_datum,
    parse_datum,
    read_image,
)
from caffe.errors import DataError
from caffe.proto import caffe_pb2 as pb

DOLPHIN = "dolphins-and-seahorses/dolphin/image_0001.jpg"
GRAY = "dolphins-and-seahorses/dolphin/image_0042.jpg"  # a grayscale JPEG


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def caffe_raw_datum_bytes(chw: np.ndarray, label: int) -> bytes:
    """A raw Datum serialized by hand the way Caffe's CVMatToDatum + set_label leave it: channels,
    height, width, data (C, H, W bytes), label, and encoded explicitly false."""
    c, h, w = chw.shape
    data = chw.tobytes()
    return (
        b"\x08" + varint(c) + b"\x10" + varint(h) + b"\x18" + varint(w)
        + b"\x22" + varint(len(data)) + data
        + b"\x28" + varint(label) + b"\x38\x00"
    )  # fmt: skip


def test_raw_datum_is_caffes_layout_byte_for_byte():
    path = asset(DOLPHIN)
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    datum = image_to_datum(path, 3)
    assert (datum.channels, datum.height, datum.width) == (3, *img.shape[:2])
    assert datum.data == img.transpose(2, 0, 1).tobytes()  # B plane, then G, then R
    assert datum.label == 3 and not datum.encoded and datum.HasField("encoded")
    wire = caffe_raw_datum_bytes(img.transpose(2, 0, 1), 3)
    assert datum.SerializeToString() == wire
    assert pb.Datum.FromString(wire) == datum
    np.testing.assert_array_equal(datum_to_array(datum), img.transpose(2, 0, 1))
    assert image_to_raw_datum(img, 3) == datum


def test_encoded_without_resize_stores_the_file_bytes():
    path = asset(DOLPHIN)
    datum = image_to_datum(path, 1, encoding="jpg")
    assert datum.encoded and datum.label == 1
    assert datum.data == path.read_bytes()
    assert not datum.HasField("channels") and not datum.HasField("height")  # Caffe leaves them unset
    hwc = datum_image_hwc(datum)
    np.testing.assert_array_equal(hwc, cv2.imread(str(path), cv2.IMREAD_COLOR))
    np.testing.assert_array_equal(datum_to_array(datum), hwc.transpose(2, 0, 1))


def test_encoded_with_resize_stores_the_resized_image(tmp_path: Path):
    path = asset(DOLPHIN)
    resized = cv2.resize(cv2.imread(str(path), cv2.IMREAD_COLOR), (48, 64), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(read_image(path, 64, 48), resized)
    jpg = image_to_datum(path, 0, 64, 48, encoding="jpg")
    assert jpg.data != path.read_bytes() and jpg.data[:2] == b"\xff\xd8"
    decoded = datum_image_hwc(jpg)
    assert decoded.shape == (64, 48, 3)
    assert jpg.data == cv2.imencode(".jpg", resized)[1].tobytes()  # OpenCV's defaults, as Caffe
    assert np.abs(decoded.astype(int) - resized).mean() < 8  # lossy JPEG of a small image
    png = image_to_datum(path, 0, 64, 48, encoding="png")  # lossless: exact
    np.testing.assert_array_equal(datum_image_hwc(png), resized)


def test_one_nonzero_size_resizes_nothing_but_reencodes():
    path = asset(DOLPHIN)
    original = cv2.imread(str(path), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(read_image(path, 64, 0), original)  # resize needs both sizes
    datum = image_to_datum(path, 0, 64, 0, encoding="jpg")  # ... but any size forces re-encoding
    assert datum.data != path.read_bytes()
    assert datum_image_hwc(datum).shape == original.shape


def test_extension_rule(tmp_path: Path):
    src = asset(DOLPHIN)
    upper = tmp_path / "photo.JPEG"
    shutil.copy(src, upper)
    assert image_to_datum(upper, 0, encoding="jpg").data == src.read_bytes()  # .jpeg counts as jpg, any case
    # the rule is one-way: encoding "jpeg" does not accept a .jpg file, which is re-encoded
    assert image_to_datum(src, 0, encoding="jpeg").data != src.read_bytes()
    assert image_to_datum(src, 0, encoding="png").data[:8] == b"\x89PNG\r\n\x1a\n"
    bare = tmp_path / "noextension"
    shutil.copy(src, bare)
    assert image_to_datum(bare, 0, encoding="jpg").data != src.read_bytes()


def test_grayscale_jpeg():
    path = asset(GRAY)
    gray = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert gray.ndim == 2
    color = image_to_datum(path, 5)
    assert color.channels == 3
    planes = datum_to_array(color)
    np.testing.assert_array_equal(planes[0], planes[1])
    np.testing.assert_array_equal(planes[1], planes[2])
    one = image_to_datum(path, 5, is_color=False)
    assert one.channels == 1 and (one.height, one.width) == gray.shape
    np.testing.assert_array_equal(datum_to_array(one)[0], gray)
    # Caffe keeps a gray file's own bytes even when reading in colour; decoding decides the channels.
    enc = image_to_datum(path, 5, is_color=True, encoding="jpg")
    assert enc.data == path.read_bytes()
    assert datum_image_hwc(enc).shape == (*gray.shape, 1)
    assert datum_image_hwc(enc, force_color=True).shape == (*gray.shape, 3)
    assert datum_image_hwc(image_to_datum(asset(DOLPHIN), 0, encoding="jpg"), force_gray=True).shape[2] == 1


def test_png_round_trip_is_lossless():
    path = asset(DOLPHIN)
    raw = image_to_datum(path, 2)
    png = image_to_datum(path, 2, encoding="png")
    assert png.encoded and png.data[:4] == b"\x89PNG"
    np.testing.assert_array_equal(datum_to_array(png), datum_to_array(raw))
    gray_png = image_to_datum(asset(GRAY), 2, is_color=False, encoding="png")
    np.testing.assert_array_equal(
        datum_to_array(gray_png), datum_to_array(image_to_datum(asset(GRAY), 2, is_color=False))
    )


def test_native_decode_keeps_alpha_and_depth():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (5, 6, 4), dtype=np.uint8)
    data = cv2.imencode(".png", rgba)[1].tobytes()
    np.testing.assert_array_equal(decode_image_bytes(data), rgba)
    assert decode_image_bytes(data, "color").shape == (5, 6, 3)
    assert decode_image_bytes(data, "gray").shape == (5, 6)
    deep = cv2.imencode(".png", rng.integers(0, 65535, (4, 4), dtype=np.uint16))[1].tobytes()
    assert decode_image_bytes(deep).dtype == np.uint16
    with pytest.raises(DataError, match="uint16, Caffe needs 8-bit"):
        datum_image_hwc(pb.Datum(data=deep, encoded=True))
    with pytest.raises(DataError, match="unknown decode mode"):
        decode_image_bytes(data, "rgb")


def test_exif_orientation_is_ignored(tmp_path: Path):
    # A JPEG tagged "rotate 90" (orientation 6): every mode gives the stored pixels, like native decode.
    src = asset(DOLPHIN).read_bytes()
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0) + b"\x00\x00\x00\x00"
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 6 + len(tiff)) + b"Exif\x00\x00" + tiff
    rotated = tmp_path / "rotated.jpg"
    rotated.write_bytes(src[:2] + app1 + src[2:])
    assert cv2.imread(str(rotated), cv2.IMREAD_COLOR).shape[:2] == (300, 179)  # OpenCV's default rotates
    stored = cv2.imread(str(asset(DOLPHIN)), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(read_image(rotated), stored)
    enc = image_to_datum(rotated, 0, encoding="jpg")
    np.testing.assert_array_equal(datum_image_hwc(enc, force_color=True), stored)
    np.testing.assert_array_equal(datum_image_hwc(enc), stored)


def jpeg_variants() -> list[tuple[str, bytes]]:
    """JPEGs in every chroma subsampling, progressive with restart markers, odd sizes, gray, PIL-written
    with optimised Huffman tables, and every JPEG among the assets."""
    from PIL import Image

    rng = np.random.default_rng(0)
    cases = []
    for h, w in [(1, 1), (7, 5), (37, 53), (255, 17)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img = cv2.GaussianBlur(img, (5, 5), 0) if min(h, w) >= 5 else img
        for sf in ("411", "420", "422", "440", "444"):
            for quality, progressive in ((30, 0), (95, 1)):
                sampling = getattr(cv2, f"IMWRITE_JPEG_SAMPLING_FACTOR_{sf}")
                flags = [
                    *(cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_PROGRESSIVE, progressive),
                    *(cv2.IMWRITE_JPEG_RST_INTERVAL, 2 * progressive, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling),
                ]
                cases.append((f"{h}x{w} {sf} q{quality} p{progressive}", cv2.imencode(".jpg", img, flags)[1].tobytes()))
        cases.append((f"{h}x{w} gray", cv2.imencode(".jpg", img[:, :, 0])[1].tobytes()))
        for subsampling in (0, 2):
            out = io.BytesIO()
            Image.fromarray(img).save(out, "JPEG", subsampling=subsampling, quality=85, optimize=True)
            cases.append((f"{h}x{w} PIL {subsampling}", out.getvalue()))
    root = asset("")
    cases += [(str(p), p.read_bytes()) for p in sorted(root.rglob("*.jp*g"))]
    return cases


def test_jpeg_fast_path_decodes_what_opencv_decodes():
    # The TurboJPEG path must give OpenCV's pixels exactly, in each mode, for every kind of JPEG.
    fast = 0
    for name, data in jpeg_variants():
        for mode, flag in _DECODE_FLAGS.items():
            ours = _decode_jpeg(data, mode)
            assert ours is not None, f"{name}: a gray or YCbCr JPEG should take the fast path"
            fast += 1
            expected = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
            assert ours.shape == expected.shape, f"{name} ({mode})"
            assert np.array_equal(ours, expected), f"{name} ({mode}): pixels differ from OpenCV's"
    assert fast > 150


def test_jpeg_fast_path_is_taken_and_others_go_to_opencv(monkeypatch: pytest.MonkeyPatch):
    path = asset(DOLPHIN)
    expected = cv2.imread(str(path), cv2.IMREAD_COLOR)
    from caffe.data import datum as datum_module

    calls = []
    real = cv2.imdecode
    monkeypatch.setattr(datum_module.cv2, "imdecode", lambda *a: calls.append(1) or real(*a))
    np.testing.assert_array_equal(decode_image_bytes(path.read_bytes(), "color"), expected)
    np.testing.assert_array_equal(read_image(path), expected)
    assert not calls  # JPEG: decoded without OpenCV
    png = cv2.imencode(".png", expected)[1].tobytes()
    np.testing.assert_array_equal(decode_image_bytes(png, "color"), expected)
    assert len(calls) == 1  # PNG: OpenCV
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(expected[:, :, ::-1]).convert("CMYK").save(out, "JPEG")
    assert _decode_jpeg(out.getvalue(), "color") is None  # CMYK: left to OpenCV
    assert decode_image_bytes(out.getvalue(), "color").shape == expected.shape
    truncated = path.read_bytes()[:2000]
    assert _decode_jpeg(truncated, "color") is None  # a damaged JPEG is OpenCV's to judge
    assert len(calls) == 2


def test_array_datum_round_trips():
    rng = np.random.default_rng(1)
    u8 = rng.integers(0, 256, (3, 5, 7), dtype=np.uint8)
    d = array_to_datum(u8, label=9)
    assert (d.channels, d.height, d.width, d.label) == (3, 5, 7, 9) and len(d.float_data) == 0
    again = datum_to_array(parse_datum(d.SerializeToString()))
    assert again.dtype == np.uint8
    np.testing.assert_array_equal(again, u8)
    f32 = rng.standard_normal((2, 3, 4)).astype(np.float32)
    d = array_to_datum(f32)
    assert not d.data and len(d.float_data) == 24 and not d.HasField("label")
    back = datum_to_array(pb.Datum.FromString(d.SerializeToString()))
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, f32)
    f64 = rng.standard_normal((1, 2, 2))
    np.testing.assert_array_equal(datum_to_array(array_to_datum(f64)), f64.astype(np.float32))
    np.testing.assert_array_equal(
        datum_to_array(array_to_datum(np.arange(6).reshape(1, 2, 3))), np.arange(6).reshape(1, 2, 3)
    )
    with pytest.raises(DataError, match="3-d"):
        array_to_datum(np.zeros((4, 4), np.uint8))


def test_handmade_caffe_datum_parses():
    chw = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    datum = parse_datum(caffe_raw_datum_bytes(chw, 300), "key 00000000_a.jpg")
    assert datum.label == 300
    np.testing.assert_array_equal(datum_to_array(datum), chw)
    # float_data as Caffe writes it (unpacked repeated float, field 6)
    floats = b"".join(b"\x35" + struct.pack("<f", v) for v in (0.5, -1.0))
    fd = pb.Datum.FromString(b"\x08\x01\x10\x01\x18\x02" + floats)
    np.testing.assert_array_equal(datum_to_array(fd), np.array([[[0.5, -1.0]]], np.float32))


def test_bad_inputs(tmp_path: Path):
    data = asset(DOLPHIN).read_bytes()
    for bad in (data[: len(data) // 2], data[:200], data[:-2], b"not an image at all" * 10):
        with pytest.raises(DataError, match=r"^key 42: could not decode"):
            decode_image_bytes(bad, "native", "key 42")
        with pytest.raises(DataError, match="could not decode"):
            datum_image_hwc(pb.Datum(data=bad, encoded=True))
    with pytest.raises(DataError, match="0 bytes"):
        decode_image_bytes(b"")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(data[:300])
    with pytest.raises(DataError, match=f"^{corrupt}: could not decode"):
        image_to_datum(corrupt, 0)
    missing = tmp_path / "nope" / "image_9999.jpg"
    with pytest.raises(DataError, match=f"^{missing}: no such image file"):
        image_to_datum(missing, 0, encoding="jpg")
    with pytest.raises(DataError, match="not an image file"):
        read_image(tmp_path)
    short = pb.Datum(channels=3, height=4, width=5, data=b"\x00" * 59)
    with pytest.raises(DataError, match=r"59 bytes but channels\*height\*width = 3\*4\*5 = 60"):
        datum_to_array(short, "key 7")
    with pytest.raises(DataError, match="float_data has 2 values"):
        check_datum(pb.Datum(channels=1, height=1, width=3, float_data=[1.0, 2.0]))
    with pytest.raises(DataError, match="both force_color and force_gray"):
        datum_image_hwc(pb.Datum(data=data, encoded=True), force_color=True, force_gray=True)
    with pytest.raises(DataError, match="encoded datums only"):
        datum_image_hwc(array_to_datum(np.zeros((1, 2, 2), np.uint8)))
    with pytest.raises(DataError, match=r"^key 3: not a valid serialized Datum"):
        parse_datum(b"\x22\xff\xff", "key 3")
    with pytest.raises(DataError, match=r"cannot encode the image as .nosuchformat"):
        image_to_datum(asset(DOLPHIN), 0, encoding="nosuchformat")
