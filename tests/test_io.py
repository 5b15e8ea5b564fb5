"""caffe.io: BlobProto/Datum conversions, Transformer, load_image, resize_image, oversample (pycaffe's API)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import asset
from PIL import Image

import caffe
import caffe.io
from caffe.proto import caffe_pb2

CAT = "caffe-ref/examples/images/cat.jpg"
CAT_GRAY = "caffe-ref/examples/images/cat_gray.jpg"
MEAN_NPY = "models/imagenet-common/ilsvrc_2012_mean.npy"
MEAN_BINARYPROTO = "models/imagenet-common/imagenet_mean.binaryproto"
BGR_MEAN = np.array([104.0, 117.0, 123.0])


def rng() -> np.random.Generator:
    return np.random.default_rng(1701)


def pillow_float(path: Path, mode: str) -> np.ndarray:
    return (np.asarray(Image.open(path).convert(mode), dtype=np.float64) / 255).astype(np.float32)


# ---------------------------------------------------------------------------- BlobProto
def test_blobproto_legacy_dims():
    blob = caffe_pb2.BlobProto()
    blob.data.extend(np.arange(100.0).tolist())
    blob.num, blob.channels, blob.height, blob.width = 1, 1, 10, 10
    arr = caffe.io.blobproto_to_array(blob)
    assert arr.shape == (1, 1, 10, 10)
    assert arr.dtype == np.float64  # as pycaffe (np.array of the repeated field)
    np.testing.assert_array_equal(arr.ravel(), np.arange(100.0))


def test_blobproto_shape_field_and_scalar():
    blob = caffe_pb2.BlobProto()
    blob.data.extend(np.zeros(100).tolist())
    blob.shape.dim.extend([10, 10])
    assert caffe.io.blobproto_to_array(blob).shape == (10, 10)
    scalar = caffe_pb2.BlobProto()
    scalar.data.append(123)
    assert caffe.io.blobproto_to_array(scalar) == 123


def test_blobproto_without_shape_raises_value_error():
    blob = caffe_pb2.BlobProto()
    blob.data.extend(np.zeros(100).tolist())
    with pytest.raises(ValueError, match="100 values"):
        caffe.io.blobproto_to_array(blob)
    with pytest.raises(caffe.CaffeError, match="diff"):
        caffe.io.blobproto_to_array(blob, return_diff=True)


def test_blobproto_round_trip_with_diff():
    data = rng().standard_normal((2, 3, 4, 5)).astype(np.float32)
    diff = rng().standard_normal((2, 3, 4, 5)).astype(np.float32)
    blob = caffe.io.array_to_blobproto(data, diff)
    assert list(blob.shape.dim) == [2, 3, 4, 5] and not blob.HasField("num")
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(blob), data)
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(blob, return_diff=True), diff)
    again = caffe_pb2.BlobProto.FromString(blob.SerializeToString())
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(again, return_diff=True), diff)
    assert len(caffe.io.array_to_blobproto(data).diff) == 0
    with pytest.raises(ValueError, match=r"\(3,\)"):
        caffe.io.array_to_blobproto(data, np.zeros(3))


def test_arraylist_blobprotovector_round_trip():
    arrays = [rng().standard_normal(shape).astype(np.float32) for shape in [(3,), (2, 5), (1, 3, 4, 4)]]
    serialized = caffe.io.arraylist_to_blobprotovector_str(arrays)
    assert isinstance(serialized, bytes)
    assert len(caffe_pb2.BlobProtoVector.FromString(serialized).blobs) == 3
    back = caffe.io.blobprotovector_str_to_arraylist(serialized)
    assert [a.shape for a in back] == [a.shape for a in arrays]
    for a, b in zip(back, arrays, strict=True):
        np.testing.assert_array_equal(a, b)
    assert caffe.io.blobprotovector_str_to_arraylist(caffe.io.arraylist_to_blobprotovector_str([])) == []
    with pytest.raises(caffe.CaffeError, match="BlobProtoVector"):
        caffe.io.blobprotovector_str_to_arraylist(b"\xff\xff\xff")


# ---------------------------------------------------------------------------- Datum
def test_datum_uint8_float_and_label():
    img = rng().integers(0, 256, (3, 4, 5), dtype=np.uint8)
    datum = caffe.io.array_to_datum(img, label=7)
    assert (datum.channels, datum.height, datum.width, datum.label) == (3, 4, 5, 7)
    assert datum.data == img.tobytes() and len(datum.float_data) == 0
    back = caffe.io.datum_to_array(datum)
    assert back.shape == (3, 4, 5) and back.dtype == np.uint8
    np.testing.assert_array_equal(back, img)

    values = rng().standard_normal((2, 3, 4)).astype(np.float32)
    fdatum = caffe.io.array_to_datum(values)
    assert len(fdatum.data) == 0 and len(fdatum.float_data) == 24
    np.testing.assert_array_equal(caffe.io.datum_to_array(fdatum), values)
    # pycaffe's test: leaving the label unset gives a smaller message
    ones = np.ones((10, 10, 3))
    assert len(caffe.io.array_to_datum(ones, label=1).SerializeToString()) > len(
        caffe.io.array_to_datum(ones).SerializeToString()
    )
    with pytest.raises(caffe.CaffeError, match=r"\(4, 5\)"):
        caffe.io.array_to_datum(np.zeros((4, 5)))


# ---------------------------------------------------------------------------- Transformer
def imagenet_transformer(shape=(10, 3, 227, 227)) -> caffe.io.Transformer:
    t = caffe.io.Transformer({"data": shape})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    return t


def test_preprocess_order_of_operations_and_round_trip():
    img = rng().random((6, 8, 3), dtype=np.float32)
    original = img.copy()
    t = imagenet_transformer((1, 3, 6, 8))
    t.set_mean("data", BGR_MEAN)
    t.set_input_scale("data", 0.017)
    out = t.preprocess("data", img)
    # transpose -> channel swap -> raw scale -> mean -> input scale, in float32
    expected = img.transpose(2, 0, 1)[[2, 1, 0]] * np.float32(255)
    expected = (expected - BGR_MEAN[:, None, None]).astype(np.float32) * np.float32(0.017)
    assert out.shape == (3, 6, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(img, original)  # the caller's image is left alone
    assert t.mean["data"].shape == (3, 1, 1)
    # deprocess undoes it, with or without the batch axis
    np.testing.assert_allclose(t.deprocess("data", out), img, atol=1e-5)
    np.testing.assert_allclose(t.deprocess("data", out[np.newaxis]), img, atol=1e-5)


def test_preprocess_resizes_and_defaults_to_float32():
    t = caffe.io.Transformer({"data": [1, 3, 5, 7]})  # shapes may be lists (or net.blobs[...].data.shape)
    img = rng().integers(0, 256, (10, 14, 3)).astype(np.uint8)
    out = t.preprocess("data", img)
    assert out.shape == (5, 7, 3) and out.dtype == np.float32  # no transpose set: still H x W x K
    np.testing.assert_array_equal(out, caffe.io.resize_image(img.astype(np.float32), (5, 7)))
    gray = caffe.io.Transformer({"data": (1, 1, 4, 4)})
    gray.set_transpose("data", (2, 0, 1))
    plane = rng().random((4, 4), dtype=np.float32)
    out = gray.preprocess("data", plane)  # a 2-d image counts as H x W x 1
    np.testing.assert_array_equal(out, plane[np.newaxis])
    np.testing.assert_array_equal(gray.deprocess("data", out[np.newaxis]), plane[:, :, np.newaxis])


def test_full_mean_is_resized_to_the_input():
    mean = np.load(asset(MEAN_NPY))
    assert mean.shape == (3, 256, 256)
    t = imagenet_transformer()
    t.set_mean("data", mean)
    resized = t.mean["data"]
    assert resized.shape == (3, 227, 227)
    assert mean.min() <= resized.min() and resized.max() <= mean.max()
    direct = cv2.resize(mean.transpose(1, 2, 0), (227, 227), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    np.testing.assert_allclose(resized, direct, atol=1e-3)
    np.testing.assert_allclose(resized.mean(axis=(1, 2)), mean.mean(axis=(1, 2)), atol=0.2)

    img = caffe.io.load_image(asset(CAT))
    expected = caffe.io.resize_image(img, (227, 227)).transpose(2, 0, 1)[::-1] * np.float32(255) - resized
    np.testing.assert_allclose(t.preprocess("data", img), expected, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(
        t.deprocess("data", t.preprocess("data", img)), caffe.io.resize_image(img, (227, 227)), atol=1e-5
    )


def test_beginners_guide_mean_binaryproto_idiom():
    """The guide's classify-samples.py: mean.binaryproto -> per-channel pixel mean -> Transformer."""
    blob = caffe_pb2.BlobProto()
    with open(asset(MEAN_BINARYPROTO), "rb") as f:
        blob.MergeFromString(f.read())
    assert not blob.HasField("shape") and blob.HasField("num")
    dims = (blob.num, blob.channels, blob.height, blob.width)
    pixel = np.reshape(blob.data, dims[1:]).mean(1).mean(1)
    mean_image = caffe.io.blobproto_to_array(blob)
    assert mean_image.shape == dims == (1, 3, 256, 256)
    np.testing.assert_allclose(mean_image[0].mean(axis=(1, 2)), pixel)

    t = caffe.io.Transformer({"data": (1, 3, 227, 227)})
    t.set_transpose("data", (2, 0, 1))
    t.set_raw_scale("data", 255)
    t.set_channel_swap("data", (2, 1, 0))
    t.set_mean("data", pixel)
    image = caffe.io.load_image(str(asset(CAT)))
    out = t.preprocess("data", image)
    rgb = cv2.resize(pillow_float(asset(CAT), "RGB"), (227, 227), interpolation=cv2.INTER_LINEAR)
    expected = rgb[:, :, ::-1].transpose(2, 0, 1) * np.float32(255) - pixel[:, None, None]
    assert out.shape == (3, 227, 227) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-3)
    # the 1 x K x H x W array itself is accepted too (pycaffe needed mean_image[0])
    t.set_mean("data", mean_image)
    np.testing.assert_allclose(
        t.mean["data"], caffe.io.resize_image(mean_image[0].transpose(1, 2, 0), (227, 227)).transpose(2, 0, 1)
    )


