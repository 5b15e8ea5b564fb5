"""Every net prototxt in the assets and in tests/data/forks, against OpenCV 4.x's Caffe importer (cv2.dnn).

Each net that cv2 loads gets the same random weights on both sides (built here, saved with ``net.save``,
read by ``cv2.dnn.readNetFromCaffe(prototxt, caffemodel)``) and the same random input; every output must
agree to 1e-4 of its largest magnitude. Nets with data layers are compared through the deploy net this
project derives from them (``caffe.studio.networks.deploy_net``: an Input instead of the data layers, loss
and accuracy dropped), since cv2 refuses train/test nets whose two phases write the same blobs.

Nets cv2 cannot load or run are listed in CV2_FAILS with the stage and reason, and the test checks that cv2
does fail there. Nets where cv2 departs from the fork that defines a layer are listed in CV2_DEPARTS with
the rewrite that makes cv2 compute the fork's formula: the test checks both that cv2 differs as written and
that it agrees once rewritten, so the departure is shown and the rest of the net is still compared.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ASSETS
from fork_nets import FORKS, random_input, random_weights
from test_asset_nets import _item_shape

import caffe
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import read_net_param, to_text
from caffe.studio.networks import deploy_net

DATA_LAYERS = {"Data", "ImageData", "HDF5Data", "WindowData", "DenseImageData"}
RTOL = 1e-4


def _nets() -> dict[str, Path]:
    """``id -> prototxt``: the assets' nets (solvers aside) by relative path, the fixtures as forks/NAME."""
    found = {p.relative_to(ASSETS).as_posix(): p for p in sorted(ASSETS.rglob("*.prototxt")) if "solver" not in p.name}
    assert len(found) > 40, f"the assets at {ASSETS} are missing nets (set CAFFE_TEST_ASSETS)"
    # the forks' training files are their training tests' (the SSD fork's: AnnotatedData, MultiBoxLoss,
    # DetectionEvaluate, test_ssd_fork_training.py; the R-CNN forks' Python data and target layers,
    # test_rcnn_training.py; MobileNet-YOLO's, test_yolo_training.py); their deploy and test nets are swept
    training = {f"MobileNet-SSD_voc_{n}.prototxt" for n in ("MobileNetSSD_train", "MobileNetSSD_test", "solver")}
    training |= {f"MobileNet-YOLO_yolov3_mobilenet_yolov3_lite_{n}.prototxt" for n in ("train", "test", "solver")}
    training |= {f"MobileNet-YOLO_yolov2_mobilenet_yolo_lite_{n}.prototxt" for n in ("train", "test", "solver")}
    training.add("MobileNet-YOLO_mobilenetv3_voc_train_AE.prototxt")
    # NVIDIA/caffe's DetectNet (test_detectnet.py): cv2 reads no detectnet_*_param, nor its Python clustering
    training |= {f"NVIDIA-caffe_kitti_detectnet_{n}.prototxt" for n in ("network", "network-2classes", "solver")}
    training |= {f"py-faster-rcnn_ZF_faster_rcnn_end2end_{n}.prototxt" for n in ("train", "solver")}
    training |= {f"py-R-FCN_ResNet-50_rfcn_end2end_{n}.prototxt" for n in ("train_agnostic_ohem", "solver_ohem")}
    found.update({f"forks/{p.name}": p for p in sorted(FORKS.glob("*.prototxt")) if p.name not in training})
    return found


NETS = _nets()

