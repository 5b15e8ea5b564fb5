"""Studio networks: standard nets, stage/phase resolution, derived deploy nets, one-click fine-tuning renames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, asset

import caffe
from caffe.errors import NetError, ParseError
from caffe.net import Net
from caffe.proto import caffe_pb2 as pb
from caffe.studio import networks as nets


def load(path: Path | str) -> pb.NetParameter:
    return nets.parse_network(Path(path).read_text(), str(path))


def layer(net: pb.NetParameter, name: str) -> pb.LayerParameter:
    found = [x for x in net.layer if x.name == name]
    assert len(found) == 1, (name, [x.name for x in net.layer])
    return found[0]


def blobs_used(net: pb.NetParameter) -> set[str]:
    return {b for x in net.layer for b in (*x.bottom, *x.top)}


# ---------------------------------------------------------------------------------------------- standard
@pytest.mark.parametrize(
    ("key", "classifiers", "shape"),
    [
        ("lenet", ["ip2"], (1, 28, 28)),
        ("alexnet", ["fc8"], (3, 227, 227)),
        ("googlenet", ["loss1/classifier", "loss2/classifier", "loss3/classifier"], (3, 224, 224)),
        ("squeezenet", ["conv10"], (3, 227, 227)),
    ],
)
def test_standard_networks(key, classifiers, shape):
    net = load(nets.STANDARD_DIR / f"{key}.prototxt")
    assert [x.name for x in nets.classifier_layers(net)] == classifiers
    assert all(nets.num_output(x) == 0 for x in nets.classifier_layers(net))  # set from the dataset
    assert nets.retarget(net, 5, finetune=True) == []  # no weights to conflict with: nothing renamed
    assert all(nets.num_output(x) == 5 for x in nets.classifier_layers(net))

    tv = nets.train_val_net(net)
    data = [x for x in tv.layer if x.type == "Data"]
    assert [x.include[0].phase for x in data] == [pb.TRAIN, pb.TEST]
    accuracy = [x for x in tv.layer if x.type == "Accuracy"]
    assert accuracy and all(x.include[0].phase == pb.TEST for x in accuracy)

    deploy = nets.deploy_net(net, shape)
    assert deploy.layer[0].type == "Input" and list(deploy.layer[0].input_param.shape[0].dim) == [1, *shape]
    assert not any(x.type in ("Data", "Accuracy", "SoftmaxWithLoss") or "label" in x.bottom for x in deploy.layer)
    assert not any("loss1" in x.name or "loss2" in x.name for x in deploy.layer)  # GoogLeNet's aux heads pruned
    built = Net(deploy, caffe.TEST)
    assert built.outputs == ["prob"]
    out = built.forward(data=np.random.default_rng(0).random((1, *shape), np.float32) * 255)["prob"]
    assert out.reshape(-1).shape == (5,) and np.isclose(out.sum(), 1.0, atol=1e-5)


def test_lenet_deploy_scales_its_input_like_the_data_layer():
    deploy = nets.deploy_net(load(nets.STANDARD_DIR / "lenet.prototxt"), (1, 28, 28))
    power = layer(deploy, "scale")
    assert power.type == "Power" and power.power_param.scale == pytest.approx(0.0125)
    assert deploy.layer[1].name == "scale"  # right after the Input


def test_unknown_standard_network():
    with pytest.raises(NetError, match="unknown standard network 'vgg'"):
        nets.standard_network("vgg")


# ---------------------------------------------------------------------------------------------- fine-tuning
def test_finetune_alexnet_deploy_from_the_repo():
    """models/bvlc_alexnet/deploy.prototxt (Input + Softmax): made trainable, fc8 renamed, 2 outputs."""
    net = nets.trainable(load(ROOT / "models/bvlc_alexnet/deploy.prototxt"))
    data = [x for x in net.layer if x.type == "Data"]
    assert [x.include[0].phase for x in data] == [pb.TRAIN, pb.TEST]
    assert data[0].transform_param.crop_size == 227 and data[0].transform_param.mirror
    assert nets.retarget(net, 2, finetune=True) == [("fc8", "fc8_retrain")]
    fc = layer(net, "fc8_retrain")
    assert fc.top == ["fc8_retrain"] and fc.inner_product_param.num_output == 2
    assert layer(net, "loss").bottom == ["fc8_retrain", "label"]
    assert layer(net, "accuracy").bottom == ["fc8_retrain", "label"]
    assert "fc8" not in blobs_used(net)
    assert layer(net, "fc7").inner_product_param.num_output == 4096  # the rest untouched
    deploy = nets.deploy_net(net, (3, 227, 227))
    assert layer(deploy, "prob").bottom == ["fc8_retrain"]


def test_finetune_googlenet_renames_three_classifiers():
    net = load(ROOT / "models/bvlc_googlenet/train_val.prototxt")
    renames = nets.retarget(net, 2, finetune=True)
    assert renames == [(f"loss{k}/classifier", f"loss{k}/classifier_retrain") for k in (1, 2, 3)]
    for k in (1, 2, 3):
        assert layer(net, f"loss{k}/classifier_retrain").inner_product_param.num_output == 2
        loss = next(x for x in net.layer if x.type == "SoftmaxWithLoss" and x.name.startswith(f"loss{k}/"))
        assert loss.bottom[0] == f"loss{k}/classifier_retrain"
    assert not {f"loss{k}/classifier" for k in (1, 2, 3)} & blobs_used(net)
    deploy = nets.deploy_net(net, (3, 224, 224))
    assert [x.name for x in deploy.layer if x.type == "InnerProduct"] == ["loss3/classifier_retrain"]


@pytest.mark.parametrize(
    ("path", "classifier"),
    [
        ("models/squeezenet_v1.0/train_val.prototxt", "conv10"),
        ("models/squeezenet_v1.0_deepcompression/SqueezeNet_deploy.prototxt", "conv_final"),
    ],
)
def test_finetune_squeezenet_renames_the_final_convolution(path, classifier):
    """SqueezeNet's classifier is a 1x1 convolution behind an in-place ReLU and a global pooling."""
    net = nets.trainable(load(asset(path)))
    new = f"{classifier}_retrain"
    assert nets.retarget(net, 2, finetune=True) == [(classifier, new)]
    conv = layer(net, new)
    assert conv.type == "Convolution" and conv.convolution_param.num_output == 2 and conv.top == [new]
    relu = next(x for x in net.layer if x.type == "ReLU" and new in x.bottom)
    assert relu.top == [new]  # the in-place ReLU follows the rename
    assert classifier not in blobs_used(net)
    out = Net(nets.deploy_net(net, (3, 227, 227)), caffe.TEST)
    assert out.blobs["prob"].data.reshape(-1).shape == (2,)


