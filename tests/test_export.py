"""caffe.export and ``caffe export``: SqueezeNet and ResNet-50 (open_nsfw) to ONNX (onnxruntime) and to
TorchScript (loaded in a process that never imports caffe), compared with the Net's own forward."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import asset
from PIL import Image

import caffe
from caffe import export as ex
from caffe.tools.cli import main

TOL = 1e-4
SQUEEZENET = "models/squeezenet_v1.0_deepcompression"


def bgr_minus_mean(image: str, size: int) -> np.ndarray:
    """The references' preprocessing: PIL bilinear resize, RGB -> BGR, minus (104, 117, 123), NCHW."""
    rgb = Image.open(asset(image)).convert("RGB").resize((size, size), Image.BILINEAR)
    bgr = np.asarray(rgb, np.float32)[:, :, ::-1] - np.array([104, 117, 123], np.float32)
    return np.ascontiguousarray(bgr.transpose(2, 0, 1)[None])


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.reshape(len(x), -1) - x.reshape(len(x), -1).max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def squeezenet() -> caffe.Net:
    return caffe.Net(
        str(asset(f"{SQUEEZENET}/SqueezeNet_deploy.prototxt")),
        caffe.TEST,
        weights=str(asset(f"{SQUEEZENET}/squeezenet_v1.0_deepcompression_decoded.caffemodel")),
    )


@pytest.fixture(scope="module")
def nsfw() -> caffe.Net:
    folder = "models/open_nsfw_resnet50_1by2"
    return ex.load_net(asset(f"{folder}/deploy.prototxt"), asset(f"{folder}/resnet_50_1by2_nsfw.caffemodel"))


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    cat = "caffe-ref/examples/images/cat.jpg"
    bike = "caffe-ref/examples/images/fish-bike.jpg"
    return {"squeezenet": bgr_minus_mean(cat, 227), "nsfw": np.concatenate([bgr_minus_mean(bike, 224)])}


def reference_top5(name: str) -> list[float]:
    text = asset(f"{SQUEEZENET}/REFERENCE_top5_numpy.txt").read_text().split(f"== {name}\n")[1]
    return [float(line.split()[0]) for line in text.splitlines()[:5]]


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64).reshape(np.shape(a))).max())


def test_squeezenet_to_onnx_with_the_command(tmp_path: Path, squeezenet: caffe.Net, images: dict):
    out = tmp_path / "squeezenet.onnx"
    model = asset(f"{SQUEEZENET}/SqueezeNet_deploy.prototxt")
    weights = asset(f"{SQUEEZENET}/squeezenet_v1.0_deepcompression_decoded.caffemodel")
    argv = ["export", "--format", "onnx", "--model", str(model), "--weights", str(weights), "--output", str(out)]
    assert main(argv) == 0  # the command also runs the file in onnxruntime (verify)
    onnx.checker.check_model(str(out), full_check=True)
    proto = onnx.load(str(out))
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) == ex.DEFAULT_OPSET
    [graph_input] = proto.graph.input
    assert graph_input.name == "data"  # shape from the prototxt's legacy input_dim fields
    assert [d.dim_value for d in graph_input.type.tensor_type.shape.dim] == [1, 3, 227, 227]
    assert [o.name for o in proto.graph.output] == ["pool_final"]

    x = images["squeezenet"]
    ours = squeezenet.forward(data=x)["pool_final"].copy()
    [got] = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"data": x})
    assert max_diff(got, ours) <= TOL  # pre-softmax scores
    assert max_diff(softmax(got), softmax(ours)) <= TOL
    # and both are the independent NumPy forward's top-5 scores for this image
    np.testing.assert_allclose(np.sort(got.ravel())[::-1][:5], reference_top5("cat.jpg"), atol=2e-3)


