"""Reading and writing Caffe's proto files: text (.prototxt) and binary (.caffemodel, .binaryproto).

Reads go through protobuf's C++/upb backend. Errors name the file and, for text, line:column.
Nets and solvers are upgraded from old formats on read, as Caffe does. Writes are atomic.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from functools import cache
from glob import escape as glob_escape
from pathlib import Path
from typing import TypeVar

from google.protobuf import text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from caffe.errors import ParseError, UnknownLayerTypeError, WeightsError
from caffe.limits import read_file
from caffe.processes import pid_alive
from caffe.proto import caffe_pb2 as pb

M = TypeVar("M", bound=Message)
PathLike = str | os.PathLike


def _read_bytes(path: PathLike, what: str) -> bytes:
    """The bytes of the regular file ``path`` (bounded by :func:`caffe.limits.read_file`); ParseError if not."""
    return read_file(path, f"{what} file", error=ParseError)


def parse_text(text: str, message: M, source: str = "<string>") -> M:
    """Parse prototxt ``text`` into ``message``; a ParseError names source:line:column."""
    try:
        text_format.Parse(text, message)
    except RecursionError:
        message.Clear()
        raise ParseError(f"{source}: messages nested too deeply to parse (a corrupt or hostile prototxt)") from None
    except text_format.ParseError as e:
        line, col = e.GetLine(), e.GetColumn()
        detail = str(e)
        detail = re.sub(r"^\d+:\d+ : ", "", detail)
        where = f"{source}:{line}:{col}" if line else source
        if isinstance(message, pb.NetParameter):
            _raise_if_fork_layers(text, source, detail)
        raise ParseError(f"{where}: {detail}") from None
    return message


def _raise_if_fork_layers(text: str, source: str, detail: str) -> None:
    """A prototxt from a Caffe fork fails on its extra fields; name its unknown layer types instead."""
    from caffe.layer import layer_type_list, short_name

    lenient = pb.NetParameter()
    try:
        text_format.Parse(text, lenient, allow_unknown_field=True)
    except (text_format.ParseError, RecursionError):
        return
    known = set(layer_type_list())
    unknown: dict[str, list[str]] = {}
    for layer in lenient.layer:
        if layer.type and layer.type not in known:
            unknown.setdefault(layer.type, []).append(layer.name)
    if unknown:
        from caffe.layer import FORK_TYPES

        listing = "; ".join(
            f"{short_name(t)} (e.g. layer '{short_name(names[0])}', {len(names)} in all"
            f"{', from ' + FORK_TYPES[t] if t in FORK_TYPES else ''})"
            for t, names in list(unknown.items())[:20]
        )
        raise UnknownLayerTypeError(
            f"{source}: unknown layer types {', '.join(sorted(map(short_name, unknown))[:20])}"
            f"{f' and {len(unknown) - 20} more' if len(unknown) > 20 else ''} - this net needs a Caffe fork "
            f"(BVLC Caffe has no such layers): {listing}; first unknown field: {detail}"
        )


def read_text(path: PathLike, message: M) -> M:
    data = _read_bytes(path, "prototxt")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError(f"{path}: not a text prototxt (binary content); is it a .caffemodel?") from None
    return parse_text(text, message, str(path))


def read_binary(path: PathLike, message: M, what: str = "binary proto") -> M:
    data = _read_bytes(path, what)
    return parse_binary(data, message, str(path), what)


def parse_binary(data: bytes, message: M, source: str = "<bytes>", what: str = "binary proto") -> M:
    try:
        message.ParseFromString(data)
    except DecodeError as e:
        hint = ""
        if data[:200].lstrip().startswith((b"name", b"layer", b"input", b"#")):
            hint = " (it looks like a text prototxt)"
        raise WeightsError(
            f"{source}: not a valid {what} {type(message).__name__}{hint}: truncated or corrupt data ({e})"
        ) from None
    bad = _non_utf8_string(message)
    if bad:
        raise WeightsError(f"{source}: not a valid {what} {type(message).__name__}: the text of {bad} is not UTF-8")
    return message


@cache
def _has_strings(descriptor: Descriptor) -> bool:
    """Whether messages of this type can hold a string field (at any depth)."""
    seen: set[str] = set()
    stack = [descriptor]
    while stack:
        d = stack.pop()
        if d.full_name in seen:
            continue
        seen.add(d.full_name)
        for f in d.fields:
            if f.type == FieldDescriptor.TYPE_STRING:
                return True
            if f.message_type is not None:
                stack.append(f.message_type)
    return False


def _non_utf8_string(message: Message) -> str | None:
    """The path (``layer[3].name``) of a string field whose bytes are not UTF-8, else None. Binary protobuf
    does not check proto2 strings; such a field reads back as ``bytes`` and would break code far away."""
    if not _has_strings(message.DESCRIPTOR):
        return None
    stack: list[tuple[Message, str]] = [(message, "")]
    while stack:
        msg, path = stack.pop()
        for field, value in msg.ListFields():
            where = f"{path}.{field.name}" if path else field.name
            if field.type == FieldDescriptor.TYPE_STRING:
                values = value if field.is_repeated else [value]
                for i, v in enumerate(values):
                    if isinstance(v, bytes):
                        return f"{where}[{i}]" if field.is_repeated else where
            elif field.message_type is not None and _has_strings(field.message_type):
                if field.is_repeated:
                    stack.extend((m, f"{where}[{i}]") for i, m in enumerate(value))
                else:
                    stack.append((value, where))
    return None


def read_net_param(path: PathLike) -> pb.NetParameter:
    """A NetParameter from a text prototxt, upgraded from V0/V1 and legacy inputs as needed."""
    from caffe.upgrade import upgrade_net_as_needed

    net = read_text(path, pb.NetParameter())
    return upgrade_net_as_needed(net, str(path))


def read_net_param_binary(path: PathLike) -> pb.NetParameter:
    """A NetParameter from a binary file (a .caffemodel), upgraded as needed."""
    from caffe.upgrade import upgrade_net_as_needed

    net = read_binary(path, pb.NetParameter(), "caffemodel")
    return upgrade_net_as_needed(net, str(path))


def read_solver_param(path: PathLike) -> pb.SolverParameter:
    """A SolverParameter from a text prototxt, with the deprecated solver_type enum upgraded."""
    from caffe.upgrade import upgrade_solver_as_needed

    solver = read_text(path, pb.SolverParameter())
    return upgrade_solver_as_needed(solver, str(path))


def _remove_stale_temps(path: Path) -> None:
    """Delete temporary files a killed writer of ``path`` left behind (their process is gone)."""
    folder = path.parent if str(path.parent) else Path(".")
    for stale in folder.glob(f".{glob_escape(path.name)}.*.tmp"):
        pid = stale.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                stale.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    _remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent or ".")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; a saved model should be readable as usual
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def to_text(message: Message) -> str:
    return text_format.MessageToString(message)


def write_text(path: PathLike, message: Message) -> None:
    atomic_write(path, to_text(message).encode("utf-8"))


def write_binary(path: PathLike, message: Message) -> None:
    atomic_write(path, message.SerializeToString())