def test_guide_customized_nets_are_not_renamed_again():
    """The guide's hand-edited nets already have 2 outputs (fc9; loss1a/2a/3a): nothing to rename."""
    for name, classifiers in (
        ("alexnet", ["fc9"]),
        ("googlenet", ["loss1a/classifier", "loss2a/classifier", "loss3a/classifier"]),
    ):
        net = load(asset(f"have-fun-src/{name}-customized.prototxt"))
        assert [x.name for x in nets.classifier_layers(net)] == classifiers
        assert nets.retarget(net, 2, finetune=True) == []
        tv = nets.train_val_net(net)  # stages -> phases; the deploy-only softmax is gone
        assert not any(x.type == "Softmax" for x in tv.layer)
        assert [x.include[0].phase for x in tv.layer if x.type == "Data"] == [pb.TRAIN, pb.TEST]
        deploy = nets.deploy_net(net, (3, 227, 227) if name == "alexnet" else (3, 224, 224))
        assert deploy.layer[-1].type == "Softmax" and deploy.layer[-1].bottom == [classifiers[-1]]


def test_renamed_classifier_starts_fresh_when_weights_are_copied(tmp_path):
    """Caffe copies weights by layer name: after the rename, every layer but the classifier keeps them."""
    base = load(nets.STANDARD_DIR / "lenet.prototxt")
    nets.retarget(base, 10, finetune=False)
    caffe.set_random_seed(1)
    pretrained = Net(nets.deploy_net(base, (1, 28, 28)), caffe.TEST)
    pretrained.save(str(tmp_path / "ten.caffemodel"))
    net = nets.parse_network(nets.network_text(base))
    assert nets.retarget(net, 3, finetune=True) == [("ip2", "ip2_retrain")]
    caffe.set_random_seed(2)
    tuned = Net(nets.deploy_net(net, (1, 28, 28)), caffe.TEST)
    fresh = tuned.params["ip2_retrain"][0].data.copy()
    tuned.copy_from(str(tmp_path / "ten.caffemodel"))
    for name in ("conv1", "conv2", "ip1"):
        np.testing.assert_array_equal(tuned.params[name][0].data, pretrained.params[name][0].data)
    np.testing.assert_array_equal(tuned.params["ip2_retrain"][0].data, fresh)
    assert tuned.params["ip2_retrain"][0].data.shape == (3, 500)


def test_rename_twice_and_errors():
    net = load(nets.STANDARD_DIR / "alexnet.prototxt")
    nets.retarget(net, 10, finetune=False)
    assert nets.retarget(net, 2, finetune=True) == [("fc8", "fc8_retrain")]
    assert nets.retarget(net, 4, finetune=True) == [("fc8_retrain", "fc8_retrain2")]
    with pytest.raises(NetError, match="no classifier found"):
        nets.retarget(nets.parse_network('layer { name: "d" type: "Input" top: "x" }'), 2, finetune=True)
    with pytest.raises(ParseError, match=r"^custom:3:"):
        nets.parse_network('name: "x"\nlayer {\n  nme: "a"\n}\n', "custom")