# Inputs smaller than the net's own where its design allows, written into the prototxt both sides read (the
# fully connected layers' weights shrink with it): AlexNet-shaped nets at 99x99 keep every layer (pool5 2x2),
# nets ending in global pooling or fully convolutional ones at 128; every other net at batch 1 of its shape.
ALEXNETS = [
    "caffe-ref/examples/feature_extraction/imagenet_val.prototxt",
    "caffe-ref/examples/finetune_pascal_detection/pascal_finetune_trainval_test.prototxt",
    "caffe-ref/models/bvlc_alexnet/deploy.prototxt",
    "caffe-ref/models/bvlc_alexnet/train_val.prototxt",
    "caffe-ref/models/bvlc_reference_caffenet/deploy.prototxt",
    "caffe-ref/models/bvlc_reference_caffenet/train_val.prototxt",
    "caffe-ref/models/bvlc_reference_rcnn_ilsvrc13/deploy.prototxt",
    "caffe-ref/models/finetune_flickr_style/deploy.prototxt",
    "caffe-ref/models/finetune_flickr_style/train_val.prototxt",
    "have-fun-src/alexnet-customized.prototxt",
]
INPUTS: dict[str, tuple[int, ...]] = {key: (3, 99, 99) for key in ALEXNETS} | {
    "models/mobilenet_caffe_shicai/mobilenet_deploy.prototxt": (3, 128, 128),
    "models/mobilenet_caffe_shicai/mobilenet_v2_deploy.prototxt": (3, 128, 128),
    "models/squeezenet_v1.0/deploy.prototxt": (3, 131, 131),
    "models/squeezenet_v1.1/deploy.prototxt": (3, 131, 131),
    "models/squeezenet_v1.0_deepcompression/SqueezeNet_deploy.prototxt": (3, 131, 131),
}
# SSD heads: a random-weight net's class confidences stay near 1/21, below MobileNet-SSD's 0.25, so both
# sides would find nothing (and show it differently: the fork one row of -1s, cv2 rows of zeros)
CONFIDENCE = {"forks/MobileNet-SSD_MobileNetSSD_deploy.prototxt": 0.01}

NO_BN_PARAM = (
    "OpenCV's caffe.proto has no bn_param (SegNet's / PSPNet's BN): 'UnknownField should have at least 2 items'"
)
NO_PROPOSAL = (
    "py-faster-rcnn's Python layer rpn.proposal_layer.ProposalLayer: cv2 runs Proposal only as its own type "
    "(a small Faster R-CNN of that type is compared in test_layers_rcnn.py)"
)
# id -> ("read", part of cv2's message, why) or ("layer", the layer cv2 reads but cannot create, why)
CV2_FAILS: dict[str, tuple[str, str, str]] = {
    "forks/ENet_enet_deploy_final.prototxt": ("read", "UnknownField", NO_BN_PARAM),
    "forks/PSPNet_pspnet50_ADE20K_473.prototxt": ("read", "UnknownField", NO_BN_PARAM),
    "forks/SegNet-Tutorial_segnet_basic_inference.prototxt": ("read", "UnknownField", NO_BN_PARAM),
    "forks/py-faster-rcnn_ZF_faster_rcnn_end2end_test.prototxt": ("layer", "proposal", NO_PROPOSAL),
    "forks/py-R-FCN_ResNet-50_rfcn_end2end_test_agnostic.prototxt": ("layer", "proposal", NO_PROPOSAL),
    "forks/MobileNet-YOLO_darknet_yolov3-tiny.prototxt": (
        "layer",
        "layer24-yolo",
        "cv2 parses Yolov3DetectionOutput but has no layer for it",
    ),
    "forks/MobileNet-YOLO_yolov2_mobilenet_yolo_deploy.prototxt": (
        "layer",
        "detection_out",
        "cv2 parses YoloDetectionOutput (YOLOv2) but has no layer for it",
    ),
    "forks/MobileNet-YOLO_yolov2_mobilenet_yolo_lite_deploy.prototxt": (
        "layer",
        "detection_out",
        "cv2 parses YoloDetectionOutput (YOLOv2) but has no layer for it (up to it, test_forks_more.py compares)",
    ),
    "caffe-ref/examples/pycaffe/linreg.prototxt": (
        "layer",
        "loss",
        "its loss is a Python layer (pyloss), which cv2 cannot run",
    ),
    "caffe-ref/examples/mnist/mnist_autoencoder.prototxt": (
        "read",
        "Duplicate blobs",
        "a train/test net (both phases' data layers write 'data'), with no deploy form: its outputs are losses only",
    ),
    "caffe-ref/examples/siamese/mnist_siamese_train_test.prototxt": (
        "read",
        "Duplicate blobs",
        "a train/test net with no deploy form: its output is a contrastive loss",
    ),
}


def _swap_axpy_operands(net: pb.NetParameter) -> None:
    for layer in net.layer:
        if layer.type == "Axpy":
            layer.bottom[1], layer.bottom[2] = layer.bottom[2], layer.bottom[1]


