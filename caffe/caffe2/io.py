"""Reading and writing Caffe2 files: NetDefs (binary ``.pb`` or text ``.pbtxt``), tensors, ``value_info.json``.

Reads are bounded as every other parser of the project (:mod:`caffe.limits`): the file's size is capped,
a declared tensor shape is checked against the blob budget before allocation, and bad input ends in a
:class:`~caffe.caffe2.errors.Caffe2Error` (or the project's ParseError/WeightsError) naming the file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from caffe.caffe2.errors import Caffe2Error
from caffe.errors import ParseError
from caffe.limits import check_blob, read_file
from caffe.proto import caffe2_pb2 as c2
from caffe.protoio import atomic_write, parse_binary, parse_text, to_text

PathLike = str | os.PathLike
TEXT_SUFFIXES = (".pbtxt", ".prototxt", ".txt")
MAX_VALUE_INFO_BYTES = 1 << 20

_DTYPES = {
    c2.TensorProto.FLOAT: np.float32,
    c2.TensorProto.DOUBLE: np.float64,
    c2.TensorProto.INT32: np.int32,
    c2.TensorProto.INT64: np.int64,
    c2.TensorProto.BOOL: np.bool_,
    c2.TensorProto.UINT8: np.uint8,
    c2.TensorProto.INT8: np.int8,
}


def _looks_like_text(data: bytes) -> bool:
    """Whether ``data`` is a text NetDef (it starts with a field name or a comment, not a wire tag)."""
    head = data[:256].lstrip()
    if not head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return head[:1].isalpha() or head[:1] == b"#"


def parse_netdef(data: bytes, source: str = "<bytes>", *, text: bool | None = None) -> c2.NetDef:
    """A NetDef from binary or text bytes (``text`` None: decided from the content)."""
    if text is None:
        text = _looks_like_text(data)
    if text:
        try:
            decoded = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ParseError(f"{source}: not a text NetDef: not UTF-8 (byte {e.start})") from None
        return parse_text(decoded, c2.NetDef(), source)
    return parse_binary(data, c2.NetDef(), source, "Caffe2")


def read_netdef(path: PathLike, what: str = "Caffe2 net") -> c2.NetDef:
    """A NetDef from the file ``path``: text when its suffix or content says so, else binary."""
    data = read_file(path, what, error=ParseError)
    text = True if Path(path).suffix in TEXT_SUFFIXES else None
    return parse_netdef(data, str(path), text=text)


def write_netdef(path: PathLike, net: c2.NetDef, *, text: bool | None = None) -> None:
    """Write ``net`` to ``path`` atomically (text when ``text`` or the suffix says so)."""
    if text is None:
        text = Path(path).suffix in TEXT_SUFFIXES
    atomic_write(path, to_text(net).encode("utf-8") if text else net.SerializeToString())


# ------------------------------------------------------------------------------------------ arguments


def arg_map(op: c2.OperatorDef) -> dict[str, c2.Argument]:
    """An operator's arguments by name (the last one wins, as in Caffe2)."""
    return {a.name: a for a in op.arg}


def make_arg(name: str, value: int | float | str | list[int] | list[float]) -> c2.Argument:
    """An Argument holding ``value`` in the field of its type (bool and int in ``i``)."""
    arg = c2.Argument(name=name)
    if isinstance(value, bool | int):
        arg.i = int(value)
    elif isinstance(value, float):
        arg.f = value
    elif isinstance(value, str):
        arg.s = value.encode("utf-8")
    elif all(isinstance(v, int) for v in value):
        arg.ints.extend(int(v) for v in value)
    else:
        arg.floats.extend(float(v) for v in value)
    return arg


# ------------------------------------------------------------------------------------------ tensors


def tensor_shape(dims: list[int] | tuple[int, ...], what: str) -> tuple[int, ...]:
    """``dims`` as a shape, refused (naming ``what``) when negative or over the blob budget."""
    check_blob(dims, 4, what)
    return tuple(int(d) for d in dims)


def fill_array(op: c2.OperatorDef, source: str) -> np.ndarray:
    """The tensor a ``GivenTensorFill`` / ``ConstantFill`` (or typed variant) operator of an init net makes."""
    args = arg_map(op)
    name = op.output[0] if op.output else "?"
    what = f"{source}: {op.type} of '{name}'"
    shape = tensor_shape(list(args["shape"].ints) if "shape" in args else [], what)
    count = math.prod(shape)
    if op.type == "ConstantFill":
        value = args.get("value")
        fill = 0.0 if value is None else (value.f if value.HasField("f") else float(value.i))
        return np.full(shape, fill, dtype=np.float32)
    values = args.get("values")
    if values is None:
        raise Caffe2Error(f"{what}: no 'values' argument")
    if op.type in ("GivenTensorFill", "GivenTensorDoubleFill"):
        data = np.asarray(values.floats, dtype=np.float32)
    elif op.type in ("GivenTensorIntFill", "GivenTensorInt64Fill", "GivenTensorBoolFill"):
        data = np.asarray(values.ints, dtype=np.int64).astype(np.float32)
    else:
        raise Caffe2Error(f"{what}: unsupported fill operator")
    if data.size != count:
        raise Caffe2Error(f"{what}: {data.size} values for shape {list(shape)} ({count} elements)")
    return data.reshape(shape)


