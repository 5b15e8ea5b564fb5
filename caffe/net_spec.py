"""Write nets in Python (pycaffe's ``caffe.net_spec``): ``NetSpec``, ``layers`` (``L``), ``params`` (``P``).

::

    from caffe import layers as L, params as P
    n = caffe.NetSpec()
    n.data, n.label = L.Data(source="train_lmdb", backend=P.Data.LMDB, batch_size=64, ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    print(n.to_proto())          # a caffe_pb2.NetParameter; str() of it is prototxt text

``L.<Type>(*bottoms, **kwargs)`` describes one layer of that type and returns its top (a :class:`Top`),
a tuple of tops when ``ntop`` > 1, or the :class:`Function` itself when ``ntop=0``. Keyword arguments:

* ``ntop`` (default 1) and ``in_place`` (the layer's tops are its bottoms) are not layer fields;
* a name ending in ``param`` (``param=[...]``, ``transform_param=...``, ``convolution_param=...``)
  is a field of the LayerParameter;
* any other name is a field of the type's own parameter message (``kernel_size`` goes to
  ``convolution_param``) when that message has it, else a field of the LayerParameter
  (``loss_weight``, ``include``, ``propagate_down``, ``name``). Beyond pycaffe, types that use another
  type's message find their fields too (``Deconvolution``/``Im2col``: ``convolution_param``;
  ``LSTM``/``RNN``: ``recurrent_param``; ``*Loss``: ``loss_param``; ``SoftmaxWithLoss``: ``softmax_param``).

Values: a dict fills a message, a list fills a repeated field (a single value becomes a one-element
list), enum fields take the value (``P.Pooling.MAX``) or its name (``"MAX"``), NumPy scalars and
arrays are accepted.

Names: tops assigned to a NetSpec attribute get that name, and so does the layer producing them
(a layer is named after its first top; a ``ntop=0`` layer after the attribute it was assigned to).
Unnamed tops and layers get ``<Type><k>``, counted per type in the order ``to_proto`` meets them.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable
from typing import Any

import numpy as np
from google.protobuf.message import Message

from caffe.proto import caffe_pb2

__all__ = [
    "Function",
    "L",
    "Layers",
    "NetSpec",
    "P",
    "Parameters",
    "Top",
    "assign_proto",
    "layers",
    "param_name_dict",
    "params",
    "to_proto",
]


def param_name_dict() -> dict[str, str]:
    """``{type name: parameter field prefix}`` read off LayerParameter's ``*_param`` fields:
    ``"Convolution": "convolution"``, ``"InnerProduct": "inner_product"``, ``"Transformation": "transform"``..."""
    out = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if field.name.endswith("_param") and field.message_type is not None:
            type_name = field.message_type.name
            if type_name.endswith("Parameter"):
                type_name = type_name[: -len("Parameter")]
            out[type_name] = field.name[: -len("_param")]
    return out


_param_names = param_name_dict()

# layer types configured by a message named after another type
_SHARED_PARAMS = {
    "Deconvolution": "convolution",
    "Im2col": "convolution",
    "LSTM": "recurrent",
    "RNN": "recurrent",
}


def _param_fields(type_name: str) -> tuple[str | None, list[str]]:
    """(the type's own ``*_param`` field or None, further ``*_param`` fields tried after LayerParameter's)."""
    own = _param_names.get(type_name) or _SHARED_PARAMS.get(type_name)
    extra = []
    if type_name == "SoftmaxWithLoss":
        extra.append("softmax")
    if type_name.endswith("Loss") and own != "loss":
        extra.append("loss")
    return (f"{own}_param" if own else None), [f"{p}_param" for p in extra]


def _is_repeated(field: Any) -> bool:
    flag = getattr(field, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return field.label == field.LABEL_REPEATED


def _plain(value: Any) -> Any:
    """NumPy scalars and arrays as Python values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _scalar(field: Any, value: Any) -> Any:
    value = _plain(value)
    if field.enum_type is not None and isinstance(value, str):
        try:
            return field.enum_type.values_by_name[value].number
        except KeyError:
            names = ", ".join(field.enum_type.values_by_name)
            raise ValueError(f"{field.full_name}: unknown value {value!r} (one of {names})") from None
    return value


def _fill(message: Message, values: dict[str, Any]) -> None:
    for key, value in values.items():
        assign_proto(message, key, value)