def test_transformer_errors():
    t = caffe.io.Transformer({"data": (1, 3, 8, 8)})
    with pytest.raises(ValueError, match=r"'dat' is not one of the net inputs: \['data'\]"):
        t.preprocess("dat", np.zeros((8, 8, 3)))
    with pytest.raises(caffe.CaffeError, match=r"4 channels but input shape \(1, 3, 8, 8\) has 3"):
        t.set_mean("data", np.zeros(4))
    with pytest.raises(ValueError, match=r"\(4, 8, 8\) has 4 channels"):
        t.set_mean("data", np.zeros((4, 8, 8)))
    with pytest.raises(ValueError, match="expected"):
        t.set_mean("data", np.zeros((2, 1, 3, 8, 8)))
    with pytest.raises(ValueError, match="permutation of 3 axes"):
        t.set_transpose("data", (1, 0))
    with pytest.raises(ValueError, match="need 3 channel indices"):
        t.set_channel_swap("data", (1, 0))
    t.set_transpose("data", (2, 0, 1))
    with pytest.raises(ValueError, match=r"3 axes .* got shape \(1, 8, 8, 3\)"):
        t.preprocess("data", np.zeros((1, 8, 8, 3)))
    t.set_channel_swap("data", (2, 1, 0))
    with pytest.raises(ValueError, match="2 channels"):
        t.preprocess("data", np.zeros((8, 8, 2)))


