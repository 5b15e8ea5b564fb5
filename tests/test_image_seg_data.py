"""DeepLab's ImageSegData: list formats, the scale/pad/crop/mirror of TransformImgAndSeg, the size top, and a
DeepLab-style net trained from it. Expected values are computed here from the images written."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import caffe


def write_pairs(folder: Path, sizes: list[tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Image / label PNGs whose image channel 0 equals the labels ((row * width + column) % 250, below the
    ignore label) and channels 1, 2 hold 10k + 1 and 10k + 2 for pair k: crops and flips show in both alike."""
    folder.mkdir(parents=True, exist_ok=True)
    pairs = []
    for k, (h, w) in enumerate(sizes):
        labels = (np.arange(h * w) % 250).reshape(h, w).astype(np.uint8)
        image = np.stack([labels, np.full_like(labels, 10 * k + 1), np.full_like(labels, 10 * k + 2)], axis=2)
        cv2.imwrite(str(folder / f"im{k}.png"), image)
        cv2.imwrite(str(folder / f"lab{k}.png"), labels)
        pairs.append((image, labels))
    return pairs


def seg_net(source: Path, root: Path, phase: int, image: str = "", transform: str = "", tops: int = 3) -> caffe.Net:
    names = " ".join(f'top: "{t}"' for t in ("data", "label", "dim")[:tops])
    text = f"""layer {{ name: "d" type: "ImageSegData" {names}
      image_data_param {{ source: "{source}" root_folder: "{root}/" batch_size: 2 {image} }}
      transform_param {{ {transform} }} }}"""
    path = root / "net.prototxt"
    path.write_text(text)
    return caffe.Net(str(path), phase)


def test_test_phase_pads_with_the_mean_and_ignore_then_crops_the_centre(tmp_path):
    pairs = write_pairs(tmp_path, [(5, 7), (9, 4)])
    (tmp_path / "list.txt").write_text("im0.png lab0.png\nim1.png lab1.png\n")
    transform = "crop_size: 6 mean_value: 1 mean_value: 2 mean_value: 3 scale: 0.5"
    net = seg_net(tmp_path / "list.txt", tmp_path, caffe.TEST, "label_type: PIXEL ignore_label: 255", transform)
    assert net.layers[0].type == "ImageSegData"  # not its base class's ImageData (pycaffe's layer.type)
    out = net.forward()
    assert out["data"].shape == (2, 3, 6, 6) and out["label"].shape == (2, 1, 6, 6) and out["dim"].shape == (2, 1, 1, 2)
    mean = np.array([1.0, 2.0, 3.0])
    for k, (image, labels) in enumerate(pairs):
        h, w = labels.shape
        padded = np.full((max(h, 6), max(w, 6), 3), mean)  # the mean padding becomes 0 after subtraction
        padded[:h, :w] = image
        lab = np.full((max(h, 6), max(w, 6)), 255.0)
        lab[:h, :w] = labels
        top, left = (padded.shape[0] - 6) // 2, (padded.shape[1] - 6) // 2
        window = padded[top : top + 6, left : left + 6]
        np.testing.assert_allclose(out["data"][k], ((window - mean) * 0.5).transpose(2, 0, 1), rtol=1e-6)
        np.testing.assert_array_equal(out["label"][k, 0], lab[top : top + 6, left : left + 6])
        np.testing.assert_array_equal(out["dim"][k].reshape(2), [min(6, h), min(6, w)])


def test_train_crops_mirrors_and_scales_image_and_labels_alike(tmp_path):
    write_pairs(tmp_path, [(12, 10), (10, 12), (11, 11)])
    (tmp_path / "list.txt").write_text("im0.png lab0.png\nim1.png lab1.png\nim2.png lab2.png\n")
    plain = seg_net(tmp_path / "list.txt", tmp_path, caffe.TRAIN, "label_type: PIXEL shuffle: true",
                    "crop_height: 8 crop_width: 6 mirror: true")  # fmt: skip
    flipped = 0
    for _ in range(6):
        out = plain.forward()
        assert out["data"].shape == (2, 3, 8, 6)
        np.testing.assert_array_equal(out["data"][:, 0], out["label"][:, 0])  # same window, same flip
        rows = out["label"][:, 0]
        flipped += int((np.diff(rows, axis=2) < 0).any())  # a mirrored row runs backwards
    assert flipped > 0
    scaled = seg_net(tmp_path / "list.txt", tmp_path, caffe.TRAIN, "label_type: PIXEL",
                     "crop_size: 8 scale_factors: 0.5 scale_factors: 1.5")  # fmt: skip
    seen = set()
    for _ in range(6):
        out = scaled.forward()
        label = out["label"][:, 0]
        assert set(np.unique(label)) <= set(range(250)) | {255}  # nearest neighbour: no blended classes
        seen.add(int((label == 255).sum() > 0))  # x0.5 of ~11 px pads up to the crop with ignore_label
    assert seen == {0, 1}


