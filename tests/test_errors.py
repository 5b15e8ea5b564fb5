"""Bad input gives a one-line error of a caffe exception class naming what is at fault."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import asset
from google.protobuf import text_format

import caffe
from caffe.proto import caffe_pb2 as pb

LENET = "models/lenet_mnist_newformat"


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    assert isinstance(e.value, caffe.CaffeError)
    return msg


def net_of(text: str, phase: int = caffe.TEST) -> caffe.Net:
    return caffe.Net(text_format.Parse(text, pb.NetParameter()), phase)


def test_input_reshaped_to_incompatible_channels():
    net = caffe.Net(str(asset(f"{LENET}/lenet.prototxt")), caffe.TEST)
    net.blobs["data"].reshape(2, 3, 28, 28)
    with pytest.raises(caffe.ShapeError) as e:
        net.reshape()
    msg = one_line(e)
    assert "conv1" in msg and "3" in msg and "1" in msg


def test_forward_with_wrong_input_size_names_the_layer():
    net = caffe.Net(str(asset(f"{LENET}/lenet.prototxt")), caffe.TEST)
    net.blobs["data"].reshape(2, 1, 20, 20)  # ip1 expects 800 = 50x4x4 features
    with pytest.raises(caffe.ShapeError) as e:
        net.forward()
    msg = one_line(e)
    assert "ip1" in msg


@pytest.mark.parametrize(
    ("layer", "pattern"),
    [
        ('type: "Convolution" convolution_param { num_output: 4 }', "kernel"),
        ('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 group: 2 }', "group 2"),
        ('type: "Pooling" pooling_param { kernel_size: 2 pad: 2 }', "pad"),
        ('type: "InnerProduct" inner_product_param { }', "num_output"),
        ('type: "Eltwise" bottom: "x" eltwise_param { coeff: 1 }', "coeff"),
        ('type: "Reshape" reshape_param { shape { dim: -1 dim: -1 } }', "-1"),
        ('type: "Slice" slice_param { axis: 1 slice_point: 5 }', "slice_point"),
        ('type: "LRN" lrn_param { local_size: 4 }', "local_size"),
        ('type: "Dropout" dropout_param { dropout_ratio: 1.5 }', "dropout_ratio"),
    ],
)
def test_bad_parameter_values(layer: str, pattern: str):
    text = f"""
    layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ dim: 2 dim: 3 dim: 8 dim: 8 }} }} }}
    layer {{ name: "bad" bottom: "x" top: "y" {layer} }}
    """
    with pytest.raises(caffe.LayerError) as e:
        net_of(text)
    msg = one_line(e)
    assert "'bad'" in msg and pattern in msg


def test_incompatible_bottom_shapes():
    text = """
    layer { name: "in" type: "Input" top: "a" top: "b"
            input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 4 } } }
    layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "s" }
    """
    with pytest.raises(caffe.ShapeError) as e:
        net_of(text)
    msg = one_line(e)
    assert "'sum'" in msg and "(2, 3)" in msg and "(2, 4)" in msg


def test_missing_bottom_duplicate_top_and_unknown_type_are_one_line():
    for text, cls in [
        ('layer { name: "r" type: "ReLU" bottom: "nowhere" top: "r" }', caffe.NetError),
        (
            'layer { name: "a" type: "Input" top: "x" input_param { shape { dim: 1 } } }'
            'layer { name: "b" type: "ReLU" bottom: "x" top: "y" }'
            'layer { name: "c" type: "ReLU" bottom: "x" top: "y" }',
            caffe.NetError,
        ),
        ('layer { name: "z" type: "Softmaxx" }', caffe.UnknownLayerTypeError),
    ]:
        with pytest.raises(cls) as e:
            net_of(text)
        one_line(e)


def test_torch_failure_inside_a_layer_is_wrapped(monkeypatch: pytest.MonkeyPatch):
    net = caffe.Net(str(asset(f"{LENET}/lenet.prototxt")), caffe.TEST)
    conv = net.layer_dict["conv2"]

    def boom(bottom):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)\nmore torch detail")

    monkeypatch.setattr(conv, "forward", boom)
    caffe.set_inference_engine("eager")
    try:
        with pytest.raises(caffe.LayerError) as e:
            net.forward()
    finally:
        caffe.set_inference_engine("fused")
    msg = one_line(e)
    assert msg.startswith("layer 'conv2' (Convolution) forward failed: mat1 and mat2")


def test_weights_errors(tmp_path: Path):
    with pytest.raises(caffe.WeightsError) as e:
        bad = tmp_path / "x.caffemodel"
        bad.write_bytes(b"\x0a\xff\xff\xff")
        caffe.Net(str(asset(f"{LENET}/lenet.prototxt")), caffe.TEST, weights=str(bad))
    one_line(e)


def test_set_input_arrays_needs_memory_data():
    net = caffe.Net(str(asset(f"{LENET}/lenet.prototxt")), caffe.TEST)
    with pytest.raises(caffe.NetError, match="MemoryDataLayer") as e:
        net.set_input_arrays(np.zeros((1, 1, 28, 28), np.float32), np.zeros(1, np.float32))
    one_line(e)