def _truncate_prior_sizes(net: pb.NetParameter) -> None:
    for layer in net.layer:
        if layer.type == "PriorBox":
            p = layer.prior_box_param
            p.min_size[:] = [float(int(s)) for s in p.min_size]
            p.max_size[:] = [float(int(s)) for s in p.max_size]


# id -> (the rewrite, why, blobs compared besides the outputs)
CV2_DEPARTS: dict[str, tuple[Callable[[pb.NetParameter], None], str, tuple[str, ...]]] = {
    "forks/SENet_SE-ResNet-50.prototxt": (
        _swap_axpy_operands,
        "cv2's Axpy computes a * bottom[2] + bottom[1]; SENet's axpy_layer.cpp a * bottom[1] + bottom[2]",
        (),
    ),
    "forks/Pelee_voc_deploy_merged.prototxt": (
        _truncate_prior_sizes,
        "cv2's PriorBox uses min_size/max_size as floats; the SSD fork truncates them to int (Pelee's 21.28...)",
        ("mbox_priorbox",),
    ),
}


# ------------------------------------------------------------------------------------------ helpers
def _prototxt(key: str, tmp_path: Path) -> Path:
    """The prototxt both sides read: the net (the deploy net of one with data layers) at batch 1 and the
    INPUTS shape, upgraded to the current format, with the CONFIDENCE threshold."""
    path = NETS[key]
    param = read_net_param(path)
    sources = [layer for layer in param.layer if layer.type in DATA_LAYERS]
    if sources:
        param = deploy_net(param, INPUTS.get(key) or _item_shape(path, sources[0]))
    for layer in param.layer:
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                shape.dim[:] = [1, *INPUTS.get(key, shape.dim[1:])]
        if layer.type == "DetectionOutput" and key in CONFIDENCE:
            layer.detection_output_param.confidence_threshold = CONFIDENCE[key]
    out = tmp_path / "net.prototxt"
    out.write_text(to_text(param))
    return out


def _build(proto: Path, tmp_path: Path) -> tuple[caffe.Net, dict[str, np.ndarray], Path]:
    """Our net with random weights and inputs, and the weights saved for cv2."""
    net = caffe.Net(str(proto), caffe.TEST)
    random_weights(net)
    inputs = random_input(net)
    model = tmp_path / "net.caffemodel"
    net.save(str(model))
    return net, inputs, model


def _cv2_forward(proto: Path, model: Path, inputs: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    ref = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    ref.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    for name, value in inputs.items():
        ref.setInput(value, name)
    return list(ref.forward(names))


def _detection_rows(out: np.ndarray) -> np.ndarray:
    """DetectionOutput's detections in a fixed order (rows of equal confidence may come in either order),
    without the empty rows: cv2 pads its fixed-size output with rows of zeros, the fork writes one row of
    -1s per image that has no detection."""
    rows = out.reshape(-1, 7)
    rows = rows[(rows[:, 1] != -1) & np.any(rows != 0, axis=1)]
    return rows[np.lexsort(rows.T[::-1])]


def _rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max(initial=0) / max(np.abs(ref).max(initial=0), 1e-12))


def _errors(net: caffe.Net, outs: dict[str, np.ndarray], refs: list[np.ndarray]) -> dict[str, float]:
    producer = {top: net.layer_dict[layer].type for layer, tops in net.top_names.items() for top in tops}
    errors = {}
    for (name, ours), ref in zip(outs.items(), refs, strict=True):
        ref = ref.reshape(ours.shape) if ref.size == ours.size else ref
        if producer[name] == "DetectionOutput":
            ours, ref = _detection_rows(ours), _detection_rows(ref)
        assert ours.size > 0, f"output {name} is empty"
        assert np.isfinite(ours).all(), f"output {name} is not finite"
        errors[name] = _rel_err(ours, ref)
    return errors


