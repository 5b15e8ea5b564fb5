"""Utility layers: Flatten, Reshape, BatchReindex, Concat, Slice, Eltwise, Filter, Reduction, Silence,
ArgMax, Softmax, Tile. Forward rules against NumPy, backward against finite differences, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from gradcheck import check_gradient, layer_net, set_inputs

import caffe
from caffe.proto import caffe_pb2 as pb

RNG = np.random.default_rng(1701)


def randn(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape)


def make(layer_text: str, bottoms: dict[str, tuple[int, ...]], **kw) -> caffe.Net:
    return layer_net(layer_text, bottoms, **kw)


def tops_of(net: caffe.Net) -> list[str]:
    return net.top_names[net._layer_names[-1]]


def run(layer_text: str, **arrays: np.ndarray) -> list[np.ndarray]:
    """Build the one-layer net for these inputs, run forward and return copies of the tops."""
    net = make(layer_text, {k: v.shape for k, v in arrays.items()})
    set_inputs(net, arrays)
    net.forward()
    return [net.blobs[t].data.copy() for t in tops_of(net)]


def gradcheck(layer_text: str, **arrays: np.ndarray) -> None:
    kink = arrays.pop("_kink", None)
    net = make(layer_text, {k: v.shape for k, v in arrays.items()})
    if kink is None:
        check_gradient(net, arrays)
    else:
        check_gradient(net, arrays, kink=0.0, kink_range=1e-3)


def raises(layer_text: str, shapes: dict[str, tuple[int, ...]], match: str, cls=caffe.LayerError) -> None:
    with pytest.raises(cls, match=match):
        make(layer_text, shapes)


# ---------------------------------------------------------------------------- Flatten
FLAT = 'type: "Flatten" bottom: "x" top: "y" '


@pytest.mark.parametrize(
    ("param", "shape"),
    [
        ("", (2, 90)),
        ("flatten_param { axis: 2 }", (2, 3, 30)),
        ("flatten_param { end_axis: -2 }", (2, 18, 5)),
        ("flatten_param { axis: -3 end_axis: 2 }", (2, 18, 5)),
        ("flatten_param { axis: 0 end_axis: 0 }", (2, 3, 6, 5)),
        ("flatten_param { axis: 0 }", (180,)),
    ],
)
def test_flatten_shapes_and_values(param: str, shape: tuple[int, ...]) -> None:
    x = randn(2, 3, 6, 5)
    (y,) = run(FLAT + param, x=x)
    assert y.shape == shape
    np.testing.assert_array_equal(y.reshape(-1), x.reshape(-1))


def test_flatten_top_is_a_view_and_gradient() -> None:
    net = make(FLAT, {"x": (2, 3, 2, 2)})
    set_inputs(net, {"x": randn(2, 3, 2, 2)})
    net.forward()
    assert np.shares_memory(net.blobs["x"].data, net.blobs["y"].data)
    gradcheck(FLAT + "flatten_param { axis: 2 }", x=randn(2, 3, 2, 2))


def test_flatten_errors() -> None:
    raises(FLAT + "flatten_param { axis: 3 end_axis: 1 }", {"x": (2, 3, 4, 5)}, "end_axis 1 comes before axis 3")
    raises(FLAT + "flatten_param { axis: 4 }", {"x": (2, 3, 4, 5)}, r"axis 4 is out of range.*\(2, 3, 4, 5\)")
    raises('type: "Flatten" bottom: "x" top: "x"', {"x": (2, 3)}, "in-place")


# ---------------------------------------------------------------------------- Reshape
def reshape_text(dims: list[int], axis: int | None = None, num_axes: int | None = None) -> str:
    extra = "" if axis is None else f" axis: {axis}"
    extra += "" if num_axes is None else f" num_axes: {num_axes}"
    shape = " ".join(f"dim: {d}" for d in dims)
    return f'type: "Reshape" bottom: "x" top: "y" reshape_param {{ shape {{ {shape} }}{extra} }}'


@pytest.mark.parametrize(
    ("dims", "axis", "num_axes", "expected"),
    [  # the cases of Caffe's test_reshape_layer.cpp, bottom 2 x 3 x 6 x 5
        ([0, -1, 1, 1], None, None, (2, 90, 1, 1)),
        ([0, 0, 0, 0], None, None, (2, 3, 6, 5)),
        ([0, 3, 10, -1], None, None, (2, 3, 10, 3)),
        ([3, 10, -1], 1, None, (2, 3, 10, 3)),
        ([1, 1, 1], 0, 0, (1, 1, 1, 2, 3, 6, 5)),
        ([1, 1, 1], 2, 0, (2, 3, 1, 1, 1, 6, 5)),
        ([1, 1, 1], -1, 0, (2, 3, 6, 5, 1, 1, 1)),
        ([-1], 1, 2, (2, 18, 5)),
        ([0, -1], -3, 2, (2, 3, 6, 5)),
        ([6, 2, 3, 5], None, None, (6, 2, 3, 5)),
        ([3, 1], 1, 1, (2, 3, 1, 6, 5)),
    ],
)
def test_reshape_shapes(dims: list[int], axis: int | None, num_axes: int | None, expected: tuple[int, ...]) -> None:
    x = randn(2, 3, 6, 5)
    (y,) = run(reshape_text(dims, axis, num_axes), x=x)
    assert y.shape == expected
    np.testing.assert_array_equal(y.reshape(-1), x.reshape(-1))


def test_reshape_after_bottom_reshape_view_and_gradient() -> None:
    net = make(reshape_text([0, -1]), {"x": (2, 3, 4)})
    x = randn(4, 3, 5)
    set_inputs(net, {"x": x})
    net.forward()
    assert net.blobs["y"].shape == (4, 15)
    np.testing.assert_array_equal(net.blobs["y"].data, x.reshape(4, 15))
    assert np.shares_memory(net.blobs["x"].data, net.blobs["y"].data)
    gradcheck(reshape_text([-1, 2], 1), x=randn(2, 3, 4))


def test_reshape_errors() -> None:
    shapes = {"x": (2, 3, 4)}
    raises(reshape_text([5, 5]), shapes, r"\(5, 5\).*\(2, 3, 4\).*counts differ")
    raises(reshape_text([-1, -1]), shapes, "more than one -1")
    raises(reshape_text([5, -1]), shapes, r"cannot infer.*\(2, 3, 4\).*\(5\)")
    raises(reshape_text([0, 0, 0, 0]), shapes, "no axis 3 to copy")
    raises(reshape_text([1], 4, 0), shapes, "reshape_param.axis 4 is out of range")
    raises(reshape_text([-1], 1, 3), shapes, "num_axes 3 is out of range")
    raises(reshape_text([-1], 0, -2), shapes, "num_axes must be >= 0")
    raises(reshape_text([-2, 12]), shapes, "below -1")
    raises('type: "Reshape" bottom: "x" top: "x" reshape_param { shape { dim: -1 } }', shapes, "in-place")


# ---------------------------------------------------------------------------- BatchReindex
REINDEX = 'type: "BatchReindex" bottom: "x" bottom: "idx" top: "y"'


def test_batch_reindex_forward_and_accumulating_gradient() -> None:
    x = randn(5, 2, 3)
    idx = np.array([4.0, 0.0, 4.0, 2.0, 4.0, 1.0, 0.0])
    (y,) = run(REINDEX, x=x, idx=idx)
    np.testing.assert_array_equal(y, x[idx.astype(int)])

    net = make(REINDEX, {"x": x.shape, "idx": idx.shape})
    set_inputs(net, {"x": x, "idx": idx})
    net.forward()
    diffs = net.backward(y=np.ones(y.shape))
    counts = np.bincount(idx.astype(int), minlength=5).astype(float)
    np.testing.assert_array_equal(diffs["x"], np.broadcast_to(counts[:, None, None], x.shape))
    assert not net.bottom_need_backward[-1][1]
    gradcheck(REINDEX, x=x, idx=idx)


def test_batch_reindex_errors() -> None:
    net = make(REINDEX, {"x": (3, 2), "idx": (2,)})
    for bad in ([0.0, 3.0], [-1.0, 0.0]):
        set_inputs(net, {"x": randn(3, 2), "idx": np.array(bad)})
        with pytest.raises(caffe.LayerError, match=r"index values must lie in \[0, 3\)"):
            net.forward()
    raises(REINDEX, {"x": (3, 2), "idx": (2, 1)}, r"index bottom must have 1 axis.*\(2, 1\)", caffe.ShapeError)


# ---------------------------------------------------------------------------- Concat
def concat_text(param: str = "", n: int = 2) -> str:
    bottoms = " ".join(f'bottom: "x{i}"' for i in range(n))
    return f'type: "Concat" {bottoms} top: "y" {param}'


@pytest.mark.parametrize(
    ("param", "axis"),
    [
        ("", 1),
        ("concat_param { axis: 0 }", 0),
        ("concat_param { axis: -1 }", 2),
        ("concat_param { concat_dim: 0 }", 0),
    ],
)
def test_concat_forward_and_gradient(param: str, axis: int) -> None:
    shapes = [[2, 3, 4], [2, 3, 4], [2, 3, 4]]
    for i, s in enumerate(shapes):
        s[axis] += i  # different sizes along the concatenation axis
    xs = {f"x{i}": randn(*s) for i, s in enumerate(shapes)}
    (y,) = run(concat_text(param, 3), **xs)
    np.testing.assert_array_equal(y, np.concatenate(list(xs.values()), axis=axis))
    gradcheck(concat_text(param, 3), **xs)


def test_concat_single_bottom_shares() -> None:
    net = make(concat_text(n=1), {"x0": (2, 3)})
    set_inputs(net, {"x0": randn(2, 3)})
    net.forward()
    assert np.shares_memory(net.blobs["x0"].data, net.blobs["y"].data)


def test_concat_errors() -> None:
    raises(
        concat_text(),
        {"x0": (2, 3, 4), "x1": (2, 5, 5)},
        r"bottom\[1\] shape \(2, 5, 5\).*bottom\[0\] shape \(2, 3, 4\)",
    )
    raises(concat_text(), {"x0": (2, 3, 4), "x1": (2, 3)}, r"bottom\[1\] shape \(2, 3\)")
    raises(concat_text("concat_param { axis: 1 concat_dim: 1 }"), {"x0": (2, 3), "x1": (2, 3)}, "not both")
    raises(concat_text("concat_param { concat_dim: 2 }"), {"x0": (2, 3), "x1": (2, 3)}, "concat_dim 2 is out of range")


# ---------------------------------------------------------------------------- Slice
def slice_text(param: str, n: int) -> str:
    tops = " ".join(f'top: "y{i}"' for i in range(n))
    return f'type: "Slice" bottom: "x" {tops} {param}'


@pytest.mark.parametrize(
    ("param", "n", "axis", "points"),
    [
        ("slice_param { slice_point: 1 slice_point: 4 }", 3, 1, [1, 4]),
        ("slice_param { axis: 0 }", 2, 0, [2]),
        ("slice_param { axis: -1 slice_point: 2 }", 2, 2, [2]),
        ("slice_param { slice_dim: 2 }", 3, 2, [1, 2]),
        ("slice_param { axis: 0 slice_point: 1 slice_point: 3 }", 3, 0, [1, 3]),
    ],
)
def test_slice_forward_and_gradient(param: str, n: int, axis: int, points: list[int]) -> None:
    x = randn(4, 5, 3)
    tops = run(slice_text(param, n), x=x)
    expected = np.split(x, points, axis=axis)
    assert len(tops) == len(expected)
    for got, want in zip(tops, expected):
        np.testing.assert_array_equal(got, want)
        assert got.flags.c_contiguous
    gradcheck(slice_text(param, n), x=x)


def test_slice_errors() -> None:
    shapes = {"x": (2, 6)}
    raises(slice_text("slice_param { slice_point: 3 slice_point: 2 }", 3), shapes, "strictly increasing")
    raises(slice_text("slice_param { slice_point: 0 }", 2), shapes, "strictly increasing")
    raises(slice_text("slice_param { slice_point: 2 slice_point: 9 }", 3), shapes, r"\[2, 9\].*out of range.*\(2, 6\)")
    raises(slice_text("slice_param { slice_point: 2 }", 3), shapes, "need 2 tops, got 3")
    raises(slice_text("", 4), shapes, r"4 tops do not evenly divide axis 1 \(size 6\)")
    raises(slice_text("slice_param { axis: 1 slice_dim: 1 }", 2), shapes, "not both")


# ---------------------------------------------------------------------------- Eltwise
def eltwise_text(param: str, n: int = 3) -> str:
    bottoms = " ".join(f'bottom: "x{i}"' for i in range(n))
    return f'type: "Eltwise" {bottoms} top: "y" eltwise_param {{ {param} }}'


def test_eltwise_forward() -> None:
    xs = {f"x{i}": randn(2, 3, 4) for i in range(3)}
    a, b, c = xs.values()
    np.testing.assert_allclose(run(eltwise_text("operation: PROD"), **xs)[0], a * b * c, rtol=1e-14)
    np.testing.assert_allclose(run(eltwise_text("operation: SUM"), **xs)[0], a + b + c, rtol=1e-14)
    coeffs = "coeff: 1 coeff: -0.5 coeff: 2"
    np.testing.assert_allclose(run(eltwise_text(f"operation: SUM {coeffs}"), **xs)[0], a - 0.5 * b + 2 * c)
    np.testing.assert_array_equal(run(eltwise_text("operation: MAX"), **xs)[0], np.maximum(np.maximum(a, b), c))


def separated(n: int, *shape: int) -> dict[str, np.ndarray]:
    """n bottoms whose values at each position are distinct and far apart (no MAX near-ties)."""
    levels = RNG.permuted(np.tile(np.arange(n, dtype=float), (int(np.prod(shape)), 1)), axis=1)
    return {f"x{i}": levels[:, i].reshape(shape) * 0.3 + 0.05 * randn(*shape) for i in range(n)}


@pytest.mark.parametrize(
    "param",
    [
        "operation: PROD",
        "operation: PROD stable_prod_grad: false",
        "operation: SUM",
        "operation: SUM coeff: 1 coeff: -0.5 coeff: 2",
        "operation: MAX",
    ],
)
def test_eltwise_gradient(param: str) -> None:
    gradcheck(eltwise_text(param), **separated(3, 2, 3, 2))


def test_eltwise_two_bottom_gradient() -> None:
    gradcheck(eltwise_text("operation: MAX", 2), **separated(2, 3, 4))
    gradcheck(eltwise_text("operation: PROD", 2), **separated(2, 3, 4))


def test_eltwise_max_tie_routing() -> None:
    # Caffe's CPU rule: bottom 0 beats bottom 1 only if strictly greater; later bottoms must be
    # strictly greater than the running maximum.
    a = np.array([1.0, 0.0, 3.0, 2.0, 5.0])
    b = np.array([1.0, 2.0, 1.0, 2.0, 4.0])
    c = np.array([0.0, 2.0, 3.0, 2.0, 6.0])
    winner = np.array([1, 1, 0, 1, 2])
    net = make(eltwise_text("operation: MAX"), {f"x{i}": (5,) for i in range(3)})
    set_inputs(net, {"x0": a, "x1": b, "x2": c})
    net.forward()
    np.testing.assert_array_equal(net.blobs["y"].data, np.maximum(np.maximum(a, b), c))
    top_diff = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    diffs = net.backward(y=top_diff)
    for i in range(3):
        np.testing.assert_array_equal(diffs[f"x{i}"], np.where(winner == i, top_diff, 0.0))


def test_eltwise_errors() -> None:
    shapes = {f"x{i}": (2, 3) for i in range(3)}
    raises(eltwise_text("operation: SUM coeff: 1 coeff: 2"), shapes, "3 bottoms but 2 coeff")
    raises(eltwise_text("operation: PROD coeff: 1 coeff: 2 coeff: 3"), shapes, "only takes coefficients for summation")
    bad = {"x0": (2, 3), "x1": (2, 3), "x2": (3, 2)}
    raises(
        eltwise_text("operation: SUM"), bad, r"bottom\[0\] shape \(2, 3\).*bottom\[2\] shape \(3, 2\)", caffe.ShapeError
    )
    raises(eltwise_text("operation: SUM", 1), {"x0": (2, 3)}, "at least 2 bottom")


# ---------------------------------------------------------------------------- Filter
FILTER = 'type: "Filter" bottom: "data" bottom: "label" bottom: "sel" top: "fdata" top: "flabel"'


def test_filter_forward_backward_and_reshape() -> None:
    data, label = randn(4, 3, 2, 2), np.array([3.0, 1.0, 4.0, 2.0]).reshape(4, 1, 1, 1)
    sel = np.array([0.0, 1.0, 1.0, 0.0]).reshape(4, 1, 1, 1)
    net = make(FILTER, {"data": data.shape, "label": label.shape, "sel": sel.shape})
    assert net.blobs["fdata"].shape == (4, 3, 2, 2)  # first reshape: the full batch, as Caffe
    set_inputs(net, {"data": data, "label": label, "sel": sel})
    assert net.blobs["fdata"].shape == (2, 3, 2, 2)  # later reshapes count the selector
    net.forward()
    np.testing.assert_array_equal(net.blobs["fdata"].data, data[[1, 2]])
    np.testing.assert_array_equal(net.blobs["flabel"].data, label[[1, 2]])
    diffs = net.backward(fdata=np.ones((2, 3, 2, 2)), flabel=np.ones((2, 1, 1, 1)))
    np.testing.assert_array_equal(diffs["data"], np.where(sel > 0, 1.0, 0.0) * np.ones_like(data))
    assert not net.bottom_need_backward[-1][2]
    check_gradient(net, {"data": data, "label": label, "sel": sel})

    sel2 = np.array([1.0, 0.0, 0.0, -2.0])  # any nonzero value selects; a (N,) selector works too
    net = make(FILTER, {"data": data.shape, "label": label.shape, "sel": (4,)})
    set_inputs(net, {"data": data, "label": label, "sel": sel2})
    net.forward()
    np.testing.assert_array_equal(net.blobs["fdata"].data, data[[0, 3]])
    set_inputs(net, {"data": data, "label": label, "sel": np.zeros(4)})
    net.forward()
    assert net.blobs["fdata"].shape == (0, 3, 2, 2)


def test_filter_feeds_a_following_layer_with_its_dynamic_shape() -> None:
    text = """
    name: "f" force_backward: true
    layer { name: "in" type: "Input" top: "x" top: "sel"
            input_param { shape { dim: 5 dim: 3 } shape { dim: 5 } } }
    layer { name: "filter" type: "Filter" bottom: "x" bottom: "sel" top: "fx" }
    layer { name: "sum" type: "Reduction" bottom: "fx" top: "s" reduction_param { axis: 1 } }
    """
    net = caffe.Net(text_format.Parse(text, pb.NetParameter()), caffe.TEST, dtype=torch.float64)
    x = randn(5, 3)
    for sel in ([1, 0, 1, 1, 0], [0, 1, 0, 0, 0], [1, 1, 1, 1, 1]):
        keep = np.array(sel, dtype=bool)
        out = net.forward(x=x, sel=np.array(sel, dtype=float))
        np.testing.assert_allclose(out["s"], x[keep].sum(1))


def test_filter_errors() -> None:
    raises(FILTER, {"data": (4, 3), "label": (4,), "sel": (4, 2)}, r"singletons.*\(4, 2\)")
    raises(FILTER, {"data": (4, 3), "label": (5,), "sel": (4,)}, r"bottom\[1\] shape \(5\).*selector \(4\)")
    raises('type: "Filter" bottom: "a" bottom: "s" top: "x" top: "y"', {"a": (4,), "s": (4,)}, "one top per filtered")


# ---------------------------------------------------------------------------- Reduction
REDUCE_NP = {
    "SUM": lambda x: x.sum(-1),
    "ASUM": lambda x: np.abs(x).sum(-1),
    "SUMSQ": lambda x: (x * x).sum(-1),
    "MEAN": lambda x: x.mean(-1),
}


@pytest.mark.parametrize("op", list(REDUCE_NP))
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_reduction(op: str, axis: int) -> None:
    x = randn(2, 3, 4)
    text = f'type: "Reduction" bottom: "x" top: "y" reduction_param {{ operation: {op} axis: {axis} coeff: -1.5 }}'
    (y,) = run(text, x=x)
    k = axis % 3
    assert y.shape == x.shape[:k]
    np.testing.assert_allclose(y, -1.5 * REDUCE_NP[op](x.reshape(*x.shape[:k], -1)), rtol=1e-13)
    gradcheck(text, x=x, **({"_kink": True} if op == "ASUM" else {}))


def test_reduction_default_is_a_scalar_sum_and_bad_axis() -> None:
    x = randn(3, 2)
    (y,) = run('type: "Reduction" bottom: "x" top: "y"', x=x)
    assert y.shape == ()
    np.testing.assert_allclose(y, x.sum())
    raises(
        'type: "Reduction" bottom: "x" top: "y" reduction_param { axis: 2 }', {"x": (3, 2)}, "axis 2 is out of range"
    )


# ---------------------------------------------------------------------------- Silence
def test_silence() -> None:
    text = 'type: "Silence" bottom: "a" bottom: "b"'
    net = make(text, {"a": (2, 3), "b": (4,)})
    set_inputs(net, {"a": randn(2, 3), "b": randn(4)})
    assert net.forward() == {}
    assert tops_of(net) == []
    net.backward()
    raises('type: "Silence" bottom: "a" top: "t"', {"a": (2,)}, "exactly 0 top")


# ---------------------------------------------------------------------------- ArgMax
def caffe_top_k(row: np.ndarray, k: int) -> list[int]:
    """Caffe's order: (value, index) pairs sorted descending, so ties put the larger index first."""
    return sorted(range(len(row)), key=lambda j: (row[j], j), reverse=True)[:k]