def test_resnet50_nsfw_to_onnx_scores_and_probabilities(tmp_path: Path, nsfw: caffe.Net, images: dict):
    result = ex.to_onnx(nsfw, tmp_path / "nsfw.onnx", outputs=["fc_nsfw", "prob"], opset=13)
    assert result.outputs == {"fc_nsfw": (1, 2), "prob": (1, 2)}
    proto = onnx.load(str(result.path))
    onnx.checker.check_model(proto, full_check=True)
    assert {p.key: p.value for p in proto.metadata_props}["caffe_net"] == "ResNet_50_1by2_nsfw"
    x = images["nsfw"]
    ours = nsfw.forward(blobs=["fc_nsfw"], data=x)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    scores, prob = session.run(["fc_nsfw", "prob"], {"data": x})
    assert max_diff(scores, ours["fc_nsfw"]) <= TOL
    assert max_diff(prob, ours["prob"]) <= TOL
    assert abs(float(prob.sum()) - 1) < 1e-5 and np.abs(scores).max() > 0.1  # real, non-degenerate outputs
    folded = ex.to_onnx(nsfw, tmp_path / "folded.onnx", outputs=["prob"], fold=True)
    assert "BatchNormalization" not in folded.details["ops"] and folded.nodes < result.nodes
    [prob] = ort.InferenceSession(str(folded.path), providers=["CPUExecutionProvider"]).run(None, {"data": x})
    assert max_diff(prob, ours["prob"]) <= TOL


def test_dynamic_batch_and_input_shape(tmp_path: Path, squeezenet: caffe.Net, images: dict):
    out = tmp_path / "squeeze_dyn.onnx"
    result = ex.to_onnx(squeezenet, out, dynamic_batch=True, input_shapes=[[2, 3, 227, 227]])
    assert result.inputs == {"data": (2, 3, 227, 227)}
    assert squeezenet.blobs["data"].data.shape == (1, 3, 227, 227)  # the net's own shape is restored
    x = np.concatenate([images["squeezenet"], -images["squeezenet"], images["squeezenet"][:, :, ::-1]])
    [got] = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"data": x})
    squeezenet.blobs["data"].reshape(*x.shape)
    ours = squeezenet.forward(data=x)["pool_final"].copy()
    squeezenet.blobs["data"].reshape(1, 3, 227, 227)
    squeezenet.reshape()
    assert got.shape == (3, 1000, 1, 1) and max_diff(got, ours) <= TOL


TORCHSCRIPT_RUNNER = """
import json, sys
sys.modules["caffe"] = None  # any 'import caffe' would fail
import numpy as np, torch
for job in json.loads(sys.argv[1]):
    extra = {"caffe_io.json": ""}
    model = torch.jit.load(job["model"], map_location="cpu", _extra_files=extra)
    io = json.loads(extra["caffe_io.json"])
    with torch.no_grad():
        outputs = model(torch.from_numpy(np.load(job["input"])))
    for name, value in zip(io["outputs"], outputs):
        np.save(job["model"] + "." + name.replace("/", "_") + ".npy", value.numpy())
assert not any(m == "caffe" or m.startswith("caffe.") for m, v in sys.modules.items() if v is not None)
"""


