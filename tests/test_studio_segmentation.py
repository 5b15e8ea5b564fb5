"""Studio inference with a segmentation net (output N x C x H x W: SegNet, FCN, ENet, ...): classify-one gives
each class's share of the pixels and colours them in, classify-many lists the shares per image, top-N refuses.
The net is built so that the class of a pixel is its strongest colour channel, which makes every share
computable by hand."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest
from test_studio_inference import make_client

import caffe
from caffe import deploy

CLASSIFY = "/models/images/classification"
# 1x1 convolution, weights the identity: class c's score is the input's channel c (B, G, R after the swap)
COLOUR_NET = """name: "ColourSegmenter"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
  convolution_param { num_output: 3 kernel_size: 1 } }
"""
LABELS = b"blue\ngreen\nred\n"


def _image(path, left_rgb: tuple[int, int, int], right_rgb: tuple[int, int, int], width: int = 32) -> None:
    """A 32 x ``width`` picture, its left quarter one colour and the rest another (written as BGR)."""
    rgb = np.zeros((32, width, 3), np.uint8)
    rgb[:, : width // 4] = left_rgb
    rgb[:, width // 4 :] = right_rgb
    cv2.imwrite(str(path), rgb[:, :, ::-1])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("studio_seg")
    (tmp / "deploy.prototxt").write_text(COLOUR_NET)
    net = caffe.Net(str(tmp / "deploy.prototxt"), caffe.TEST)
    net.params["score"][0].data[...] = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
    net.params["score"][1].data[...] = 0
    net.save(str(tmp / "colours.caffemodel"))
    images = tmp / "images"
    images.mkdir()
    _image(images / "red_then_blue.png", (255, 0, 0), (0, 0, 255))
    _image(images / "green_then_red.png", (0, 200, 0), (180, 0, 0), width=64)
    with make_client(tmp, [tmp]) as client:
        r = client.post(
            "/pretrained_models.json",
            data={"job_name": "colours", "width": "16", "height": "16"},
            files={
                "weights_file": ("colours.caffemodel", (tmp / "colours.caffemodel").read_bytes()),
                "deploy_file": ("deploy.prototxt", COLOUR_NET.encode()),
                "labels_file": ("labels.txt", LABELS),
            },
        )
        assert r.status_code == 201, r.text
        yield client, tmp, r.json()["job_id"]


def test_classify_one_gives_each_class_share_and_colours_it(env):
    client, tmp, job = env
    image = (tmp / "images" / "red_then_blue.png").read_bytes()
    r = client.post(f"{CLASSIFY}/classify_one.json", data={"job_id": job}, files={"image_file": ("a.png", image)})
    assert r.status_code == 200, r.text
    body = r.json()
    # a quarter red (class 2), three quarters blue (class 0), at the image's own 32 x 32 pixels
    assert body["segmentation"] == [
        {"label": "blue", "label_id": 0, "pixels": 768, "percent": 75.0},
        {"label": "red", "label_id": 2, "pixels": 256, "percent": 25.0},
    ]
    assert body["predictions"] == [["blue", 75.0], ["red", 25.0]]
    # the same class map as caffe.deploy's SegmentationModel (caffe segment) on the same files
    model = deploy.open_model(
        deploy.find_model(deploy=tmp / "deploy.prototxt", weights=tmp / "colours.caffemodel"),
        deploy.Settings(mean_mode="none"), segmentation=True, warn=False,
    )  # fmt: skip
    rgb = cv2.imread(str(tmp / "images" / "red_then_blue.png"))[:, :, ::-1]
    class_map = model.segment([np.ascontiguousarray(rgb)])[0]
    assert (class_map[:, :8] == 2).all() and (class_map[:, 8:] == 0).all()

    page = client.post(f"{CLASSIFY}/classify_one", data={"job_id": job}, files={"image_file": ("a.png", image)})
    assert page.status_code == 200 and 'id="segmented-image"' in page.text and "75.00%" in page.text
    uri = page.text.split('id="segmented-image" src="')[1].split('"')[0]
    shown = cv2.imdecode(np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    red_class = deploy.palette(3)[2].astype(np.float32)  # RGB
    expected = np.rint(0.5 * np.array([255.0, 0.0, 0.0]) + 0.5 * red_class)
    assert shown[0, 0, ::-1].tolist() == expected.tolist()  # the left quarter: red blended with class 2's colour


def test_classify_many_lists_shares_and_top_n_refuses(env):
    client, tmp, job = env
    form = {"job_id": job, "image_folder": str(tmp / "images")}
    r = client.post(f"{CLASSIFY}/classify_many.json", data=form)
    assert r.status_code == 200, r.text
    shares = {path.rsplit("/", 1)[1]: s for path, s in r.json()["segmentations"].items()}
    assert [(c["label"], c["percent"]) for c in shares["green_then_red.png"]] == [("red", 75.0), ("green", 25.0)]
    assert [(c["label"], c["percent"]) for c in shares["red_then_blue.png"]] == [("blue", 75.0), ("red", 25.0)]
    page = client.post(f"{CLASSIFY}/classify_many", data=form)
    assert page.status_code == 200 and page.text.count('class="segmented"') == 2
    top = client.post(f"{CLASSIFY}/top_n.json", data=form)
    assert top.status_code == 400 and "segmentation net" in top.text


def test_segnets_own_prototxt_uploads_and_segments(env, tmp_path):
    """SegNet-Tutorial's segnet_basic_inference.prototxt as written (its DenseImageData layer, its Softmax) uploads as
    the original network: the studio derives its deploy net at the form's size and segments with it, as
    caffe.deploy's SegmentationModel does with the same files."""
    from pathlib import Path

    from caffe.protoio import to_text
    from caffe.studio.networks import parse_network
    from caffe.studio.pretrained import deploy_from_original

    client, tmp, _ = env
    original = (
        Path(__file__).parent / "data" / "forks" / "SegNet-Tutorial_segnet_basic_inference.prototxt"
    ).read_text()
    deploy_text = to_text(deploy_from_original(parse_network(original, "segnet"), 3, 40, 64))
    (tmp_path / "deploy.prototxt").write_text(deploy_text)
    caffe.set_random_seed(4)
    net = caffe.Net(str(tmp_path / "deploy.prototxt"), caffe.TEST)
    net.save(str(tmp_path / "segnet.caffemodel"))
    names = "".join(f"class{i}\n" for i in range(11)).encode()
    r = client.post(
        "/pretrained_models.json",
        data={"job_name": "segnet", "width": "64", "height": "40"},  # its upsample4 pads: H / 8 odd
        files={
            "weights_file": ("segnet.caffemodel", (tmp_path / "segnet.caffemodel").read_bytes()),
            "model_def_file": ("segnet.prototxt", original.encode()),
            "labels_file": ("labels.txt", names),
        },
    )
    assert r.status_code == 201, r.text
    image = (tmp / "images" / "green_then_red.png").read_bytes()
    body = client.post(
        f"{CLASSIFY}/classify_one.json", data={"job_id": r.json()["job_id"]}, files={"image_file": ("a.png", image)}
    ).json()
    assert sum(c["pixels"] for c in body["segmentation"]) == 32 * 64
    model = deploy.open_model(
        deploy.find_model(deploy=tmp_path / "deploy.prototxt", weights=tmp_path / "segnet.caffemodel"),
        deploy.Settings(mean_mode="none"), segmentation=True, warn=False,
    )  # fmt: skip
    rgb = np.ascontiguousarray(cv2.imread(str(tmp / "images" / "green_then_red.png"))[:, :, ::-1])
    class_map = model.segment([rgb])[0]
    expected = {f"class{c}": int(n) for c, n in zip(*np.unique(class_map, return_counts=True), strict=True)}
    assert {c["label"]: c["pixels"] for c in body["segmentation"]} == expected
