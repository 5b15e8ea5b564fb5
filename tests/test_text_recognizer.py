"""``caffe.deploy.TextRecognizer`` and ``caffe recognize``: a CRNN trained here (tests/ocr_fixtures.py) reads its
strips back from PNG files in the fork's model folder layout (deploy.prototxt, model.caffemodel, label.txt,
mean_values.txt), at twice the size, turned a quarter, and through the decoder or from the raw scores."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from ocr_fixtures import LABELS, MEAN, deploy_net, strip_pixels

from caffe import deploy
from caffe.deploy.errors import ModelFilesError
from caffe.tools.cli import main


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory, crnn_weights: Path) -> Path:
    """The fork's model folder layout around the trained CRNN."""
    folder = tmp_path_factory.mktemp("ocr_model")
    (folder / "model.caffemodel").write_bytes((crnn_weights / "crnn.caffemodel").read_bytes())
    (folder / "deploy.prototxt").write_text(deploy_net())
    (folder / "label.txt").write_text("\n".join(LABELS) + "\n")
    (folder / "mean_values.txt").write_text(f"{MEAN}\n")
    return folder


def expected_text(labels: np.ndarray) -> str:
    return "".join(LABELS[int(c)] for c in labels if c > 0)


@pytest.fixture(scope="module")
def strips(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[str]]:
    """PNG files of eight strips at twice their size; the last two turned a quarter counter-clockwise (tall)."""
    folder = tmp_path_factory.mktemp("strips")
    pixels, labels = strip_pixels(np.random.default_rng(5), 8)
    paths = []
    for i, p in enumerate(pixels):
        big = np.repeat(np.repeat(p, 2, axis=0), 2, axis=1)
        if i >= 6:
            big = np.rot90(big)  # 24 x 12: at least twice as tall as wide
        paths.append(folder / f"strip{i}.png")
        cv2.imwrite(str(paths[-1]), big)
    return paths, [expected_text(row) for row in labels]


def test_reads_the_text_of_each_strip(model_folder: Path, strips: tuple[list[Path], list[str]]):
    model = deploy.TextRecognizer(deploy.find_model(model_folder))
    assert model.mean is not None and model.mean.describe()["values"] == [MEAN]
    assert (model.classes, model.blank, model.scores_blob) == (6, 0, "fc")
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)[:, :, np.newaxis] for p in strips[0]]
    readings = model.read(images)
    assert [r.text for r in readings] == strips[1]
    assert readings[0].classes == [LABELS.index(ch) for ch in strips[1][0]]


def test_raw_scores_are_decoded_here_with_the_labels_blank(model_folder: Path, strips: tuple[list[Path], list[str]]):
    scores_only = model_folder.parent / "scores_only"
    scores_only.mkdir(exist_ok=True)
    (scores_only / "deploy.prototxt").write_text(deploy_net(decoder=False))
    for name in ("model.caffemodel", "label.txt", "mean_values.txt"):
        (scores_only / name).write_bytes((model_folder / name).read_bytes())
    model = deploy.TextRecognizer(deploy.find_model(scores_only))
    assert (model.decoder_blank, model.blank, model.scores_blob) == (None, 0, "fc")
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)[:, :, np.newaxis] for p in strips[0]]
    assert [r.text for r in model.read(images)] == strips[1]
    (scores_only / "label.txt").write_text("\n".join([*LABELS[1:], "blank"]) + "\n")  # the blank named last
    assert deploy.TextRecognizer(deploy.find_model(scores_only)).blank == 5


def test_caffe_recognize_prints_each_text(model_folder: Path, strips: tuple[list[Path], list[str]], capsys):
    assert main(["recognize", str(model_folder), *map(str, strips[0][:3])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{p}: {t}" for p, t in zip(strips[0][:3], strips[1][:3], strict=True)]
    assert main(["recognize", str(model_folder), str(strips[0][6]), "--format=json"]) == 0
    record = json.loads(capsys.readouterr().out)[0]
    assert record["text"] == strips[1][6]
    assert record["classes"] == [LABELS.index(ch) for ch in strips[1][6]]


def test_a_classifier_is_no_text_recognizer(tmp_path: Path):
    (tmp_path / "deploy.prototxt").write_text(
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } } }\n'
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 3 } }\n'
    )
    import caffe

    caffe.Net(str(tmp_path / "deploy.prototxt"), caffe.TEST).save(str(tmp_path / "w.caffemodel"))
    with pytest.raises(ModelFilesError, match=r"blob 'fc' has shape \(1, 3\); a CTC text recogniser"):
        deploy.TextRecognizer(deploy.find_model(tmp_path), deploy.Settings(mean="0"))


@pytest.mark.parametrize(
    ("text", "message"), [("104\nabc\n", r"mean_values.txt:2: 'abc' is not a number"), ("1\n2\n", "2 mean values")]
)
def test_mean_values_files_are_checked(tmp_path: Path, text: str, message: str):
    path = tmp_path / "mean_values.txt"
    path.write_text(text)
    with pytest.raises(ModelFilesError, match=message):
        deploy.read_mean(path)
    path.write_text("104\n\n117\n123\n")
    np.testing.assert_array_equal(deploy.read_mean(path).ravel(), [104, 117, 123])


