"""Blob: an N-d array with data and diff, seen from Python as writable NumPy arrays.

The compute side is a torch tensor. On the CPU the NumPy arrays *are* that tensor's memory. On a
GPU, Caffe's synced-memory rule holds: the NumPy view is a host copy, brought up to date when it is
read and copied back to the device the next time the net uses the blob.

BlobProto <-> array/tensor conversion lives here too (Caffe's ``Blob::FromProto``/``ToProto``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from caffe.errors import ShapeError, WeightsError
from caffe.limits import check_blob
from caffe.proto import caffe_pb2 as pb

Shape = tuple[int, ...]

_HOST, _DEVICE, _SYNCED = 0, 1, 2


class SyncedTensor:
    """One array held in host memory and/or on a device, synchronized lazily on access."""

    __slots__ = ("_dev", "_head", "_host", "device", "on_cpu")

    def __init__(self, tensor: torch.Tensor, device: torch.device) -> None:
        self.device = device
        self.on_cpu = device.type == "cpu"
        if device.type == "cpu":
            self._host = self._dev = tensor
            self._head = _SYNCED
        elif tensor.device.type == "cpu":
            self._host, self._dev, self._head = tensor, None, _HOST
        else:
            self._host, self._dev, self._head = None, tensor, _DEVICE

    def host(self) -> torch.Tensor:
        """The host tensor, up to date; the caller may write it (the head moves to the host)."""
        if self.on_cpu:
            return self._host
        if self._head == _DEVICE:
            src = self._dev.detach()
            if self._host is None or self._host.shape != src.shape or self._host.dtype != src.dtype:
                self._host = torch.empty(src.shape, dtype=src.dtype)
            self._host.copy_(src)
        self._head = _HOST
        return self._host

    def dev(self) -> torch.Tensor:
        """The device tensor, up to date with any host writes."""
        if self.on_cpu:
            return self._dev
        if self._head == _HOST:
            if self._dev is None or self._dev.shape != self._host.shape:
                self._dev = self._host.to(self.device)
            else:
                # .data keeps the tensor's identity and autograd version: a host write is
                # Caffe-style memory mutation, not a graph operation.
                self._dev.data.copy_(self._host, non_blocking=False)
            self._head = _SYNCED
        return self._dev

    def mutable_dev(self) -> torch.Tensor:
        """The device tensor, for writing in place (the host copy becomes stale)."""
        t = self.dev()
        if not self.on_cpu:
            self._head = _DEVICE
        return t

    def set_dev(self, tensor: torch.Tensor) -> None:
        """Replace the device-side value with a freshly computed tensor."""
        if self.on_cpu:
            self._host = self._dev = tensor
        else:
            self._dev = tensor
            self._head = _DEVICE

    def to(self, device: torch.device, dtype: torch.dtype | None = None) -> SyncedTensor:
        base = self._host if self.on_cpu or self._head == _HOST else self._dev
        base = base.detach().to(device=device, dtype=dtype or base.dtype).clone()
        return SyncedTensor(base, device)


def _as_shape(dims: Iterable[int]) -> Shape:
    shape = tuple(int(d) for d in dims)
    if any(d < 0 for d in shape):
        raise ShapeError(f"blob shape {shape} has a negative dimension")
    return shape


class Blob:
    """Caffe's Blob: ``shape``, ``count``, ``reshape`` and ``data``/``diff`` NumPy views."""

    def __init__(
        self,
        shape: Sequence[int] = (),
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
    ) -> None:
        self._device = device or torch.device("cpu")
        self._dtype = dtype
        self._shape: Shape = _as_shape(shape)
        self._data = SyncedTensor(self._zeros(self._shape), self._device)
        self._diff: SyncedTensor | None = None
        self._version = 0
        self._refresh: Callable[[], None] | None = None

    # ----------------------------------------------------------------- construction helpers
    @classmethod
    def from_tensor(cls, tensor: torch.Tensor, *, device: torch.device | None = None) -> Blob:
        blob = cls.__new__(cls)
        blob._device = device or tensor.device
        blob._dtype = tensor.dtype
        blob._shape = tuple(tensor.shape)
        blob._data = SyncedTensor(tensor, blob._device)
        blob._diff = None
        blob._version = 0
        blob._refresh = None
        return blob

    def _zeros(self, shape: Shape) -> torch.Tensor:
        check_blob(shape, self._dtype.itemsize, "blob")
        where = self._device if self._device.type == "cpu" else torch.device("cpu")
        return torch.zeros(shape, dtype=self._dtype, device=where)

    # ----------------------------------------------------------------- shape
    @property
    def shape(self) -> Shape:
        return self._shape

    @property
    def num_axes(self) -> int:
        return len(self._shape)

    @property
    def count(self) -> int:
        return math.prod(self._shape)

    def count_range(self, start: int, end: int | None = None) -> int:
        """Product of dimensions ``start`` to ``end`` (exclusive), as Caffe's ``count(start, end)``."""
        return math.prod(self._shape[start:end])

    def canonical_axis_index(self, axis: int) -> int:
        n = len(self._shape)
        if not -n <= axis < max(n, 1):
            raise ShapeError(f"axis {axis} out of range for a {n}-axis blob of shape {self.shape_string()}")
        return axis + n if axis < 0 else axis

    def _legacy(self, index: int) -> int:
        if len(self._shape) > 4:
            raise ShapeError(
                f"num/channels/height/width are only defined for blobs of at most 4 axes, not {self.shape_string()}"
            )
        # Caffe's LegacyShape(index) for index 0..3: axes past the last one count as 1.
        return self._shape[index] if index < len(self._shape) else 1

    @property
    def num(self) -> int:
        return self._legacy(0)

    @property
    def channels(self) -> int:
        return self._legacy(1)

    @property
    def height(self) -> int:
        return self._legacy(2)

    @property
    def width(self) -> int:
        return self._legacy(3)

    def shape_string(self) -> str:
        return " ".join(str(d) for d in self._shape) + f" ({self.count})"

    def reshape(self, *shape: int | Sequence[int]) -> None:
        """Change the shape; memory is kept when the count is unchanged (as in Caffe)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size, np.ndarray)):
            shape = tuple(shape[0])
        new_shape = _as_shape(shape)  # type: ignore[arg-type]
        if new_shape == self._shape:
            return
        self._version += 1
        if math.prod(new_shape) == self.count:
            self._data = self._reshaped(self._data, new_shape)
            if self._diff is not None:
                self._diff = self._reshaped(self._diff, new_shape)
        else:
            self._data = SyncedTensor(self._zeros(new_shape), self._device)
            self._diff = None
        self._shape = new_shape

    def _reshaped(self, st: SyncedTensor, shape: Shape) -> SyncedTensor:
        if st.on_cpu:
            return SyncedTensor(st.host().detach().reshape(shape), self._device)
        host = st.host().reshape(shape)
        return SyncedTensor(host, self._device)

    # ----------------------------------------------------------------- NumPy views (pycaffe)
    @property
    def version(self) -> int:
        """Increases whenever the data may have been written through this object (a NumPy view handed
        out, an in-place device write, a new value); caches derived from the data compare it."""
        return self._version

    def mark_stale(self, refresh: Callable[[], None]) -> None:
        """The stored value is out of date; ``refresh`` recomputes it (and others) on first access."""
        self._refresh = refresh

    def mark_fresh(self) -> None:
        """The stored value is up to date again: drop a pending ``mark_stale`` refresh."""
        self._refresh = None

    def _fresh(self) -> None:
        if self._refresh is not None:
            refresh, self._refresh = self._refresh, None
            refresh()

    @property
    def data(self) -> np.ndarray:
        """Writable NumPy view of the data (host side)."""
        self._fresh()
        self._version += 1
        return self._data.host().detach().numpy()

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self.data[...] = value

    @property
    def diff(self) -> np.ndarray:
        """Writable NumPy view of the diff (host side)."""
        return self._diff_synced().host().detach().numpy()

    @diff.setter
    def diff(self, value: np.ndarray) -> None:
        self.diff[...] = value

    # ----------------------------------------------------------------- torch side
    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def tensor(self) -> torch.Tensor:
        """The data on the compute device (synchronized from host writes)."""
        self._fresh()
        return self._data.dev()

    @property
    def mutable_tensor(self) -> torch.Tensor:
        """The data on the compute device, to be modified in place (e.g. by a solver update).

        Inside a region torch.compile captures, the version is left alone (a Python counter read there
        would become a guard, failing at every call): whoever runs the compiled code marks the blobs it
        may have changed afterwards (``mark_modified``)."""
        self._fresh()
        if not torch.compiler.is_compiling():
            self._version += 1
        return self._data.mutable_dev()

    def mark_modified(self) -> None:
        """The data may have changed in place (by compiled code): caches derived from it are out of date."""
        self._version += 1

    @tensor.setter
    def tensor(self, value: torch.Tensor) -> None:
        """Store a freshly computed value (may change the shape)."""
        self._refresh = None
        self._version += 1
        self._shape = tuple(value.shape)
        self._data.set_dev(value)
        if self._diff is not None and tuple(self._diff.dev().shape) != self._shape:
            self._diff = None

    def _diff_synced(self) -> SyncedTensor:
        if self._diff is None:
            self._diff = SyncedTensor(self._zeros(self._shape), self._device)
        return self._diff

    @property
    def grad(self) -> torch.Tensor:
        """The diff on the compute device."""
        return self._diff_synced().dev()

    @property
    def mutable_grad(self) -> torch.Tensor:
        """The diff on the compute device, to be modified in place."""
        return self._diff_synced().mutable_dev()

    @grad.setter
    def grad(self, value: torch.Tensor) -> None:
        if tuple(value.shape) != self._shape:
            value = value.reshape(self._shape)
        self._diff_synced().set_dev(value.detach())

    def has_diff(self) -> bool:
        return self._diff is not None

    def accumulate_grad(self, value: torch.Tensor) -> None:
        """``diff += value`` in place (parameter diffs accumulate, as in Caffe)."""
        self.mutable_grad.add_(value.detach().reshape(self._shape))

    def zero_grad(self) -> None:
        if self._diff is not None:
            self.mutable_grad.zero_()

    def to(self, device: torch.device, dtype: torch.dtype | None = None) -> None:
        """Move the blob's storage to another device (and optionally dtype)."""
        self._version += 1
        self._data = self._data.to(device, dtype)
        if self._diff is not None:
            self._diff = self._diff.to(device, dtype)
        self._device = device
        if dtype is not None:
            self._dtype = dtype

    def share_data(self, other: Blob) -> None:
        """Make this blob use ``other``'s data storage (shapes must have equal counts)."""
        if other.count != self.count:
            raise ShapeError(f"cannot share data of {other.shape_string()} with {self.shape_string()}")
        self._data = other._data if other.shape == self._shape else self._reshaped(other._data, self._shape)

    def __repr__(self) -> str:
        return f"<caffe.Blob shape={self._shape} dtype={str(self._dtype).replace('torch.', '')}>"