def test_torchscript_runs_without_caffe(tmp_path: Path, squeezenet: caffe.Net, nsfw: caffe.Net, images: dict):
    model = asset("models/open_nsfw_resnet50_1by2/deploy.prototxt")
    weights = asset("models/open_nsfw_resnet50_1by2/resnet_50_1by2_nsfw.caffemodel")
    argv = ["export", "--format", "torchscript", "--model", str(model), "--weights", str(weights)]
    assert main([*argv, "--output", str(tmp_path / "nsfw.pt"), "--outputs", "fc_nsfw,prob", "--noverify"]) == 0
    ex.to_torchscript(squeezenet, tmp_path / "squeezenet.pt")
    jobs = []
    for name in ("nsfw", "squeezenet"):
        np.save(tmp_path / f"{name}.npy", images[name])
        jobs.append({"model": str(tmp_path / f"{name}.pt"), "input": str(tmp_path / f"{name}.npy")})
    run = subprocess.run(
        [sys.executable, "-c", TORCHSCRIPT_RUNNER, json.dumps(jobs)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    ours = nsfw.forward(blobs=["fc_nsfw"], data=images["nsfw"])
    for blob in ("fc_nsfw", "prob"):
        assert max_diff(np.load(tmp_path / f"nsfw.pt.{blob}.npy"), ours[blob]) <= TOL, blob
    ours = squeezenet.forward(data=images["squeezenet"])["pool_final"]
    assert max_diff(np.load(tmp_path / "squeezenet.pt.pool_final.npy"), ours) <= TOL


def test_unsupported_layers_and_bad_requests_are_named(tmp_path: Path, squeezenet: caffe.Net):
    train_val = asset("caffe-ref/examples/mnist/lenet_train_test.prototxt")
    with pytest.raises(ex.ExportError, match=r"layer 'mnist' \(Data\) cannot be traced"):
        ex.load_net(train_val)
    python = tmp_path / "python.prototxt"
    python.write_text(
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 } } }\n'
        'layer { name: "mine" type: "Python" bottom: "data" top: "out"'
        ' python_param { module: "no_such_module" layer: "X" } }\n'
    )
    with pytest.raises(ex.ExportError, match=r"layer 'mine' \(Python\) cannot be traced"):
        ex.load_net(python)
    assert main(["export", "--model", str(python), "--output", str(tmp_path / "p.onnx")]) == 1
    with pytest.raises(ex.ExportError, match="opset 11 is too old; use opset 13"):
        ex.to_onnx(squeezenet, tmp_path / "old.onnx", opset=11)
    with pytest.raises(ex.ExportError, match="no blob named 'nope'"):
        ex.to_onnx(squeezenet, tmp_path / "x.onnx", outputs=["nope"])
    with pytest.raises(ex.ExportError, match="given for 'image', not an input"):
        ex.to_torchscript(squeezenet, tmp_path / "x.pt", input_shapes={"image": [1, 3, 8, 8]})
    train_net = caffe.Net(str(asset(f"{SQUEEZENET}/SqueezeNet_deploy.prototxt")), caffe.TRAIN)
    with pytest.raises(ex.ExportError, match="built in the TRAIN phase"):
        ex.to_onnx(train_net, tmp_path / "t.onnx")
    assert main(["export", "--model", str(python), "--output", str(tmp_path / "p.onnx"), "--opset", "12"]) == 1
    assert main(["export", "--model", str(python), "--output", str(tmp_path / "p.bin")]) == 1  # format unknown
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob("*.pt"))


# ---------------------------------------------------------------------------------------------- export forms
FORMS_NET = """name: "forms"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 9 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.2 } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv"
  scale_param { bias_term: true filler { type: "uniform" min: 0.5 max: 1.5 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ave" type: "Pooling" bottom: "conv" top: "ave"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "max" type: "Pooling" bottom: "conv" top: "max" pooling_param { pool: MAX kernel_size: 2 stride: 4 } }
layer { name: "lrn" type: "LRN" bottom: "ave" top: "lrn" lrn_param { local_size: 3 alpha: 0.1 beta: 0.75 } }
layer { name: "cat" type: "Concat" bottom: "lrn" bottom: "ave" top: "cat" }
layer { name: "slice" type: "Slice" bottom: "cat" top: "s1" top: "s2" slice_param { axis: 1 } }
layer { name: "max2" type: "Eltwise" bottom: "s1" bottom: "s2" top: "el" eltwise_param { operation: MAX } }
layer { name: "crop" type: "Crop" bottom: "el" bottom: "max" top: "crop" crop_param { axis: 2 offset: 1 } }
layer { name: "tile" type: "Tile" bottom: "crop" top: "tile" tile_param { axis: 1 tiles: 2 } }
layer { name: "flat" type: "Flatten" bottom: "tile" top: "flat" }
layer { name: "ip" type: "InnerProduct" bottom: "flat" top: "ip"
  inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "reshape" type: "Reshape" bottom: "ip" top: "rs" reshape_param { shape { dim: 0 dim: 2 dim: -1 } } }
layer { name: "sum" type: "Reduction" bottom: "rs" top: "sum" reduction_param { axis: 2 operation: SUMSQ } }
layer { name: "bias" type: "Bias" bottom: "sum" top: "bias" bias_param { filler { type: "constant" value: 0.3 } } }
layer { name: "prob" type: "Softmax" bottom: "bias" top: "prob" }
"""


