"""A solver's snapshots: Caffe's file names, the ``.caffemodel``/``.solverstate`` pair (binaryproto or HDF5,
each written atomically), torch's random state beside them (``.rng``), and reading a state back.

``caffe.solver.Solver`` calls these from its pycaffe methods (``snapshot``, ``restore``,
``snapshot_filename``); this module holds the formats and knows nothing of the update rules.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from caffe.blob import Blob, array_to_blob_proto, blob_proto_to_array
from caffe.errors import SolverError, WeightsError
from caffe.limits import check_blob, check_path, check_regular_file, hdf5_errors
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import atomic_write, read_binary

if TYPE_CHECKING:
    from caffe.net import Net

log = logging.getLogger("caffe")
RNG_STATE_SUFFIX = ".rng"  # torch's random-number state beside a .solverstate (see save_state_extras)


@dataclass
class SolverState:
    """What a ``.solverstate`` holds: the iteration, the weights file it goes with, the lr step, the history."""

    iter: int
    learned_net: str | None
    current_step: int
    history: list[np.ndarray]


def snapshot_filename(prefix: str, iteration: int, extension: str) -> str:
    """Caffe's SnapshotFilename: ``<prefix>_iter_<iteration><extension>``."""
    return f"{prefix}_iter_{iteration}{extension}"


def check_snapshot_prefix(param: pb.SolverParameter, source: str) -> None:
    """Caffe's CheckSnapshotWritePermissions: a probe file written where the snapshots will go."""
    if not param.snapshot:
        return
    if not param.HasField("snapshot_prefix"):
        raise SolverError(f"{source}: snapshot is specified but snapshot_prefix is not")
    check_path(param.snapshot_prefix, f"snapshot_prefix of {source}", SolverError)
    probe = Path(snapshot_filename(param.snapshot_prefix, 0, ".tempfile"))
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError:
        raise SolverError(
            f"{source}: cannot write to snapshot prefix '{param.snapshot_prefix}': make sure that the "
            "directory exists and is writable"
        ) from None


def write_weights(net: Net, param: pb.SolverParameter, iteration: int) -> str:
    """The net's weights as ``.caffemodel`` (or ``.caffemodel.h5``); returns the file name."""
    if param.snapshot_format == pb.SolverParameter.HDF5:
        model = snapshot_filename(param.snapshot_prefix, iteration, ".caffemodel.h5")
        log.info("Snapshotting to HDF5 file %s", model)
        net.save_hdf5(model, write_diff=param.snapshot_diff)
    else:
        model = snapshot_filename(param.snapshot_prefix, iteration, ".caffemodel")
        log.info("Snapshotting to binary proto file %s", model)
        net.save(model, write_diff=param.snapshot_diff)
    return model


def write_state(param: pb.SolverParameter, state: SolverState, dtype: type[np.floating] = np.float32) -> str:
    """The solver state as ``.solverstate`` (or ``.solverstate.h5``, Caffe's layout); returns the file name."""
    if param.snapshot_format == pb.SolverParameter.HDF5:
        name = snapshot_filename(param.snapshot_prefix, state.iter, ".solverstate.h5")
        log.info("Snapshotting solver state to HDF5 file %s", name)
        _write_state_hdf5(Path(name), state, dtype)
        return name
    name = snapshot_filename(param.snapshot_prefix, state.iter, ".solverstate")
    log.info("Snapshotting solver state to binary proto file %s", name)
    message = pb.SolverState(iter=state.iter, learned_net=state.learned_net or "", current_step=state.current_step)
    for array in state.history:
        message.history.append(array_to_blob_proto(array, double=dtype == np.float64))
    atomic_write(name, message.SerializeToString())
    return name


