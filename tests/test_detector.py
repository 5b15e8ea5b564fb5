"""``caffe.Detector`` and ``python/detect.py``: windows cut and warped by hand, R-CNN context padding computed
by hand (pycaffe's formulas), and the same net run directly as the truth."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, asset

import caffe
from caffe.detector import SelectiveSearchError

MODEL = "models/squeezenet_v1.0_deepcompression"
CAT = "caffe-ref/examples/images/cat.jpg"
MEAN = np.array([104.0, 117.0, 123.0], dtype=np.float32)


def files() -> tuple[str, str]:
    return str(asset(f"{MODEL}/SqueezeNet_deploy.prototxt")), str(
        asset(f"{MODEL}/squeezenet_v1.0_deepcompression_decoded.caffemodel")
    )


@pytest.fixture(scope="module")
def detector() -> caffe.Detector:
    return caffe.Detector(*files(), mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0))


def scores(patches: list[np.ndarray]) -> np.ndarray:
    """The net's output for RGB [0, 1] patches already at 227 x 227, preprocessed by hand."""
    net = caffe.Net(files()[0], caffe.TEST, weights=files()[1])
    x = np.stack([(p[:, :, ::-1] * 255.0 - MEAN).transpose(2, 0, 1) for p in patches]).astype(np.float32)
    net.blobs["data"].reshape(*x.shape)
    return net.forward(data=x)["pool_final"].reshape(len(patches), -1)


def test_detect_windows_warps_each_window(detector):
    windows = np.array([[0, 0, 200, 300], [50, 120, 250, 400]])
    got = detector.detect_windows([(str(asset(CAT)), windows)])
    assert [d["filename"] for d in got] == [str(asset(CAT))] * 2
    np.testing.assert_array_equal(np.stack([d["window"] for d in got]), windows)
    image = caffe.io.load_image(str(asset(CAT)))
    patches = [caffe.io.resize_image(image[y0:y1, x0:x1], (227, 227)) for y0, x0, y1, x1 in windows]
    np.testing.assert_allclose(np.stack([d["prediction"] for d in got]), scores(patches), rtol=1e-4, atol=1e-3)


def test_context_pad_inside_the_image():
    det = caffe.Detector(*files(), mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0), context_pad=16)
    image = caffe.io.load_image(str(asset(CAT)))
    # pycaffe: scale 227 / (227 - 32); half 50.5; centre 150.5; box round(150.5 -+ 58.79) = 92 .. 209
    expected = caffe.io.resize_image(image[92:209, 92:209], (227, 227))
    np.testing.assert_allclose(det.crop(image, (100, 100, 200, 200)), expected, atol=1e-6)


def test_context_pad_outside_the_image_is_filled_with_the_mean():
    det = caffe.Detector(*files(), mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0), context_pad=16)
    image = caffe.io.load_image(str(asset(CAT)))
    out = det.crop(image, (0, 0, 100, 100))
    # box round(50.5 -+ 58.79) = -8 .. 109: 8 of its 118 rows/columns lie outside -> round(8 * 227 / 118) = 15
    mean_rgb = MEAN[::-1] / 255.0
    np.testing.assert_allclose(out[:15, :, :], np.broadcast_to(mean_rgb, (15, 227, 3)), atol=1e-6)
    np.testing.assert_allclose(out[:, :15, :], np.broadcast_to(mean_rgb, (227, 15, 3)), atol=1e-6)
    np.testing.assert_allclose(out[15:, 15:], caffe.io.resize_image(image[0:109, 0:109], (212, 212)), atol=1e-6)


def test_bad_windows_and_selective_search_give_clear_errors(detector):
    image = caffe.io.load_image(str(asset(CAT)))
    with pytest.raises(caffe.CaffeError, match="holds no pixels"):
        detector.crop(image, (500, 500, 600, 600))
    with pytest.raises(SelectiveSearchError, match="selective_search_ijcv_with_python"):
        detector.detect_selective_search([str(asset(CAT))])


def test_detect_py_list_mode_writes_csv(tmp_path: Path, detector):
    windows = tmp_path / "windows.csv"
    windows.write_text(f"filename,ymin,xmin,ymax,xmax\n{asset(CAT)},0,0,200,300\n{asset(CAT)},50,120,250,400\n")
    out = tmp_path / "det.csv"
    argv = [str(windows), str(out), "--crop_mode=list", "--context_pad=0", f"--model_def={files()[0]}"]
    argv += [f"--pretrained_model={files()[1]}", "--mean_file=" + str(tmp_path / "mean.npy")]
    np.save(tmp_path / "mean.npy", MEAN[:, None, None] * np.ones((3, 227, 227), np.float32))
    run = subprocess.run([sys.executable, str(ROOT / "python" / "detect.py"), *argv], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:5] == ["filename", "ymin", "xmin", "ymax", "xmax"] and rows[0][-1] == "class999"
    expected = detector.detect_windows([(str(asset(CAT)), np.array([[0, 0, 200, 300], [50, 120, 250, 400]]))])
    for row, d in zip(rows[1:], expected, strict=True):
        np.testing.assert_allclose([float(v) for v in row[5:]], d["prediction"], rtol=1e-4, atol=1e-3)
    windows.write_text("file,a\nx,1\n")
    bad = subprocess.run([sys.executable, str(ROOT / "python" / "detect.py"), *argv], capture_output=True, text=True)
    assert bad.returncode == 1 and "expected a CSV with the header filename,ymin,xmin,ymax,xmax" in bad.stderr
