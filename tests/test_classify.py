"""``caffe classify``, ``caffe.Classifier`` and pycaffe's ``python/classify.py`` on the SqueezeNet in the assets.

Truth: ``REFERENCE_top5_numpy.txt`` (pre-softmax scores from an independent NumPy forward pass, after Pillow
bilinear resize to 227 x 227, BGR, minus (104, 117, 123)), and crops cut by hand for oversampling.
"""

from __future__ import annotations

import functools
import http.server
import json
import math
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, asset

import caffe
from caffe import deploy
from caffe.tools.cli import main

MODEL = "models/squeezenet_v1.0_deepcompression"
IMAGES = "caffe-ref/examples/images"
SYNSETS = "models/imagenet-common/synset_words.txt"


def reference() -> dict[str, list[tuple[float, str]]]:
    """{image: [(score, synset), ...]} from REFERENCE_top5_numpy.txt."""
    expected: dict[str, list[tuple[float, str]]] = {}
    for line in asset(f"{MODEL}/REFERENCE_top5_numpy.txt").read_text().splitlines():
        if line.startswith("== "):
            current = expected.setdefault(line[3:].strip(), [])
        elif line and not line.startswith("#"):
            score, synset = line.split(" ", 2)[:2]
            current.append((float(score), synset))
    return expected


def classify_json(capsys, *argv: str) -> tuple[int, list[dict], str]:
    """``caffe classify --format=json ARGV``: exit code, results, stderr."""
    code = main(["classify", "--format=json", *argv])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else [], err