def argmax_text(param: str) -> str:
    return f'type: "ArgMax" bottom: "x" top: "y" argmax_param {{ {param} }}'


def tied(*shape: int) -> np.ndarray:
    return RNG.integers(0, 4, size=shape).astype(float)  # many ties


@pytest.mark.parametrize(("k", "max_val"), [(1, False), (1, True), (4, False), (4, True)])
@pytest.mark.parametrize("shape", [(3, 2, 3, 2), (5, 7)])
def test_argmax_flattened(k: int, max_val: bool, shape: tuple[int, ...]) -> None:
    x = tied(*shape)
    (y,) = run(argmax_text(f"top_k: {k} out_max_val: {str(max_val).lower()}"), x=x)
    channels = 2 if max_val else 1
    assert y.shape == (shape[0], channels, k, *[1] * (len(shape) - 3))
    y = y.reshape(shape[0], channels, k)
    for n in range(shape[0]):
        row = x[n].reshape(-1)
        idx = caffe_top_k(row, k)
        np.testing.assert_array_equal(y[n, 0], idx)
        if max_val:
            np.testing.assert_array_equal(y[n, 1], row[idx])


@pytest.mark.parametrize(("axis", "k", "max_val"), [(0, 2, False), (-2, 3, True), (1, 1, False), (3, 1, True)])
def test_argmax_axis(axis: int, k: int, max_val: bool) -> None:
    x = tied(3, 4, 5, 2)
    (y,) = run(argmax_text(f"axis: {axis} top_k: {k} out_max_val: {str(max_val).lower()}"), x=x)
    ax = axis % 4
    expected_shape = list(x.shape)
    expected_shape[ax] = k
    assert y.shape == tuple(expected_shape)
    moved, got = np.moveaxis(x, ax, -1), np.moveaxis(y, ax, -1)
    for pos in np.ndindex(moved.shape[:-1]):
        idx = caffe_top_k(moved[pos], k)
        np.testing.assert_array_equal(got[pos], moved[pos][idx] if max_val else idx)