def test_an_unreadable_input_is_reported_and_the_rest_is_read(
    model_folder: Path, strips: tuple[list[Path], list[str]], tmp_path: Path, capsys, caplog
):
    missing = tmp_path / "missing.png"
    assert main(["recognize", str(model_folder), str(missing), str(strips[0][1]), "--format=json"]) == 1
    records = json.loads(capsys.readouterr().out)
    assert records[0] == {"input": str(missing), "error": f"{missing}: no such file, folder or URL"}
    assert records[1]["text"] == strips[1][1]
    assert "no such file" in caplog.text


def test_caffe_serve_reads_text_one_image_a_forward(model_folder: Path, strips: tuple[list[Path], list[str]]):
    from fastapi.testclient import TestClient

    from caffe.serve import create_app, load_model

    served = load_model(f"ocr={model_folder}")
    assert served.kind == "text" and served.max_batch == 1
    with TestClient(create_app([served])) as client:
        for path, text in zip(strips[0], strips[1], strict=True):
            r = client.post("/recognize", files={"file": (path.name, path.read_bytes(), "image/png")})
            assert r.status_code == 200, r.text
            body = r.json()
            assert (body["text"], body["classes"]) == (text, [LABELS.index(ch) for ch in text])
            assert (body["height"], body["width"]) == cv2.imread(str(path)).shape[:2]
        r = client.post("/predict", files={"file": ("a.png", strips[0][0].read_bytes(), "image/png")})
        assert r.status_code == 400 and "POST /models/ocr/recognize" in r.json()["detail"]
        r = client.post("/recognize", content=b"not an image", headers={"content-type": "image/png"})
        assert r.status_code == 400
        assert client.get("/models/ocr").json()["stats"]["images"] == len(strips[0])


def test_a_sliver_of_an_image_is_read_at_most_max_width_wide(model_folder: Path):
    model = deploy.TextRecognizer(deploy.find_model(model_folder))
    assert model.max_width == 16 * 12
    sliver = np.full((1, 5000, 1), 128, np.uint8)  # 6 x 30000 at the input's height, kept in proportion
    assert model.prepare_line(sliver).shape == (1, 1, 6, 192)
    assert model.prepare_line(sliver.transpose(1, 0, 2)).shape == (1, 1, 6, 192)  # tall: turned first
    assert deploy.TextRecognizer(deploy.find_model(model_folder), max_width=20).prepare_line(sliver).shape[3] == 20
    with pytest.raises(ModelFilesError, match="max_width 0"):
        deploy.TextRecognizer(deploy.find_model(model_folder), max_width=0)


def test_the_crnn_exports_to_onnx_and_torchscript_with_one_lstm_operator(
    crnn_weights: Path, strips: tuple[list[Path], list[str]], tmp_path: Path
):
    import onnx
    import onnxruntime as ort
    import torch

    import caffe
    from caffe import export
    from caffe.errors import LayerError
    from caffe.layers.ctc import greedy_decode

    (tmp_path / "scores.prototxt").write_text(deploy_net(decoder=False))
    net = caffe.Net(str(tmp_path / "scores.prototxt"), caffe.TEST, weights=str(crnn_weights / "crnn.caffemodel"))
    x = np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)[::2, ::2] for p in strips[0][:6]]).astype(np.float32)
    x = (x - MEAN)[:, np.newaxis]  # six strips at the net's size, the mean subtracted
    ours = net.forward(data=x[:1])["fc"].copy()
    export.to_onnx(net, tmp_path / "crnn.onnx")
    graph = onnx.load(str(tmp_path / "crnn.onnx")).graph
    assert [n.op_type for n in graph.node].count("LSTM") == 2
    session = ort.InferenceSession(str(tmp_path / "crnn.onnx"), providers=["CPUExecutionProvider"])
    [got] = session.run(None, {"data": x[:1]})
    np.testing.assert_allclose(got, ours, atol=1e-5)
    texts = ["".join(LABELS[c] for c in seq) for seq in greedy_decode(torch.from_numpy(got), 0, True)]
    assert texts == strips[1][:1]
    export.to_torchscript(net, tmp_path / "crnn.pt")
    module = torch.jit.load(str(tmp_path / "crnn.pt"))
    with torch.no_grad():
        np.testing.assert_allclose(module(torch.from_numpy(x[:1]))[0].numpy(), ours, atol=1e-5)
    with pytest.raises(export.ExportError, match=r"'fw' \(Lstm\) fixes the batch size"):
        export.to_onnx(net, tmp_path / "dyn.onnx", dynamic_batch=True)
    clipped = deploy_net(decoder=False).replace('bottom: "flat" top: "fw"', 'bottom: "flat" bottom: "clip" top: "fw"')
    clipped = clipped.replace('top: "data"', 'top: "data" top: "clip"', 1).replace(
        "input_param { shape { dim: 1 dim: 1 dim: 6 dim: 12 } }",
        "input_param { shape { dim: 1 dim: 1 dim: 6 dim: 12 } shape { dim: 12 dim: 1 } }",
    )
    (tmp_path / "clip.prototxt").write_text(clipped)
    with pytest.raises(LayerError, match="continuation bottom carries the state"):
        export.to_onnx(caffe.Net(str(tmp_path / "clip.prototxt"), caffe.TEST), tmp_path / "clip.onnx")
