"""Real prototxts from the forks' own repositories (tests/data/forks, sources and licenses in SOURCES.md)
build here unchanged and run forward with random weights, at a reduced input size where the net allows;
the blob shapes checked are the ones each net's design gives (its paper's feature-map sizes, its class and
prior counts), and every output is finite."""

from __future__ import annotations

import numpy as np
import pytest
from fork_nets import FORKS, random_input, random_weights

import caffe
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import read_net_param


def _run(name: str, shape: tuple[int, ...] | None = None, param: pb.NetParameter | None = None) -> caffe.Net:
    """The fixture ``name`` built in TEST with random weights, its input reshaped to ``shape``, run forward."""
    net = caffe.Net(param if param is not None else str(FORKS / name), caffe.TEST)
    if shape is not None:
        net.blobs[net.inputs[0]].reshape(*shape)
        net.reshape()
    random_weights(net)
    random_input(net)
    out = net.forward()
    for top, value in out.items():
        assert np.isfinite(value).all(), f"{name}: output {top} is not finite"
    return net


def _shapes(net: caffe.Net, *names: str) -> list[tuple[int, ...]]:
    return [tuple(net.blobs[n].shape) for n in names]


def test_segnet_basic_inference():
    """SegNet-Tutorial's segnet_basic: 4 pool/unpool stages with the pooling masks, SegNet's BN (INFERENCE),
    11 CamVid classes. Its DenseImageData reads CamVid from an absolute path, so an Input takes its place; the
    height 88 gives an odd 11-row map at pool4's input that the first Upsample's pad_out_h restores (CamVid's
    360 rows give 45 the same way)."""
    param = read_net_param(FORKS / "SegNet-Tutorial_segnet_basic_inference.prototxt")
    data = param.layer[0]
    assert data.type == "DenseImageData" and list(data.top) == ["data", "label"]
    data.Clear()
    data.name, data.type = "data", "Input"
    data.top.append("data")
    data.input_param.shape.add(dim=[1, 3, 88, 128])
    net = _run("segnet_basic", param=param)
    assert {layer.type for layer in net.layer_dict.values()} >= {"BN", "Upsample"}
    assert _shapes(net, "pool3", "pool4", "upsample4", "upsample1") == [
        (1, 64, 11, 16),
        (1, 64, 6, 8),
        (1, 64, 11, 16),
        (1, 64, 88, 128),
    ]
    prob = net.blobs["prob"].data
    assert prob.shape == (1, 11, 88, 128)
    np.testing.assert_allclose(prob.sum(axis=1), 1, rtol=1e-5)


def test_enet_deploy_final():
    """ENet (TimoSaemann/ENet, BN folded into the convolutions): 19 Cityscapes classes at the input's size,
    a 1/8 bottleneck, two max-unpoolings with the encoder's masks; 512x1024 reduced to 64x128."""
    net = _run("ENet_enet_deploy_final.prototxt", (1, 3, 64, 128))
    assert sum(layer.type == "Upsample" for layer in net.layer_dict.values()) == 2
    assert _shapes(net, "conv1_0_1", "prelu3_2_1", "deconv6_0_0") == [(1, 16, 16, 32), (1, 32, 8, 16), (1, 19, 64, 128)]


def test_pspnet50_ade20k():
    """PSPNet-50 (ADE20K): dilated ResNet-50 with PSPNet's frozen BN, a 60x60 map at 1/8 of 473 pooled to
    1, 2, 3 and 6 bins by AVE windows of 60, 30, 20 and 10, each Interp'ed back to 60x60 (its height/width
    fields fix the input at 473), 150 classes Interp'ed to 473x473 (zoom_factor 8: (60 - 1) * 8 + 1)."""
    net = _run("PSPNet_pspnet50_ADE20K_473.prototxt")
    pools = ["conv5_3_pool1", "conv5_3_pool2", "conv5_3_pool3", "conv5_3_pool6"]
    assert _shapes(net, "conv5_3", *pools) == [(1, 2048, 60, 60)] + [(1, 2048, k, k) for k in (1, 2, 3, 6)]
    assert _shapes(net, "conv5_3_pool6_interp", "conv5_4", "conv6_interp") == [
        (1, 512, 60, 60),
        (1, 512, 60, 60),
        (1, 150, 473, 473),
    ]
    # a 1-bin pool over the whole map is the map's mean (the AVE window covers it exactly)
    mean = net.blobs["conv5_3"].data.mean(axis=(2, 3))
    np.testing.assert_allclose(net.blobs["conv5_3_pool1"].data[:, :, 0, 0], mean, rtol=1e-4, atol=1e-5)