def forms_net(tmp_path: Path, text: str = FORMS_NET) -> caffe.Net:
    path = tmp_path / "forms.prototxt"
    path.write_text(text)
    return ex.load_net(path)


def test_layers_give_export_forms_that_compute_their_forward(tmp_path: Path):
    net = forms_net(tmp_path)
    net.forward(data=np.random.default_rng(0).standard_normal((2, 3, 9, 9)).astype(np.float32))
    layers = net.layer_dict
    for name in ("ave", "max", "bn"):  # Caffe's pooling windows and BatchNorm's statistics, written out for ONNX
        layer = layers[name]
        form = layer.export_forward(onnx=True)
        assert form is not None and layer.export_forward() is None, name
        bottom = [b.tensor for b in layer.bottoms]
        assert float((form(bottom)[0] - layer.forward(bottom)[0]).abs().max()) <= 1e-6, name
    assert layers["relu"].export_forward(onnx=True, dynamic_batch=True) is None  # traced as it is
    flat = layers["flat"].export_forward(dynamic_batch=True)  # for any batch: reshape(-1, 72)
    assert flat is not None and flat([torch.zeros(5, 8, 3, 3)])[0].shape == (5, 72)


def test_dynamic_batch_through_export_forms(tmp_path: Path):
    net = forms_net(tmp_path)
    for name in ("forms.onnx", "forms.pt"):
        result = ex.export(net, tmp_path / name, dynamic_batch=True)
        diffs = ex.verify(net, result, batch_sizes=[1, 2, 5])
        assert max(diffs.values()) <= TOL, (name, diffs)
    # the net's layers are left as they were: no forward or parameter swapped in
    assert not [layer.name for layer in net.layers if {"forward", "param_tensor"} & set(vars(layer))]


@pytest.mark.parametrize(
    ("layer", "why"),
    [
        ('type: "Concat" bottom: "data" bottom: "data" concat_param { axis: 0 }', "concatenates along the batch"),
        ('type: "Slice" bottom: "data" top: "more" slice_param { axis: 0 }', "slices along the batch axis"),
        ('type: "Scale" bottom: "data" scale_param { axis: 0 num_axes: 2 }', "operand covers the batch axis"),
        ('type: "InnerProduct" bottom: "data" inner_product_param { axis: 0 num_output: 2 }', "along the batch axis"),
        ('type: "Reduction" bottom: "data" reduction_param { axis: 0 }', "works along the batch axis"),
        ('type: "Tile" bottom: "data" tile_param { axis: 0 tiles: 2 }', "works along the batch axis"),
        ('type: "Crop" bottom: "data" bottom: "data" crop_param { axis: 0 }', "works along the batch axis"),
        ('type: "Reshape" bottom: "data" reshape_param { shape { dim: 2 dim: -1 } }', "does not follow the batch"),
        ('type: "MVN" bottom: "data"', "computes with the MVN layer's set-up batch size"),
    ],
)
def test_dynamic_batch_refused_where_a_layer_fixes_it(tmp_path: Path, layer: str, why: str):
    net = forms_net(
        tmp_path,
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }\n'
        f'layer {{ name: "it" {layer} top: "out" }}\n',
    )
    with pytest.raises(ex.ExportError, match=rf"layer 'it' \(\w+\) fixes the batch size \(.*{why}"):
        ex.to_torchscript(net, tmp_path / "x.pt", dynamic_batch=True)
    assert ex.to_torchscript(net, tmp_path / "x.pt").path.is_file()  # a fixed batch exports