@pytest.fixture(scope="module")
def classifier() -> caffe.Classifier:
    return caffe.Classifier(
        str(asset(f"{MODEL}/SqueezeNet_deploy.prototxt")),
        str(asset(f"{MODEL}/squeezenet_v1.0_deepcompression_decoded.caffemodel")),
        mean=np.array([104.0, 117.0, 123.0]),
        raw_scale=255,
        channel_swap=(2, 1, 0),
    )


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[str]:
    """A local http.server over tmp_path (404 for anything missing)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_caffe_classify_gives_the_reference_top5(capsys):
    images = [str(asset(f"{IMAGES}/{name}")) for name in reference()]
    code, results, _ = classify_json(
        capsys, str(asset(MODEL)), *images, f"--labels={asset(SYNSETS)}", "--mean=104,117,123", "--batch_size=2"
    )
    assert code == 0
    for (name, top5), result in zip(reference().items(), results, strict=True):
        assert result["input"].endswith(name)
        got = result["predictions"]
        assert [p["label"].split(" ", 1)[0] for p in got] == [s for _, s in top5]
        np.testing.assert_allclose([p["score"] for p in got], [v for v, _ in top5], atol=2e-3)


def test_caffe_classify_text_output_with_the_imagenet_mean_file(capsys):
    """The ImageNet mean of the assets (.npy): its per-channel mean is within 0.35 of (104, 117, 123)."""
    image = asset(f"{IMAGES}/cat.jpg")
    argv = ["classify", str(asset(MODEL)), str(image), f"--labels={asset(SYNSETS)}"]
    assert main([*argv, f"--mean={asset('models/imagenet-common/ilsvrc_2012_mean.npy')}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"---------- Prediction for {image} ----------"
    top5 = reference()["cat.jpg"]
    first = float(lines[1].split(" - ", 1)[0])
    for line, (score, synset) in zip(lines[1:], top5, strict=True):
        value, label = line.split(" - ", 1)
        assert label.startswith(f'"{synset} ') and label.endswith('"')
        # printed are probabilities (a softmax of the scores): log(p_k / p_0) = score_k - score_0
        assert 0 < float(value) <= first < 1
        assert abs(math.log(float(value) / first) - (score - top5[0][0])) < 0.1


def test_classifier_gives_the_reference_scores(classifier):
    from PIL import Image

    names = list(reference())
    images = [
        np.asarray(Image.open(asset(f"{IMAGES}/{n}")).convert("RGB").resize((227, 227), Image.BILINEAR)) / 255.0
        for n in names
    ]
    scores = classifier.predict(images, oversample=False)
    assert scores.shape == (2, 1000)
    synsets = [w.split(" ", 1)[0] for w in asset(SYNSETS).read_text().splitlines()]
    for name, row in zip(names, scores, strict=True):
        order = np.argsort(-row)[:5]
        assert [synsets[k] for k in order] == [s for _, s in reference()[name]]
        np.testing.assert_allclose(row[order], [v for v, _ in reference()[name]], atol=2e-3)


def test_classifier_oversample_averages_ten_hand_cut_crops(classifier):
    image = caffe.io.load_image(str(asset(f"{IMAGES}/fish-bike.jpg")))
    classifier.image_dims = np.array([256, 256])
    try:
        got = classifier.predict([image], oversample=True)[0]
    finally:
        classifier.image_dims = classifier.crop_dims
    big = caffe.io.resize_image(image, (256, 256))
    crops = [big[y : y + 227, x : x + 227] for y, x in ((0, 0), (0, 29), (29, 0), (29, 29))]
    crops.append(big[14:241, 14:241])  # centre: int(128 - 113.5) = 14
    crops += [c[:, ::-1] for c in crops]
    x = np.stack([(c[:, :, ::-1] * 255.0 - [104.0, 117.0, 123.0]).transpose(2, 0, 1) for c in crops])
    weights = str(asset(f"{MODEL}/squeezenet_v1.0_deepcompression_decoded.caffemodel"))
    net = caffe.Net(str(asset(f"{MODEL}/SqueezeNet_deploy.prototxt")), caffe.TEST, weights=weights)
    net.blobs["data"].reshape(10, 3, 227, 227)
    expected = net.forward(data=x.astype(np.float32))["pool_final"].reshape(10, -1).mean(axis=0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


def test_oversample_and_npy_output(tmp_path: Path, capsys):
    out = tmp_path / "pred.npy"
    argv = ["classify", str(asset(MODEL)), str(asset(f"{IMAGES}/cat.jpg")), "--mean=104,117,123"]
    assert main([*argv, "--oversample", f"--output={out}"]) == 0
    assert capsys.readouterr().out == ""
    scores = np.load(out)
    assert scores.shape == (1, 1000) and int(np.argmax(scores)) in (263, 277, 278)  # corgi / red fox / kit fox


def test_urls_are_fetched_and_failures_reported(tmp_path: Path, http_server: str, capsys):
    (tmp_path / "cat.jpg").write_bytes(asset(f"{IMAGES}/cat.jpg").read_bytes())
    ok, missing, refused = f"{http_server}/cat.jpg", f"{http_server}/nothing.jpg", "http://127.0.0.1:9/cat.jpg"
    code, results, err = classify_json(capsys, str(asset(MODEL)), ok, missing, refused, "--mean=104,117,123")
    assert code == 1
    assert [r["input"] for r in results] == [ok, missing, refused]  # in input order
    assert results[0]["predictions"][0]["index"] == 278  # kit fox, as from the file
    assert "HTTP 404" in results[1]["error"] and "HTTP 404" in err
    assert "Connection refused" in results[2]["error"]


def test_bad_inputs_give_clear_errors(tmp_path: Path, capsys):
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not an image at all")
    model = str(asset(MODEL))
    assert main(["classify", model, str(not_image)]) == 1
    assert f"{not_image}: not an image" in capsys.readouterr().err
    cat = str(asset(f"{IMAGES}/cat.jpg"))
    assert main(["classify", model, cat, f"--labels={tmp_path / 'labels.txt'}"]) == 1
    assert f"labels file {tmp_path / 'labels.txt'}: not found" in capsys.readouterr().err
    (tmp_path / "two.txt").write_text("a\nb\n")
    assert main(["classify", model, cat, f"--labels={tmp_path / 'two.txt'}"]) == 1
    assert "2 labels, but the net gives 1000 scores" in capsys.readouterr().err
    assert main(["classify", model]) == 1
    assert "no inputs" in capsys.readouterr().err
    assert main(["classify", str(tmp_path / "nomodel"), cat]) == 1
    assert "no such model folder or file" in capsys.readouterr().err


def test_folders_explicit_files_and_video_frames(tmp_path: Path, capsys):
    import cv2

    frame = cv2.resize(cv2.imread(str(asset(f"{IMAGES}/cat.jpg"))), (160, 120))
    writer = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (160, 120))
    for _ in range(5):
        writer.write(frame)
    writer.release()
    cv2.imwrite(str(tmp_path / "frame.png"), frame)
    argv = [f"--model={asset(f'{MODEL}/SqueezeNet_deploy.prototxt')}", "--mean=104,117,123", "--every=2"]
    argv += [f"--pretrained_model={asset(f'{MODEL}/squeezenet_v1.0_deepcompression_decoded.caffemodel')}"]
    code, results, _ = classify_json(capsys, *argv, str(tmp_path))
    assert code == 0
    names = [Path(r["input"]).name for r in results]
    assert names == ["clip.avi#frame=0", "clip.avi#frame=2", "clip.avi#frame=4", "frame.png"]  # sorted, every 2nd
    tops = [r["predictions"][0]["index"] for r in results]
    assert tops == [tops[3]] * 4  # the same picture, as MJPG frames and lossless


def test_python_classify_py_keeps_pycaffe_flags(tmp_path: Path, classifier):
    out = tmp_path / "out.npy"
    mean = asset("models/imagenet-common/ilsvrc_2012_mean.npy")
    argv = [str(asset(f"{IMAGES}/cat.jpg")), str(out), "--center_only", "--images_dim=227,227"]
    argv += [f"--model_def={asset(f'{MODEL}/SqueezeNet_deploy.prototxt')}", f"--mean_file={mean}"]
    argv += [f"--pretrained_model={asset(f'{MODEL}/squeezenet_v1.0_deepcompression_decoded.caffemodel')}"]
    run = subprocess.run([sys.executable, str(ROOT / "python" / "classify.py"), *argv], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    scores = np.load(out)
    assert scores.shape == (1, 1000) and int(np.argmax(scores)) == 278
    # pycaffe's preprocessing: load_image, resize by caffe.io, the mean file's per-channel mean
    classifier.transformer.set_mean("data", deploy.channel_mean(deploy.read_mean(mean)))
    try:
        expected = classifier.predict([caffe.io.load_image(str(asset(f"{IMAGES}/cat.jpg")))], oversample=False)
    finally:
        classifier.transformer.set_mean("data", np.array([104.0, 117.0, 123.0]))
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-4)
    argv[5] = "--mean_file=x.npy"
    bad = subprocess.run([sys.executable, str(ROOT / "python" / "classify.py"), *argv], capture_output=True, text=True)
    assert bad.returncode == 1 and "mean file x.npy: not found" in bad.stderr