# ---------------------------------------------------------------------------- load_image
def test_load_image_color_matches_pillow():
    img = caffe.io.load_image(asset(CAT))
    assert img.shape == (360, 480, 3) and img.dtype == np.float32
    assert img.min() >= 0 and img.max() <= 1
    np.testing.assert_array_equal(img, pillow_float(asset(CAT), "RGB"))
    # OpenCV decodes the same pixels (BGR)
    np.testing.assert_array_equal(np.round(img * 255).astype(np.uint8), cv2.imread(str(asset(CAT)))[:, :, ::-1])
    gray = caffe.io.load_image(asset(CAT), color=False)
    assert gray.shape == (360, 480, 1) and gray.dtype == np.float32
    np.testing.assert_allclose(gray[:, :, 0], img @ np.float32([0.2125, 0.7154, 0.0721]), atol=1e-6)


def test_load_image_grayscale_file():
    img = caffe.io.load_image(asset(CAT_GRAY))
    assert img.shape == (360, 480, 3) and img.dtype == np.float32
    np.testing.assert_array_equal(img[:, :, 0], img[:, :, 1])
    np.testing.assert_array_equal(img[:, :, 0], img[:, :, 2])
    np.testing.assert_array_equal(img[:, :, 0], pillow_float(asset(CAT_GRAY), "L"))
    single = caffe.io.load_image(asset(CAT_GRAY), color=False)
    assert single.shape == (360, 480, 1)
    np.testing.assert_array_equal(single[:, :, 0], img[:, :, 0])