def test_argmax_has_no_gradient_and_errors() -> None:
    net = make(argmax_text("top_k: 2"), {"x": (2, 3)})
    assert not net.bottom_need_backward[-1][0]
    raises(argmax_text("top_k: 7"), {"x": (2, 2, 3)}, r"top_k 7 is larger than the 6 values.*\(2, 2, 3\)")
    raises(argmax_text("axis: 1 top_k: 3"), {"x": (2, 2, 3)}, r"top_k 3 is larger than the 2 values along axis 1")
    raises(argmax_text("top_k: 0"), {"x": (2, 3)}, "top_k must not be less than 1")
    raises(argmax_text("axis: 3"), {"x": (2, 3)}, "axis 3 is out of range")


# ---------------------------------------------------------------------------- Softmax
def np_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("axis", [1, 2, -1])
def test_softmax(axis: int) -> None:
    x = randn(2, 3, 4)
    x[0, 0, 0] = 1000.0  # stability
    text = f'type: "Softmax" bottom: "x" top: "y" softmax_param {{ axis: {axis} }}'
    (y,) = run(text, x=x)
    np.testing.assert_allclose(y, np_softmax(x, axis), rtol=1e-13)
    assert np.isfinite(y).all()
    gradcheck(text, x=randn(2, 3, 4))