def assign_proto(proto: Message, name: str, val: Any) -> None:
    """Set field ``name`` of message ``proto`` from a Python value, recursively: a dict fills a
    message, a list (or tuple) fills a repeated field and a single value given to a repeated field is
    taken as a one-element list; a message is copied. AttributeError when ``proto`` has no such field."""
    field = proto.DESCRIPTOR.fields_by_name.get(name)
    if field is None:
        raise AttributeError(f"{proto.DESCRIPTOR.name} has no field named '{name}'")
    val = _plain(val)
    if _is_repeated(field):
        items = val if isinstance(val, (list, tuple)) else [val]
        container = getattr(proto, name)
        if field.message_type is not None:
            for item in items:
                if isinstance(item, dict):
                    _fill(container.add(), item)
                elif isinstance(item, Message):
                    container.add().CopyFrom(item)
                else:
                    raise TypeError(f"{field.full_name}: expected dicts or {field.message_type.name}s, got {item!r}")
        else:
            _protobuf_set(field, lambda: container.extend([_scalar(field, item) for item in items]))
    elif isinstance(val, (list, tuple)):
        raise TypeError(f"{field.full_name} is not a repeated field; got a list {val!r}")
    elif field.message_type is not None:
        if isinstance(val, dict):
            _fill(getattr(proto, name), val)
        elif isinstance(val, Message):
            getattr(proto, name).CopyFrom(val)
        else:
            raise TypeError(f"{field.full_name}: expected a dict or a {field.message_type.name}, got {val!r}")
    else:
        _protobuf_set(field, lambda: setattr(proto, name, _scalar(field, val)))


def _protobuf_set(field: Any, setter: Any) -> None:
    """Run ``setter``; protobuf's errors for values of the wrong type get the field's name."""
    try:
        setter()
    except (TypeError, ValueError) as e:
        if field.full_name in str(e):
            raise
        raise type(e)(f"{field.full_name}: {e}") from None


def _has_field(message: Message, name: str) -> bool:
    return name in message.DESCRIPTOR.fields_by_name


class Top:
    """One output blob of a layer: the ``n``-th top of :class:`Function` ``fn``."""

    def __init__(self, fn: Function, n: int) -> None:
        self.fn = fn
        self.n = n

    def to_proto(self) -> caffe_pb2.NetParameter:
        """A NetParameter with every layer needed to compute this top (names generated)."""
        return to_proto(self)

    def _to_proto(self, layers: OrderedDict, names: dict, autonames: Counter) -> None:
        self.fn._to_proto(layers, names, autonames)

    def __repr__(self) -> str:
        return f"<Top {self.n} of {self.fn.type_name} layer>"


class Function:
    """One layer: its type, its bottoms (tops of other layers) and its parameters (keyword arguments)."""

    def __init__(self, type_name: str, inputs: Iterable[Top], params: dict[str, Any]) -> None:
        self.type_name = type_name
        inputs = tuple(inputs)
        for index, bottom in enumerate(inputs):
            if not isinstance(bottom, Top):
                raise TypeError(f"{type_name} input {index} is not a Top (type is {type(bottom)})")
        self.inputs = inputs
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        if isinstance(self.ntop, bool) or not isinstance(self.ntop, (int, np.integer)) or self.ntop < 0:
            raise ValueError(f"{type_name}: ntop must be a non-negative integer, got {self.ntop!r}")
        self.ntop = int(self.ntop)
        self.in_place = bool(self.params.pop("in_place", False))
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def __repr__(self) -> str:
        return f"<Function {self.type_name} ({len(self.inputs)} bottoms, {self.ntop} tops)>"

    # naming ------------------------------------------------------------------------------------
    @staticmethod
    def _top_name(top: Top, names: dict, autonames: Counter) -> str:
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = f"{top.fn.type_name}{autonames[top.fn.type_name]}"
        return names[top]

    def _layer_name(self, names: dict, autonames: Counter) -> str:
        if self not in names:
            if self.ntop > 0:
                names[self] = self._top_name(self.tops[0], names, autonames)
            else:
                autonames[self.type_name] += 1
                names[self] = f"{self.type_name}{autonames[self.type_name]}"
        return names[self]

    # serialization -----------------------------------------------------------------------------
    def _to_proto(self, layers: OrderedDict, names: dict, autonames: Counter) -> None:
        """Add this layer, after the layers it depends on (depth first, bottoms in order), to ``layers``.

        Iterative, so that nets hundreds of layers deep need no deep Python recursion."""
        stack: list[tuple[Function, int]] = [(self, 0)]
        while stack:
            fn, i = stack.pop()
            if fn in layers:
                continue
            if i < len(fn.inputs):
                stack.append((fn, i + 1))
                stack.append((fn.inputs[i].fn, 0))
                continue
            layers[fn] = fn._layer_proto(layers, names, autonames)

    def _layer_proto(self, layers: OrderedDict, names: dict, autonames: Counter) -> caffe_pb2.LayerParameter:
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(layers[b.fn].top[b.n] for b in self.inputs)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            layer.top.extend(self._top_name(t, names, autonames) for t in self.tops)
        layer.name = self._layer_name(names, autonames)

        for key, value in self.params.items():
            target = self._target(layer, key)
            try:
                assign_proto(target, key, value)
            except (TypeError, ValueError) as e:  # ours, or protobuf's for a value of the wrong type
                raise type(e)(f"{self.type_name} layer '{layer.name}': {e}") from None
        return layer

    def _target(self, layer: caffe_pb2.LayerParameter, key: str) -> Message:
        """The message that has field ``key``: the layer for ``*param`` names, else the type's own parameter
        message, else the LayerParameter, else a further message the type reads (see the module docstring)."""
        own, extra = _param_fields(self.type_name)
        if key.endswith("param"):
            return layer
        if own is not None and _has_field(getattr(layer, own), key):
            return getattr(layer, own)
        if _has_field(layer, key):
            return layer
        target = next((p for p in extra if _has_field(getattr(layer, p), key)), None)
        if target is None:
            where = " or ".join([*([own] if own else []), "LayerParameter", *extra])
            raise AttributeError(f"{self.type_name} layer '{layer.name}': '{key}' is not a field of {where}")
        return getattr(layer, target)