# ---------------------------------------------------------------------------- BlobProto
def _has_legacy_dims(proto: pb.BlobProto) -> bool:
    return any(proto.HasField(f) for f in ("num", "channels", "height", "width"))


def proto_shape(proto: pb.BlobProto) -> Shape:
    """The shape a BlobProto declares (its ``shape``, or the legacy num/channels/height/width)."""
    if _has_legacy_dims(proto):
        return (proto.num, proto.channels, proto.height, proto.width)
    return tuple(proto.shape.dim)


def legacy_shape_matches(shape: Shape, proto: pb.BlobProto) -> bool:
    """Caffe's ``Blob::ShapeEquals``: legacy 4-d protos compare against the shape padded with 1s in front."""
    if _has_legacy_dims(proto):
        if len(shape) > 4:
            return False
        padded = (1,) * (4 - len(shape)) + tuple(shape)
        return padded == (proto.num, proto.channels, proto.height, proto.width)
    return tuple(shape) == tuple(proto.shape.dim)


def blob_proto_to_array(proto: pb.BlobProto, *, diff: bool = False) -> np.ndarray:
    """A NumPy array with the proto's data (or diff), shaped as the proto declares."""
    shape = proto_shape(proto)
    if any(d < 0 for d in shape):
        raise WeightsError(f"blob declares shape {shape} with a negative dimension")
    if diff:
        values = proto.double_diff if len(proto.double_diff) else proto.diff
    else:
        values = proto.double_data if len(proto.double_data) else proto.data
    dtype = np.float64 if (len(proto.double_diff) if diff else len(proto.double_data)) else np.float32
    arr = np.array(values, dtype=dtype)
    if arr.size != math.prod(shape):
        raise WeightsError(f"blob declares shape {shape} ({math.prod(shape)} values) but holds {arr.size} values")
    return arr.reshape(shape)