def _write_state_hdf5(name: Path, state: SolverState, dtype: type[np.floating]) -> None:
    import h5py

    tmp = name.with_name(f".{name.name}.tmp")
    learned = (state.learned_net or "").encode()
    try:
        with h5py.File(tmp, "w") as f:
            # Caffe's hdf5_save_int: a 1-element int dataset; hdf5_save_string (H5LTmake_dataset_string):
            # a scalar fixed-length, NUL-terminated string (Caffe's reader cannot read variable-length)
            f.create_dataset("iter", data=np.array([state.iter], dtype=np.int32))
            f.create_dataset("learned_net", data=np.array(learned, dtype=f"S{len(learned) + 1}"))
            f.create_dataset("current_step", data=np.array([state.current_step], dtype=np.int32))
            group = f.create_group("history")
            for i, array in enumerate(state.history):
                group.create_dataset(str(i), data=np.asarray(array, dtype=dtype))
        os.replace(tmp, name)
    finally:
        if tmp.exists():
            tmp.unlink()


def rng_file(state_file: str | os.PathLike) -> Path:
    """Where torch's random state of a solver state lives: ``<state>.rng``."""
    return Path(f"{state_file}{RNG_STATE_SUFFIX}")


def save_state_extras(state_file: str | os.PathLike, loss_scale: tuple[float, int] | None = None) -> None:
    """neocaffe's additions beside a solver state, in ``<state>.rng`` (Caffe ignores the file): torch's
    random-number state, for nets whose layers draw random numbers while training (Dropout, DummyData's
    fillers): after a restore they draw what an uninterrupted run would have drawn. fp16 training also
    keeps its ``loss_scale`` there (scale, good iterations: ``caffe.precision.LossScaler.state``)."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    if loss_scale is not None:
        states["loss_scale"] = torch.tensor(loss_scale, dtype=torch.float64)
    buffer = io.BytesIO()
    torch.save(states, buffer)
    atomic_write(rng_file(state_file), buffer.getvalue())


def restore_state_extras(state_file: str | os.PathLike) -> tuple[float, int] | None:
    """Read :func:`save_state_extras`' file when there is one (a warning if it cannot be read): set torch's
    random state; return the fp16 loss scale (scale, good iterations) it keeps, if any."""
    path = rng_file(state_file)
    if not path.exists():  # a state written by Caffe, or before this addition
        return None
    try:
        states = torch.load(io.BytesIO(path.read_bytes()), weights_only=True)
        torch.set_rng_state(states["cpu"])
        scale = states.get("loss_scale")
        loss_scale = None if scale is None else (float(scale[0]), int(scale[1]))
    except Exception as e:
        log.warning("%s: cannot restore the random-number state (%s); Dropout masks will differ", path, e)
        return None
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(list(states["cuda"]))
    return loss_scale


def read_state(state_file: str | os.PathLike) -> tuple[Path, SolverState]:
    """A ``.solverstate`` (or ``.solverstate.h5``) and its checked path; a SolverError if missing or broken."""
    path = check_path(state_file, "solver state file", SolverError)
    if not path.exists():
        raise SolverError(f"{state_file}: solver state file not found")
    return path, (_read_state_hdf5(path) if path.name.endswith(".h5") else _read_state_proto(path))


def learned_net_path(state_file: Path, learned: str) -> Path:
    """The weights a state names: as written, else beside the state (the snapshot folder was moved)."""
    weights = check_path(learned, f"learned_net of {state_file}", SolverError)
    if not weights.exists() and (state_file.parent / weights.name).exists():
        weights = state_file.parent / weights.name
    return weights


def load_history(
    blobs: Sequence[Blob], arrays: Sequence[np.ndarray], dtype: type[np.floating], state_file: str | os.PathLike
) -> None:
    """Copy a state's history arrays into the solver's history blobs (sizes checked)."""
    for i, (blob, arr) in enumerate(zip(blobs, arrays, strict=True)):
        if arr.size != blob.count:
            raise SolverError(f"{state_file}: history blob {i} holds {arr.size} values, the parameter has {blob.count}")
        with torch.no_grad():
            blob.mutable_tensor.copy_(torch.from_numpy(np.asarray(arr, dtype=dtype).reshape(blob.shape)))


def fast_forward_data(param: pb.SolverParameter, iteration: int, net: Net, test_nets: Sequence[Net]) -> None:
    """Move the data layers to where an uninterrupted run would be at ``iteration``.

    Caffe's readers start again at the first record after a restore (its SolverState has no data
    position). Here they continue: the train net has read ``iter * iter_size`` batches, each test net
    ``test_iter`` batches per test before ``iter``. With the same ``random_seed`` a resumed training then
    reads the same records with the same crops and mirrors as one that was never interrupted.
    """
    nets = [(net, iteration * max(1, param.iter_size))]
    if param.test_interval and test_nets:
        tests = len([t for t in range(0, iteration, param.test_interval) if t > 0 or param.test_initialization])
        nets += [(test_net, tests * param.test_iter[i]) for i, test_net in enumerate(test_nets)]
    for each, batches in nets:
        for layer in each.layers:
            forward = getattr(layer, "fast_forward", None)
            if forward is not None:
                forward(batches)


def _read_state_proto(path: Path) -> SolverState:
    state = read_binary(path, pb.SolverState(), "solverstate")
    try:
        history = [blob_proto_to_array(h) for h in state.history]
    except WeightsError as e:
        raise SolverError(f"{path}: history blob: {e}") from None
    learned = state.learned_net if state.HasField("learned_net") else None
    return SolverState(int(state.iter), learned, int(state.current_step), history)


def _read_state_hdf5(path: Path) -> SolverState:
    import h5py

    check_regular_file(path, "HDF5 solver state", SolverError)
    with hdf5_errors(path, "HDF5 solver state", SolverError), h5py.File(path, "r") as f:
        learned = _h5_scalar(f, "learned_net", path, required=False)
        if isinstance(learned, bytes):
            learned = learned.rstrip(b"\0").decode("utf-8", errors="replace")
        group = f.get("history")
        if not isinstance(group, h5py.Group):
            raise SolverError(f"{path}: HDF5 solver state has no /history group")
        history = [_h5_array(group, str(i), path) for i in range(len(group))]
        iteration = int(_h5_scalar(f, "iter", path))
        step = int(_h5_scalar(f, "current_step", path))
        return SolverState(iteration, learned, step, history)


def _h5_dataset(group: Any, name: str, path: Path) -> Any:
    import h5py

    node = group.get(name)
    if not isinstance(node, h5py.Dataset):
        raise SolverError(f"{path}: HDF5 solver state has no dataset {group.name.rstrip('/')}/{name}")
    return node


def _h5_scalar(f: Any, name: str, path: Path, required: bool = True) -> Any:
    """The first value of a small dataset (Caffe writes ints as 1-element datasets); None if absent and optional."""
    if not required and name not in f:
        return None
    node = _h5_dataset(f, name, path)
    if node.size is None or node.size < 1 or node.size > 1 << 16:
        raise SolverError(f"{path}: HDF5 solver state dataset {name} holds {node.size} values, expected one")
    value = np.asarray(node[()]).reshape(-1)[0]
    if name != "learned_net" and value.dtype.kind not in "iu":
        raise SolverError(f"{path}: HDF5 solver state dataset {name} is {value.dtype}, expected an integer")
    return value


def _h5_array(group: Any, name: str, path: Path) -> np.ndarray:
    """A numeric history dataset, refused before reading when its declared size is over the blob budget."""
    node = _h5_dataset(group, name, path)
    if node.dtype.kind not in "fiu":
        raise SolverError(f"{path}: HDF5 solver state dataset history/{name} is {node.dtype}, expected numbers")
    check_blob(node.shape or (), node.dtype.itemsize, f"{path}: history/{name}")
    return np.asarray(node[()])