def test_mobilenet_ssd_voc():
    """MobileNet-SSD (VOC, BN merged): 1917 priors over 19x19, 10x10, 5x5, 3x3, 2x2 and 1x1 maps (3, 6, 6,
    6, 6, 6 per cell), 21 classes, DetectionOutput keeping at most 100 rows of 7."""
    net = _run("MobileNet-SSD_MobileNetSSD_deploy.prototxt")
    assert 19 * 19 * 3 + (10 * 10 + 5 * 5 + 3 * 3 + 2 * 2 + 1) * 6 == 1917
    assert _shapes(net, "mbox_priorbox", "mbox_loc", "mbox_conf_flatten") == [
        (1, 2, 1917 * 4),
        (1, 1917 * 4),
        (1, 1917 * 21),
    ]
    rows = net.blobs["detection_out"].data[0, 0]
    assert 1 <= len(rows) <= 100 and rows.shape[1] == 7
    found = rows[rows[:, 1] >= 0]
    assert np.all((found[:, 1] >= 1) & (found[:, 1] <= 20)) and np.all(found[:, 2] >= 0.25)
    if len(found) < len(rows):  # nothing above the threshold: the fork's single row of -1s
        assert len(rows) == 1 and np.all(rows[0, 1:] == -1)


def test_pelee_voc_deploy_merged():
    """Pelee (VOC, 304x304): 5142 priors (19x19 twice, 10x10, 5x5, 3x3, 1x1, 6 per cell), confidence
    threshold 0.01 so random weights find boxes, keep_top_k 200."""
    net = _run("Pelee_voc_deploy_merged.prototxt")
    assert _shapes(net, "mbox_priorbox") == [(1, 2, (2 * 19 * 19 + 10 * 10 + 5 * 5 + 3 * 3 + 1) * 6 * 4)]
    rows = net.blobs["detection_out"].data[0, 0]
    assert 1 <= len(rows) <= 200
    assert np.all((rows[:, 1] >= 1) & (rows[:, 1] <= 20)) and np.all(rows[:, 2] >= 0.01)


def test_se_resnet50_axpy():
    """SE-ResNet-50 (hujie-frank/SENet): each block's Axpy adds the squeeze-excited residual to the shortcut,
    top = a * bottom[1] + bottom[2] as SENet's axpy_layer.cpp computes it; prob is a distribution of 1000."""
    net = _run("SENet_SE-ResNet-50.prototxt")
    assert _shapes(net, "conv2_1_1x1_up", "conv2_1", "conv5_3", "prob") == [
        (1, 256, 1, 1),
        (1, 256, 56, 56),
        (1, 2048, 7, 7),
        (1, 1000),
    ]
    np.testing.assert_allclose(net.blobs["prob"].data.sum(), 1, rtol=1e-5)
    # conv5_3 is Axpy(conv5_3_prob, conv5_3_1x1_increase, conv5_2) then an in-place ReLU
    axpy = net.layer_dict["conv5_3"]
    written = next(lp for lp in read_net_param(FORKS / "SENet_SE-ResNet-50.prototxt").layer if lp.name == "conv5_3")
    assert axpy.type == "Axpy" and list(written.bottom) == ["conv5_3_1x1_up", "conv5_3_1x1_increase", "conv5_2"]
    a, x, y = (net.blobs[b].data for b in axpy.layer_param.bottom)  # the same blobs, through the net's splits
    np.testing.assert_allclose(net.blobs["conv5_3"].data, np.maximum(a * x + y, 0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(p.name for p in FORKS.glob("*.prototxt")))
def test_every_fixture_is_listed_in_sources(name: str):
    """Each fixture has its row (repository, commit, path, license) in SOURCES.md."""
    assert f"| `{name}` |" in (FORKS / "SOURCES.md").read_text()


@pytest.mark.parametrize(
    ("name", "boxes"),
    [
        ("py-faster-rcnn_ZF_faster_rcnn_end2end_test.prototxt", 84),
        ("py-R-FCN_ResNet-50_rfcn_end2end_test_agnostic.prototxt", 8),
    ],
)
def test_rcnn_nets_with_no_proposal_give_empty_outputs(name: str, boxes: int):
    """An image too small for any proposal to survive min_size (im_info 2x2 pixels): no ROIs, so ROIPooling /
    PSROIPooling and everything after them hold 0 rows, as Caffe's blobs of num 0 (this was a reshape error)."""
    net = caffe.Net(str(FORKS / name), caffe.TEST)
    random_weights(net)
    random_input(net)
    net.blobs["im_info"].data[...] = [2, 2, 1]
    out = net.forward()
    assert net.blobs["rois"].shape == (0, 5)
    assert out["cls_prob"].shape == (0, 21) and out["bbox_pred"].shape == (0, boxes)