# ---------------------------------------------------------------------------- Tile
@pytest.mark.parametrize(("axis", "tiles"), [(1, 3), (0, 2), (-1, 2)])
def test_tile(axis: int, tiles: int) -> None:
    x = randn(2, 3, 2)
    text = f'type: "Tile" bottom: "x" top: "y" tile_param {{ axis: {axis} tiles: {tiles} }}'
    (y,) = run(text, x=x)
    reps = [1, 1, 1]
    reps[axis] = tiles
    np.testing.assert_array_equal(y, np.tile(x, reps))
    gradcheck(text, x=x)


def test_tile_errors() -> None:
    raises('type: "Tile" bottom: "x" top: "y"', {"x": (2, 3)}, "tiles must be specified")
    raises('type: "Tile" bottom: "x" top: "y" tile_param { tiles: 0 }', {"x": (2, 3)}, "must be positive, got 0")


# ---------------------------------------------------------------------------- tracing (TEST phase)
TRACEABLE = [
    (FLAT, {"x": (2, 3, 4)}),
    (reshape_text([0, -1, 2]), {"x": (2, 3, 4)}),
    (REINDEX, {"x": (4, 3), "idx": (5,)}),
    (concat_text("concat_param { axis: 1 }"), {"x0": (2, 3), "x1": (2, 2)}),
    (slice_text("slice_param { slice_point: 1 }", 2), {"x": (2, 3)}),
    (eltwise_text("operation: MAX"), {f"x{i}": (2, 3) for i in range(3)}),
    (eltwise_text("operation: SUM coeff: 2 coeff: 1 coeff: -1"), {f"x{i}": (2, 3) for i in range(3)}),
    (eltwise_text("operation: PROD"), {f"x{i}": (2, 3) for i in range(3)}),
    ('type: "Reduction" bottom: "x" top: "y" reduction_param { operation: MEAN axis: 1 }', {"x": (2, 3, 4)}),
    (argmax_text("top_k: 2 out_max_val: true"), {"x": (2, 3, 4)}),
    (argmax_text("axis: 1 top_k: 1"), {"x": (2, 3, 4)}),
    ('type: "Softmax" bottom: "x" top: "y"', {"x": (2, 3, 4)}),
    ('type: "Tile" bottom: "x" top: "y" tile_param { tiles: 2 }', {"x": (2, 3)}),
]


@pytest.mark.parametrize(("text", "shapes"), TRACEABLE, ids=lambda v: v.split('"')[1] if isinstance(v, str) else "")
def test_traceable_in_test_phase(text: str, shapes: dict[str, tuple[int, ...]]) -> None:
    net = make(text, shapes, force_backward=False)
    layer = net.layers[-1]

    def sample() -> list[torch.Tensor]:
        out = []
        for name, s in shapes.items():
            if name == "idx":
                out.append(torch.from_numpy(RNG.integers(0, 4, size=s).astype(float)))
            else:
                out.append(torch.from_numpy(RNG.integers(-2, 3, size=s).astype(float)))  # ties included
        return out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.10 deprecates jit.trace
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(lambda *xs: tuple(layer.forward(list(xs))), tuple(sample()))
    for _ in range(3):
        inputs = sample()
        for got, want in zip(traced(*inputs), layer.forward(inputs)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