def _collect(items: Iterable[Top | Function], names: dict) -> caffe_pb2.NetParameter:
    layers: OrderedDict = OrderedDict()
    autonames: Counter = Counter()
    for item in items:
        if not isinstance(item, (Top, Function)):
            raise TypeError(f"expected a Top (or a Function for a layer without tops), got {type(item)}")
        item._to_proto(layers, names, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


def to_proto(*tops: Top | Function) -> caffe_pb2.NetParameter:
    """A NetParameter with every layer needed to compute ``tops``; all names are generated."""
    return _collect(tops, {})


class _MissingTop(AttributeError, KeyError):
    """No top of that name in the NetSpec (both an AttributeError and, as in pycaffe, a KeyError)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class NetSpec:
    """Named tops: assign ``n.name = L.Type(...)`` (or ``n["name"] = ...``), then :meth:`to_proto`
    builds every layer the assigned tops need, in assignment order, under the assigned names."""

    def __init__(self) -> None:
        object.__setattr__(self, "tops", OrderedDict())

    def __setattr__(self, name: str, value: Top | Function) -> None:
        if not isinstance(value, (Top, Function)):
            hint = ""
            if isinstance(value, tuple):
                hint = " (assign each top of a multi-top layer: n.a, n.b = L.Type(..., ntop=2))"
            raise TypeError(f"NetSpec.{name}: expected a Top, got {type(value).__name__}{hint}")
        self.tops[name] = value

    def __getattr__(self, name: str) -> Top | Function:
        tops = self.__dict__.get("tops")
        if tops is None or name not in tops:
            raise _MissingTop(f"NetSpec has no top named '{name}'")
        return tops[name]

    def __delattr__(self, name: str) -> None:
        try:
            del self.tops[name]
        except KeyError:
            raise _MissingTop(f"NetSpec has no top named '{name}'") from None

    def __setitem__(self, key: str, value: Top | Function) -> None:
        self.__setattr__(key, value)

    def __getitem__(self, item: str) -> Top | Function:
        return self.__getattr__(item)

    def __contains__(self, name: object) -> bool:
        return name in self.tops

    def __dir__(self) -> list[str]:
        return [*super().__dir__(), *self.tops]

    def to_proto(self) -> caffe_pb2.NetParameter:
        """A NetParameter with the layers of every assigned top, named as assigned."""
        names = {value: name for name, value in self.tops.items()}
        return _collect(self.tops.values(), names)


class Layers:
    """``L.<Type>(*bottoms, **params)``: a layer of any type (see the module docstring)."""

    def __getattr__(self, type_name: str) -> Any:
        if type_name.startswith("_"):
            raise AttributeError(type_name)

        def layer_fn(*args: Top, **kwargs: Any) -> Top | tuple[Top, ...] | Function:
            fn = Function(type_name, args, kwargs)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops

        layer_fn.__name__ = layer_fn.__qualname__ = type_name
        return layer_fn


class _ParamConstants:
    """The constants (enum values, enum types) of one ``<Type>Parameter`` message: ``P.Pooling.MAX``."""

    def __init__(self, type_name: str, message: Any) -> None:
        self._type_name = type_name
        self._message = message

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return getattr(self._message, name)
        except AttributeError:
            values = [v.name for e in self._message.DESCRIPTOR.enum_types for v in e.values]
            raise AttributeError(
                f"{self._message.DESCRIPTOR.name} has no constant '{name}' (it has: {', '.join(values) or 'none'})"
            ) from None

    def __dir__(self) -> list[str]:
        return [v.name for e in self._message.DESCRIPTOR.enum_types for v in e.values]

    def __repr__(self) -> str:
        return f"<params.{self._type_name}: {self._message.DESCRIPTOR.name} constants>"


class Parameters:
    """``P.<Type>.<CONSTANT>``: enum values of ``<Type>Parameter`` (``P.Pooling.MAX``, ``P.Data.LMDB``,
    ``P.Eltwise.SUM``, ``P.Loss.VALID``)."""

    def __getattr__(self, type_name: str) -> _ParamConstants:
        if type_name.startswith("_"):
            raise AttributeError(type_name)
        message = getattr(caffe_pb2, type_name + "Parameter", None)
        if message is None and type_name in _SHARED_PARAMS:
            field = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name[_SHARED_PARAMS[type_name] + "_param"]
            message = getattr(caffe_pb2, field.message_type.name)
        if message is None:
            raise AttributeError(f"no {type_name}Parameter message in caffe.proto")
        return _ParamConstants(type_name, message)


layers = L = Layers()
params = P = Parameters()