@pytest.mark.parametrize(("label_type", "line", "value"), [("IMAGE", "im0.png 7", 7), ("IMAGE", "im0.png 300", 255),
                                                            ("NONE", "im0.png", 200)])  # fmt: skip
def test_image_and_none_label_types_fill_the_label_map(tmp_path, label_type, line, value):
    write_pairs(tmp_path, [(6, 6)])
    (tmp_path / "list.txt").write_text(line + "\n")
    net = seg_net(tmp_path / "list.txt", tmp_path, caffe.TEST, f"label_type: {label_type} ignore_label: 200", tops=2)
    np.testing.assert_array_equal(net.forward()["label"], np.full((2, 1, 6, 6), float(value)))


@pytest.mark.parametrize(
    ("list_text", "image", "transform", "message"),
    [
        ("im0.png lab0.png\n", "", "mean_file: 'm.binaryproto'", "does not read transform_param.mean_file"),
        ("im0.png lab0.png\n", "", "crop_size: 4 crop_height: 4 crop_width: 4", "crop_size or crop_height"),
        ("im0.png lab0.png\n", "", "crop_height: 4", "must be given together"),
        ("im0.png lab0.png\n", "", "scale_factors: 0.5", "scale_factors other than 1 need a crop"),
        ("im0.png lab0.png\nim0.png\n", "label_type: PIXEL", "", r"list.txt:2: expected 'image label image'"),
        ("im0.png seven\n", "", "", r"list.txt:1: the class 'seven' is not an integer"),
        ("im0.png lab0.png\n", "label_type: PIXEL", "crop_size: 4 scale_factors: 1e7", "budget for one blob"),
    ],
)
def test_what_the_fork_would_stop_on_is_a_caffe_error(tmp_path, list_text, image, transform, message):
    write_pairs(tmp_path, [(6, 6)])
    (tmp_path / "list.txt").write_text(list_text)
    with pytest.raises(caffe.CaffeError, match=message):
        seg_net(tmp_path / "list.txt", tmp_path, caffe.TRAIN, image, transform).forward()


def test_a_deeplab_style_net_trains_from_it(tmp_path):
    write_pairs(tmp_path, [(10, 10), (12, 9)])
    (tmp_path / "list.txt").write_text("im0.png lab0.png\nim1.png lab1.png\n")
    net = f"""
    layer {{ name: "d" type: "ImageSegData" top: "data" top: "label" top: "dim"
      image_data_param {{ source: "{tmp_path / "list.txt"}" root_folder: "{tmp_path}/" batch_size: 2
        label_type: PIXEL }}
      transform_param {{ crop_size: 8 mirror: true mean_value: 104 mean_value: 117 mean_value: 123 }} }}
    layer {{ name: "s" type: "Silence" bottom: "dim" }}
    layer {{ name: "score" type: "Convolution" bottom: "data" top: "score"
      convolution_param {{ num_output: 250 kernel_size: 1 weight_filler {{ type: "gaussian" std: 0.01 }} }} }}
    layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
      loss_param {{ ignore_label: 255 }} }}
    """
    (tmp_path / "train.prototxt").write_text(net)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "train.prototxt"}" base_lr: 0.01 lr_policy: "fixed" momentum: 0.9 max_iter: 3 '
        "snapshot_after_train: false"
    )
    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    solver.step(3)
    assert solver.iter == 3 and np.isfinite(solver.net.blobs["loss"].data)
    assert solver.net.params["score"][0].diff.any()
