"""Test helpers: build a one-layer net and check its backward against finite differences.

In the manner of Caffe's GradientChecker: the net runs in float64; the objective is a fixed random
weighting of every top, sum_k <w_k, top_k>; the analytic gradient comes from the Net's own backward
(so propagate_down, loss weights and parameter accumulation are exercised) and each bottom and
parameter element is compared with a central difference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from google.protobuf import text_format

import caffe
from caffe.proto import caffe_pb2 as pb


def layer_net(
    layer_text: str,
    bottoms: dict[str, Sequence[int]],
    phase: int = caffe.TEST,
    dtype: torch.dtype = torch.float64,
    force_backward: bool = True,
) -> caffe.Net:
    """A net of one Input layer (one top per bottom) followed by the layer described by ``layer_text``."""
    net = pb.NetParameter(name="gradcheck", force_backward=force_backward)
    if bottoms:
        inp = net.layer.add(name="input", type="Input")
        for name, shape in bottoms.items():
            inp.top.append(name)
            inp.input_param.shape.add().dim.extend(shape)
    layer = net.layer.add()
    text_format.Parse(layer_text, layer)
    if not layer.name:
        layer.name = "layer"
    return caffe.Net(net, phase, dtype=dtype)


def set_inputs(net: caffe.Net, values: dict[str, np.ndarray]) -> None:
    for name, value in values.items():
        net.blobs[name].reshape(value.shape)
        net.blobs[name].data[...] = value
    net.reshape()


def run_layer(layer_text: str, values: dict[str, np.ndarray], phase: int = caffe.TRAIN) -> caffe.Net:
    """The one-layer net of ``layer_text`` for these inputs (its bottoms), run forward once."""
    net = layer_net(layer_text, {k: v.shape for k, v in values.items()}, phase=phase)
    set_inputs(net, values)
    net.forward()
    return net


def check_gradient(
    net: caffe.Net,
    inputs: dict[str, np.ndarray],
    *,
    step: float = 1e-4,
    threshold: float = 1e-5,
    check_bottoms: Sequence[str] | None = None,
    check_params: bool = True,
    kink: float | None = None,
    kink_range: float = -1.0,
    seed: int = 0,
    max_elements: int = 400,
) -> None:
    """Assert that the net's backward matches central differences of sum_k <w_k, top_k>.

    ``kink``/``kink_range`` skip elements whose value is within ``kink_range`` of a point where the
    function is not differentiable (as Caffe's checker does, e.g. ReLU at 0).
    """
    rng = np.random.default_rng(seed)
    set_inputs(net, inputs)
    layer_id = len(net.layers) - 1
    layer = net.layers[layer_id]
    tops = net.top_names[net._layer_names[layer_id]]
    bottoms = net.bottom_names[net._layer_names[layer_id]]
    if check_bottoms is None:
        check_bottoms = [b for j, b in enumerate(bottoms) if net.bottom_need_backward[layer_id][j]]

    def objective() -> float:
        net._forward(0, layer_id)
        total = 0.0
        for name, w in zip(tops, weights, strict=True):
            total += float(np.sum(net.blobs[name].data * w))
        return total

    net._forward(0, layer_id)
    weights = [rng.standard_normal(net.blobs[name].shape) for name in tops]
    # analytic
    net.clear_param_diffs()
    objective()
    for name, w in zip(tops, weights, strict=True):
        net.blobs[name].diff[...] = w
    net._backward(layer_id, layer_id)
    analytic = {name: net.blobs[name].diff.copy() for name in check_bottoms}
    param_grads = [b.diff.copy() for b in layer.blobs] if check_params else []

    def numeric(array: np.ndarray, grad: np.ndarray, what: str) -> None:
        flat = array.reshape(-1)
        idx = np.arange(flat.size)
        if flat.size > max_elements:
            idx = rng.choice(flat.size, max_elements, replace=False)
        for i in idx:
            x = flat[i]
            if kink is not None and abs(x - kink) <= kink_range:
                continue
            flat[i] = x + step
            fp = objective()
            flat[i] = x - step
            fm = objective()
            flat[i] = x
            est = (fp - fm) / (2 * step)
            got = grad.reshape(-1)[i]
            scale = max(abs(est), abs(got), 1.0)
            assert abs(est - got) <= threshold * scale, (
                f"{what}[{np.unravel_index(i, array.shape)}]: analytic {got:.8g} vs numeric {est:.8g}"
            )

    for name in check_bottoms:
        numeric(net.blobs[name].data, analytic[name], f"bottom '{name}'")
    for k, blob in enumerate(layer.blobs if check_params else []):
        if layer.param_propagate_down[k]:
            numeric(blob.data, param_grads[k], f"param {k}")
    objective()