def blob_proto_to_tensor(
    proto: pb.BlobProto, *, expect: Sequence[int] | None = None, where: str = "blob", keep_double: bool = False
) -> torch.Tensor:
    """A float32 tensor from a BlobProto (float64 for ``double_data`` with ``keep_double``); with ``expect``,
    checked (legacy-aware) and shaped to it."""
    if expect is not None and not legacy_shape_matches(tuple(expect), proto):
        raise WeightsError(f"{where}: shape mismatch, expected {tuple(expect)} but the file has {proto_shape(proto)}")
    try:
        arr = blob_proto_to_array(proto)
    except WeightsError as e:
        raise WeightsError(f"{where}: {e}") from None
    shape = tuple(expect) if expect is not None else arr.shape
    if not (keep_double and arr.dtype == np.float64):
        arr = arr.astype(np.float32, copy=False)
    return torch.from_numpy(arr.reshape(shape))


def array_to_blob_proto(data: np.ndarray, diff: np.ndarray | None = None, *, double: bool = False) -> pb.BlobProto:
    """A BlobProto with ``shape`` and float data (and diff), as Caffe's ``Blob::ToProto`` writes it; with
    ``double``, ``double_data`` (and ``double_diff``), as a ``Blob<double>`` writes them."""
    proto = pb.BlobProto()
    proto.shape.dim.extend(int(d) for d in data.shape)
    kind = "<f8" if double else "<f4"
    fields = [("double_data" if double else "data", data)]
    if diff is not None:
        fields.append(("double_diff" if double else "diff", diff))
    # The values as the wire's packed field, parsed by protobuf's C code: 7x faster than extending the
    # repeated field from a Python list (AlexNet's fc6, 37.7M floats: 0.26 s against 1.97 s).
    proto.MergeFromString(b"".join(_packed_field(name, np.ascontiguousarray(a, dtype=kind)) for name, a in fields))
    return proto


def _packed_field(name: str, values: np.ndarray) -> bytes:
    """A packed repeated float/double BlobProto field on the wire: tag, byte length, little-endian values."""
    raw = values.tobytes()
    number = pb.BlobProto.DESCRIPTOR.fields_by_name[name].number
    return _varint(number << 3 | 2) + _varint(len(raw)) + raw


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)