def test_load_image_alpha_palette_and_16_bit(tmp_path: Path):
    pixels = rng().integers(0, 256, (5, 7, 4), dtype=np.uint8)
    Image.fromarray(pixels, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(caffe.io.load_image(tmp_path / "rgba.png"), pixels[:, :, :3] / np.float32(255))
    Image.fromarray(pixels[:, :, :2], "LA").save(tmp_path / "la.png")
    la = caffe.io.load_image(tmp_path / "la.png", color=False)
    np.testing.assert_array_equal(la[:, :, 0], pixels[:, :, 0] / np.float32(255))
    Image.fromarray(pixels[:, :, :3]).convert("P").save(tmp_path / "p.png", transparency=0)
    palette = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    np.testing.assert_array_equal(caffe.io.load_image(tmp_path / "p.png"), palette / np.float32(255))

    deep = rng().integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "gray16.png"), deep[:, :, 0])
    cv2.imwrite(str(tmp_path / "rgb16.png"), deep[:, :, ::-1])  # OpenCV writes BGR
    gray16 = caffe.io.load_image(tmp_path / "gray16.png", color=False)
    np.testing.assert_allclose(gray16[:, :, 0], deep[:, :, 0] / 65535, rtol=1e-6)
    rgb16 = caffe.io.load_image(tmp_path / "rgb16.png")
    assert rgb16.shape == (5, 7, 3)
    np.testing.assert_allclose(rgb16, deep / 65535, rtol=1e-6)


def test_load_image_errors(tmp_path: Path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(OSError, match=r"nope\.jpg"):
        caffe.io.load_image(missing)
    with pytest.raises(caffe.CaffeError, match="no such file"):
        caffe.io.load_image(str(missing))
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    with pytest.raises(caffe.io.ImageError, match=r"cannot read .*junk\.jpg"):
        caffe.io.load_image(junk)


# ---------------------------------------------------------------------------- resize_image
def test_resize_image_shapes_range_and_constant():
    img = rng().random((20, 30, 3), dtype=np.float32) * 200 - 50
    for order in (0, 1, 3):
        out = caffe.io.resize_image(img, (13, 41), interp_order=order)
        assert out.shape == (13, 41, 3) and out.dtype == np.float32
        assert img.min() <= out.min() and out.max() <= img.max()
    np.testing.assert_allclose(
        caffe.io.resize_image(img, (40, 60)), cv2.resize(img, (60, 40), interpolation=cv2.INTER_LINEAR), rtol=1e-6
    )
    nearest = caffe.io.resize_image(img, (40, 60), interp_order=0)
    np.testing.assert_array_equal(nearest, img.repeat(2, axis=0).repeat(2, axis=1))
    # shrinking: the source pixel under each output pixel's centre (scikit-image's choice, ties included)
    column = np.arange(5.0).reshape(5, 1, 1)
    np.testing.assert_array_equal(caffe.io.resize_image(column, (3, 1), interp_order=0).ravel(), [0, 2, 4])
    np.testing.assert_array_equal(caffe.io.resize_image(column[:4], (2, 1), interp_order=0).ravel(), [1, 3])
    # 1, 5 channels and 2-d images keep their layout
    assert caffe.io.resize_image(img[:, :, :1], (7, 9)).shape == (7, 9, 1)
    many = np.concatenate([img, img[:, :, :2]], axis=2)
    five = caffe.io.resize_image(many, (7, 9))
    assert five.shape == (7, 9, 5)
    np.testing.assert_array_equal(five[:, :, 3], caffe.io.resize_image(img[:, :, :1], (7, 9))[:, :, 0])
    assert caffe.io.resize_image(img[:, :, 0], (7, 9)).shape == (7, 9)
    constant = caffe.io.resize_image(np.full((4, 4, 3), 0.25), (9, 11))
    assert constant.shape == (9, 11, 3) and constant.dtype == np.float32 and np.all(constant == 0.25)
    with pytest.raises(ValueError, match="interp_order"):
        caffe.io.resize_image(img, (5, 5), interp_order=7)


# ---------------------------------------------------------------------------- oversample
def test_oversample_crops_and_mirrors():
    images = rng().random((2, 11, 14, 3), dtype=np.float32)
    crops = caffe.io.oversample(list(images), np.array([6, 8]))
    assert crops.shape == (20, 6, 8, 3) and crops.dtype == np.float32
    starts = [(0, 0), (0, 6), (5, 0), (5, 6), (2, 3)]  # corners, then centre at ((11-6)//2, (14-8)//2)
    for n, im in enumerate(images):
        for k, (y, x) in enumerate(starts):
            window = im[y : y + 6, x : x + 8]
            np.testing.assert_array_equal(crops[10 * n + k], window)
            np.testing.assert_array_equal(crops[10 * n + 5 + k], window[:, ::-1])
    np.testing.assert_array_equal(caffe.io.oversample(images, (6, 8)), crops)  # an N x H x W x K array works too
    with pytest.raises(ValueError, match="does not fit"):
        caffe.io.oversample(images, (12, 8))