FILL_OPS = (
    "GivenTensorFill",
    "GivenTensorDoubleFill",
    "GivenTensorIntFill",
    "GivenTensorInt64Fill",
    "GivenTensorBoolFill",
    "ConstantFill",
)


def init_blobs(init_net: c2.NetDef, source: str = "init net") -> dict[str, np.ndarray]:
    """The tensors an init net fills, by name; an operator other than a fill is an error naming it."""
    blobs: dict[str, np.ndarray] = {}
    for op in init_net.op:
        if op.type not in FILL_OPS:
            raise Caffe2Error(
                f"{source}: operator {op.type} (output '{op.output[0] if op.output else '?'}') in the init net: "
                f"only {', '.join(FILL_OPS)} are supported there"
            )
        if len(op.output) != 1:
            raise Caffe2Error(f"{source}: {op.type} with {len(op.output)} outputs (expected 1)")
        blobs[op.output[0]] = fill_array(op, source)
    return blobs


def fill_op(name: str, array: np.ndarray) -> c2.OperatorDef:
    """A ``GivenTensorFill`` operator making the float tensor ``array`` as blob ``name``."""
    arr = np.asarray(array, dtype=np.float32)
    op = c2.OperatorDef(type="GivenTensorFill", output=[name])
    op.arg.append(make_arg("shape", [int(d) for d in arr.shape]))
    values = c2.Argument(name="values")
    values.floats.extend(arr.ravel().tolist())
    op.arg.append(values)
    return op


def tensor_to_array(t: c2.TensorProto, source: str = "tensor") -> np.ndarray:
    """A TensorProto's values (float, double and integer types) as an array of its dims."""
    shape = tensor_shape(list(t.dims), f"{source}: tensor '{t.name}'")
    dtype = _DTYPES.get(t.data_type)
    if dtype is None:
        raise Caffe2Error(f"{source}: tensor '{t.name}': unsupported data type {t.data_type}")
    if t.raw_data:
        data = np.frombuffer(t.raw_data, dtype=np.dtype(dtype).newbyteorder("<"))
    elif t.data_type == c2.TensorProto.FLOAT:
        data = np.asarray(t.float_data, dtype=np.float32)
    elif t.data_type == c2.TensorProto.DOUBLE:
        data = np.asarray(t.double_data, dtype=np.float64)
    elif t.data_type == c2.TensorProto.INT64:
        data = np.asarray(t.int64_data, dtype=np.int64)
    else:
        data = np.asarray(t.int32_data).astype(dtype)
    if data.size != math.prod(shape):
        raise Caffe2Error(f"{source}: tensor '{t.name}': {data.size} values for dims {list(shape)}")
    return data.astype(dtype, copy=False).reshape(shape)


# ------------------------------------------------------------------------------------------ value_info.json


def read_value_info(path: PathLike) -> dict[str, list[int]]:
    """``value_info.json`` (``{"data": [1, [1, 3, 224, 224]]}``: element type, shape) as shapes by input name."""
    data = read_file(path, "value_info.json", max_bytes=MAX_VALUE_INFO_BYTES, error=Caffe2Error)
    try:
        info = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise Caffe2Error(f"{path}: not valid JSON ({e})") from None
    shapes: dict[str, list[int]] = {}
    if not isinstance(info, dict):
        raise Caffe2Error(f"{path}: expected an object mapping input names to [type, shape]")
    for name, entry in info.items():
        shape = entry[1] if isinstance(entry, list) and len(entry) == 2 else entry
        if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d > 0 for d in shape):
            raise Caffe2Error(f"{path}: input '{name}': expected [type, [positive dims]], got {entry!r}")
        shapes[str(name)] = [int(d) for d in tensor_shape(shape, f"{path}: input '{name}'")]
    return shapes


def write_value_info(path: PathLike, shapes: dict[str, list[int]]) -> None:
    """Write ``value_info.json`` (element type 1, FLOAT, as the zoo's files)."""
    atomic_write(path, json.dumps({k: [1, list(v)] for k, v in shapes.items()}).encode("utf-8"))