def _compared(
    key: str, tmp_path: Path, rewrites: tuple[Callable[[pb.NetParameter], None], ...] = (), blobs: tuple[str, ...] = ()
) -> list[dict[str, float]]:
    """Relative error of each output of net ``key`` (and of ``blobs``) here vs cv2: cv2 reading the net as
    written, then each of ``rewrites`` of it (one build here, the same weights and input for every cv2 net)."""
    proto = _prototxt(key, tmp_path)
    net, inputs, model = _build(proto, tmp_path)
    outs = {name: value.copy() for name, value in net.forward().items()}
    outs.update({name: net.blobs[name].data.copy() for name in blobs})
    assert outs, f"{key}: no outputs"
    errors = [_errors(net, outs, _cv2_forward(proto, model, inputs, list(outs)))]
    for i, rewrite in enumerate(rewrites):
        param = read_net_param(proto)
        rewrite(param)
        rewritten = tmp_path / f"rewritten{i}.prototxt"
        rewritten.write_text(to_text(param))
        errors.append(_errors(net, outs, _cv2_forward(rewritten, model, inputs, list(outs))))
    return errors


# ------------------------------------------------------------------------------------------ tests
COMPARED = [k for k in NETS if k not in CV2_FAILS and k not in CV2_DEPARTS]
# over 2 s of CPU each (large fully connected weights to save, 224x224 ImageNet nets)
SLOW = set(ALEXNETS) | {
    "caffe-ref/examples/net_surgery/bvlc_caffenet_full_conv.prototxt",
    "caffe-ref/models/bvlc_googlenet/deploy.prototxt",
    "caffe-ref/models/bvlc_googlenet/train_val.prototxt",
    "have-fun-src/googlenet-customized.prototxt",
    "forks/SENet_SE-ResNet-50.prototxt",
    "forks/Pelee_voc_deploy_merged.prototxt",
}


def _params(keys: list[str]) -> list:
    return [pytest.param(k, id=k, marks=[pytest.mark.slow] if k in SLOW else []) for k in keys]


_SAME_NET: dict[str, dict[str, float]] = {}  # a net identical to one compared before (deploy == train_val's)


@pytest.mark.parametrize("key", _params(COMPARED))
def test_same_outputs_as_cv2(key: str, tmp_path: Path):
    param = read_net_param(_prototxt(key, tmp_path))
    param.name = ""
    text = to_text(param)
    if text not in _SAME_NET:
        (_SAME_NET[text],) = _compared(key, tmp_path)
    errors = _SAME_NET[text]
    worst = max(errors.values())
    assert worst < RTOL, f"{key}: relative differences from cv2 {errors}"


@pytest.mark.parametrize("key", _params(list(CV2_DEPARTS)))
def test_where_cv2_departs_from_the_fork(key: str, tmp_path: Path):
    """cv2 differs from the fork's formula as written, and agrees once the net is rewritten to make cv2
    compute the fork's formula (the rest of the net agreeing to RTOL)."""
    rewrite, why, blobs = CV2_DEPARTS[key]
    as_written, rewritten = _compared(key, tmp_path, (rewrite,), blobs)
    assert max(as_written.values()) > 2 * RTOL, f"{key}: cv2 no longer departs ({why}): {as_written}"
    assert max(rewritten.values()) < RTOL, f"{key}: {rewritten}"


@pytest.mark.parametrize("key", list(CV2_FAILS), ids=[f"{k} ({v[2]})" for k, v in CV2_FAILS.items()])
def test_nets_cv2_cannot_load_or_run(key: str, tmp_path: Path):
    """cv2 fails where listed, with the message named; this project builds and runs each of them (the
    fixtures in test_fork_prototxts.py, the assets' nets in test_asset_nets.py)."""
    stage, what, _why = CV2_FAILS[key]
    if stage == "read":
        with pytest.raises(cv2.error, match=what):
            cv2.dnn.readNetFromCaffe(str(NETS[key]))
    else:
        ref = cv2.dnn.readNetFromCaffe(str(NETS[key]))
        with pytest.raises(cv2.error, match=f'Can\'t create layer "{what}"'):
            ref.getLayer(what)


def test_every_net_is_in_one_list():
    assert set(COMPARED) | set(CV2_FAILS) | set(CV2_DEPARTS) == set(NETS)
    assert not (set(CV2_FAILS) & set(CV2_DEPARTS)) and set(CV2_FAILS) | set(CV2_DEPARTS) <= set(NETS)
    assert len(COMPARED) > 40 and set(NETS) >= SLOW
